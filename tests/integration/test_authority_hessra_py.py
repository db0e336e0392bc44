"""`hessra-pg authority serve` against Hessra's own client (hessra_py 0.2.1)
over real TLS on loopback, the authority in a child process
(hessra_pg.authority.sandbox): the public key, tokens for certificates the
policy lists and refusals for the others, identity tokens, domain
identities and their roles, multi-party sign-offs, capability tokens, bad
requests, policy reload and key rotation. No PostgreSQL needed."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import hessra_py
import pytest

from hessra_pg.authority.keys import key_id
from hessra_pg.authority.sandbox import local_authority
from hessra_pg.core.capability import verify_capability
from hessra_pg.core.keys import canonical_public_key, generate_keypair, load_private_key, public_key_pem
from hessra_pg.core.verifier import RootKey, verify, verify_identity
from hessra_pg.dev.certs import make_ca
from hessra_pg.tokens.inspect import inspect_token

TREASURY = generate_keypair()

RESOURCES = f"""\
[resources.orders]
operations = ["read", "write"]

[resources.payouts]
mechanisms = ["multi_party"]
[resources.payouts.multi_party]
nodes = [{{ component = "treasury", public_key = "{TREASURY.public_key}" }}]

[resources.invoices]
mechanisms = ["capability"]
anchor = "db:main"
"""

CLIENTS = """\
[[clients]]
identifier = { type = "san_uri", value = "urn:example:billing" }
identity_token_enabled = true
resources = [{ name = "orders", operations = ["read"] }, { name = "payouts", operations = ["approve"] }]

[[clients]]
identifier = { type = "san_dns", value = "worker-*.internal" }
resources = [{ name = "invoices", operations = ["read"], designations = { tenant_id = "acme" } }]

[[clients]]
name = "portal"
identifier = { type = "san_uri", value = "urn:example:portal" }
identity_token_enabled = true
[clients.domain.default_role]
name = "member"
resources = [{ name = "orders", operations = ["read"] }]
[[clients.domain.roles]]
name = "admin"
resources = [{ name = "orders", operations = ["read", "write"] }]
[[clients.domain.role_assignments]]
identity = "urn:example:portal:alice"
role = "admin"
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    with local_authority(tmp_path_factory.mktemp("authority"), clients_toml=CLIENTS, resources_toml=RESOURCES,
                         token_ttl=120, identity_ttl=600, signoff_keys={"treasury": TREASURY}) as running:
        running.billing = running.client_certificate("billing", uris=["urn:example:billing"])
        running.worker = running.client_certificate("worker", dns=["worker-7.internal"])
        running.portal = running.client_certificate("portal", uris=["urn:example:portal"])
        running.stranger = running.client_certificate("stranger", uris=["urn:example:stranger"])
        yield running
        # Nothing a client sent or got, and no private key, was ever logged.
        logs = "\n".join(running.logs)
        assert "PRIVATE KEY" not in logs
        for token in running.issued:
            assert token[:40] not in logs


@pytest.fixture(autouse=True)
def issued(sandbox):
    if not hasattr(sandbox, "issued"):
        sandbox.issued = []
    return sandbox.issued


def roots(sandbox) -> list[RootKey]:
    """The authority's key as a database registers it: under the key id its tokens carry."""
    return [RootKey(key_id(sandbox.public_key), sandbox.public_key)]


def http_error(status: int):
    return pytest.raises(hessra_py.HessraPyException, match=f"HTTP error: {status}")


def test_get_public_key_returns_the_signing_key(sandbox) -> None:
    client = sandbox.hessra_py_client(setup=False)          # no client certificate: none needed
    served = client.get_public_key()
    assert served == sandbox.public_key_pem
    assert served == public_key_pem(load_private_key(sandbox.key_file.read_text()).public_key)
    status, body = sandbox.request("GET", "/ca_cert")
    assert status == 200 and body["ca_cert_pem"] == sandbox.ca_pem and body["response_msg"]


