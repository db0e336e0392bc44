"""hessra_authz.stats() and reset_stats() (issue 16 item 2), through SQL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization


def stats(conn: psycopg.Connection) -> dict[str, Any]:
    return conn.execute("SELECT hessra_authz.stats()").fetchone()[0]


def decisions(report: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    return {(row["kind"], row["outcome"], row["reason"]): row["count"] for row in report["decisions"]}


def caches(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {row["cache"]: (row["hits"], row["misses"]) for row in report["caches"]}


@pytest.fixture
def signer(admin: psycopg.Connection):
    pair = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(pair.public_key),))
    return pair


def verify(conn: psycopg.Connection, token: str, resource: str = "orders") -> bool:
    return conn.execute("SELECT hessra_authz.verify_token(%s, 'alice', %s, 'read')", (token, resource)).fetchone()[0]


def test_decisions_times_and_caches_of_this_backend(hessra_db, app_role: str, signer) -> None:
    good = mint_authorization(signer, "alice", "orders", "read")
    unknown = mint_authorization(generate_keypair(), "alice", "orders", "read", root_key_id=99)
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as conn:
        conn.execute("SELECT hessra_authz.reset_stats()")
        empty = stats(conn)
        assert empty["decisions"] == [] and empty["verification_us"]["count"] == 0
        assert empty["verification_us"]["p50"] is None
        assert verify(conn, good) is True
        for _ in range(2):  # the second from the decision cache (explain has no per-row answers)
            assert conn.execute("SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read') ->> 'valid'",
                                (good,)).fetchone()[0] == "true"
        assert verify(conn, good, "payroll") is False
        assert verify(conn, unknown) is False
        assert verify(conn, "garbage") is False
        report = stats(conn)
    assert decisions(report) == {
        ("authorization", "allowed", "ok"): 1,
        ("explain", "allowed", "ok"): 1,
        ("authorization", "denied", "denied"): 1,
        # unknown_key is the administrators' to know: folded as explain() folds it.
        ("authorization", "denied", "bad_signature"): 1,
        ("authorization", "denied", "bad_token"): 1,
    }
    times = report["verification_us"]
    assert times["count"] == 5 and times["sum"] >= times["max"] > 0
    assert 0 < times["p50"] <= times["p90"] <= times["p99"] <= times["max"]
    assert sum(bucket["count"] for bucket in times["buckets"]) == 5
    counted = caches(report)
    assert counted["decisions"][0] >= 1  # the second explain
    assert counted["tokens"][0] >= 1  # 'payroll' reuses the signature check
    assert set(counted) == {"tokens", "decisions", "results", "shared_decisions"}
    assert report["audit"]["level"] is None  # an app role does not learn the levels
    assert good not in str(report)


def test_administrators_see_key_reasons(admin: psycopg.Connection, signer) -> None:
    unknown = mint_authorization(generate_keypair(), "alice", "orders", "read", root_key_id=99)
    admin.execute("SELECT hessra_authz.reset_stats()")
    assert verify(admin, unknown) is False
    report = stats(admin)
    assert decisions(report) == {("authorization", "denied", "unknown_key"): 1}
    assert report["audit"]["level"] == "off"


def test_shared_decision_table_hits_come_from_other_backends(hessra_db, app_role: str, signer) -> None:
    good = mint_authorization(signer, "alice", "orders", "read")
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as first:
        assert verify(first, good) is True
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as second:
        second.execute("SELECT hessra_authz.reset_stats()")
        assert verify(second, good) is True
        report = stats(second)
    assert caches(report)["shared_decisions"] == (1, 0)
    assert decisions(report) == {}  # nothing computed: the first backend's answer


def test_reset_and_counts_are_per_backend(hessra_db, app_role: str, signer) -> None:
    good = mint_authorization(signer, "alice", "orders", "read")
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as one, \
            psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as two:
        one.execute("SELECT hessra_authz.reset_stats()")
        two.execute("SELECT hessra_authz.reset_stats()")
        assert verify(one, "garbage") is False
        assert decisions(stats(one)) == {("authorization", "denied", "bad_token"): 1}
        assert decisions(stats(two)) == {}
        one.execute("SELECT hessra_authz.reset_stats()")
        after = stats(one)
        assert after["decisions"] == [] and after["verification_us"]["count"] == 0
        assert all(hits == misses == 0 for hits, misses in caches(after).values())
        assert verify(two, good) is True

