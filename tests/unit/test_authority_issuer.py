"""hessra_pg.authority.issuer and .keys without HTTP: what each caller gets
and what it is refused, every token checked with hessra_pg's verifiers
against the authority's public key; identity tokens, delegation, domain
identities and roles, multi-party sign-offs, capability tokens, and key
rotation with its retired-key window."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from hessra_pg.authority.issuer import Caller, Issuer, Refusal, Settings
from hessra_pg.authority.keys import KeyStore, key_id, retired_directory, rotate_key
from hessra_pg.authority.policy import load_policy
from hessra_pg.cli import main
from hessra_pg.core.capability import verify_capability
from hessra_pg.core.keys import generate_keypair, load_private_key, private_key_pem, public_key_pem
from hessra_pg.core.verifier import ChainNode, RootKey, verify, verify_identity
from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.tokens.inspect import inspect_token
from hessra_pg.tokens.mint import TokenTime, attest_service, mint_authorization

GATEWAY_NODE = generate_keypair()
TREASURY = generate_keypair()
AUDIT = generate_keypair()

RESOURCES = f"""\
[resources.orders]
operations = ["read", "write"]

[resources.shipping]
type = "service_chain"
nodes = [{{ component = "gateway", public_key = "{GATEWAY_NODE.public_key}" }}]

[resources.payouts]
mechanisms = ["multi_party"]
[resources.payouts.multi_party]
nodes = [{{ component = "treasury", public_key = "{TREASURY.public_key}", authorization_service = "t.example:1" }},
         {{ component = "audit", public_key = "{AUDIT.public_key}" }}]

[resources.invoices]
mechanisms = ["capability"]
anchor = "db:main"
"""

CLIENTS = """\
[[clients]]
identifier = { type = "san_uri", value = "urn:example:gateway" }
identity_token_enabled = true
resources = [{ name = "orders", operations = ["read"] }, "shipping",
             { name = "payouts", operations = ["approve"] }]

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


@pytest.fixture
def setup(tmp_path: Path):
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "resources.toml").write_text(RESOURCES)
    (policy_dir / "clients.toml").write_text(CLIENTS)
    key_file = tmp_path / "root.pem"
    key_file.write_text(private_key_pem(generate_keypair()))
    key_file.chmod(0o600)
    keys = KeyStore(key_file, retired_for=600)
    issuer = Issuer(keys, Settings(token_ttl=60, identity_ttl=900, address="127.0.0.1:8443",
                                   signoff_keys={"treasury": TREASURY, "audit": AUDIT}))
    return load_policy(policy_dir), issuer, keys, policy_dir


def roots(keys: KeyStore) -> list[RootKey]:
    """The authority's key as a database registers it: under the key id its tokens carry."""
    return [RootKey(key_id(keys.public_key), keys.public_key)]


def certificate(issuer: Issuer, policy, *sans: tuple[str, str]) -> Caller:
    return issuer.caller_from_certificate(policy, sans)


def refused(status: int, fragment: str, call, *args, **kwargs) -> None:
    with pytest.raises(Refusal) as raised:
        call(*args, **kwargs)
    assert raised.value.status == status, raised.value.message
    assert fragment in raised.value.message


def test_authorization_tokens_for_what_the_policy_grants(setup) -> None:
    policy, issuer, keys, _ = setup
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    answer = issuer.request_token(policy, gateway, "orders", "read")
    assert set(answer) == {"response_msg", "token"}
    now = time.time()
    token = answer["token"]
    assert verify(token, roots(keys), now=now, subject="urn:example:gateway", resource="orders",
                  operation="read").valid
    assert not verify(token, roots(keys), now=now, subject="urn:example:gateway", resource="orders",
                      operation="write").valid
    assert not verify(token, roots(keys), now=now + 61, subject="urn:example:gateway", resource="orders",
                      operation="read").valid          # --token-ttl 60
    refused(403, "urn:example:gateway may not write orders", issuer.request_token, policy, gateway, "orders", "write")
    refused(403, "may not read invoices", issuer.request_token, policy, gateway, "invoices", "read")
    refused(403, "may not read nowhere", issuer.request_token, policy, gateway, "nowhere", "read")
    refused(403, "no client in the policy matches this certificate", issuer.caller_from_certificate, policy,
            [("URI", "urn:example:stranger")])


