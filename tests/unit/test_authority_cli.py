"""`hessra-pg authority serve` refuses to start with one-line errors (no
traceback, no key material), says what it is for, and the Python API
(serve_authority) serves in-process to clients that release the GIL
(Python's own http.client here; hessra_py needs the child process of
hessra_pg.authority.sandbox)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest

from hessra_pg.authority import AuthorityConfig, serve_authority
from hessra_pg.cli import main
from hessra_pg.core.keys import generate_keypair, private_key_pem
from hessra_pg.core.verifier import RootKey, verify
from hessra_pg.dev.certs import make_ca

CLIENTS = """\
[[clients]]
identifier = { type = "san_uri", value = "urn:example:billing" }
resources = [{ name = "orders", operations = ["read"] }]
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca(tmp_path / "certs")
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"], server=True)
    client = ca.issue("billing", uris=["urn:example:billing"])
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "resources.toml").write_text('[resources.orders]\noperations = ["read", "write"]\n')
    (policy / "clients.toml").write_text(CLIENTS)
    key = tmp_path / "root.pem"
    key.write_text(private_key_pem(generate_keypair()))
    key.chmod(0o600)
    return {"ca": ca.cert, "cert": server.cert, "key": server.key, "policy": policy, "root": key,
            "client_cert": client.cert, "client_key": client.key}


def serve_args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["authority", "serve", "--policy-dir", str(files["policy"]), "--key", str(files["root"]),
            "--tls-cert", str(files["cert"]), "--tls-key", str(files["key"]), "--client-ca", str(files["ca"]),
            "--port", "0", *extra]


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("hessra-pg: error: ") and "Traceback" not in err
    return err.strip().removeprefix("hessra-pg: error: ")


