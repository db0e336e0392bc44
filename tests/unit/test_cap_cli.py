"""The ``hessra-pg cap`` commands and `token inspect` of capability tokens,
run in-process through ``hessra_pg.cli.main``: real keys, real tokens, exit
codes and output (conventions of tests/unit/test_cli.py)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from hessra_pg.cli import main
from hessra_pg.core.keys import private_key_pem
from tests import cap_vectors as cv
from tests import vectors

REQUEST = ["--resource", "orders", "--operation", "read"]
NOW, EXP = cv.NOW, cv.EXP


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
        """Run, assert success without warnings, return stdout stripped."""
        code, out, err = self(*args)
        assert code == 0 and err == "", (args, out, err)
        return out.strip()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def keys(tmp_path: Path, run: Run) -> dict[str, dict[str, Path | str]]:
    """root (P-256), activator, attester and other (Ed25519), each from `keys generate`."""
    result: dict[str, dict[str, Path | str]] = {}
    for name, algorithm in [("root", "secp256r1"), ("activator", "ed25519"), ("attester", "ed25519"),
                            ("other", "ed25519")]:
        private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
        code, out, _ = run("keys", "generate", "--algorithm", algorithm, "--out", private, "--public-out", public)
        assert code == 0
        result[name] = {"private": private, "public": public, "hex": out.strip()}
    return result


@pytest.fixture
def vector_keys(tmp_path: Path) -> dict[str, Path]:
    """The vectors' test-only private keys as PEM files."""
    files = {}
    for name in ("root", "activator", "attester", "rogue"):
        path = tmp_path / f"vector-{name}.pem"
        path.write_text(private_key_pem(cv.keypair(name)))
        files[name] = path
    return files


def root_args(keys: dict) -> list[str]:
    return ["--root-key", str(keys["root"]["public"])]


def assert_one_line_error(code: int, out: str, err: str, *secrets: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hessra-pg: error: "), err
    assert "Traceback" not in err
    for secret in secrets:
        assert secret not in err and secret[:40] not in err


def inspect_json(run: Run, token: str, *extra: str) -> dict:
    return json.loads(run.ok("token", "inspect", token, *extra, "--json"))


# -- round trips ------------------------------------------------------------------

def test_mint_designate_verify(run: Run, keys: dict) -> None:
    root = root_args(keys)
    token = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST,
                   "--designation", "tenant=acme", "--anchor", "db:main", "--ttl", "3600")
    verify = ["cap", "verify", token, *root, *REQUEST]
    assert run(*verify, "--designation", "tenant=acme", "--anchor", "db:main") == (0, "valid\n", "")
    code, out, _ = run(*verify, "--designation", "tenant=globex", "--anchor", "db:main")
    assert code == 1 and out.startswith("denied: designation_mismatch:tenant")
    code, out, _ = run(*verify, "--designation", "tenant=acme")
    assert code == 1 and out.startswith("denied: anchor_mismatch")
    code, out, _ = run("cap", "verify", token, *root, "--resource", "orders", "--operation", "write",
                       "--designation", "tenant=acme", "--anchor", "db:main")
    assert code == 1 and out.startswith("denied: wrong_resource_or_operation")
    # the subject is recorded for auditing, checked only on request
    assert run(*verify, "--designation", "tenant=acme", "--anchor", "db:main", "--subject", "alice")[0] == 0
    code, out, _ = run(*verify, "--designation", "tenant=acme", "--anchor", "db:main", "--subject", "bob")
    assert code == 1 and out.startswith("denied: subject_mismatch")
    decision = json.loads(run(*verify, "--designation", "tenant=acme", "--anchor", "db:main", "--json")[1])
    assert decision["valid"] is True and decision["reason"] == "ok" and len(decision["revocation_ids"]) == 1

    # any holder narrows it further, without a key
    narrowed = run.ok("cap", "designate", token, "--designation", "user=alice", *root)
    assert run(*verify, "--designation", "tenant=acme", "--anchor", "db:main")[0] == 0  # the original is intact
    code, out, _ = run("cap", "verify", narrowed, *root, *REQUEST, "--designation", "tenant=acme",
                       "--anchor", "db:main")
    assert code == 1 and out.startswith("denied: designation_mismatch:user")
    assert run("cap", "verify", narrowed, *root, *REQUEST, "--designation", "tenant=acme",
               "--designation", "user=alice", "--anchor", "db:main")[0] == 0
    # --require-anchor: the authority block must be bound to this anchor
    assert run(*verify, "--designation", "tenant=acme", "--anchor", "db:main", "--require-anchor")[0] == 0
    plain = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST)
    code, out, _ = run("cap", "verify", plain, *root, *REQUEST, "--anchor", "db:main", "--require-anchor")
    assert code == 1 and out.startswith("denied: anchor_required")
    assert run("cap", "verify", plain, *root, *REQUEST, "--anchor", "db:main")[0] == 0

    info = inspect_json(run, narrowed, *root)
    assert info["kind"] == "capability" and info["verified"] is True
    assert (info["subject"], info["resource"], info["operation"]) == ("alice", "orders", "read")
    assert info["capability"]["anchor"] == "db:main"
    assert [(d["label"], d["value"], d["where"], d["block"]) for d in info["capability"]["designations"]] == [
        ("tenant", "acme", "authority", 0), ("user", "alice", "amendment", 1)]
    assert info["capability"]["latent"] is None and info["capability"]["activated"] is None
    assert len(info["revocation_ids"]) == 2