def test_service_chain_resources_get_their_chain(setup) -> None:
    policy, issuer, keys, _ = setup
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    token = issuer.request_token(policy, gateway, "shipping", "anything")["token"]
    chain = policy.resources["shipping"].chain
    args = dict(now=time.time(), subject="urn:example:gateway", resource="shipping", operation="anything", chain=chain)
    assert verify(token, roots(keys), **args).reason == "missing_attestation:gateway"
    assert verify(attest_service(token, keys.public_key, "shipping", GATEWAY_NODE), roots(keys), **args).valid


def test_multi_party_tokens_list_pending_signoffs_and_get_signed_off(setup) -> None:
    policy, issuer, keys, _ = setup
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    answer = issuer.request_token(policy, gateway, "payouts", "approve")
    assert answer["pending_signoffs"] == [
        {"component": "treasury", "authorization_service": "t.example:1", "public_key": str(TREASURY.public_key)},
        {"component": "audit", "authorization_service": "127.0.0.1:8443", "public_key": str(AUDIT.public_key)},
    ]
    token = answer["token"]
    check = dict(now=time.time(), subject="urn:example:gateway", resource="payouts", operation="approve")
    assert not verify(token, roots(keys), **check).valid
    first = issuer.sign_token(policy, gateway, token, "payouts", "approve")
    assert first["response_msg"] == "signed off as treasury"
    assert not verify(first["signed_token"], roots(keys), **check).valid
    second = issuer.sign_token(policy, gateway, first["signed_token"], "payouts", "approve")["signed_token"]
    assert second != first["signed_token"] and verify(second, roots(keys), **check).valid
    refused(409, "needs no sign-off", issuer.sign_token, policy, gateway, second, "payouts", "approve")
    # only the caller's own token, for what it names
    refused(403, "is not urn:example:gateway's token", issuer.sign_token, policy, gateway, token, "orders", "read")
    worker = certificate(issuer, policy, ("DNS", "worker-1.internal"))
    refused(403, "may not approve payouts", issuer.sign_token, policy, worker, token, "payouts", "approve")
    stranger = mint_authorization(generate_keypair(), "urn:example:gateway", "payouts", "approve")
    refused(403, "token rejected: bad_signature", issuer.sign_token, policy, gateway, stranger, "payouts", "approve")
    # a token of another authority, when trusted
    other = generate_keypair()
    foreign = mint_authorization(other, "urn:example:gateway", "payouts", "approve",
                                 multi_party=[ChainNode("treasury", str(TREASURY.public_key))])
    trusting = Issuer(keys, Settings(signoff_keys={"treasury": TREASURY}, trusted_roots=(str(other.public_key),)))
    signed = trusting.sign_token(policy, gateway, foreign, "payouts", "approve")["signed_token"]
    assert verify(signed, [RootKey(1, str(other.public_key))], **check).valid
    expired = mint_authorization(keys.signer, "urn:example:gateway", "payouts", "approve",
                                 time_config=TokenTime(start=int(time.time()) - 100, duration=10))
    refused(403, "token rejected: expired", issuer.sign_token, policy, gateway, expired, "payouts", "approve")
    lone = Issuer(keys, Settings())
    refused(403, "--signoff-key", lone.sign_token, policy, gateway, token, "payouts", "approve")