def test_help_says_what_it_is_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["authority", "serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "For development, tests and small self-hosted setups: it is no replacement for a hardened authority" in text
    assert main(["authority", "--help"]) == 0
    assert "no replacement for a hardened authority" in " ".join(capsys.readouterr().out.split())
    assert main(["--help"]) == 0
    assert "not a hardened authority" in " ".join(capsys.readouterr().out.split())


def test_serve_refuses_to_start(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = serve_args(files)
    bad_policy = [a if a != str(files["policy"]) else str(files["policy"] / "nope") for a in args]
    assert main(bad_policy) == 2
    assert one_error(capsys) == f"{files['policy'] / 'nope'}: not a directory (the policy directory holds " \
                                "resources.toml and clients.toml)"

    (files["policy"] / "clients.toml").write_text(CLIENTS.replace('"read"]', '"reed"]'))
    assert main(args) == 2
    message = one_error(capsys)
    assert message.startswith("1 problem in ") and "has no operation 'reed'" in message
    (files["policy"] / "clients.toml").write_text(CLIENTS)

    bad_key = [a if a != str(files["root"]) else str(files["cert"]) for a in args]
    assert main(bad_key) == 2
    assert one_error(capsys) == f"signing key {files['cert']}: not a PKCS#8 PEM private key (Ed25519 or P-256)"

    bad_tls = [a if a != str(files["key"]) else str(files["root"]) for a in args]
    assert main(bad_tls) == 2
    assert one_error(capsys).startswith(f"cannot load --tls-cert {files['cert']} / --tls-key {files['root']}")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(args[:-2] + ["--port", str(port)]) == 2
        assert one_error(capsys).startswith(f"cannot listen on 127.0.0.1:{port}: ")

    assert main(args + ["--signoff-key", "treasury"]) == 2
    assert one_error(capsys) == "--signoff-key must be COMPONENT=FILE"
    assert main(args + ["--trusted-root", "nonsense"]) == 2
    assert one_error(capsys).startswith("--trusted-root: not an existing key file")
    assert main(args + ["--port", "70000"]) == 2
    assert "port must be 0-65535" in capsys.readouterr().err


def test_serve_authority_in_process(files: dict[str, Path]) -> None:
    config = AuthorityConfig(policy_dir=files["policy"], key_file=files["root"], tls_cert=files["cert"],
                             tls_key=files["key"], client_ca=files["ca"], tls_ca=files["ca"], port=0,
                             reload_interval=0)
    with serve_authority(config) as authority:
        assert authority.host == "127.0.0.1" and authority.port > 0
        assert authority.ca_cert_pem == files["ca"].read_text()
        context = ssl.create_default_context(cafile=str(files["ca"]))
        context.load_cert_chain(files["client_cert"], files["client_key"])
        connection = http.client.HTTPSConnection(authority.host, authority.port, context=context, timeout=10)
        connection.request("GET", "/public_key")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Cache-Control") == "no-store"
        assert json.loads(response.read()) == {"response_msg": "public key", "public_key": authority.public_key_pem,
                                               "root_key_id": authority.key_id}
        # the same connection, kept alive (HTTP/1.1)
        connection.request("POST", "/request_token", body=json.dumps({"resource": "orders", "operation": "read"}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        token = json.loads(response.read())["token"]
        connection.close()
        assert verify(token, [RootKey(authority.key_id, authority.public_key)], now=__import__("time").time(),
                      subject="urn:example:billing", resource="orders", operation="read").valid
        # a reload by hand (reload_interval=0: no watcher)
        (files["policy"] / "clients.toml").write_text(CLIENTS.replace('"read"]', '"read", "write"]'))
        authority.check_for_changes()
        assert authority.policy.clients[0].grants[0].operations == frozenset({"read", "write"})


def _token_request(authority, ca: Path, cert: Path, key: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(cert, key)
    connection = http.client.HTTPSConnection(authority.host, authority.port, context=context, timeout=10)
    try:
        connection.request("POST", "/request_token", body=json.dumps({"resource": "orders", "operation": "read"}))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_client_certificates_are_checked_against_the_policy_cacerts(files: dict[str, Path], tmp_path: Path) -> None:
    """No --client-ca: the policy's [cacerts] is the trust list, and a new
    one applies to the next connection after a reload."""
    other = make_ca(tmp_path / "other")
    other_client = other.issue("billing2", uris=["urn:example:billing"])
    clients = files["policy"] / "clients.toml"
    clients.write_text(f"[cacerts]\ncert_chain = '''{files['ca'].read_text()}'''\n\n" + CLIENTS)
    config = AuthorityConfig(policy_dir=files["policy"], key_file=files["root"], tls_cert=files["cert"],
                             tls_key=files["key"], port=0, reload_interval=0)
    with serve_authority(config) as authority:
        assert _token_request(authority, files["ca"], files["client_cert"], files["client_key"]) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _token_request(authority, files["ca"], other_client.cert, other_client.key)
        clients.write_text(f"[cacerts]\ncert_chain = '''{other.cert.read_text()}'''\n\n" + CLIENTS)
        authority.check_for_changes()
        assert _token_request(authority, files["ca"], other_client.cert, other_client.key) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _token_request(authority, files["ca"], files["client_cert"], files["client_key"])


def test_an_unexpected_error_is_a_500_with_json_and_its_type_in_the_log(
        files: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    config = AuthorityConfig(policy_dir=files["policy"], key_file=files["root"], tls_cert=files["cert"],
                             tls_key=files["key"], client_ca=files["ca"], port=0, reload_interval=0)
    with serve_authority(config) as authority:
        def broken(*args, **kwargs):
            raise RuntimeError("secret-ish detail")

        monkeypatch.setattr(authority.issuer, "verify_token", broken)
        context = ssl.create_default_context(cafile=str(files["ca"]))
        connection = http.client.HTTPSConnection(authority.host, authority.port, context=context, timeout=10)
        connection.request("POST", "/verify_token", body=json.dumps(
            {"token": "t", "subject": "s", "resource": "r", "operation": "o"}))
        response = connection.getresponse()
        assert response.status == 500 and json.loads(response.read()) == {"response_msg": "internal error"}
        connection.close()
    assert "internal error: RuntimeError" in caplog.text and "secret-ish" not in caplog.text


def test_an_authority_that_never_served_closes(files: dict[str, Path]) -> None:
    from hessra_pg.authority import Authority

    authority = Authority(AuthorityConfig(policy_dir=files["policy"], key_file=files["root"],
                                          tls_cert=files["cert"], tls_key=files["key"], port=0))
    port = authority.port
    authority.close()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))          # the port is free again