def test_latent_activate_facet_attest_round_trip(run: Run, keys: dict) -> None:
    root = root_args(keys)
    verify = ["--resource", "orders", "--operation", "read", "--anchor", "db:main", *root]
    latent = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "agent", *REQUEST,
                    "--anchor", "db:main", "--latent", keys["activator"]["public"], "--ttl", "3600")
    code, out, _ = run("cap", "verify", latent, *verify)
    assert code == 1 and out.startswith("denied: not_activated")
    info = inspect_json(run, latent, *root)["capability"]
    assert (info["latent"], info["activated"]) == (keys["activator"]["hex"], False)
    assert "activated:       no (inert until the activator signs an activation)" in run.ok(
        "token", "inspect", latent, *root)

    # activated by another key: does not count (and says so)
    code, out, err = run("cap", "activate", latent, "--activator-key", keys["other"]["private"], *root)
    assert code == 0 and "warning" in err and "not the token's activator" in err
    assert run("cap", "verify", out.strip(), *verify)[1].startswith("denied: not_activated")

    start = int(time.time())
    pending = run.ok("cap", "activate", latent, "--activator-key", keys["activator"]["private"], "--facet", "F-1",
                     "--ttl", "600", "--start", str(start), *root)
    code, out, _ = run("cap", "verify", pending, *verify)
    assert code == 1 and out.startswith("denied: designation_mismatch:facet")
    info = inspect_json(run, pending, *root)
    assert info["expires_at"] == start + 600
    assert (info["capability"]["activated"], info["capability"]["activated_at"]) == (True, start)
    assert info["capability"]["designations"] == [{
        "label": "facet", "value": "F-1", "block": 1, "where": "attestation", "trusting": keys["activator"]["hex"],
        "attested": False}]

    complete = run.ok("cap", "attest", pending, "--attester-key", keys["activator"]["private"], "--facet", "F-1",
                      *root)
    assert run("cap", "verify", complete, *verify) == (0, "valid\n", "")
    code, out, _ = run("cap", "verify", complete, *verify, "--now", str(start + 600))
    assert code == 1 and out.startswith("denied: expired")
    info = inspect_json(run, complete, *root)["capability"]
    assert info["designations"][0]["attested"] is True
    assert [(a["block"], a["key"], a["activates"], a["designations"]) for a in info["attestations"]] == [
        (1, keys["activator"]["hex"], True, []),
        (2, keys["activator"]["hex"], False, [{"label": "facet", "value": "F-1"}])]
    text = run.ok("token", "inspect", complete, *root)
    assert f"latent:          yes, activator {keys['activator']['hex']}" in text
    assert "activated:       yes, block 1" in text
    assert f'facet = "F-1"  (attestation, block 1)  trusting {keys["activator"]["hex"]}: attested' in text
    assert complete not in text

    # a facet completed by another key counts for nothing
    code, out, err = run("cap", "attest", pending, "--attester-key", keys["other"]["private"], "--facet", "F-1",
                         *root)
    assert code == 0 and "warning" in err and "satisfies none of its checks" in err
    assert run("cap", "verify", out.strip(), *verify)[1].startswith("denied: designation_mismatch:facet")
    assert "counts for nothing" in run.ok("token", "inspect", out.strip(), *root)


