"""hessra_authz.database_stats() and reset_database_stats() (issue 16 item
2): the numbers of every backend of a database, through SQL, with several
backends (live, exited, killed without their exit hook)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.plpython import db_stats
from hessra_pg.tokens.mint import mint_authorization


def stats(conn: psycopg.Connection) -> dict[str, Any]:
    return conn.execute("SELECT hessra_authz.stats()").fetchone()[0]


def database_stats(conn: psycopg.Connection) -> dict[str, Any]:
    return conn.execute("SELECT hessra_authz.database_stats()").fetchone()[0]


def decisions(report: dict[str, Any]) -> Counter:
    return Counter({(row["kind"], row["outcome"], row["reason"]): row["count"] for row in report["decisions"]})


def caches(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {row["cache"]: (row["hits"], row["misses"]) for row in report["caches"]}


@pytest.fixture
def signer(admin: psycopg.Connection):
    pair = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(pair.public_key),))
    return pair


def verify(conn: psycopg.Connection, token: str, resource: str = "orders") -> bool:
    return conn.execute("SELECT hessra_authz.verify_token(%s, 'alice', %s, 'read')", (token, resource)).fetchone()[0]


def publish(conn: psycopg.Connection) -> None:
    """Let this backend's next call write its snapshot (at most once a
    second): wait the interval, then a call that decides nothing new."""
    time.sleep(db_stats.INTERVAL + 0.1)
    assert conn.execute("SELECT hessra_authz.verify_token(NULL, 'alice', 'orders', 'read')").fetchone()[0] is False


def wait_gone(admin: psycopg.Connection, pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
        assert time.monotonic() < deadline, "the backends never exited"
        time.sleep(0.05)


def pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_numbers_of_live_and_exited_backends_add_up(hessra_db, admin: psycopg.Connection, app_role: str,
                                                    signer) -> None:
    good = mint_authorization(signer, "alice", "orders", "read")
    admin.execute("SELECT hessra_authz.reset_database_stats()")
    expected: Counter = Counter()
    # Two backends that exit: their final numbers arrive at exit.
    gone = []
    for round_ in range(2):
        with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as conn:
            gone.append(pid(conn))
            assert verify(conn, good) is True
            publish(conn)  # the first snapshot registers the exit hook
            assert verify(conn, "garbage") is False
            assert verify(conn, good, f"payroll{round_}") is False
            expected += decisions(stats(conn))
    wait_gone(admin, gone)
    # Two live backends: their numbers as of their latest snapshot.
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as one, \
            psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as two:
        for conn in (one, two):
            assert verify(conn, good) is True
            assert verify(conn, good, "invoices") is False
            expected += decisions(stats(conn))  # the snapshot's (publish's own call comes after it)
            publish(conn)
        report = database_stats(admin)
        assert report["backends"] >= 2 and report["exited_backends"] == 2
        got = decisions(report)
        assert got == expected
        assert got[("authorization", "allowed", "ok")] == 1  # the others found it in the shared table
        assert report["verification_us"]["count"] == sum(expected.values())
        assert 0 < report["verification_us"]["p50"] <= report["verification_us"]["p99"]
        shared = report["shared_decisions"]
        assert shared["hits"] >= 3 and 0 < shared["hit_rate"] <= 1
        assert shared["hits"] == caches(report)["shared_decisions"][0]
        assert good not in json.dumps(report)
        # A backend's own reset does not take its numbers out of the database's.
        one.execute("SELECT hessra_authz.reset_stats()")
        assert stats(one)["decisions"] == []
        expected[("authorization", "denied", "no_token")] += 1  # publish()'s own call above, in `one`
        publish(one)
        assert decisions(database_stats(admin)) == expected


def test_reset_starts_every_backend_afresh(hessra_db, admin: psycopg.Connection, app_role: str, signer) -> None:
    good = mint_authorization(signer, "alice", "orders", "read")
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as conn:
        assert verify(conn, "garbage") is False
        publish(conn)
        assert decisions(database_stats(admin))[("authorization", "denied", "bad_token")] == 1
        before = admin.execute("SELECT hessra_authz.reset_database_stats()").fetchone()[0]
        assert decisions(before)[("authorization", "denied", "bad_token")] == 1  # what it was
        after = database_stats(admin)
        assert after["decisions"] == [] and after["verification_us"]["count"] == 0
        assert after["since"] >= before["now"] - 1
        assert verify(conn, good) is True
        publish(conn)
        # publish()'s own first call came after the snapshot the reset started from.
        since_reset = Counter({("authorization", "allowed", "ok"): 1, ("authorization", "denied", "no_token"): 1})
        assert decisions(database_stats(admin)) == since_reset
        gone = pid(conn)
    wait_gone(admin, [gone])
    # Folded at exit: still only what happened since the reset (and the second publish()'s call).
    report = database_stats(admin)
    assert decisions(report) == since_reset + Counter({("authorization", "denied", "no_token"): 1})
    assert report["exited_backends"] == 1


def directory(admin: psycopg.Connection) -> tuple[str, str]:
    oid, xmin = admin.execute("SELECT oid, xmin::text FROM pg_database WHERE datname = current_database()").fetchone()
    return str(oid), xmin


def run_in_server(admin: psycopg.Connection, code: str) -> str:
    """Python in the server (as its OS user), by a superuser."""
    admin.execute("CREATE OR REPLACE FUNCTION pg_temp.server_py(code text) RETURNS text LANGUAGE plpython3u "
                  "AS $$\nscope = {}\nexec(code, scope)\nreturn str(scope.get('result'))\n$$")
    return admin.execute("SELECT pg_temp.server_py(%s)", (code,)).fetchone()[0]


def test_a_backend_gone_without_its_exit_hook_is_folded_once(admin: psycopg.Connection) -> None:
    """A killed backend's snapshot (no exit hook ran) is folded into the
    exited backends' sum by the next reader, once; a dropped database's
    file (another tag) is dropped."""
    admin.execute("SELECT hessra_authz.reset_database_stats()")
    oid, xmin = directory(admin)
    tag = db_stats.database_tag(int(oid), xmin)
    snapshot = {"tag": tag, "pid": 1, "at": 0, "d": {"authorization|denied|expired": 5}, "b": [0] * 10 + [5],
                "s": 3000, "c": {"shared_decisions": [7, 3]}, "a": [4, 1, 0]}
    stale = {**snapshot, "tag": "0" * 16}
    code = f"""
