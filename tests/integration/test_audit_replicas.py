"""Audit lines where decisions are made elsewhere than in a primary's
ordinary backend (issue 16 item 1): in parallel workers, and on a hot
standby (the level set on the primary, replayed). Both read the real
server logs."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.testing import StandbyPair
from hessra_pg.tokens.mint import mint_authorization
from tests.integration.test_audit import LogWindow

PARALLEL = ("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; "
            "SET max_parallel_workers_per_gather = 2; SET parallel_leader_participation = off")

# A PARALLEL SAFE function of the application's (hessra_authz's own functions
# are PARALLEL RESTRICTED: the planner keeps them in the leader); in a
# per-row policy of a table scanned in parallel, each worker verifies.
SCHEMA = """
CREATE TABLE public.events (id int PRIMARY KEY, payload text NOT NULL);
INSERT INTO public.events SELECT i, repeat('x', 200) FROM generate_series(1, 20000) AS i;
ANALYZE public.events;
CREATE FUNCTION public.may_read_events(token text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT hessra_authz.verify_token(token, 'alice', 'events', 'read') $$;
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.events FORCE ROW LEVEL SECURITY;
CREATE POLICY events_read ON public.events FOR SELECT
    USING (public.may_read_events(current_setting('hessra.token', true)));
"""


def workers_launched(plan: list[str]) -> int:
    launched = [int(m.group(1)) for line in plan for m in [re.search(r"Workers Launched: (\d+)", line)] if m]
    return launched[0] if launched else 0


def test_parallel_workers_write_their_own_lines(hessra_db, admin: psycopg.Connection, app_role: str,
                                                hessra_postgres: object) -> None:
    log = Path(getattr(hessra_postgres, "log_path"))
    signer = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (str(signer.public_key),))
    admin.execute(SCHEMA)
    admin.execute(sql.SQL("GRANT SELECT ON public.events TO {}").format(sql.Identifier(app_role)))
    admin.execute("SELECT hessra_authz.set_audit('all')")
    good = mint_authorization(signer, "alice", "events", "read")
    window = LogWindow(log, hessra_db.dsn)
    with psycopg.connect(hessra_db.dsn_for(app_role)) as conn:
        conn.execute(PARALLEL)
        conn.execute("SELECT set_config('hessra.token', %s, false)", (good,))
        plan = [row[0] for row in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM public.events").fetchall()]
        leader = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        count = conn.execute("SELECT count(*) FROM public.events").fetchone()[0]
        conn.rollback()
    print("\n".join(plan))
    assert any("Parallel Seq Scan" in line for line in plan), plan
    launched = workers_launched(plan)
    assert launched >= 1, plan
    assert count == 20000
    lines = [line for line in window.lines() if line.get("event") == "decision"]
    workers = [line for line in lines if line["parallel_worker"]]
    assert workers, lines
    for line in workers:
        assert line["user"] == app_role and line["outcome"] == "allowed" and line["reason"] == "ok"
        assert line["subject"] == "alice" and line["resource"] == "events" and line["operation"] == "read"
        assert line["kid"] == 7 and line["token"] == "present" and line["standby"] is False
        assert line["function"] in ("verify_token", "_verify_token_slow", "_verify_token_pending"), line
        pid = int(line["decision_id"].split("-")[0])
        assert pid != leader  # the worker's own id
    # One line per statement per worker backend: ids unique, at most one per (worker, statement).
    ids = [line["decision_id"] for line in lines]
    assert len(ids) == len(set(ids))
    per_backend = Counter((line["decision_id"].split("-")[0], line["statement_start_us"]) for line in workers)
    assert max(per_backend.values()) == 1, per_backend
    assert len({line["statement_start_us"] for line in workers}) <= 2  # EXPLAIN ANALYZE's and the query's
    assert good not in window.read()


# --- a hot standby --------------------------------------------------------------------------------

APP = "standby_audit_app"


def test_audit_on_a_hot_standby(hessra_standby_pair: StandbyPair) -> None:
    pair = hessra_standby_pair
    signer = generate_keypair()
    with pair.primary.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(APP)))
        admin.execute("""
            CREATE TABLE public.orders (id int PRIMARY KEY);
            INSERT INTO public.orders SELECT generate_series(1, 10);
            ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
            ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
            CREATE POLICY orders_read ON public.orders FOR SELECT
                USING ((SELECT hessra_authz.authorized('orders', 'read')));
        """)
        admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(APP)))
        admin.execute("SELECT hessra_authz.add_key(%s, 5)", (str(signer.public_key),))
        admin.execute("SELECT hessra_authz.set_audit('denied')")
        admin.execute("SELECT hessra_authz.set_audit('all', %s)", (APP,))
    pair.wait_for_replay()
    good = mint_authorization(signer, "alice", "orders", "read")
    other = mint_authorization(generate_keypair(), "alice", "orders", "read", root_key_id=5)
    standby_log = LogWindow(pair.standby_cluster.log_path, pair.standby.dsn)
    primary_log = LogWindow(pair.primary_cluster.log_path, pair.primary.dsn)
    with pair.standby.connect(APP) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for token, rows in ((good, 10), (other, 0)):
            conn.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', 'alice', true)",
                         (token,))
            assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == rows
            conn.commit()
    with pair.standby.connect(autocommit=True) as superuser:  # the database's level (denied) for this role
        assert superuser.execute("SELECT hessra_authz.verify_token('garbage', 'alice', 'orders', 'read')"
                                 ).fetchone()[0] is False
        assert superuser.execute("SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')",
                                 (good,)).fetchone()[0] is True
        numbers = superuser.execute("SELECT hessra_authz.database_stats()").fetchone()[0]
    lines = [line for line in standby_log.lines() if line.get("event") == "decision"]
    mine = [line for line in lines if line["user"] == APP]
    assert [(line["outcome"], line["reason"]) for line in mine] == [("allowed", "ok"), ("denied", "bad_signature")]
    for line in mine:
        assert line["standby"] is True and line["parallel_worker"] is False
        assert line["function"] == "authorized" and line["subject"] == "alice" and line["resource"] == "orders"
        assert line["decision_id"].startswith(f"{pid}-")
        assert line["revocation_id"] and len(line["fingerprint"]) == 12
    assert mine[0]["kid"] == 5 and mine[1]["kid"] is None
    others = [line for line in lines if line["user"] != APP]
    assert [(line["outcome"], line["reason"]) for line in others] == [("denied", "bad_token")]
    assert others[0]["standby"] is True
    # Decided on the standby: nothing in the primary's log.
    assert not [line for line in primary_log.lines() if line.get("event") == "decision"]
    assert good not in standby_log.read()
    # database_stats() works there too (files, no table).
    decided = {(row["kind"], row["outcome"], row["reason"]): row["count"] for row in numbers["decisions"]}
    assert decided.get(("authorization", "denied", "bad_token")) == 1
    assert numbers["audit"]["lines"] >= 1