def test_trusting_designation_and_attestation(run: Run, keys: dict) -> None:
    root = root_args(keys)
    token = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST,
                   "--designation-trusting", f"{keys['attester']['hex']}:tenant=acme",
                   "--designation-trusting", f"{keys['attester']['public']}:user=al=ice")
    info = inspect_json(run, token, *root)["capability"]
    assert [(d["label"], d["value"], d["trusting"], d["attested"]) for d in info["designations"]] == [
        ("tenant", "acme", keys["attester"]["hex"], False), ("user", "al=ice", keys["attester"]["hex"], False)]
    code, out, _ = run("cap", "verify", token, *root, *REQUEST)
    assert code == 1 and out.startswith("denied: designation_mismatch:tenant")

    attested = run.ok("cap", "attest", token, "--attester-key", keys["attester"]["private"],
                      "--designation", "tenant=acme", "--designation", "user=al=ice", *root)
    assert run("cap", "verify", attested, *root, *REQUEST) == (0, "valid\n", "")
    # rule T: a label the verifier supplies must not be one the token wants attested
    code, out, _ = run("cap", "verify", attested, *root, *REQUEST, "--designation", "tenant=acme")
    assert code == 1 and out.startswith("denied: trusting_designation_on_supplied_label:tenant")
    info = inspect_json(run, attested, *root)["capability"]
    assert [d["attested"] for d in info["designations"]] == [True, True]
    assert info["attestations"] == [{
        "block": 1, "key": keys["attester"]["hex"], "activates": False, "activation": None, "expires_at": None,
        "named": True, "designations": [{"label": "tenant", "value": "acme"}, {"label": "user", "value": "al=ice"}]}]
    # without the root key: parsed only, status unknown
    info = inspect_json(run, attested)["capability"]
    assert info["verified"] is False and [d["attested"] for d in info["designations"]] == [None, None]
    assert "unknown (signatures not checked)" in run.ok("token", "inspect", attested)

    # an attestation with its own constraints and window
    start = int(time.time())
    constrained = run.ok("cap", "attest", attested, "--attester-key", keys["attester"]["private"],
                         "--require", "region=eu", "--require-trusting", f"{keys['other']['hex']}:x=y",
                         "--ttl", "60", "--start", str(start), *root)
    info = inspect_json(run, constrained, *root)
    assert info["expires_at"] == start + 60
    assert [(d["label"], d["where"], d["block"], d["trusting"]) for d in info["capability"]["designations"][2:]] == [
        ("region", "attestation", 2, None), ("x", "attestation", 2, keys["other"]["hex"])]


def test_designate_with_ttl_and_trusting(run: Run, keys: dict) -> None:
    root = root_args(keys)
    token = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST, "--ttl", "3600")
    start = int(time.time())
    narrowed = run.ok("cap", "designate", token, "--ttl", "30", "--start", str(start), *root)
    assert inspect_json(run, narrowed, *root)["expires_at"] == start + 30
    assert run("cap", "verify", narrowed, *root, *REQUEST, "--now", str(start + 29))[0] == 0
    assert run("cap", "verify", narrowed, *root, *REQUEST, "--now", str(start + 30))[1].startswith("denied: expired")
    pinned = run.ok("cap", "designate", token, "--designation-trusting", f"{keys['attester']['hex']}:user=alice",
                    *root)
    info = inspect_json(run, pinned, *root)["capability"]
    assert info["designations"] == [{"label": "user", "value": "alice", "block": 1, "where": "amendment",
                                     "trusting": keys["attester"]["hex"], "attested": False}]