def test_capability_tokens_carry_the_grant_designations_and_the_anchor(setup) -> None:
    policy, issuer, keys, _ = setup
    worker = certificate(issuer, policy, ("DNS", "Worker-9.internal"))
    assert worker.identity == "worker-9.internal"
    answer = issuer.request_token(policy, worker, "invoices", "read")
    assert answer["response_msg"] == "capability token issued"
    token = answer["token"]
    assert inspect_token(token).kind == "capability"
    common = dict(now=time.time(), resource="invoices", operation="read")
    assert verify_capability(token, roots(keys), designations={"tenant_id": "acme"}, anchor="db:main", **common).valid
    assert verify_capability(token, roots(keys), designations={"tenant_id": "globex"}, anchor="db:main",
                             **common).reason.startswith("designation_mismatch")
    assert not verify_capability(token, roots(keys), designations={"tenant_id": "acme"}, anchor="db:other",
                                 **common).valid


def test_identity_tokens_issue_use_delegate_refresh(setup) -> None:
    policy, issuer, keys, _ = setup
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    answer = issuer.request_identity_token(policy, gateway, None)
    assert (answer["identity"], answer["expires_in"], answer["response_msg"]) == (
        "urn:example:gateway", 900, "identity token issued")
    identity_token = answer["token"]
    assert verify_identity(identity_token, roots(keys), now=time.time(), identity="urn:example:gateway:x").valid

    bearer = issuer.caller_from_identity_token(policy, identity_token)
    assert (bearer.identity, bearer.via, bearer.client.name) == ("urn:example:gateway", "identity token",
                                                                 "urn:example:gateway")
    token = issuer.request_token(policy, bearer, "orders", "read")["token"]
    assert verify(token, roots(keys), now=time.time(), subject="urn:example:gateway", resource="orders",
                  operation="read").valid

    # A delegated identity acts with its client's rights, under its own name.
    laptop = delegate_identity(identity_token, keys.public_key, "urn:example:gateway:laptop")
    delegated = issuer.caller_from_identity_token(policy, laptop)
    assert delegated.identity == "urn:example:gateway:laptop" and delegated.client.name == "urn:example:gateway"
    token = issuer.request_token(policy, delegated, "orders", "read")["token"]
    assert inspect_token(token).subject == "urn:example:gateway:laptop"

    # With identifier: a descendant of the certificate's identity only.
    ci = issuer.request_identity_token(policy, gateway, "urn:example:gateway:ci")
    assert ci["identity"] == "urn:example:gateway:ci"
    refused(403, "can't have an identity token for urn:example:portal", issuer.request_identity_token, policy,
            gateway, "urn:example:portal")
    refused(401, "issued to client certificates", issuer.request_identity_token, policy, bearer, None)
    worker = certificate(issuer, policy, ("DNS", "worker-1.internal"))
    refused(403, "does not use identity tokens", issuer.request_identity_token, policy, worker, None)

    refreshed = issuer.refresh_identity_token(policy, None, identity_token, "urn:example:gateway")
    assert refreshed["identity"] == "urn:example:gateway" and refreshed["token"] != identity_token
    assert issuer.refresh_identity_token(policy, None, laptop, None)["identity"] == "urn:example:gateway:laptop"
    refused(401, "identity token rejected", issuer.refresh_identity_token, policy, None, laptop, "urn:example:gateway")
    refused(403, "can't refresh", issuer.refresh_identity_token, policy, worker, identity_token, None)


def test_identity_tokens_that_are_refused(setup) -> None:
    policy, issuer, keys, _ = setup
    stranger = mint_identity(generate_keypair(), "urn:example:gateway")
    refused(401, "identity token rejected: bad_signature", issuer.caller_from_identity_token, policy, stranger)
    expired = mint_identity(keys.signer, "urn:example:gateway", time_config=TokenTime(int(time.time()) - 100, 10))
    refused(401, "identity token rejected: expired", issuer.caller_from_identity_token, policy, expired)
    authorization = mint_authorization(keys.signer, "urn:example:gateway", "orders", "read")
    refused(401, "not an identity token", issuer.caller_from_identity_token, policy, authorization)
    refused(401, "not a valid token", issuer.caller_from_identity_token, policy, "garbage!")
    unknown = mint_identity(keys.signer, "urn:example:nobody")
    refused(403, "no client in the policy for identity urn:example:nobody", issuer.caller_from_identity_token,
            policy, unknown)
    not_enabled = mint_identity(keys.signer, "worker-1.internal")
    refused(403, "does not use identity tokens", issuer.caller_from_identity_token, policy, not_enabled)


