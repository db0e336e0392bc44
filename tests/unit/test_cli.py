"""The ``hessra-pg keys|token|identity`` commands, run in-process through
``hessra_pg.cli.main``: real keys, real tokens, exit codes and output."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import time
from pathlib import Path

import pytest

from hessra_pg.cli import main
from hessra_pg.core.encoding import decode_token, encode_token
from hessra_pg.core.keys import keypair_from, public_key_from
from tests import vectors

SUBJECT, RESOURCE, OPERATION = "alice", "orders", "read"
REQUEST = ["--subject", SUBJECT, "--resource", RESOURCE, "--operation", OPERATION]
CHAIN = ("auth_service", "payment_service", "order_service")


class Run:
    """Call the CLI and capture (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str | os.PathLike[str]) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str | os.PathLike[str]) -> str:
        """Run, assert success, return stdout stripped."""
        code, out, err = self(*args)
        assert code == 0, (args, out, err)
        assert "Traceback" not in err
        return out.strip()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def keys(tmp_path: Path, run: Run) -> dict[str, dict[str, Path | str]]:
    """A P-256 root key and Ed25519 keys for the chain nodes and parties,
    each generated with `keys generate`: {name: {"private", "public", "hex"}}."""
    result: dict[str, dict[str, Path | str]] = {}
    for name, algorithm in [("root", "secp256r1"), *[(n, "ed25519") for n in CHAIN],
                            ("approval", "ed25519"), ("prefix", "ed25519"), ("other", "ed25519")]:
        private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
        hex_key = run.ok("keys", "generate", "--algorithm", algorithm, "--out", private, "--public-out", public)
        result[name] = {"private": private, "public": public, "hex": hex_key}
    return result


def mint(run: Run, keys: dict, *extra: str | os.PathLike[str]) -> str:
    return run.ok("token", "mint", "--key", keys["root"]["private"], *REQUEST, *extra)


def verify(run: Run, keys: dict, token: str, *extra: str | os.PathLike[str],
           request: list[str] = REQUEST) -> tuple[int, str, str]:
    return run("token", "verify", token, "--root-key", keys["root"]["public"], *request, *extra)