def test_token_from_stdin_and_environment_keys(run: Run, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HESSRA_PERSONAL_KEYPAIR", raising=False)
    monkeypatch.setenv("HESSRA_PERSONAL_KEYPAIR_FILE", str(keys["root"]["private"]))
    monkeypatch.setenv("HESSRA_PUBLIC_KEY", str(keys["root"]["hex"]))
    monkeypatch.delenv("HESSRA_PUBLIC_KEY_FILE", raising=False)
    token = run.ok("cap", "mint", "--subject", "alice", *REQUEST, "--designation", "tenant=acme", "--root-key-id", "3")
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    narrowed = run.ok("cap", "designate", "-", "--designation", "user=alice")
    monkeypatch.setattr("sys.stdin", io.StringIO(narrowed))
    assert run("cap", "verify", "-", *REQUEST, "--designation", "tenant=acme", "--designation", "user=alice") == (
        0, "valid\n", "")
    info = inspect_json(run, narrowed)
    assert info["verified"] is True and info["root_key_id"] == 3


# -- the vectors through the CLI -------------------------------------------------------

def test_cli_mints_the_vector_shapes(run: Run, vector_keys: dict[str, Path]) -> None:
    """The CLI writes exactly the blocks of the vectors (same keys, same times)."""
    root = ["--root-key", cv.public("root")]
    vectors = cv.tokens()
    window = ["--ttl", "600", "--start", str(NOW - 60)]

    def blocks(token: str) -> list[tuple[str, str | None]]:
        info = inspect_json(run, token, *root)
        return [(block["source"], block["external_key"]) for block in info["blocks"]]

    def expected(name: str) -> list[tuple[str, str | None]]:
        return [(block["source"], block["external_key"]) for block in vectors[name]["blocks"]]

    mint = ["cap", "mint", "--key", vector_keys["root"], *REQUEST, "--ttl", "3600", "--start", str(EXP - 3600)]
    anchored = run.ok(*mint, "--subject", "alice", "--anchor", "db:main", "--designation", "tenant=acme")
    assert blocks(anchored) == expected("anchored_tenant")
    trusting = run.ok(*mint, "--subject", "alice", "--designation-trusting", f"{cv.public('attester')}:tenant=acme")
    assert blocks(trusting) == expected("trusting_unattested")
    attested = run.ok("cap", "attest", trusting, "--attester-key", vector_keys["attester"],
                      "--designation", "tenant=acme", *root)
    assert blocks(attested) == expected("trusting_attested")
    latent = run.ok(*mint, "--subject", "agent", "--anchor", "db:main", "--latent", cv.public("activator"))
    assert blocks(latent) == expected("latent")
    assert blocks(run.ok("cap", "activate", latent, "--activator-key", vector_keys["activator"], *window, *root)) == (
        expected("latent_activated"))
    pending = run.ok("cap", "activate", latent, "--activator-key", vector_keys["activator"], "--facet", "F-1",
                     *window, *root)
    assert blocks(pending) == expected("latent_facet_pending")
    complete = run.ok("cap", "attest", pending, "--attester-key", vector_keys["activator"], "--facet", "F-1", *root)
    assert blocks(complete) == expected("latent_facet_complete")
    plain = run.ok(*mint, "--subject", "alice")
    narrowed = run.ok("cap", "designate", plain, "--designation", "tenant=acme", *root)
    narrowed = run.ok("cap", "designate", narrowed, "--designation", "user=alice", *root)
    assert blocks(narrowed) == expected("amended_tenant_then_user")
    expiring = run.ok("cap", "designate", plain, "--ttl", "60", "--start", str(NOW - 61), *root)
    assert blocks(expiring) == expected("amended_valid_for")


def test_vector_cases_through_cap_verify(run: Run) -> None:
    """Every verification case of the vectors: exit 0 for db true, 1 with
    its reason for db false, 2 (one line) for an input error."""
    tokens = cv.tokens()
    cases = vectors.capability_expected()["cases"]
    assert len(cases) == 83
    for case in cases:
        token = tokens[case["token"]]["token"]
        args = ["cap", "verify", token, "--root-key", cv.public("root"), "--resource", case["resource"],
                "--operation", case["operation"], "--now", str(case["now"])]
        for label, value in case["designations"]:
            args += ["--designation", f"{label}={value}"]
        if case["anchor"] is not None:
            args += ["--anchor", case["anchor"]]
        if case["subject"] is not None:
            args += ["--subject", case["subject"]]
        code, out, err = run(*args)
        if case["db"] is None:
            assert_one_line_error(code, out, err, token)
            assert repr(case["db_reason"].rsplit(":", 1)[1]) in err, case["id"]  # the label named
        elif case["db"]:
            assert (code, out) == (0, "valid\n"), case["id"]
        else:
            assert code == 1 and out.startswith(f"denied: {case['db_reason']}"), (case["id"], out)
        assert token[:40] not in out + err


def test_token_verify_decides_a_capability_as_the_database_does(run: Run) -> None:
    """`token verify` on a capability token: its right checked as
    authorized() does (no designation, no anchor supplied; the subject only
    when given), with a pointer to `cap verify` when those are what's missing."""
    tokens = cv.tokens()
    common = ["--root-key", cv.public("root"), "--resource", "orders", "--operation", "read", "--now", str(cv.NOW)]
    assert run.ok("token", "verify", tokens["plain"]["token"], "--capability", *common) == "valid"
    assert run.ok("token", "verify", tokens["plain"]["token"], "--subject", "alice", *common) == "valid"
    code, out, err = run("token", "verify", tokens["plain"]["token"], "--subject", "bob", *common)
    assert (code, out.split(" (")[0], err) == (1, "denied: subject_mismatch", "")
    for name, reason in (("anchored", "anchor_mismatch"), ("designated_tenant", "designation_mismatch:tenant")):
        code, out, err = run("token", "verify", tokens[name]["token"], "--capability", *common)
        assert code == 1 and out.startswith(f"denied: {reason}"), out
        assert "hessra-pg cap verify" in err and err.count("\n") == 1, err


def test_inspect_every_vector(run: Run) -> None:
    root = ["--root-key", cv.public("root")]
    for name, vector in cv.tokens().items():
        info = inspect_json(run, vector["token"], *root)
        is_cap = vector["kind"].startswith("cap-")
        assert (info["kind"] == "capability") == is_cap, name
        assert (info["capability"] is not None) == is_cap, name
        assert info["revocation_ids"] == vector["revocation_ids"]
        text = run.ok("token", "inspect", vector["token"], *root)
        assert vector["token"][:40] not in text
        if is_cap:
            assert "anchor:" in text and "designations:" in text and "attestations:" in text
    # the quote vector: one designation, its value shown escaped
    text = run.ok("token", "inspect", cv.tokens()["designated_tenant_quote"]["token"], *root)
    assert 'tenant = "x\\") or designation(\\"tenant\\", \\"victim"  (authority)' in text


# -- errors ---------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(run: Run, keys: dict, tmp_path: Path) -> None:
    root = root_args(keys)
    key = ["--key", str(keys["root"]["private"])]
    token = run.ok("cap", "mint", *key, "--subject", "alice", *REQUEST)
    latent = run.ok("cap", "mint", *key, "--subject", "agent", *REQUEST, "--latent", keys["activator"]["hex"])
    truncated = token[:120]
    attester = keys["attester"]["hex"]
    cases = [
        # bad KEY:LABEL=VALUE and LABEL=VALUE
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", "tenant=acme"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", f"{attester}:tenant"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", f"{attester}:=v"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", "ed25519/abcd:tenant=acme"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", f"{token}:tenant=acme"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation-trusting", f"{tmp_path / 'no.pem'}:t=v"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation", "tenant"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation", "=acme"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--designation", "anchor=db:main"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--latent", "nonsense"],
        ["cap", "mint", *key, "--subject", "a", *REQUEST, "--anchor", ""],
        ["cap", "mint", "--key", str(keys["root"]["public"]), "--subject", "a", *REQUEST],
        ["cap", "designate", token, *root],
        ["cap", "designate", truncated, "--designation", "t=v", *root],
        ["cap", "designate", token, "--designation", "t=v", "--root-key", str(keys["other"]["public"])],
        ["cap", "designate", token, "--designation", "t", *root],
        ["cap", "attest", token, "--attester-key", str(keys["attester"]["private"]), *root],
        ["cap", "attest", token, "--attester-key", str(keys["attester"]["public"]), "--designation", "t=v", *root],
        ["cap", "attest", token, "--attester-key", str(tmp_path / "missing.pem"), "--designation", "t=v", *root],
        ["cap", "attest", token, "--attester-key", str(keys["attester"]["private"]), "--require-trusting", "x",
         *root],
        ["cap", "activate", truncated, "--activator-key", str(keys["activator"]["private"]), *root],
        ["cap", "activate", latent, "--activator-key", str(keys["activator"]["private"]),
         "--root-key", str(keys["other"]["public"])],
        # reserved and repeated labels in verify
        ["cap", "verify", token, *root, *REQUEST, "--designation", "anchor=db:main"],
        ["cap", "verify", token, *root, *REQUEST, "--designation", "facet=F-1"],
        ["cap", "verify", token, *root, *REQUEST, "--designation", "tenant=acme", "--designation", "tenant=globex"],
        ["cap", "verify", token, *root, *REQUEST, "--designation", "tenant=acme", "--designation", "tenant=acme"],
        ["cap", "verify", token, *root, *REQUEST, "--designation", "tenant"],
        ["cap", "verify", token, *root, *REQUEST, "--require-anchor"],
        ["cap", "verify", token, *REQUEST, "--root-key", token],
        ["cap", "verify", token, *REQUEST, "--root-key", "ed25519/abcd"],
    ]
    for args in cases:
        code, out, err = run(*args)
        assert_one_line_error(code, out, err, token)
        assert truncated not in err and latent[:40] not in err, args