def test_domain_identities_get_their_role(setup, tmp_path: Path) -> None:
    policy, issuer, keys, policy_dir = setup
    portal = certificate(issuer, policy, ("URI", "urn:example:portal"))
    minted = issuer.mint_identity_token(policy, portal, "urn:example:portal:alice", 60)
    assert (minted["identity"], minted["expires_in"]) == ("urn:example:portal:alice", 60)
    assert inspect_token(minted["token"]).domain == "urn:example:portal"
    assert issuer.mint_identity_token(policy, portal, "urn:example:portal:bob", 10**6)["expires_in"] == 900
    bob_token = issuer.mint_identity_token(policy, portal, "urn:example:portal:bob", None)["token"]

    alice = issuer.caller_from_identity_token(policy, minted["token"])
    assert (alice.identity, alice.via, alice.role, alice.domain) == (
        "urn:example:portal:alice", "domain identity", "admin", "urn:example:portal")
    token = issuer.request_token(policy, alice, "orders", "write")["token"]
    assert verify(token, roots(keys), now=time.time(), subject="urn:example:portal:alice", resource="orders",
                  operation="write").valid
    bob = issuer.caller_from_identity_token(policy, bob_token)
    assert bob.role == "member"
    issuer.request_token(policy, bob, "orders", "read")
    refused(403, "urn:example:portal:bob may not write orders", issuer.request_token, policy, bob, "orders", "write")

    # domain identities can't delegate (non-delegatable) and can't mint
    assert not verify_identity(bob_token, roots(keys), now=time.time(), identity="urn:example:portal:bob:x",
                               domain="urn:example:portal").valid
    refused(401, "minted by a realm's client certificate", issuer.mint_identity_token, policy, bob,
            "urn:example:portal:carol", None)
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    refused(403, "is not a realm", issuer.mint_identity_token, policy, gateway, "urn:example:gateway:x", None)
    refused(403, "is not in domain urn:example:portal", issuer.mint_identity_token, policy, portal,
            "urn:example:gateway:x", None)
    refused(403, "is not in domain", issuer.mint_identity_token, policy, portal, "urn:example:portal", None)

    # refresh keeps the domain; the realm must still exist
    refreshed = issuer.refresh_identity_token(policy, None, bob_token, None)
    assert inspect_token(refreshed["token"]).domain == "urn:example:portal"
    assert issuer.caller_from_identity_token(policy, refreshed["token"]).identity == "urn:example:portal:bob"
    refused(403, "not urn:example:portal:carol's", issuer.refresh_identity_token, policy, None, bob_token,
            "urn:example:portal:carol")

    # the policy changes: alice loses her assignment, then the realm goes
    (policy_dir / "clients.toml").write_text(CLIENTS.split("[[clients.domain.role_assignments]]")[0])
    changed = load_policy(policy_dir)
    assert issuer.caller_from_identity_token(changed, minted["token"]).role == "member"
    (policy_dir / "clients.toml").write_text(CLIENTS.split('[[clients]]\nname = "portal"')[0])
    gone = load_policy(policy_dir)
    refused(403, "domain urn:example:portal is not a realm", issuer.caller_from_identity_token, gone, bob_token)

    # a domain token of another authority's key, or for another domain: refused
    forged = mint_identity(generate_keypair(), "urn:example:portal:mallory", delegatable=False,
                           domain="urn:example:portal")
    refused(401, "identity token rejected", issuer.caller_from_identity_token, policy, forged)
    elsewhere = mint_identity(keys.signer, "urn:example:gateway:mallory", delegatable=False,
                              domain="urn:example:gateway")
    refused(403, "domain urn:example:gateway is not a realm", issuer.caller_from_identity_token, policy, elsewhere)


