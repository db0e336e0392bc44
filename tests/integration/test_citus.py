"""Citus mode against a real Citus: a coordinator and one worker on loopback
(hessra_pg.dev.citus), hessra_authz created on the coordinator, its
configuration distributed as reference tables (hessra_pg.admin.citus),
distributed tables under --no-subquery policies, an application role using
the SET LOCAL transport. Every shard lives on the worker, so every row
decision below is the worker's.

Skipped, with the reason, where the local PostgreSQL has no Citus
(docs/scale-out.md says how to install it)."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hessra_pg.dev.citus import citus_available

_available, _why = citus_available()
if not _available:
    pytest.skip(f"Citus is not installed: {_why} (docs/scale-out.md: installing Citus)", allow_module_level=True)

from hessra_pg.admin.citus import distribute_configuration, node_configurations, undistributed_tables  # noqa: E402
from hessra_pg.context import SET_LOCAL  # noqa: E402
from hessra_pg.core.keys import generate_keypair  # noqa: E402
from hessra_pg.core.verifier import ChainNode  # noqa: E402
from hessra_pg.dev.citus import CitusCluster, citus_cluster  # noqa: E402
from hessra_pg.psycopg import hessra_transaction  # noqa: E402
from hessra_pg.rls.policies import PolicySpec, with_safe_search_path  # noqa: E402
from hessra_pg.tokens.capability import designate, mint_capability  # noqa: E402
from hessra_pg.tokens.identity import mint_identity  # noqa: E402
from hessra_pg.tokens.mint import attest_service, mint_authorization  # noqa: E402

ROWS = 1000
APP = "citus_app"
KEEPER = "citus_keeper"  # a hessra_admin member, not a superuser

SCHEMA = f"""
CREATE TABLE public.orders (id int PRIMARY KEY, tenant text);
CREATE TABLE public.orders_plain (id int PRIMARY KEY, tenant text);
CREATE TABLE public.items (id int PRIMARY KEY);
CREATE TABLE public.documents (id int PRIMARY KEY, owner text NOT NULL);
CREATE TABLE public.notes (id int PRIMARY KEY, tenant text);
CREATE TABLE public.payments (id int PRIMARY KEY);
SELECT create_distributed_table(t, 'id') FROM unnest(ARRAY['public.orders', 'public.orders_plain', 'public.items',
    'public.documents', 'public.notes', 'public.payments']) AS t;