def test_a_listed_client_gets_a_token_that_verifies(sandbox, issued) -> None:
    client = sandbox.hessra_py_client(sandbox.billing)
    token = client.request_token_simple("orders", "read")
    issued.append(token)
    now = time.time()
    check = dict(now=now, subject="urn:example:billing", resource="orders")
    assert verify(token, roots(sandbox), operation="read", **check).valid
    assert verify(token, roots(sandbox), operation="read", **check).expires_at <= now + 121
    assert not verify(token, roots(sandbox), operation="write", **check).valid
    client.verify_token_local(token, "urn:example:billing", "orders", "read")   # hessra_py agrees
    assert client.verify_token_remote(token, "urn:example:billing", "orders", "read") == "token verified"
    with http_error(403):
        client.verify_token_remote(token, "urn:example:billing", "orders", "write")


def test_refusals(sandbox) -> None:
    with http_error(403) as raised:
        sandbox.hessra_py_client(sandbox.billing).request_token_simple("orders", "write")
    assert "may not write orders" in str(raised.value)
    with http_error(403) as raised:
        sandbox.hessra_py_client(sandbox.billing).request_token_simple("invoices", "read")
    with http_error(403) as raised:
        sandbox.hessra_py_client(sandbox.stranger).request_token_simple("orders", "read")
    assert "no client in the policy matches this certificate" in str(raised.value)
    with http_error(401) as raised:
        sandbox.hessra_py_client().request_token_simple("orders", "read")
    assert "authenticate with" in str(raised.value)
    with http_error(401):
        sandbox.hessra_py_client().request_identity_token(None)
    # a certificate from a CA the authority doesn't trust: no TLS session at all
    foreign = make_ca(sandbox.directory / "foreign").issue("billing", uris=["urn:example:billing"])
    with pytest.raises(hessra_py.HessraPyException) as raised:
        sandbox.hessra_py_client(foreign, setup=False).request_token_simple("orders", "read")
    assert "HTTP error" not in str(raised.value)