def test_remote_verification(setup) -> None:
    policy, issuer, keys, _ = setup
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    token = issuer.request_token(policy, gateway, "orders", "read")["token"]
    assert issuer.verify_token(token, "urn:example:gateway", "orders", "read") == {"response_msg": "token verified"}
    refused(403, "token denied: denied", issuer.verify_token, token, "urn:example:gateway", "orders", "write")
    refused(403, "token denied: subject_mismatch", issuer.verify_token, token, "urn:example:other", "orders", "read")
    chained = issuer.request_token(policy, gateway, "shipping", "send")["token"]
    refused(403, "missing_attestation", issuer.verify_service_chain_token, policy, chained, "urn:example:gateway",
            "shipping", None)
    attested = attest_service(chained, keys.public_key, "shipping", GATEWAY_NODE)
    assert issuer.verify_service_chain_token(policy, attested, "urn:example:gateway", "shipping", None)
    assert issuer.verify_service_chain_token(policy, chained, "urn:example:gateway", "shipping", "gateway")
    refused(400, "not in the service chain", issuer.verify_service_chain_token, policy, chained,
            "urn:example:gateway", "shipping", "nobody")
    refused(404, "has no service chain", issuer.verify_service_chain_token, policy, token, "urn:example:gateway",
            "orders", None)


# -- keys ----------------------------------------------------------------------

def test_rotation_keeps_the_old_public_key_for_a_while(tmp_path: Path) -> None:
    key_file = tmp_path / "root.pem"
    first = generate_keypair("secp256r1")
    key_file.write_text(private_key_pem(first))
    key_file.chmod(0o600)
    store = KeyStore(key_file, retired_for=100)
    old_identity = mint_identity(store.signer, "urn:example:gateway")
    assert store.refresh() is False

    new = rotate_key(key_file, now=1_000)
    assert str(new.public_key).startswith("secp256r1/")                     # same algorithm
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert str(load_private_key(key_file.read_text()).public_key) == str(new.public_key)
    retired = list(retired_directory(key_file).iterdir())
    assert [path.name for path in retired] == ["1000.pub.pem"]
    assert "PRIVATE" not in retired[0].read_text()
    assert store.refresh() is True and store.public_key == str(new.public_key)

    now = time.time()
    kids = {key.public_key: key for key in store.verification_keys(now)}
    assert set(kids) == {str(new.public_key), str(first.public_key)}
    assert verify_identity(old_identity, store.verification_keys(now), now=now, identity="urn:example:gateway").valid
    later = now + 101
    assert [k.public_key for k in store.verification_keys(later)] == [str(new.public_key)]
    # a fresh store (the authority restarted) still knows the retired key from the directory
    fresh = KeyStore(key_file, retired_for=10**10)
    assert str(first.public_key) in {key.public_key for key in fresh.verification_keys()}
    assert rotate_key(key_file, algorithm="ed25519", now=1_000).public_key is not None
    assert sorted(path.name for path in retired_directory(key_file).iterdir()) == ["1000-1.pub.pem", "1000.pub.pem"]