INSERT INTO public.orders SELECT g, 't' || (g % 4) FROM generate_series(1, {ROWS}) g;
INSERT INTO public.orders_plain SELECT * FROM public.orders;
INSERT INTO public.items SELECT g FROM generate_series(1, {ROWS}) g;
INSERT INTO public.documents VALUES (1, 'alice'), (2, 'alice:laptop'), (3, 'bob');
INSERT INTO public.notes SELECT g, 't' || (g % 4) FROM generate_series(1, 40) g;
INSERT INTO public.payments SELECT g FROM generate_series(1, 10) g;
CREATE ROLE {APP} LOGIN;
CREATE ROLE {KEEPER} LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};
SELECT hessra_authz.grant_admin('{KEEPER}');
"""

SPECS = [
    PolicySpec("orders", schema="public", resource="orders", no_subquery=True),
    PolicySpec("items", schema="public", mode="row", expression="'items/' || id", no_subquery=True),
    PolicySpec("documents", schema="public", mode="identity", owner_column="owner", no_subquery=True),
    PolicySpec("notes", schema="public", mode="designation", designations={"tenant_id": "tenant"}, no_subquery=True),
    PolicySpec("payments", schema="public", mode="service_chain", resource="payments", chain="payments",
               component="ledger", no_subquery=True),
]


@pytest.fixture(scope="module")
def citus(hessra_postgres: Any) -> Iterator[CitusCluster]:
    # hessra_postgres: the session fixture installs this checkout's extension first.
    started = time.monotonic()
    # pg_stat_statements too: the SET LOCAL transport's trade-off is checked below.
    with citus_cluster(workers=1, settings={"shared_preload_libraries": "citus,pg_stat_statements"}) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for statement in filter(str.strip, SCHEMA.split(";\n")):  # one transaction each (Citus DDL)
                conn.execute(statement)
            # Every mode, accepted by Citus on distributed tables; one statement
            # at a time as psql sends a script (Citus forwards some DDL by its
            # whole query string).
            for statement in with_safe_search_path(s for spec in SPECS for s in spec.create_statements()):
                if not statement.startswith("--"):
                    conn.execute(statement)
        print(f"\n[citus] coordinator + 1 worker ready in {time.monotonic() - started:.1f} s")
        yield cluster


@pytest.fixture(scope="module")
def root(citus: CitusCluster) -> Any:
    """A key registered by the key administrator on the coordinator, for the whole module."""
    pair = generate_keypair()
    with psycopg.connect(citus.dsn(KEEPER), autocommit=True) as conn:
        conn.execute("SELECT hessra_authz.add_key(%s)", (str(pair.public_key),))
    return pair


def keeper(citus: CitusCluster, statement: str, params: tuple[Any, ...] = ()) -> Any:
    """Run an admin function as the key administrator on the coordinator."""
    with psycopg.connect(citus.dsn(KEEPER), autocommit=True) as conn:
        return conn.execute(statement, params).fetchone()[0]


def app(citus: CitusCluster, query: str, token: str | None, subject: str | None = None,
        transport: str = SET_LOCAL) -> list[tuple[Any, ...]]:
    with psycopg.connect(citus.dsn(APP)) as conn:
        with hessra_transaction(conn, token=token, subject=subject, transport=transport):
            return conn.execute(query).fetchall()


def count(citus: CitusCluster, table: str, token: str | None, subject: str | None = None, where: str = "") -> int:
    return app(citus, f"SELECT count(*) FROM public.{table} {where}", token, subject)[0][0]


def in_step(citus: CitusCluster) -> set[str | None]:
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        nodes = node_configurations(conn)
    assert len(nodes) == 2 and all(node.error is None for node in nodes), nodes
    return {node.digest for node in nodes}


def worker_kids(citus: CitusCluster) -> list[int]:
    with psycopg.connect(citus.worker_dsn(), autocommit=True) as conn:
        return conn.execute("SELECT kids FROM hessra_authz.config_state").fetchone()[0]


# -- the configuration on every node ----------------------------------------------------------


def test_configuration_is_replicated_and_every_shard_is_on_the_worker(citus: CitusCluster, root: Any) -> None:
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        assert undistributed_tables(conn) == []
        assert distribute_configuration(conn) == []  # again: nothing to do, still fine
        ports = conn.execute("SELECT DISTINCT nodeport FROM citus_shards WHERE citus_table_type = 'distributed'"
                             ).fetchall()
        kid = conn.execute("SELECT max(kid) FROM hessra_authz.keys").fetchone()[0]
    assert ports == [(citus.workers[0].port,)]
    assert kid in worker_kids(citus)
    assert len(in_step(citus)) == 1


def test_subquery_policies_are_refused_by_citus(citus: CitusCluster) -> None:
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="SubLink"):
            conn.execute("CREATE POLICY sub ON public.orders_plain FOR SELECT "
                         "USING ((SELECT hessra_authz.authorized('orders', 'read')))")


def test_keys_and_revocations_from_the_coordinator_are_enforced_on_the_worker(citus: CitusCluster) -> None:
    pair = generate_keypair()
    token = mint_authorization(pair, "alice", "orders", "read")
    assert count(citus, "orders", token, "alice") == 0  # key not registered yet: denied on the worker
    kid = keeper(citus, "SELECT hessra_authz.add_key(%s)", (str(pair.public_key),))
    assert kid in worker_kids(citus) and len(in_step(citus)) == 1
    assert count(citus, "orders", token, "alice") == ROWS  # multi-shard scan
    assert count(citus, "orders", token, "alice", "WHERE id = 7") == 1  # router query
    assert count(citus, "orders", token, "bob") == 0

    keeper(citus, "SELECT hessra_authz.retire_key(%s)::text", (kid,))
    assert count(citus, "orders", token, "alice") == 0
    assert count(citus, "orders", token, "alice", "WHERE id = 7") == 0

    successor = generate_keypair()
    keeper(citus, "SELECT hessra_authz.add_key(%s)", (str(successor.public_key),))
    fresh = mint_authorization(successor, "alice", "orders", "read")
    assert count(citus, "orders", fresh, "alice") == ROWS
    keeper(citus, "SELECT hessra_authz.revoke_token(%s)", (fresh,))
    assert count(citus, "orders", fresh, "alice") == 0
    assert count(citus, "orders", fresh, "alice", "WHERE id = 7") == 0
    assert len(in_step(citus)) == 1


def test_the_anchor_reaches_the_worker(citus: CitusCluster, root: Any) -> None:
    capability = mint_capability(root, "svc", "notes", "read", anchor="db:citus")
    assert count(citus, "notes", capability) == 0  # no anchor set: the anchored capability is denied
    keeper(citus, "SELECT hessra_authz.set_anchor('db:citus')::text")
    try:
        assert count(citus, "notes", capability) == 40
        t1 = designate(capability, str(root.public_key), [("tenant_id", "t1")])
        assert [row[0] for row in app(citus, "SELECT DISTINCT tenant FROM public.notes", t1)] == ["t1"]
        assert count(citus, "notes", t1, where="WHERE id = 5") == 1 and count(citus, "notes", t1, where="WHERE id = 6") == 0
        keeper(citus, "SELECT hessra_authz.set_anchor('db:other')::text")
        assert count(citus, "notes", capability) == 0
    finally:
        keeper(citus, "SELECT hessra_authz.set_anchor(NULL)::text")


def _worker_audit_lines(citus: CitusCluster, start: int) -> list[dict[str, Any]]:
    """The audit lines the worker's log gained since byte `start` (a RAISE
    LOG marker proves everything before it is written)."""
    marker = f"hessra-citus-marker-{uuid.uuid4().hex}"
    with psycopg.connect(citus.worker_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DO $m$ BEGIN RAISE LOG '%', {}; END $m$").format(sql.Literal(marker)))
    log = citus.workers[0].log_path
    deadline = time.monotonic() + 10
    while True:
        with open(log, "rb") as f:
            f.seek(start)
            chunk = f.read().decode(errors="replace")
        if marker in chunk or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    prefix = "hessra_authz audit: "
    return [json.loads(line.split(prefix, 1)[1]) for line in chunk.splitlines() if prefix in line]


def test_audit_levels_set_on_the_coordinator_reach_the_worker(citus: CitusCluster, root: Any) -> None:
    """audit_settings is a reference table too, and the levels travel in each
    node's config_state: set_audit() on the coordinator audits the per-row
    decisions the worker takes, a role's own level by that role's OID on the
    worker (OIDs differ between nodes)."""
    token = mint_authorization(root, "bob", "orders", "read")
    try:
        keeper(citus, "SELECT hessra_authz.set_audit('denied')::text")
        keeper(citus, "SELECT hessra_authz.set_audit('all', %s)::text", (APP,))
        with psycopg.connect(citus.worker_dsn(), autocommit=True) as conn:
            level, oids, levels, app_oid = conn.execute(
                "SELECT audit_level, audit_role_oids, audit_role_levels, %s::regrole::oid "
                "FROM hessra_authz.config_state", (APP,)).fetchone()
        assert (level, oids, levels) == ("denied", [app_oid], ["all"])
        assert len(in_step(citus)) == 1  # `citus status` compares the roles by name, not by each node's OID
        start = citus.workers[0].log_path.stat().st_size
        assert count(citus, "orders", token, "alice") == 0  # bob's token presented for alice: denied per row
        lines = _worker_audit_lines(citus, start)
        assert lines and {(line["user"], line["outcome"], line["reason"]) for line in lines} == {
            (APP, "denied", "denied")}
        keeper(citus, "SELECT hessra_authz.set_audit('off')::text")
        keeper(citus, "SELECT hessra_authz.set_audit(NULL, %s)::text", (APP,))
        start = citus.workers[0].log_path.stat().st_size
        assert count(citus, "orders", token, "alice") == 0
        assert _worker_audit_lines(citus, start) == []
        assert len(in_step(citus)) == 1
    finally:
        keeper(citus, "SELECT hessra_authz.set_audit('off')::text")
        keeper(citus, "SELECT hessra_authz.set_audit(NULL, %s)::text", (APP,))


def test_row_mode_filters_a_multi_shard_scan_and_a_router_query(citus: CitusCluster, root: Any) -> None:
    read = mint_authorization(root, "alice", "items/5", "read")
    assert app(citus, "SELECT id FROM public.items ORDER BY id", read, "alice") == [(5,)]
    assert app(citus, "SELECT id FROM public.items WHERE id = 5", read, "alice") == [(5,)]
    assert app(citus, "SELECT id FROM public.items WHERE id = 6", read, "alice") == []
    write = mint_authorization(root, "alice", "items/6", "write")
    assert app(citus, "UPDATE public.items SET id = id WHERE id IN (5, 6) RETURNING id", write, "alice") == []
    with psycopg.connect(citus.dsn(APP)) as conn:
        with hessra_transaction(conn, token=write, subject="alice", transport=SET_LOCAL) as tx:
            # No WHERE, no RETURNING: nothing read, so the write policy alone decides, on the worker.
            assert conn.execute("DELETE FROM public.items").rowcount == 1
            raise psycopg.Rollback(tx)


def test_identity_and_service_chain_modes(citus: CitusCluster, root: Any) -> None:
    alice = mint_identity(root, "alice")
    assert app(citus, "SELECT id FROM public.documents ORDER BY id", alice) == [(1,), (2,)]
    keeper(citus, "SELECT hessra_authz.revoke_identity('alice:laptop')::text")
    assert app(citus, "SELECT id FROM public.documents ORDER BY id", alice) == [(1,)]

    nodes = {name: generate_keypair() for name in ("gateway", "ledger")}
    chain = [ChainNode(name, str(pair.public_key)) for name, pair in nodes.items()]
    token = mint_authorization(root, "alice", "payments", "read", service_chain=chain)
    attested = attest_service(token, str(root.public_key), "payments", nodes["gateway"])
    keeper(citus, "SELECT hessra_authz.set_service_chain('payments', %s::jsonb)::text",
           (json.dumps([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    assert count(citus, "payments", attested, "alice") == 10
    assert count(citus, "payments", token, "alice") == 0  # the gateway has not attested


# -- the transport ----------------------------------------------------------------------------


def test_only_set_local_reaches_the_workers_and_nothing_outlives_the_transaction(citus: CitusCluster,
                                                                                  root: Any) -> None:
    token = mint_authorization(root, "alice", "orders", "read")
    assert count(citus, "orders", token, "alice") == ROWS
    assert app(citus, "SELECT count(*) FROM public.orders", token, "alice", transport="set_config") == [(0,)]
    with psycopg.connect(citus.dsn(APP)) as conn:
        for _ in range(2):
            with hessra_transaction(conn, token=token, subject="alice", transport=SET_LOCAL):
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == ROWS
                assert conn.execute("SHOW citus.propagate_set_commands").fetchone()[0] == "local"
            # The same coordinator backend and its cached worker connections, no token.
            with conn.transaction():
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0
                assert conn.execute("SELECT count(*) FROM public.orders WHERE id = 7").fetchone()[0] == 0
                assert conn.execute("SHOW citus.propagate_set_commands").fetchone()[0] == "none"
            with pytest.raises(psycopg.errors.DivisionByZero):
                with hessra_transaction(conn, token=token, subject="alice", transport=SET_LOCAL):
                    assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == ROWS
                    conn.execute("SELECT 1 / 0")
            with conn.transaction():
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0


def test_sqlalchemy_set_local_hook(citus: CitusCluster, root: Any) -> None:
    from sqlalchemy import create_engine, text

    from hessra_pg.sqlalchemy import hessra_context, install_hessra
    from tests.app_helpers import sqlalchemy_url

    token = mint_authorization(root, "alice", "orders", "read")
    engine = install_hessra(create_engine(sqlalchemy_url(citus.dsn(APP)), pool_size=1, max_overflow=0),
                            transport=SET_LOCAL)
    try:
        for _ in range(2):
            with hessra_context(token=token, subject="alice"), engine.begin() as conn:
                assert conn.execute(text("SELECT count(*) FROM public.orders")).scalar() == ROWS
            with engine.begin() as conn:
                assert conn.execute(text("SELECT count(*) FROM public.orders")).scalar() == 0
        with engine.connect() as conn:
            assert conn.connection.info["hessra_pg.citus"] is True
    finally:
        engine.dispose()


# -- admin only, on every node ----------------------------------------------------------------


@pytest.mark.parametrize("node", ["coordinator", "worker"])
def test_configuration_stays_admin_only_on_every_node(citus: CitusCluster, node: str) -> None:
    dsn = citus.dsn(APP) if node == "coordinator" else citus.worker_dsn(user=APP)
    statements = [
        "SELECT hessra_authz.add_key('ed25519/" + "00" * 32 + "')",
        "SELECT hessra_authz.revoke('00')",
        "SELECT hessra_authz.set_anchor('mine')",
        "INSERT INTO hessra_authz.keys (kid, public_key) VALUES (999, 'ed25519/" + "00" * 32 + "')",
        "DELETE FROM hessra_authz.revocations",
        "UPDATE hessra_authz.capability_settings SET anchor = 'mine'",
        "SELECT * FROM hessra_authz.keys",
        "UPDATE hessra_authz.config_state SET kids = '{}'",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    if node == "worker":
        # The worker's copies of the tables (the shards) are closed too.
        with psycopg.connect(citus.dsn(), autocommit=True) as conn:
            shards = [row[0] for row in conn.execute(
                "SELECT pg_catalog.shard_name(logicalrelid, shardid) FROM pg_dist_shard "
                "WHERE logicalrelid = ANY (%s::regclass[])", (["hessra_authz.keys", "hessra_authz.revocations"],))]
        assert len(shards) == 2
        with psycopg.connect(dsn, autocommit=True) as conn:
            for shard in shards:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("DELETE FROM {}").format(sql.SQL(shard)))


# -- measured, not asserted -------------------------------------------------------------------


def test_scan_times_with_and_without_rls(citus: CitusCluster, root: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint_authorization(root, "alice", "orders", "read")

    def scans(table: str) -> tuple[float, float]:
        # A new coordinator backend opens new worker connections: the first
        # scan pays each one's first verification (imports, the key).
        with psycopg.connect(citus.dsn(APP)) as conn:
            times = []
            for _ in range(6):
                with hessra_transaction(conn, token=token, subject="alice", transport=SET_LOCAL):
                    started = time.perf_counter()
                    assert conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()[0] == ROWS
                    times.append(time.perf_counter() - started)
        return times[0], statistics.median(times[1:])

    first, warm = scans("orders")
    first_plain, warm_plain = scans("orders_plain")
    tag = uuid.uuid4().hex[:6]
    with capsys.disabled():
        print(f"\n[citus {tag}] count(*) over {ROWS} rows, 32 shards on 1 worker, no-subquery table policy: "
              f"first scan {first * 1000:.0f} ms vs {first_plain * 1000:.0f} ms without RLS; "
              f"warm {warm * 1000:.1f} ms vs {warm_plain * 1000:.1f} ms ({warm / warm_plain:.1f}x)")


# -- enabling, doctor, the CLI ----------------------------------------------------------------


def _doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, tuple[str, str]]]:
    from tests.integration.test_doctor import doctor

    return doctor(capsys, *argv)


def test_doctor_and_status_on_the_citus_mode(citus: CitusCluster, root: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hessra_pg.cli import main

    code, checks = _doctor(capsys, citus.dsn(APP), "--admin-dsn", citus.dsn())
    assert checks["citus"] == ("ok", "the configuration is the same on all 2 nodes (Citus reference tables)")
    assert checks["citus transport"][0] == "warn" and "track_utility is on" in checks["citus transport"][1]
    assert checks["policies on public.orders"][0] == "ok"
    code, checks = _doctor(capsys, citus.dsn(APP))
    assert checks["citus"][0] == "ok" and "nodes not compared" in checks["citus"][1]
    assert main(["citus", "status", "--dsn", citus.dsn()]) == 0
    out = capsys.readouterr().out
    assert "all reference tables" in out and "ok: every node verifies with the same configuration" in out
    assert main(["citus", "enable", "--dsn", citus.dsn()]) == 0
    assert "already distributed: nothing to do" in capsys.readouterr().out


def test_doctor_names_the_roles_that_can_read_tokens_in_flight(citus: CitusCluster, root: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """pg_stat_activity shows other sessions' SET LOCAL hessra.token = '...'
    to members of pg_read_all_stats (pg_monitor includes it); a monitoring
    role that is only granted database_stats() sees no statement text."""
    monitor, exporter = f"monitor_{uuid.uuid4().hex[:6]}", f"exporter_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {monitor} LOGIN IN ROLE pg_monitor")
        conn.execute(f"CREATE ROLE {exporter} LOGIN")
        conn.execute(f"GRANT EXECUTE ON FUNCTION hessra_authz.database_stats() TO {exporter}")
    try:
        _, checks = _doctor(capsys, citus.dsn(APP))
        status, message = checks["statement readers"]
        assert status == "warn" and monitor in message and exporter not in message
        # What the warning is about, and that the exporter's grant is enough for its numbers.
        token = mint_authorization(root, "alice", "orders", "read")
        seen = "SELECT count(*) FROM pg_stat_activity WHERE strpos(query, %s) > 0"
        with psycopg.connect(citus.dsn(APP)) as app_conn, \
                psycopg.connect(citus.dsn(monitor), autocommit=True) as watcher, \
                psycopg.connect(citus.dsn(exporter), autocommit=True) as limited:
            with hessra_transaction(app_conn, token=token, subject="alice", transport=SET_LOCAL):
                # The SET LOCAL text is the session's latest statement until its next one.
                assert watcher.execute(seen, (token,)).fetchone()[0] == 1
                assert limited.execute(seen, (token,)).fetchone()[0] == 0
                app_conn.execute("SELECT 1")
                assert watcher.execute(seen, (token,)).fetchone()[0] == 0
            assert isinstance(limited.execute("SELECT hessra_authz.database_stats()").fetchone()[0], dict)
    finally:
        with psycopg.connect(citus.dsn(), autocommit=True) as conn:
            conn.execute(f"REVOKE EXECUTE ON FUNCTION hessra_authz.database_stats() FROM {exporter}")
            conn.execute(f"DROP ROLE {monitor}")
            conn.execute(f"DROP ROLE {exporter}")
    _, checks = _doctor(capsys, citus.dsn(APP))
    assert "statement readers" not in checks


def test_without_enable_the_workers_deny_and_enable_fixes_it(hessra_postgres: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hessra_pg.cli import main

    with citus_cluster(workers=1, distribute=False) as cluster:
        pair = generate_keypair()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
            conn.execute("SELECT create_distributed_table('public.orders', 'id')")
            conn.execute("INSERT INTO public.orders SELECT generate_series(1, 100)")
            for statement in with_safe_search_path(PolicySpec("orders", resource="orders",
                                                              no_subquery=True).create_statements()):
                if not statement.startswith("--"):
                    conn.execute(statement)
            conn.execute(f"CREATE ROLE {APP} LOGIN")
            conn.execute(f"GRANT SELECT ON public.orders TO {APP}")
            conn.execute("SELECT hessra_authz.add_key(%s)", (str(pair.public_key),))  # before enabling
        token = mint_authorization(pair, "alice", "orders", "read")
        with psycopg.connect(cluster.dsn(APP)) as conn:
            # The worker has no key: its shards refuse to decide.
            with pytest.raises(psycopg.Error, match="no active key|no key"):
                with hessra_transaction(conn, token=token, subject="alice", transport=SET_LOCAL):
                    conn.execute("SELECT count(*) FROM public.orders").fetchone()
        code, checks = _doctor(capsys, cluster.dsn(APP))
        assert code == 1 and checks["citus"][0] == "fail" and "not replicated to the workers" in checks["citus"][1]
        assert main(["citus", "enable", "--dsn", cluster.dsn()]) == 0
        assert "distributed: hessra_authz.keys, hessra_authz.service_chains" in capsys.readouterr().out
        assert count(cluster, "orders", token, "alice") == 100  # the key registered before reached the worker


def test_pg_stat_statements_keeps_set_local_tokens_unless_track_utility_is_off(
        citus: CitusCluster, root: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented trade-off of the SET LOCAL transport, and its fix."""
    role = f"stats_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON public.orders TO {role}")

    def kept(token: str) -> tuple[bool, bool]:
        """Whether the coordinator's and the worker's pg_stat_statements hold the token."""
        with psycopg.connect(citus.coordinator.dsn(citus.dbname, role)) as conn:
            with hessra_transaction(conn, token=token, subject="alice", transport=SET_LOCAL):
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == ROWS
        found = []
        for dsn in (citus.dsn(), citus.worker_dsn()):
            with psycopg.connect(dsn, autocommit=True) as conn:
                found.append(conn.execute("SELECT count(*) > 0 FROM pg_stat_statements WHERE strpos(query, %s) > 0",
                                          (token,)).fetchone()[0])
        return found[0], found[1]

    assert kept(mint_authorization(root, "alice", "orders", "read")) == (True, True)  # the hazard is real
    with psycopg.connect(citus.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} SET pg_stat_statements.track_utility = off")  # propagated by Citus
    assert kept(mint_authorization(root, "alice", "orders", "read")) == (False, False)
    _, checks = _doctor(capsys, citus.coordinator.dsn(citus.dbname, role))
    assert "citus transport" not in checks