def test_reserved_label_messages(run: Run, keys: dict) -> None:
    token = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST)
    err = run("cap", "verify", token, *root_args(keys), *REQUEST, "--designation", "anchor=x")[2]
    assert "'anchor' is reserved" in err and "--anchor" in err
    err = run("cap", "verify", token, *root_args(keys), *REQUEST, "--designation", "facet=x")[2]
    assert "'facet' is reserved" in err
    err = run("cap", "verify", token, *root_args(keys), *REQUEST, "--designation", "t=1", "--designation", "t=2")[2]
    assert "given twice" in err
    err = run("cap", "mint", "--key", keys["root"]["private"], "--subject", "a", *REQUEST,
              "--designation-trusting", "tenant=acme")[2]
    assert "KEY:LABEL=VALUE" in err


def test_mint_warnings(run: Run, keys: dict) -> None:
    key = ["--key", str(keys["root"]["private"])]
    code, out, err = run("cap", "mint", *key, "--subject", "a", *REQUEST, "--designation", "facet=F")
    assert code == 0 and out.strip() and "warning" in err and "never accept" in err
    code, out, err = run("cap", "mint", *key, "--subject", "a", *REQUEST, "--designation", "t=1",
                         "--designation", "t=2")
    assert code == 0 and "warning" in err and "two values" in err
    # activating a token that is not latent, attesting what nobody asked for
    token = out.strip()
    code, out, err = run("cap", "activate", token, "--activator-key", keys["activator"]["private"],
                         *root_args(keys))
    assert code == 0 and "not latent" in err
    # a token that is not a capability
    g3 = run.ok("token", "mint", *key, "--subject", "a", *REQUEST)
    code, out, err = run("cap", "designate", g3, "--designation", "t=v", *root_args(keys))
    assert code == 0 and "not a capability token" in err