def test_tokens_name_the_key_id_of_the_key_that_signed_them(setup) -> None:
    policy, issuer, keys, _ = setup
    kid = key_id(keys.public_key)
    # derived from the key alone: PEM or alg/hex, any store, any restart; a kid the keys table takes
    assert key_id(public_key_pem(keys.signer.public_key)) == kid == KeyStore(keys.path, retired_for=1).signing_key()[1]
    assert 0 < kid < 2**31 and key_id(str(generate_keypair().public_key)) != kid
    assert keys.published() == (public_key_pem(keys.signer.public_key), kid)
    gateway = certificate(issuer, policy, ("URI", "urn:example:gateway"))
    worker = certificate(issuer, policy, ("DNS", "worker-1.internal"))
    portal = certificate(issuer, policy, ("URI", "urn:example:portal"))
    identity = issuer.request_identity_token(policy, gateway, None)["token"]
    alice = issuer.mint_identity_token(policy, portal, "urn:example:portal:alice", None)["token"]
    every_kind = [issuer.request_token(policy, gateway, "orders", "read")["token"],
                  issuer.request_token(policy, gateway, "payouts", "approve")["token"],
                  issuer.request_token(policy, worker, "invoices", "read")["token"],
                  identity, alice, issuer.refresh_identity_token(policy, None, identity, None)["token"]]
    assert [inspect_token(token).root_key_id for token in every_kind] == [kid] * len(every_kind)
    # the key id a database needs: under another kid the key's tokens are unknown_key there
    check = dict(now=time.time(), subject="urn:example:gateway", resource="orders", operation="read")
    assert verify(every_kind[0], [RootKey(kid + 1, keys.public_key)], **check).reason == "unknown_key"
    assert verify(every_kind[0], roots(keys), **check).valid

    # after a rotation: the new key's id on new tokens; the old key verifies at the authority under its own
    rotate_key(keys.path)
    assert keys.refresh() is True
    new_kid = key_id(keys.public_key)
    assert new_kid != kid and keys.signing_key()[1] == new_kid
    token = issuer.request_token(policy, gateway, "orders", "read")["token"]
    assert inspect_token(token).root_key_id == new_kid
    assert sorted(key.kid for key in keys.verification_keys()) == sorted([kid, new_kid])
    assert issuer.verify_token(every_kind[0], "urn:example:gateway", "orders", "read")
    assert issuer.caller_from_identity_token(policy, identity).identity == "urn:example:gateway"
    # another hessra-pg authority's token (it names its key id) signs off when its key is trusted
    other = generate_keypair()
    foreign = mint_authorization(other, "urn:example:gateway", "payouts", "approve",
                                 root_key_id=key_id(str(other.public_key)),
                                 multi_party=[ChainNode("treasury", str(TREASURY.public_key))])
    trusting = Issuer(keys, Settings(signoff_keys={"treasury": TREASURY}, trusted_roots=(str(other.public_key),)))
    assert trusting.sign_token(policy, gateway, foreign, "payouts", "approve")["signed_token"]


def test_a_key_file_that_does_not_load_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "root.pem"
    key_file.write_text(private_key_pem(generate_keypair()))
    key_file.chmod(0o644)
    store = KeyStore(key_file, retired_for=10)
    assert "readable by group or others" in caplog.text
    before = store.public_key
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert store.refresh() is False and store.public_key == before
    assert "not a PKCS#8 PEM private key" in caplog.text and "nope" not in caplog.text
    key_file.unlink()
    assert store.refresh() is False and store.public_key == before


def test_rotate_key_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "root.pem"
    old = generate_keypair()
    key_file.write_text(private_key_pem(old))
    assert main(["authority", "rotate-key", "--key", str(key_file), "--algorithm", "secp256r1"]) == 0
    out, err = capsys.readouterr()
    new_key = out.strip()
    assert new_key.startswith("secp256r1/") and new_key == str(load_private_key(key_file.read_text()).public_key)
    assert "PRIVATE" not in out + err and str(retired_directory(key_file)) in err
    assert main(["authority", "rotate-key", "--key", str(tmp_path / "missing.pem")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"hessra-pg: error: cannot read signing key {tmp_path / 'missing.pem'}: No such file or directory")
    (tmp_path / "bad.pem").write_text(textwrap.dedent("not a key"))
    assert main(["authority", "rotate-key", "--key", str(tmp_path / "bad.pem")]) == 2
    assert "not a PKCS#8 PEM private key" in capsys.readouterr().err
