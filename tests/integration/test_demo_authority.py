"""`hessra-pg demo --authority` (make demo-authority) end to end, as a
subprocess on its own cluster and authority: it checks its own counts,
reasons and statuses (exit 1 on a wrong one); here, its exit status, the
lines a reader relies on, that no token is printed, and that every process
it started is gone and its files removed afterwards, also after a failure,
Ctrl-C and SIGTERM. Also without hessra_py and SQLAlchemy (the plain HTTPS
and psycopg fallbacks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("HESSRA_PG_TEST_INSTALL", "1") == "0",
    reason="the demo installs the extension (HESSRA_PG_TEST_INSTALL=0 asks for no install)")

TIMEOUT = 180
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
# A Biscuit token is hundreds of base64url characters; keys are 64 hex digits.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-+/=]{120,}")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=ENV)


def _started(out: str) -> tuple[list[int], Path]:
    """The pids the demo printed (Postgres, the authority) and its work directory."""
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    found = re.search(r"signing key in (\S+)", out)
    assert found, out
    return pids, Path(found.group(1)).parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _assert_stopped(out: str) -> None:
    pids, work = _started(out)
    assert len(pids) == 2, out
    # pg_ctl stop -w returns when postmaster.pid is gone; the process exits a moment later.
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)], f"still running: {pids}"
    assert not work.exists(), f"{work} (certificates, keys) was left behind"


def _assert_no_token(text: str) -> None:
    assert not TOKEN_LIKE.search(text), TOKEN_LIKE.search(text)


def test_authority_demo_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "hessra_pg.dev.demo", "--authority"], capture_output=True,
                          text=True, timeout=TIMEOUT, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert done.stderr == ""
    lines = [
        "[3] keys sync registers the authority's public key (GET /public_key over verified TLS) in the database",
        "[4] The billing service asks the authority for orders/read over mTLS, with hessra_py (Hessra's own client)",
        "[5] The application passes it to Postgres as role demo_app: SQLAlchemy hook: install_hessra(engine);",
        "-- billing's token, subject urn:example:billing: 3 row(s) visible (explain: ok)",
        "-- no token: 0 row(s) visible (explain: no_token)",
        "-- billing's token presented by urn:example:stranger: 0 row(s) visible (explain: subject_mismatch)",
        "-- the stranger asks for orders/read: refused, HTTP 403",
        "-- billing asks for orders/write: refused, HTTP 403",
        "    identity token for urn:example:billing, expires in 3600 s",
        "hessra_authz.verify_identity(<identity token>, 'urn:example:billing') = True",
        "-- token obtained with the identity token: 3 row(s) visible (explain: ok)",
        "-- a new token (new key), before keys sync: 0 row(s) visible (explain: bad_signature)",
        "-- the token from before (old key): 3 row(s) visible (explain: ok)",
        "(now + 24h5m grace)",
        "-- the new token, after keys sync: 3 row(s) visible (explain: ok)",
        "-- the token from before, after keys sync: 3 row(s) visible (explain: ok)",
        "Done: every count was as expected; the authority and the demo server are stopped.",
    ]
    for line in lines:
        assert line in out, line
    assert "hessra_py is not installed" not in out
    # keys sync: one key added, a second run changes nothing, the rotation adds one and retires one
    assert len(re.findall(r"^  added +kid \d+: ed25519/[0-9a-f]{64} from 127\.0\.0\.1:\d+", out, re.M)) == 2
    assert len(re.findall(r"^  nothing changed: the authority's key", out, re.M)) == 1
    assert len(re.findall(r"^  retiring +kid \d+: stops verifying at ", out, re.M)) == 1
    # the DBA sees why the new key's token failed: unknown_key when it names a key id
    assert re.search(r"explain as the DBA \(the application role sees key reasons as bad_signature\): "
                     r"(unknown_key \(the token names root key id \d+, which is not registered\)"
                     r"|bad_signature \(the token names no key id)", out), out
    _assert_no_token(out)
    _assert_stopped(out)


def test_authority_demo_without_hessra_py_and_sqlalchemy() -> None:
    """The fallbacks: plain HTTPS requests, the psycopg hook; said in one line each."""
    done = _run_python(
        "import sys\n"
        "sys.modules['hessra_py'] = None; sys.modules['sqlalchemy'] = None  # import fails as if not installed\n"
        "from hessra_pg.cli import main\n"
        "sys.exit(main(['demo', '--authority']))\n")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in (
        "orders/read over mTLS, with plain HTTPS requests (Python's http.client)",
        "    hessra_py is not installed: plain HTTPS requests instead",
        "as role demo_app: psycopg hook: with hessra_transaction(conn, token=token, subject=identity)",
        "-- billing's token, subject urn:example:billing: 3 row(s) visible (explain: ok)",
        "-- the stranger asks for orders/read: refused, HTTP 403",
        "-- token obtained with the identity token: 3 row(s) visible (explain: ok)",
        "-- a new token (new key), before keys sync: 0 row(s) visible (explain: bad_signature)",
        "-- the new token, after keys sync: 3 row(s) visible (explain: ok)",
        "Done: every count was as expected",
    ):
        assert line in out, line
    _assert_no_token(out)
    _assert_stopped(out)


def test_authority_demo_fails_with_exit_1_and_stops_everything() -> None:
    """A policy that does not grant billing orders/read: the authority refuses
    its request, which the demo reports (DemoError, exit 1) after stopping
    the authority and the cluster."""
    done = _run_python(
        "import sys\n"
        "from hessra_pg.dev import demo_authority\n"
        "demo_authority.CLIENTS_TOML = demo_authority.CLIENTS_TOML.replace('\"read\"', '\"write\"')\n"
        "from hessra_pg.cli import main\n"
        "sys.exit(main(['demo', '--authority']))\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"DEMO FAILED: demo case 'billing asks for orders/read': expected the authority to answer, "
                     r"it refused: HTTP 403: \S", done.stderr), done.stderr
    assert "Traceback" not in done.stderr and "Done:" not in done.stdout
    _assert_no_token(done.stdout + done.stderr)
    _assert_stopped(done.stdout)


@pytest.mark.parametrize(("signum", "group", "marker"), [
    (signal.SIGINT, False, "signing key in"),  # SIGINT to the demo alone, once the authority runs
    (signal.SIGTERM, False, "signing key in"),
    # Ctrl-C in a terminal: SIGINT to the whole process group (the authority and keys sync too), mid-flow
    (signal.SIGINT, True, "[5] "),
], ids=["sigint", "sigterm", "ctrl-c-process-group"])
def test_authority_demo_interrupted_stops_everything(signum: int, group: bool, marker: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", "hessra_pg.dev.demo", "--authority"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=group)
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if marker in line:
                break
        assert seen and marker in seen[-1], "".join(seen)
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        rest, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = "".join(seen) + rest
    assert process.returncode == 130, out + err
    assert "Interrupted: the authority and the demo server are stopped." in err
    assert "Traceback" not in err and "Done:" not in out
    _assert_stopped(out)