def assert_one_line_error(code: int, out: str, err: str, *secrets: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hessra-pg: error: "), err
    assert "Traceback" not in err
    for secret in secrets:
        assert secret not in err and secret[:40] not in err


# -- keys ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,size", [("ed25519", 64), ("secp256r1", 66)])
def test_keys_generate_and_show(run: Run, tmp_path: Path, algorithm: str, size: int) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    code, out, err = run("keys", "generate", "--algorithm", algorithm, "--out", private, "--public-out", public)
    assert code == 0
    hex_key = out.strip()
    assert out.count("\n") == 1 and hex_key.startswith(f"{algorithm}/") and len(hex_key.split("/")[1]) == size
    assert "PRIVATE" not in out + err
    assert str(private) in err and str(public) in err
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert str(keypair_from(private.read_text()).public_key) == hex_key
    assert str(public_key_from(public.read_text())) == hex_key

    # show: a private key file shows only its public key
    code, out, err = run("keys", "show", private)
    assert code == 0 and "PRIVATE" not in out
    assert f"public key: {hex_key}" in out and public.read_text() in out and "only its public key" in out
    shown = json.loads(run.ok("keys", "show", private, "--json"))
    assert shown == {"source": str(private), "kind": "private", "algorithm": algorithm,
                     "public_key": hex_key, "pem": public.read_text()}
    assert json.loads(run.ok("keys", "show", public, "--json"))["kind"] == "public"
    # an inline alg/hex key converts to PEM
    assert json.loads(run.ok("keys", "show", hex_key, "--json"))["pem"] == public.read_text()


def test_keys_generate_refuses_to_overwrite(run: Run, tmp_path: Path) -> None:
    private = tmp_path / "k.pem"
    first = run.ok("keys", "generate", "--out", private)
    before = private.read_text()
    code, out, err = run("keys", "generate", "--out", private)
    assert_one_line_error(code, out, err)
    assert "exists" in err and "--force" in err
    assert private.read_text() == before
    # the public file is checked before anything is written
    other = tmp_path / "new.pem"
    code, out, err = run("keys", "generate", "--out", other, "--public-out", private)
    assert code == 2 and not other.exists()
    # --force replaces it, still mode 0600 even if the old file was wider
    private.chmod(0o644)
    second = run.ok("keys", "generate", "--out", private, "--force")
    assert second != first and private.read_text() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keys_generate_private_key_only_printed_on_request(run: Run) -> None:
    code, out, err = run("keys", "generate")
    assert_one_line_error(code, out, err)
    assert "--out" in err
    code, out, err = run("keys", "generate", "--algorithm", "secp256r1", "--print-private")
    assert code == 0
    assert out.startswith("-----BEGIN PRIVATE KEY-----") and out.rstrip().endswith("-----END PRIVATE KEY-----")
    assert f"public key: {keypair_from(out).public_key}" in err


def test_keys_show_environment(run: Run, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HESSRA_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("HESSRA_PUBLIC_KEY_FILE", raising=False)
    monkeypatch.delenv("HESSRA_PERSONAL_KEYPAIR_FILE", raising=False)
    monkeypatch.delenv("HESSRA_PERSONAL_KEYPAIR", raising=False)
    code, out, err = run("keys", "show")
    assert_one_line_error(code, out, err)
    monkeypatch.setenv("HESSRA_PERSONAL_KEYPAIR", base64.b64encode(keys["root"]["private"].read_bytes()).decode())
    monkeypatch.setenv("HESSRA_PUBLIC_KEY_FILE", str(keys["auth_service"]["public"]))
    shown = json.loads(run.ok("keys", "show", "--json"))
    assert shown["public_key"]["public_key"] == keys["auth_service"]["hex"]
    assert shown["personal_keypair"]["public_key"] == keys["root"]["hex"]
    assert shown["personal_keypair"]["source"] == "HESSRA_PERSONAL_KEYPAIR"
    out = run.ok("keys", "show", "--env", "HESSRA")
    assert keys["root"]["hex"] in out and "PRIVATE" not in out


# -- authorization tokens --------------------------------------------------

def test_mint_verify_valid_and_denied(run: Run, keys: dict) -> None:
    token = mint(run, keys)
    assert verify(run, keys, token) == (0, "valid\n", "")

    code, out, err = verify(run, keys, token, request=["--subject", "bob", "--resource", RESOURCE,
                                                       "--operation", OPERATION])
    assert code == 1 and out.startswith("denied: subject_mismatch (") and err == ""
    code, out, _ = verify(run, keys, token, request=["--subject", SUBJECT, "--resource", RESOURCE,
                                                     "--operation", "write"])
    assert code == 1 and out.startswith("denied: denied (")
    code, out, _ = verify(run, keys, token, "--now", str(int(time.time()) + 301))
    assert code == 1 and out.startswith("denied: expired")
    code, out, _ = run("token", "verify", token, "--root-key", keys["other"]["public"], *REQUEST)
    assert code == 1 and out.startswith("denied: bad_signature")
    assert token not in out

    decision = json.loads(verify(run, keys, token, "--json")[1])
    assert decision["valid"] is True and decision["reason"] == "ok" and decision["kid"] == 0
    code, out, _ = verify(run, keys, token, "--json", request=["--subject", "bob", "--resource", RESOURCE,
                                                              "--operation", OPERATION])
    assert code == 1 and json.loads(out)["reason"] == "subject_mismatch"

    # the root key given inline, as alg/hex or PEM
    assert run("token", "verify", token, "--root-key", keys["root"]["hex"], *REQUEST)[0] == 0
    assert run("token", "verify", token, "--root-key", keys["root"]["public"].read_text(), *REQUEST)[0] == 0


def test_token_from_stdin(run: Run, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    token = mint(run, keys)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"\n  {token}  \n"))
    assert verify(run, keys, "-") == (0, "valid\n", "")
    monkeypatch.setattr("sys.stdin", io.StringIO("   \n"))
    code, out, err = verify(run, keys, "-")
    assert_one_line_error(code, out, err)
    assert "empty" in err


def test_mint_options(run: Run, keys: dict) -> None:
    start = int(time.time()) - 10
    token = mint(run, keys, "--ttl", "60", "--start", str(start), "--domain", "example.com",
                 "--root-key-id", "7", "--standard-base64")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    info = json.loads(run.ok("token", "inspect", token, "--root-key", keys["root"]["public"], "--json"))
    assert info["expires_at"] == start + 60 and info["domain"] == "example.com" and info["root_key_id"] == 7
    # the CLI's one root key stands for the token's root key id
    assert verify(run, keys, token, "--domain", "example.com")[0] == 0
    code, out, _ = verify(run, keys, token)
    assert code == 1 and out.startswith("denied: domain_mismatch")
    code, out, _ = verify(run, keys, token, "--domain", "example.com", "--now", str(start + 60))
    assert code == 1 and out.startswith("denied: expired")


def test_capability(run: Run, keys: dict) -> None:
    token = mint(run, keys)
    assert run("token", "verify", token, "--root-key", keys["root"]["public"], "--capability",
               "--resource", RESOURCE, "--operation", OPERATION)[:2] == (0, "valid\n")
    code, out, _ = run("token", "verify", token, "--root-key", keys["root"]["public"], "--capability",
                       "--resource", "payments", "--operation", OPERATION)
    assert code == 1 and out.startswith("denied: ")


def test_service_chain_attest_and_component(run: Run, keys: dict, tmp_path: Path) -> None:
    nodes = [f"{name}={keys[name]['public']}" for name in CHAIN]
    chain_args = [arg for node in nodes for arg in ("--chain-node", node)]
    token = mint(run, keys, *chain_args)
    chain_file = tmp_path / "chain.json"
    chain_file.write_text(json.dumps([{"component": n, "public_key": keys[n]["hex"]} for n in CHAIN]))

    def result(tok: str, component: str | None, *, as_json_file: bool = False) -> int:
        chain = ["--chain-json", str(chain_file)] if as_json_file else chain_args
        extra = ["--component", component] if component else []
        code, out, _ = verify(run, keys, tok, *chain, *extra)
        assert (code == 0) == (out == "valid\n")
        return code

    # no attestations: only the first node (which needs none) accepts it
    assert [result(token, c) for c in (*CHAIN, None)] == [0, 1, 1, 1]
    code, out, _ = verify(run, keys, token, *chain_args, "--component", "payment_service")
    assert out.startswith("denied: missing_attestation:auth_service")

    attested = run.ok("token", "attest", token, "--node-key", keys["auth_service"]["private"],
                      "--root-key", keys["root"]["public"])
    assert [result(attested, c) for c in (*CHAIN, None)] == [0, 0, 1, 1]
    attested = run.ok("token", "attest", attested, "--node-key", keys["payment_service"]["private"],
                      "--root-key", keys["root"]["public"])
    assert [result(attested, c, as_json_file=True) for c in (*CHAIN, None)] == [0, 0, 0, 1]
    attested = run.ok("token", "attest", attested, "--node-key", keys["order_service"]["private"],
                      "--root-key", keys["root"]["public"], "--service", RESOURCE)
    assert [result(attested, c) for c in (*CHAIN, None)] == [0, 0, 0, 0]

    # an attestation by a key outside the chain does not count (and is warned about)
    code, out, err = run("token", "attest", token, "--node-key", keys["other"]["private"],
                         "--root-key", keys["root"]["public"])
    assert code == 0 and "warning" in err and "not a node" in err
    assert result(out.strip(), "payment_service") == 1
    # an unknown component is a configuration error, not a denial
    code, out, err = verify(run, keys, token, *chain_args, "--component", "nope")
    assert_one_line_error(code, out, err, token)
    assert "nope" in err
    # verified without its chain: valid as Hessra decides, with a warning
    code, out, err = verify(run, keys, token)
    assert (code, out) == (0, "valid\n")
    assert "declares a service chain (auth_service -> payment_service -> order_service)" in err
    assert "none was checked" in err and token not in err
    assert verify(run, keys, attested, *chain_args)[2] == ""  # checked: no warning
    assert "checked only where a verifier passes the chain" in run.ok("token", "inspect", token)


def test_multi_party_sign(run: Run, keys: dict) -> None:
    token = mint(run, keys, "--multi-party", f"approval.example={keys['approval']['hex']}")
    code, out, _ = verify(run, keys, token)
    assert code == 1 and out.startswith("denied: missing_signoff")
    info = json.loads(run.ok("token", "inspect", token, "--root-key", keys["root"]["public"], "--json"))
    assert info["kind"] == "multi_party"
    assert info["multi_party"] == [{"component": "approval.example", "public_key": keys["approval"]["hex"],
                                    "signed": False}]

    signed = run.ok("token", "sign", token, "--party-key", keys["approval"]["private"],
                    "--root-key", keys["root"]["public"])
    assert verify(run, keys, signed) == (0, "valid\n", "")
    info = json.loads(run.ok("token", "inspect", signed, "--root-key", keys["root"]["public"], "--json"))
    assert info["multi_party"][0]["signed"] is True

    # a key the token does not name: no namespace to default to
    code, out, err = run("token", "sign", token, "--party-key", keys["other"]["private"],
                         "--root-key", keys["root"]["public"])
    assert_one_line_error(code, out, err, token)
    # forcing the namespace with the wrong key does not help
    code, out, err = run("token", "sign", token, "--party-key", keys["other"]["private"],
                         "--namespace", "approval.example", "--root-key", keys["root"]["public"])
    assert code == 0 and "warning" in err
    assert verify(run, keys, out.strip())[0] == 1


def test_restrict_prefix(run: Run, keys: dict) -> None:
    token = mint(run, keys, "--prefix-key", keys["prefix"]["public"])
    code, out, _ = verify(run, keys, token, "--prefix", "tenant/1/")
    assert code == 1 and out.startswith("denied: prefix_mismatch")
    restricted = run.ok("token", "restrict", token, "--prefix", "tenant/1/", "--prefix-key",
                        keys["prefix"]["private"], "--root-key", keys["root"]["public"])
    assert verify(run, keys, restricted, "--prefix", "tenant/1/") == (0, "valid\n", "")
    assert verify(run, keys, restricted, "--prefix", "tenant/2/")[0] == 1
    assert verify(run, keys, restricted)[0] == 1
    # signed by another key: the token's prefix check is not satisfied
    wrong = run.ok("token", "restrict", token, "--prefix", "tenant/1/", "--prefix-key",
                   keys["other"]["private"], "--root-key", keys["root"]["public"])
    assert verify(run, keys, wrong, "--prefix", "tenant/1/")[0] == 1
    info = json.loads(run.ok("token", "inspect", restricted, "--json"))
    assert info["prefix"] == "tenant/1/" and info["verified"] is False


def test_inspect_human_and_json(run: Run, keys: dict) -> None:
    token = mint(run, keys, "--domain", "example.com", "--chain-node", f"auth_service={keys['auth_service']['hex']}")
    token = run.ok("token", "attest", token, "--node-key", keys["auth_service"]["private"],
                   "--root-key", keys["root"]["public"])
    info = json.loads(run.ok("token", "inspect", token, "--root-key", keys["root"]["public"], "--json"))
    assert info["kind"] == "service_chain" and info["verified"] is True
    assert (info["subject"], info["resource"], info["operation"]) == (SUBJECT, RESOURCE, OPERATION)
    assert info["service_chain"] == [{"component": "auth_service", "public_key": keys["auth_service"]["hex"],
                                      "attested": True}]
    assert len(info["revocation_ids"]) == 2 and info["expired"] is False
    assert info["blocks"][1]["external_key"] == keys["auth_service"]["hex"]
    assert info["blocks"][1]["source"].strip() == 'service("orders");'
    assert info["expires_at_iso"].endswith("Z")

    text = run.ok("token", "inspect", token, "--root-key", keys["root"]["public"])
    assert "kind:            service_chain" in text
    assert "signatures:      verified" in text
    assert f"expires:         {info['expires_at_iso']} ({info['expires_at']})" in text
    assert "domain:          example.com" in text
    assert f"auth_service  {keys['auth_service']['hex']}  attested" in text
    assert f"block 1 (external key {keys['auth_service']['hex']}):" in text
    assert '    right("alice", "orders", "read");' in text
    for rid in info["revocation_ids"]:
        assert rid in text
    assert token not in text

    # without a root key: parsed only, attestation status unknown
    text = run.ok("token", "inspect", token)
    assert "not checked" in text and "unknown" in text
    # with the wrong root key: an input error
    code, out, err = run("token", "inspect", token, "--root-key", keys["other"]["public"])
    assert_one_line_error(code, out, err, token)


# -- identity tokens -------------------------------------------------------

def test_identity_create_delegate_verify(run: Run, keys: dict) -> None:
    root = ["--root-key", str(keys["root"]["public"])]
    alice = run.ok("identity", "create", "--key", keys["root"]["private"], "--subject", "urn:hessra:alice",
                   "--ttl", "3600")
    laptop = run.ok("identity", "delegate", alice, "--identity", "urn:hessra:alice:laptop", *root)

    assert run("identity", "verify", laptop, "--identity", "urn:hessra:alice:laptop", *root)[:2] == (0, "valid\n")
    assert run("identity", "verify", laptop, "--identity", "urn:hessra:alice:laptop:chrome", *root)[0] == 0
    code, out, _ = run("identity", "verify", laptop, "--identity", "urn:hessra:alice", *root)
    assert code == 1 and out.startswith("denied: identity_mismatch")
    assert run("identity", "verify", alice, "--identity", "urn:hessra:alice", *root)[0] == 0
    assert run("identity", "verify", alice, "--identity", "urn:hessra:alice2", *root)[0] == 1

    # lateral delegation is refused: exit 1, one line on stderr, nothing on stdout
    code, out, err = run("identity", "delegate", laptop, "--identity", "urn:hessra:alice:phone", *root)
    assert code == 1 and out == ""
    assert err.startswith("hessra-pg: refusing to delegate to 'urn:hessra:alice:phone'") and err.count("\n") == 1
    assert laptop not in err

    info = json.loads(run.ok("identity", "inspect", laptop, *root, "--json"))
    assert info["kind"] == "identity" and info["delegatable"] is True
    assert info["identity_chain"] == ["urn:hessra:alice", "urn:hessra:alice:laptop"]
    text = run.ok("identity", "inspect", laptop, *root)
    assert "identities:      urn:hessra:alice -> urn:hessra:alice:laptop" in text

    decision = json.loads(run("identity", "verify", laptop, "--identity", "urn:hessra:alice", *root, "--json")[1])
    assert decision["valid"] is False and decision["reason"] == "identity_mismatch"


def test_identity_non_delegatable_and_domain(run: Run, keys: dict) -> None:
    root = ["--root-key", str(keys["root"]["public"])]
    token = run.ok("identity", "create", "--key", keys["root"]["private"], "--subject", "urn:hessra:bob",
                   "--non-delegatable", "--domain", "example.com")
    code, out, err = run("identity", "delegate", token, "--identity", "urn:hessra:bob:agent",
                         "--domain", "example.com", *root)
    assert code == 1 and out == "" and "refusing to delegate" in err
    assert run("identity", "verify", token, "--identity", "urn:hessra:bob", *root)[0] == 1
    assert run("identity", "verify", token, "--identity", "urn:hessra:bob", "--domain", "example.com", *root)[0] == 0
    assert run("identity", "verify", token, "--identity", "urn:hessra:bob", "--domain", "example.com",
               "--ensure-subject-in-domain", *root)[0] == 0
    assert run("identity", "verify", token, "--identity", "urn:hessra:bob", "--domain", "other.com", *root)[0] == 1
    assert run("identity", "verify", token, "--identity", "urn:hessra:bob:agent", "--domain", "example.com",
               *root)[0] == 1


def test_identity_jit_and_bearer(run: Run, keys: dict) -> None:
    root = ["--root-key", str(keys["root"]["public"])]
    alice = run.ok("identity", "create", "--key", keys["root"]["private"], "--subject", "urn:hessra:alice")
    laptop = run.ok("identity", "delegate", alice, "--identity", "urn:hessra:alice:laptop", *root)
    start = int(time.time())
    jit = run.ok("identity", "jit", laptop, "--seconds", "5", "--start", str(start), *root)
    assert run("identity", "verify", jit, "--identity", "urn:hessra:alice:laptop", "--now", str(start), *root)[0] == 0
    code, out, _ = run("identity", "verify", jit, "--identity", "urn:hessra:alice:laptop",
                       "--now", str(start + 5), *root)
    assert code == 1 and out.startswith("denied: expired")
    assert json.loads(run.ok("identity", "inspect", jit, *root, "--json"))["expires_at"] == start + 5

    assert run("identity", "verify", alice, "--bearer", *root)[:2] == (0, "valid\n")
    code, out, _ = run("identity", "verify", laptop, "--bearer", *root)
    assert code == 1 and out.startswith("denied: identity_mismatch")
    # --identity or --bearer must be chosen
    assert run("identity", "verify", alice, *root)[0] == 2


def test_environment_keys(run: Run, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HESSRA_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("HESSRA_PERSONAL_KEYPAIR_FILE", raising=False)
    monkeypatch.setenv("HESSRA_PERSONAL_KEYPAIR", base64.b64encode(keys["root"]["private"].read_bytes()).decode())
    monkeypatch.setenv("HESSRA_PUBLIC_KEY_FILE", str(keys["root"]["public"]))
    token = run.ok("token", "mint", *REQUEST)
    assert run("token", "verify", token, *REQUEST)[:2] == (0, "valid\n")
    identity = run.ok("identity", "create", "--subject", "urn:hessra:alice")
    delegated = run.ok("identity", "delegate", identity, "--identity", "urn:hessra:alice:laptop")
    assert run("identity", "verify", delegated, "--identity", "urn:hessra:alice:laptop")[0] == 0
    assert json.loads(run.ok("token", "inspect", token, "--json"))["verified"] is True

    # another prefix, and the file variants
    monkeypatch.setenv("APP_PERSONAL_KEYPAIR_FILE", str(keys["other"]["private"]))
    monkeypatch.setenv("APP_PUBLIC_KEY", keys["other"]["hex"])
    other = run.ok("token", "mint", "--key-env", "APP", *REQUEST)
    assert run("token", "verify", other, "--root-key-env", "APP", *REQUEST)[0] == 0
    assert run("token", "verify", other, *REQUEST)[0] == 1  # HESSRA_PUBLIC_KEY_FILE is the root key

    # a broken environment key is an input error naming the variable
    monkeypatch.setenv("HESSRA_PERSONAL_KEYPAIR", "bm90IGEga2V5")
    code, out, err = run("token", "mint", *REQUEST)
    assert_one_line_error(code, out, err)
    assert "HESSRA_PERSONAL_KEYPAIR" in err
    monkeypatch.delenv("HESSRA_PERSONAL_KEYPAIR")
    monkeypatch.delenv("HESSRA_PUBLIC_KEY_FILE")
    code, out, err = run("token", "mint", *REQUEST)
    assert_one_line_error(code, out, err)
    assert "--key" in err and "HESSRA_PERSONAL_KEYPAIR" in err
    code, out, err = run("token", "verify", token, *REQUEST)
    assert_one_line_error(code, out, err, token)
    assert "--root-key" in err


# -- bad input -------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(run: Run, keys: dict, tmp_path: Path) -> None:
    token = mint(run, keys)
    truncated = token[:120]
    root = ["--root-key", str(keys["root"]["public"])]
    bad_json = tmp_path / "chain.json"
    bad_json.write_text('{"order_service": []}')
    cases = [
        ["token", "attest", truncated, "--node-key", str(keys["auth_service"]["private"]), *root],
        ["token", "attest", token, "--node-key", str(keys["auth_service"]["private"]),
         "--root-key", str(keys["other"]["public"])],
        ["token", "attest", token, "--node-key", str(keys["auth_service"]["public"]), *root],
        ["token", "attest", token, "--node-key", str(tmp_path / "missing.pem"), *root],
        ["token", "sign", "not base64 !", "--party-key", str(keys["approval"]["private"]), *root],
        ["token", "restrict", truncated, "--prefix", "p/", "--prefix-key", str(keys["prefix"]["private"]), *root],
        ["token", "inspect", truncated],
        ["token", "inspect", "%%%"],
        ["token", "verify", token, *REQUEST, "--root-key", token],
        ["token", "verify", token, *REQUEST, "--root-key", keys["root"]["private"].read_text()],
        ["token", "verify", token, *REQUEST, "--root-key", "ed25519/abcd"],
        ["token", "verify", token, *REQUEST, *root, "--chain-json", str(bad_json)],
        ["token", "verify", token, *REQUEST, *root, "--chain-json", str(tmp_path / "missing.json")],
        ["token", "verify", token, *REQUEST, *root, "--component", "auth_service"],
        ["token", "verify", token, *root, "--capability", *REQUEST],
        ["token", "verify", token, *root, "--resource", RESOURCE, "--operation", OPERATION],
        ["token", "mint", "--key", str(keys["root"]["public"]), *REQUEST],
        ["token", "mint", "--key", str(keys["root"]["private"]), *REQUEST, "--chain-node", "auth_service"],
        ["token", "mint", "--key", str(keys["root"]["private"]), *REQUEST, "--multi-party", "a=ed25519/00"],
        ["token", "mint", "--key", str(keys["root"]["private"]), *REQUEST, "--prefix-key", "nonsense"],
        ["token", "mint", "--key", str(keys["root"]["private"]), *REQUEST,
         "--chain-node", f"a={keys['auth_service']['hex']}", "--chain-node", f"a={keys['order_service']['hex']}"],
        ["identity", "delegate", truncated, "--identity", "urn:x:y", *root],
        ["identity", "jit", token, "--root-key", str(keys["other"]["public"])],
        ["identity", "inspect", ""],
        ["keys", "show", str(tmp_path / "missing.pem")],
        ["keys", "show", token],
    ]
    for args in cases:
        code, out, err = run(*args)
        assert_one_line_error(code, out, err, token)
        assert truncated not in err, args


def test_bad_tokens_are_denials_in_verify(run: Run, keys: dict) -> None:
    """verify answers "is this token valid?": a malformed token is a denial
    (exit 1, as hessra_authz.verify_token returns false), not an input error."""
    token = mint(run, keys)
    for bad, reason in [(token[:120], "bad_token"), ("%%%", "bad_token"), ("A" * 40000, "too_complex")]:
        code, out, err = verify(run, keys, bad)
        assert code == 1 and out.startswith(f"denied: {reason}") and err == ""
        assert bad[:40] not in out


def test_unexpected_library_errors_stay_one_line(run: Run, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile token that makes a library raise something unexpected (here a
    length-delimited field re-tagged as a varint, a known shape.py defect)
    still gives one line and never the token or a traceback."""
    monkeypatch.delenv("HESSRA_PG_DEBUG", raising=False)
    raw = bytearray(decode_token(mint(run, keys)))
    raw[0] ^= 2
    hostile = encode_token(bytes(raw))
    for args in (["token", "verify", hostile, "--root-key", str(keys["root"]["public"]), *REQUEST],
                 ["token", "inspect", hostile]):
        code, out, err = run(*args)
        assert "Traceback" not in out + err and hostile[:40] not in out + err
        if code == 1:  # once the shape reader refuses it cleanly: a denial
            assert out.startswith("denied: bad_token")
        else:
            assert_one_line_error(code, out, err)


def test_usage_errors_exit_2(run: Run, keys: dict) -> None:
    for args in (["token", "mint"], ["token", "verify"], ["token", "mint", *REQUEST, "--ttl", "0"],
                 ["keys", "generate", "--algorithm", "rsa"], ["identity", "jit", "x", "--seconds", "-1"],
                 ["token", "verify", "x", *REQUEST, "--chain-json", "a", "--chain-node", "b=c"]):
        code, out, err = run(*args)
        assert code == 2 and "Traceback" not in err and "usage:" in err


def test_help_texts(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0 and all(word in out for word in ("keys", "token", "identity"))
    commands = {
        "keys": ("generate", "show"),
        "token": ("mint", "attest", "sign", "restrict", "inspect", "verify"),
        "identity": ("create", "delegate", "jit", "verify", "inspect"),
    }
    for group, actions in commands.items():
        code, out, _ = run(group, "--help")
        assert code == 0 and all(action in out for action in actions)
        for action in actions:
            code, out, _ = run(group, action, "--help")
            assert code == 0 and out.startswith(f"usage: hessra-pg {group} {action}"), out
            assert "examples:" in out


# -- interop vectors -------------------------------------------------------

def test_vectors_verify_through_the_cli(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root_pem = tmp_path / "hessra_key.pem"
    root_pem.write_text(vectors.root_key_pem())
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(vectors.order_service_chain()))
    for vector in vectors.singleton_tokens("hessra-sdk"):
        meta = vector["metadata"]
        args = ["token", "verify", vector["token"], "--root-key", str(root_pem), "--subject", meta["subject"],
                "--resource", meta["resource"], "--operation", "read"]
        if meta["type"] == "service_chain":
            args += ["--chain-json", str(chain)]
        code, out, _ = run(*args)
        assert code == (0 if meta["expected_result"] else 1), (vector["name"], out)
        assert vector["token"] not in out

    # a G1 vector in STANDARD base64, read from stdin, with the root key inline
    vector = vectors.singleton_tokens("hessra-postgres")[1]
    assert "+" in vector["token"] or "/" in vector["token"]
    meta = vector["metadata"]
    monkeypatch.setattr("sys.stdin", io.StringIO(vector["token"] + "\n"))
    code, out, _ = run("token", "verify", "-", "--root-key", vectors.root_key_pem(), "--subject", meta["subject"],
                       "--resource", meta["resource"], "--operation", "read")
    assert (code, out) == (0, "valid\n")
    info = json.loads(run.ok("token", "inspect", vector["token"], "--root-key", vectors.root_key_pem(), "--json"))
    assert info["subject"] == meta["subject"] and info["expires_at"] > 4_000_000_000
