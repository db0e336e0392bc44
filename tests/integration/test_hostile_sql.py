"""Anyone holding a valid token can append first-party blocks: appended
rights grant nothing, and blocks crafted to make Datalog explode are denied
within 50 ms inside the backend (spec §1.2; hessra_pg/shape.py)."""

import time

import biscuit_auth
import pytest

from hessra_pg.mint import mint_authorization
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