def test_bad_tokens_are_denials_in_verify(run: Run, keys: dict) -> None:
    token = run.ok("cap", "mint", "--key", keys["root"]["private"], "--subject", "alice", *REQUEST)
    for bad in (token[:120], "%%%"):
        code, out, err = run("cap", "verify", bad, *root_args(keys), *REQUEST)
        assert code == 1 and out.startswith("denied: bad_token") and err == ""
    code, out, _ = run("cap", "verify", token, "--root-key", str(keys["other"]["public"]), *REQUEST)
    assert code == 1 and out.startswith("denied: bad_signature")


def test_usage_errors_exit_2(run: Run) -> None:
    for args in (["cap"], ["cap", "mint"], ["cap", "verify", "x"], ["cap", "mint", "--subject", "a", *REQUEST,
                                                                     "--ttl", "0"],
                 ["cap", "activate", "x"], ["cap", "attest", "x"], ["cap", "activate", "x", "--activator-key", "k",
                                                                    "--ttl", "-1"]):
        code, out, err = run(*args)
        assert code == 2 and "Traceback" not in err and "usage:" in err


def test_help_texts(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0 and "cap" in out
    actions = ("mint", "designate", "attest", "activate", "verify")
    code, out, _ = run("cap", "--help")
    assert code == 0 and all(action in out for action in actions)
    for action in actions:
        code, out, _ = run("cap", action, "--help")
        assert code == 0 and out.startswith(f"usage: hessra-pg cap {action}"), out
        assert "examples:" in out and "hessra-pg cap " + action in out.split("examples:")[1]
    code, out, _ = run("token", "inspect", "--help")
    assert code == 0 and "capability" in out