def test_identity_token_authentication(sandbox, issued) -> None:
    answer = sandbox.hessra_py_client(sandbox.billing).request_identity_token(None)
    assert (answer.identity, answer.expires_in) == ("urn:example:billing", 600)
    issued.append(answer.token)
    assert verify_identity(answer.token, roots(sandbox), now=time.time(), identity="urn:example:billing").valid
    anonymous = sandbox.hessra_py_client()                   # no client certificate from here on
    token = anonymous.request_token_with_identity("orders", "read", answer.token)
    issued.append(token)
    assert verify(token, roots(sandbox), now=time.time(), subject="urn:example:billing", resource="orders",
                  operation="read").valid
    with http_error(403):
        anonymous.request_token_with_identity("orders", "write", answer.token)
    # delegated offline by its holder: acts with billing's rights, under its own name
    laptop = anonymous.attenuate_identity_token(answer.token, "urn:example:billing:laptop", 300)
    token = anonymous.request_token_with_identity("orders", "read", laptop)
    assert inspect_token(token).subject == "urn:example:billing:laptop"
    refreshed = anonymous.refresh_identity_token(answer.token, "urn:example:billing")
    issued.append(refreshed.token)
    assert refreshed.identity == "urn:example:billing" and refreshed.token != answer.token
    with http_error(401):
        anonymous.request_token_with_identity("orders", "read", "bm90IGEgdG9rZW4")
    status, body = sandbox.request("POST", "/request_token", {"resource": "orders", "operation": "read"},
                                   headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401 and body == {"response_msg": "Authorization must be 'Bearer <identity token>'"}


def test_domain_identities_minted_by_a_realm(sandbox, issued) -> None:
    status, alice = sandbox.request("POST", "/mint_identity_token",
                                    {"subject": "urn:example:portal:alice", "duration": 300},
                                    certificate=sandbox.portal)
    assert status == 200 and set(alice) == {"response_msg", "token", "expires_in", "identity"}
    assert (alice["identity"], alice["expires_in"]) == ("urn:example:portal:alice", 300)
    status, bob = sandbox.request("POST", "/mint_identity_token", {"subject": "urn:example:portal:bob"},
                                  certificate=sandbox.portal)
    assert status == 200 and bob["expires_in"] == 600
    issued.extend([alice["token"], bob["token"]])
    anonymous = sandbox.hessra_py_client()
    token = anonymous.request_token_with_identity("orders", "write", alice["token"])    # admin
    assert verify(token, roots(sandbox), now=time.time(), subject="urn:example:portal:alice", resource="orders",
                  operation="write").valid
    anonymous.request_token_with_identity("orders", "read", bob["token"])               # member (default)
    with http_error(403) as raised:
        anonymous.request_token_with_identity("orders", "write", bob["token"])
    assert "urn:example:portal:bob may not write orders" in str(raised.value)
    # newer SDKs name the domain in the request (TokenRequest.domain): it must be the token's
    for domain, expected in (("urn:example:portal", 200), ("urn:example:billing", 403)):
        status, answer = sandbox.request("POST", "/request_token", {"resource": "orders", "operation": "read",
                                                                    "domain": domain}, bearer=bob["token"])
        assert status == expected, answer
    # only the realm mints, only inside its domain, only with its certificate
    for body, certificate, expected in [
        ({"subject": "urn:example:billing:x"}, sandbox.billing, 403),
        ({"subject": "urn:example:other:x"}, sandbox.portal, 403),
        ({"subject": "urn:example:portal:x", "duration": -5}, sandbox.portal, 400),
        ({"subject": "urn:example:portal:x"}, None, 401),
    ]:
        status, answer = sandbox.request("POST", "/mint_identity_token", body, certificate=certificate)
        assert status == expected and "token" not in answer, (body, answer)


def test_multi_party_sign_off(sandbox, issued) -> None:
    status, answer = sandbox.request("POST", "/request_token", {"resource": "payouts", "operation": "approve"},
                                     certificate=sandbox.billing)
    assert status == 200
    assert answer["pending_signoffs"] == [{"component": "treasury", "authorization_service": sandbox.url[8:],
                                           "public_key": str(TREASURY.public_key)}]
    check = dict(now=time.time(), subject="urn:example:billing", resource="payouts", operation="approve")
    assert not verify(answer["token"], roots(sandbox), **check).valid
    status, signed = sandbox.request("POST", "/sign_token", {"token": answer["token"], "resource": "payouts",
                                                             "operation": "approve"}, certificate=sandbox.billing)
    assert status == 200 and signed["response_msg"] == "signed off as treasury"
    issued.extend([answer["token"], signed["signed_token"]])
    assert verify(signed["signed_token"], roots(sandbox), **check).valid
    status, again = sandbox.request("POST", "/sign_token", {"token": signed["signed_token"], "resource": "payouts",
                                                            "operation": "approve"}, certificate=sandbox.billing)
    assert status == 409 and set(again) == {"response_msg"}


def test_capability_tokens_where_the_policy_asks(sandbox, issued) -> None:
    token = sandbox.hessra_py_client(sandbox.worker).request_token_simple("invoices", "read")
    issued.append(token)
    common = dict(now=time.time(), resource="invoices", operation="read", anchor="db:main")
    assert verify_capability(token, roots(sandbox), designations={"tenant_id": "acme"}, **common).valid
    assert not verify_capability(token, roots(sandbox), designations={"tenant_id": "globex"}, **common).valid
    assert inspect_token(token).subject == "worker-7.internal"


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/request_token", b"{not json", 400, "request body is not valid JSON"),
    ("POST", "/request_token", b"[1, 2]", 400, "request body must be a JSON object"),
    ("POST", "/request_token", b'{"resource": "orders"}', 400, "field 'operation' must be a non-empty string"),
    ("POST", "/request_token", b'{"resource": 5, "operation": "read"}', 400, "field 'resource' must be a non-empty"),
    ("POST", "/verify_token", b"{}", 400, "field 'token' must be a non-empty string"),
    ("POST", "/nowhere", b"{}", 404, "unknown endpoint"),
    ("GET", "/nowhere", None, 404, "unknown endpoint"),
    ("GET", "/request_token", None, 405, "use POST for /request_token"),
    ("POST", "/public_key", b"{}", 405, "use GET for /public_key"),
    ("DELETE", "/public_key", None, 501, "Unsupported method ('DELETE')"),
    ("POST", "/request_token", b"x" * (64 * 1024 + 1), 413, "request body too large"),
])
def test_bad_requests_get_a_status_and_a_json_message(sandbox, method, path, body, status, message) -> None:
    got, answer = sandbox.request(method, path, raw=body, certificate=sandbox.billing)
    assert got == status
    assert isinstance(answer, dict) and set(answer) == {"response_msg"} and message in answer["response_msg"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_malformed_http_and_old_tls(sandbox) -> None:
    context = sandbox.ssl_context()
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=sandbox.host) as tls:
        tls.sendall(b"GARBAGE\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):          # the authority closes after an error
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "application/json" in head
    assert "response_msg" in json.loads(body)
    tls12 = sandbox.ssl_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as raw, \
            tls12.wrap_socket(raw, server_hostname=sandbox.host) as tls:
        assert tls.version() == "TLSv1.2"
    old = sandbox.ssl_context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection((sandbox.host, sandbox.port), timeout=5) as raw:
        old.wrap_socket(raw, server_hostname=sandbox.host)


def test_policy_reload_and_key_rotation(tmp_path: Path) -> None:
    with local_authority(tmp_path, clients_toml=CLIENTS, resources_toml=RESOURCES) as sandbox:
        newcomer = sandbox.client_certificate("newcomer", uris=["urn:example:newcomer"])
        with http_error(403):
            sandbox.hessra_py_client(newcomer).request_token_simple("orders", "read")
        added = CLIENTS + ('\n[[clients]]\nidentifier = { type = "san_uri", value = "urn:example:newcomer" }\n'
                           'resources = [{ name = "orders", operations = ["read"] }]\n')
        assert "policy reloaded" in sandbox.write_policy(clients_toml=added)
        assert sandbox.hessra_py_client(newcomer).request_token_simple("orders", "read")
        # a policy with a problem is refused; the one in force stays
        line = sandbox.write_policy(clients_toml=added.replace('"read"]', '"reed"]'))
        assert "policy not reloaded" in line
        assert any("has no operation 'reed'" in entry for entry in sandbox.logs)
        assert sandbox.hessra_py_client(newcomer).request_token_simple("orders", "read")

        # rotation: hessra-pg authority rotate-key, the running authority follows
        billing = sandbox.client_certificate("billing", uris=["urn:example:billing"])
        client = sandbox.hessra_py_client(billing)
        old_key = client.get_public_key()
        old_token = client.request_token_simple("orders", "read")
        identity = client.request_identity_token(None).token
        mark = len(sandbox.logs)
        done = subprocess.run([sys.executable, "-m", "hessra_pg", "authority", "rotate-key", "--key",
                               str(sandbox.key_file)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        new_key = done.stdout.strip()
        sandbox.wait_for_log("signing key rotated", after=mark)
        served = sandbox.hessra_py_client(setup=False).get_public_key()
        assert canonical_public_key(served) == new_key != canonical_public_key(old_key)
        new_token = sandbox.hessra_py_client(billing).request_token_simple("orders", "read")
        check = dict(now=time.time(), subject="urn:example:billing", resource="orders", operation="read")
        old_root = [RootKey(key_id(old_key), canonical_public_key(old_key))]
        new_root = [RootKey(key_id(new_key), new_key)]
        assert verify(new_token, new_root, **check).valid
        assert verify(new_token, old_root, **check).reason == "unknown_key"     # it names the new key's id
        assert verify(old_token, old_root, **check).valid and not verify(old_token, new_root, **check).valid
        # identity tokens of the old key still identify their holder until they expire
        token = sandbox.hessra_py_client().request_token_with_identity("orders", "read", identity)
        assert verify(token, new_root, **check).valid