import json, os
from hessra_pg.plpython import db_stats
folder = db_stats.directory({oid}, {xmin!r})
os.makedirs(folder, mode=0o700, exist_ok=True)
for name, value in (("2147483000.1.snap", {snapshot!r}), ("2147483001.1.snap", {stale!r})):
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(db_stats.frame(json.dumps(value)))
result = folder
"""
    folder = run_in_server(admin, code)
    for _ in range(2):  # folded once, not at every read
        report = database_stats(admin)
        assert decisions(report) == Counter({("authorization", "denied", "expired"): 5})
        assert report["shared_decisions"] == {"hits": 7, "misses": 3, "hit_rate": 0.7}
        assert report["audit"] == {"lines": 4, "suppressed": 1, "errors": 0}
        assert report["verification_us"]["p50"] == 1024
        assert report["exited_backends"] == 1
    left = run_in_server(admin, f"import os\nresult = sorted(os.listdir({folder!r}))")
    assert "2147483000.1.snap" not in left and "2147483001.1.snap" not in left
    modes = json.loads(run_in_server(admin, f"""
import json, os, stat
folder = {folder!r}
modes = {{name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in os.listdir(folder)}}
modes["."] = stat.S_IMODE(os.stat(folder).st_mode)
result = json.dumps(modes)
"""))
    assert modes.pop(".") == 0o700 and modes and set(modes.values()) == {0o600}, modes


def test_who_may_read_and_reset(hessra_db, admin: psycopg.Connection, app_role: str, signer) -> None:
    unknown = mint_authorization(generate_keypair(), "alice", "orders", "read", root_key_id=99)
    monitor = f"{app_role}_monitor"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(monitor)))
    try:
        with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as app:
            for query in ("SELECT hessra_authz.database_stats()", "SELECT hessra_authz.reset_database_stats()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(query)
            assert verify(app, unknown) is False
            publish(app)
            with psycopg.connect(hessra_db.dsn_for(monitor), autocommit=True) as watcher:
                seen = decisions(database_stats(watcher))
                # unknown_key is for key administrators: folded as explain() folds it.
                assert seen[("authorization", "denied", "bad_signature")] == 1 and not any(
                    reason == "unknown_key" for _, _, reason in seen)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    watcher.execute("SELECT hessra_authz.reset_database_stats()")
            assert decisions(database_stats(admin))[("authorization", "denied", "unknown_key")] == 1
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(monitor)))


def test_grant_admin_gives_both(hessra_db, admin: psycopg.Connection, app_role: str) -> None:
    admin.execute("SELECT hessra_authz.grant_admin(%s)", (app_role,))
    with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as conn:
        assert conn.execute("SELECT hessra_authz.reset_database_stats() ? 'decisions'").fetchone()[0]
        assert conn.execute("SELECT hessra_authz.database_stats() ? 'decisions'").fetchone()[0]
    admin.execute("SELECT hessra_authz.revoke_admin(%s)", (app_role,))


# --- the postgres_exporter query file ----------------------------------------------------------

EXPORTER_FILE = Path(__file__).resolve().parents[2] / "docs" / "postgres_exporter.yaml"
USAGES = {"LABEL", "COUNTER", "GAUGE"}


def exporter_queries() -> dict[str, dict[str, Any]]:
    """The query file, with PyYAML when .venv has it, else read as the
    subset of YAML it is written in (top-level names; `query: |` blocks;
    `metrics:` lists of `- column:` with `usage:` and `description:`)."""
    text = EXPORTER_FILE.read_text()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        return yaml.safe_load(text)
    queries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    block: list[str] | None = None
    column: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if indent >= 4:
                block.append(line[4:])
                continue
            assert current is not None
            current["query"] = "\n".join(block) + "\n"
            block = None
        if indent == 0:
            assert line.endswith(":"), line
            current = queries.setdefault(line[:-1], {"metrics": []})
        elif indent == 2:
            assert current is not None
            key, _, value = line.strip().partition(":")
            if key == "query":
                assert value.strip() == "|", line
                block = []
            elif key == "master":
                current["master"] = value.strip() == "true"
            else:
                assert key == "metrics" and not value.strip(), line
        elif indent == 4:
            assert current is not None and line.strip().startswith("- ") and line.endswith(":"), line
            column = {}
            current["metrics"].append({line.strip()[2:-1]: column})
        else:
            assert indent == 8 and column is not None, line
            key, _, value = line.strip().partition(": ")
            column[key] = json.loads(value)
    assert block is None
    return queries


def test_the_exporter_file_parses_and_each_query_runs(hessra_db, admin: psycopg.Connection, app_role: str,
                                                      signer) -> None:
    queries = exporter_queries()
    assert set(queries) >= {"hessra_authz_decisions", "hessra_authz_verification", "hessra_authz_caches",
                            "hessra_authz_shared_decisions", "hessra_authz_audit"}
    good = mint_authorization(signer, "alice", "orders", "read")
    monitor = f"{app_role}_exporter"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(monitor)))
    try:
        with psycopg.connect(hessra_db.dsn_for(app_role), autocommit=True) as app:
            assert verify(app, good) is True
            assert verify(app, "garbage") is False
            publish(app)
            with psycopg.connect(hessra_db.dsn_for(monitor), autocommit=True) as exporter:
                results = {}
                for name, spec in queries.items():
                    assert spec.get("master") is True, name
                    columns = {}
                    for metric in spec["metrics"]:
                        ((column, details),) = metric.items()
                        assert details["usage"] in USAGES and details["description"], (name, column)
                        columns[column] = details["usage"]
                    cursor = exporter.execute(spec["query"])
                    rows = cursor.fetchall()
                    assert [d.name for d in cursor.description] == list(columns), name
                    assert rows, name
                    for row in rows:  # what the exporter turns into samples: numbers, and text labels
                        for value, usage in zip(row, columns.values()):
                            assert (isinstance(value, str) if usage == "LABEL"
                                    else value is None or isinstance(value, (int, float))), (name, row)
                    results[name] = rows
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(monitor)))
    decided = {row[1:4]: row[4] for row in results["hessra_authz_decisions"]}
    assert decided[("authorization", "allowed", "ok")] == 1
    assert decided[("authorization", "denied", "bad_token")] == 1
    buckets = results["hessra_authz_verification_buckets"]
    assert len(buckets) == 26 and buckets[-1][1] == "+Inf"
    counts = [row[2] for row in buckets]
    assert counts == sorted(counts) and counts[-1] == results["hessra_authz_verification"][0][1] == 2
    assert {row[1] for row in results["hessra_authz_caches"]} == {"tokens", "decisions", "results",
                                                                 "shared_decisions"}
