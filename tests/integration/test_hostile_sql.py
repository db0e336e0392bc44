"""Anyone holding a valid token can append first-party blocks: appended
rights grant nothing, and blocks crafted to make Datalog explode are denied
within 50 ms inside the backend (spec §1.2; hessra_pg/shape.py)."""

import time
import uuid
from pathlib import Path

import biscuit_auth
import psycopg
import pytest

from hessra_pg.tokens.identity import mint_identity
from hessra_pg.tokens.mint import mint_authorization
from tests.hostile_tokens import nested_closure_token
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, %s, %s, %s)"
EXPLAIN = "SELECT hessra_authz.explain(%s, %s, %s, %s)->>'reason'"


def append(token: str, root, source: str) -> str:
    biscuit = biscuit_auth.Biscuit.from_base64(token, root.public_key)
    return biscuit.append(biscuit_auth.BlockBuilder(source)).to_base64()


def test_appended_rights_and_facts_grant_nothing(admin, root):
    token = mint_authorization(root, "alice", "orders", "read")
    forged = append(token, root, 'right("alice", "payroll", "write"); right("mallory", "orders", "read"); '
                                 'service("orders"); namespace("approval"); prefix_added(true);')
    assert scalar(admin, VERIFY, (forged, "alice", "orders", "read")) is True
    assert scalar(admin, VERIFY, (forged, "alice", "payroll", "write")) is False
    assert scalar(admin, VERIFY, (forged, "mallory", "orders", "read")) is False
    assert scalar(admin, "SELECT hessra_authz.verify_capability(%s, 'payroll', 'write')", (forged,)) is False


EXPLOSIVE = {
    # 100 facts joined three ways: ~1 s of CPU in biscuit whatever max_time says.
    "three-way join": " ".join(f"f({i});" for i in range(100)) + " check if f($a), f($b), f($c), $a + $b + $c == -1;",
    "rule over facts": " ".join(f"f({i});" for i in range(100)) + " g($a, $b) <- f($a), f($b);",
    "wide two-way join": " ".join(f"f({i});" for i in range(16)) + " " + " ".join(
        ["check if f($a), f($b), $a * $b == -1;"] * 16),
    "set iteration": "check if [" + ", ".join(str(i) for i in range(300)) + "].any($x -> [" +
                     ", ".join(str(i) for i in range(300)) + "].any($y -> $x * $y == -1));",
    "regex": 'check if resource($r), $r.matches("^(a|aa)+$");',
}


@pytest.mark.parametrize("name", sorted(EXPLOSIVE))
def test_explosive_blocks_are_denied_fast(admin, root, name):
    token = append(mint_authorization(root, "alice", "orders", "read"), root, EXPLOSIVE[name])
    admin.execute("SELECT hessra_authz.verify_token(NULL, 'a', 'b', 'c')")  # warm the backend
    started = time.perf_counter()
    assert scalar(admin, VERIFY, (token, "alice", "orders", "read")) is False
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05, f"{name}: {elapsed * 1000:.1f} ms"
    assert scalar(admin, EXPLAIN, (token, "alice", "orders", "read")) == "too_complex"


# --- hand-built protobuf (security issue 11, hole 7) ------------------------------------------------
# ~2,000 nested closures in a forged appended block once made the shape
# reader recurse into RecursionError: every yes/no function raised an ERROR
# and wrote a Python traceback to the server log. The signature is junk: the
# shape check runs first, so anyone can send this.

HOSTILE_CALLS = {
    "verify_token": ("SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')", False),
    "verify_capability": ("SELECT hessra_authz.verify_capability(%s, 'orders', 'read')", False),
    "verify_identity": ("SELECT hessra_authz.verify_identity(%s, 'alice')", False),
    "verify_bearer": ("SELECT hessra_authz.verify_bearer(%s)", False),
    "token_identity": ("SELECT hessra_authz.token_identity(%s)", None),
    "token_resources": ("SELECT hessra_authz.token_resources(%s, 'alice', 'read')", []),
    "explain": ("SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'", "too_complex"),
}
CONTEXT_CALLS = {
    "authorized": ("SELECT hessra_authz.authorized('orders', 'read')", False),
    "current_identity": ("SELECT hessra_authz.current_identity()", None),
}


@pytest.fixture
def server_log(hessra_postgres: object) -> Path:
    path = getattr(hessra_postgres, "log_path", None)
    if path is None:
        pytest.skip("the server's log file is not reachable (not a local cluster)")
    return Path(path)


def log_since(conn: psycopg.Connection, log: Path, start: int) -> str:
    """The server log from byte `start` up to a marker this connection logs now."""
    marker = f"hessra-hostile-marker-{uuid.uuid4().hex}"  # hex only: safe inside the DO body
    conn.execute(f"DO $do$ BEGIN RAISE LOG '{marker}'; END $do$")
    deadline = time.monotonic() + 10
    while True:
        with log.open("rb") as file:
            file.seek(start)
            chunk = file.read().decode(errors="replace")
        if marker in chunk or time.monotonic() > deadline:
            assert marker in chunk, "the marker never reached the server log"
            return chunk
        time.sleep(0.05)


@pytest.mark.parametrize("base", ["authorization", "identity"])
def test_deeply_nested_closures_are_false_without_error_or_traceback(admin, root, server_log, base):
    signed = (mint_authorization(root, "alice", "orders", "read") if base == "authorization"
              else mint_identity(root, "alice"))
    token = nested_closure_token(signed, depth=2_000)
    start = server_log.stat().st_size
    for name, (query, expected) in HOSTILE_CALLS.items():
        assert scalar(admin, query, (token,)) == expected, name
    with admin.transaction():
        admin.execute("SELECT FROM pg_catalog.set_config('hessra.token', %s, true) AS hessra_token, "
                      "pg_catalog.set_config('hessra.subject', 'alice', true) AS hessra_subject", (token,))
        for name, (query, expected) in CONTEXT_CALLS.items():
            assert scalar(admin, query) == expected, name
    logged = log_since(admin, server_log, start)
    assert "Traceback" not in logged
    assert "ERROR:" not in logged, logged[-2000:]
