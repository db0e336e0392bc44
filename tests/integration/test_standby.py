"""hessra_authz on a streaming hot standby (issue 15 item 1).

One primary and one standby (``pg_basebackup -R``, private clusters on
loopback: the ``hessra_standby_pair`` fixture) serve the whole module.
Configuration is written on the primary; the standby is read as an
application role, by backends that stay connected across the changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.verifier import ChainNode
from hessra_pg.dev.testing import StandbyPair
from hessra_pg.tokens.capability import mint_capability
from hessra_pg.tokens.identity import mint_identity
from hessra_pg.tokens.mint import attest_service, mint_authorization

APP = "standby_app"

SCHEMA = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.orders SELECT i, 'c' || (i % 3) FROM generate_series(1, 30) AS i;
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));

CREATE TABLE public.customer_orders (id int PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.customer_orders SELECT i, 'c' || (i % 3) FROM generate_series(1, 30) AS i;
ALTER TABLE public.customer_orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.customer_orders FORCE ROW LEVEL SECURITY;
CREATE POLICY customer_orders_read ON public.customer_orders FOR SELECT
    USING ('customer_orders/' || customer = ANY ((SELECT hessra_authz.authorized_resources('read'))::text[]));

-- Written on the primary by the tests to move its transaction ids along.
CREATE TABLE public.ticks (n int);
"""


@dataclass
class Env:
    pair: StandbyPair
    root: object
    kid: int
    orders_token: str
    """alice may read orders."""
    c1_token: str
    """bob may read customer_orders/c1."""
    identity_token: str
    """urn:hessra:alice (delegatable)."""
    chain_token: str
    """alice may read svc, attested by the chain's one node (api)."""
    chain_nodes: list[dict[str, str]]
    capability_token: str
    """A capability for invoices/read, anchored to this database, designated to tenant t1."""

    def primary(self) -> psycopg.Connection:
        return self.pair.primary.connect(autocommit=True)

    def standby(self, user: str = APP) -> psycopg.Connection:
        return self.pair.standby.connect(user, autocommit=True)


_next_kid = iter(range(10, 1000))


@pytest.fixture(scope="module")
def env(hessra_standby_pair: StandbyPair) -> Env:
    pair = hessra_standby_pair
    root = generate_keypair()
    with pair.primary.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(APP)))
        admin.execute(SCHEMA.encode())
        for table in ("orders", "customer_orders"):
            admin.execute(sql.SQL("GRANT SELECT ON public.{} TO {}").format(sql.Identifier(table), sql.Identifier(APP)))
        admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(root.public_key),))
        node = generate_keypair()
        chain_nodes = [{"component": "api", "public_key": str(node.public_key)}]
        admin.execute("SELECT hessra_authz.set_service_chain('svc', %s)", (Jsonb(chain_nodes),))
        admin.execute("SELECT hessra_authz.set_anchor('db:standby')")
    pair.wait_for_replay()
    chain_token = attest_service(
        mint_authorization(root, "alice", "svc", "read", service_chain=[ChainNode("api", str(node.public_key))]),
        str(root.public_key), "svc", node)
    return Env(pair, root, 1, mint_authorization(root, "alice", "orders", "read"),
               mint_authorization(root, "bob", "customer_orders/c1", "read"),
               mint_identity(root, "urn:hessra:alice"), chain_token, chain_nodes,
               mint_capability(root, "alice", "invoices", "read", designations=[("tenant", "t1")],
                               anchor="db:standby"))


def verify(conn: psycopg.Connection, token: str, subject: str = "alice", resource: str = "orders") -> bool:
    return conn.execute("SELECT hessra_authz.verify_token(%s, %s, %s, 'read')",
                        (token, subject, resource)).fetchone()[0]


@dataclass
class Delay:
    """From the primary's commit to the standby backend's first answer under the change."""

    replay: float
    first_statement: float

    @property
    def total(self) -> float:
        return self.replay + self.first_statement


def after_replay(env: Env, check: callable) -> tuple[object, Delay]:
    """Wait for replay, then time one statement (``check()``) on an already-connected backend."""
    replay = env.pair.wait_for_replay()
    started = time.monotonic()
    result = check()
    return result, Delay(replay, time.monotonic() - started)


def report(record_property, what: str, delay: Delay) -> None:
    # Also printed: `pytest -s` shows the delays of a run.
    record_property(f"{what}_replay_ms", round(delay.replay * 1000, 2))
    record_property(f"{what}_first_statement_ms", round(delay.first_statement * 1000, 2))
    print(f"{what}: replay {delay.replay * 1000:.1f} ms + first statement {delay.first_statement * 1000:.1f} ms")
    # Loopback, idle machine: far below this; a bound only catches a hang.
    assert delay.total < 10


# --- the pair ---------------------------------------------------------------------------------


def test_standby_streams_and_is_read_only(env: Env) -> None:
    standby = env.pair.standby_cluster
    assert standby.is_in_recovery()
    assert standby.port != env.pair.primary_cluster.port
    with env.standby() as conn:
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE t (i int)")
    with env.primary() as conn:
        conn.execute("INSERT INTO public.ticks VALUES (1)")
    assert env.pair.wait_for_replay() < 10
    with env.standby("postgres") as conn:
        assert conn.execute("SELECT count(*) FROM public.ticks WHERE n = 1").fetchone() == (1,)
        assert conn.execute("SELECT status FROM pg_catalog.pg_stat_wal_receiver").fetchone() == ("streaming",)


# --- RLS ----------------------------------------------------------------------------------------


def test_rls_filters_on_the_standby(env: Env) -> None:
    with env.standby() as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (0,)
        conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                     (env.orders_token,))
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (30,)
        assert conn.execute("SELECT count(*) FROM public.customer_orders").fetchone() == (0,)
        conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'bob', false)",
                     (env.c1_token,))
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (0,)
        assert conn.execute("SELECT array_agg(DISTINCT customer) FROM public.customer_orders").fetchone() == (["c1"],)
        # Another subject with the same token: nothing.
        conn.execute("SELECT set_config('hessra.subject', 'mallory', false)")
        assert conn.execute("SELECT count(*) FROM public.customer_orders").fetchone() == (0,)


# --- freshness: changes on the primary, already-connected standby backends -----------------------


def test_added_key_is_used_at_the_next_statement_after_replay(env: Env, record_property) -> None:
    new_root = generate_keypair()
    kid = next(_next_kid)
    token = mint_authorization(new_root, "alice", "orders", "read")
    with env.standby() as conn:
        assert verify(conn, env.orders_token)  # the configuration is loaded and cached
        assert not verify(conn, token)
        with env.primary() as admin:
            admin.execute("SELECT hessra_authz.add_key(%s, %s)", (str(new_root.public_key), kid))
        allowed, delay = after_replay(env, lambda: verify(conn, token))
        assert allowed is True
        report(record_property, "add_key", delay)


def test_retired_key_fails_at_the_next_statement_after_replay(env: Env, record_property) -> None:
    old_root = generate_keypair()
    kid = next(_next_kid)
    token = mint_authorization(old_root, "alice", "orders", "read")
    with env.primary() as admin:
        admin.execute("SELECT hessra_authz.add_key(%s, %s)", (str(old_root.public_key), kid))
    env.pair.wait_for_replay()
    with env.standby() as conn:
        conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                     (token,))
        assert verify(conn, token)
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (30,)
        with env.primary() as admin:
            admin.execute("SELECT hessra_authz.retire_key(%s)", (kid,))
        rows, delay = after_replay(env, lambda: conn.execute("SELECT count(*) FROM public.orders").fetchone()[0])
        assert rows == 0
        assert not verify(conn, token)
        assert verify(conn, env.orders_token)  # the other key still verifies
        report(record_property, "retire_key", delay)


def test_revoked_token_fails_at_the_next_statement_after_replay(env: Env, record_property) -> None:
    token = mint_authorization(env.root, "alice", "orders", "read")
    with env.standby() as conn:
        conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                     (token,))
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (30,)
        assert verify(conn, token)
        with env.primary() as admin:
            admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        rows, delay = after_replay(env, lambda: conn.execute("SELECT count(*) FROM public.orders").fetchone()[0])
        assert rows == 0
        assert not verify(conn, token)
        assert verify(conn, env.orders_token)
        report(record_property, "revoke", delay)


@contextlib.contextmanager
def open_transaction(env: Env) -> Iterator[psycopg.Connection]:
    """A primary transaction holding a transaction id, rolled back at the end."""
    with env.pair.primary.connect() as conn:
        conn.execute("SELECT pg_catalog.pg_current_xact_id()")
        try:
            yield conn
        finally:
            conn.rollback()


def test_revocation_committed_between_xmin_and_xmax_is_enforced(env: Env) -> None:
    """A standby's pg_current_snapshot() lists no transaction in progress, so
    a commit between xmin and xmax leaves its text unchanged: the verifier
    must not take an unchanged text for an unchanged configuration."""
    token = mint_authorization(env.root, "alice", "orders", "read")
    with env.standby() as conn, open_transaction(env), env.pair.primary.connect() as revoker:
        # Transaction ids: the open one (xmin) < the revoker's < a committed tick (xmax - 1).
        revoker.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        with env.primary() as ticker:
            ticker.execute("INSERT INTO public.ticks VALUES (2)")
        env.pair.wait_for_replay()
        before = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()[0]
        xmin, xmax, in_progress = before.split(":")
        assert int(xmin) < int(xmax) and in_progress == "", before
        assert verify(conn, token)
        assert verify(conn, token)  # twice under the same snapshot text: the fast path, if any
        revoker.commit()
        env.pair.wait_for_replay()
        after = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()[0]
        assert after == before  # the case under test: same text, a commit more
        assert not verify(conn, token)
        assert verify(conn, env.orders_token)


# --- every public function, read-only -------------------------------------------------------------

# A public function: one in schema hessra_authz that the application role may
# execute. Each has a call here; the catalog, not this list, says which exist,
# so a function added to the extension fails this test until it gets one.
# (token attribute of Env or None, hessra.subject, SQL, expected result)
PUBLIC_CALLS: dict[str, tuple[str | None, str | None, str, object]] = {
    "hessra_authz._admin_functions()":
        (None, None, "SELECT 'hessra_authz.add_key(text,integer,timestamp with time zone,timestamp with time zone,"
                     "text)'::regprocedure = ANY (hessra_authz._admin_functions())", True),
    "hessra_authz._current_scope()":
        ("identity_token", None, "SELECT (hessra_authz._current_scope())[2]", "urn:hessra:alice"),
    "hessra_authz._is_admin()": (None, None, "SELECT hessra_authz._is_admin()", False),
    # authorized() and verify_token() inline these (0.5.0): a forged context
    # finds no recorded answer; the whole way answers.
    "hessra_authz._authorized_fast(pg_snapshot,text,text,text,text)":
        ("orders_token", "alice", "SELECT hessra_authz._authorized_fast('100:100:', current_setting('hessra.token'), "
                                  "'alice', 'orders', 'read') IS NULL", True),
    "hessra_authz._authorized_slow(text,text)":
        ("orders_token", "alice", "SELECT hessra_authz._authorized_slow('orders', 'read')", True),
    "hessra_authz._verify_token_fast(pg_snapshot,text,text,text,text,text,text)":
        ("orders_token", None, "SELECT hessra_authz._verify_token_fast('100:100:', current_setting('hessra.token'), "
                               "'alice', 'orders', 'read', NULL, NULL) IS NULL", True),
    "hessra_authz._verify_token_slow()":
        ("orders_token", None, "SELECT coalesce(hessra_authz._verify_token_fast('100:100:', "
                               "current_setting('hessra.token'), 'alice', 'orders', 'read', NULL, NULL), "
                               "hessra_authz._verify_token_slow())", True),
    # The designation helpers inline these (0.5.0): a forged snapshot finds
    # no recorded answer; the whole way answers (and records).
    "hessra_authz._designation_values_fast(pg_snapshot,text,text,text,text,text[],jsonb,text)":
        ("capability_token", None, "SELECT hessra_authz._designation_values_fast('100:100:', "
                                   "current_setting('hessra.token'), NULL, 'invoices', 'read', ARRAY['tenant'], '{}', "
                                   "'tenant') IS NULL", True),
    "hessra_authz._designation_flag_fast(pg_snapshot,text,text,text,text,text[],jsonb,text,text)":
        ("capability_token", None, "SELECT hessra_authz._designation_flag_fast('100:100:', "
                                   "current_setting('hessra.token'), NULL, 'invoices', 'read', ARRAY['tenant'], '{}', "
                                   "'tenant', 'nulls') IS NULL", True),
    "hessra_authz._designation_values_slow(text,text,text[],jsonb,text)":
        ("capability_token", None,
         "SELECT hessra_authz._designation_values_slow('invoices', 'read', ARRAY['tenant'], '{}', 'tenant')", ["t1"]),
    "hessra_authz._designation_flag_slow(text,text,text[],jsonb,text,text)":
        ("capability_token", None, "SELECT hessra_authz._designation_flag_slow('invoices', 'read', ARRAY['tenant'], "
                                   "'{}', 'tenant', 'nulls')", False),
    "hessra_authz.authorized(text,text)":
        ("orders_token", "alice", "SELECT hessra_authz.authorized('orders', 'read')", True),
    "hessra_authz.authorized_resources(text)":
        ("c1_token", "bob", "SELECT hessra_authz.authorized_resources('read')", ["customer_orders/c1"]),
    "hessra_authz.stats()":
        ("orders_token", "alice", "SELECT hessra_authz.authorized('orders', 'read') "
                                  "AND hessra_authz.stats() ? 'decisions'", True),
    "hessra_authz.reset_stats()": (None, None, "SELECT hessra_authz.reset_stats()::text = ''", True),
    "hessra_authz.cache_stats()":
        ("orders_token", "alice", "SELECT hessra_authz.authorized('orders', 'read') "
                                  "AND hessra_authz.cache_stats() ? 'shared_decisions'", True),
    "hessra_authz.capability_rows(text,text,text[],jsonb)":
        ("capability_token", None, "SELECT hessra_authz.capability_rows('invoices', 'read', ARRAY['tenant'])"
                                   " #> '{sets,tenant,values}'", ["t1"]),
    "hessra_authz.current_identity()":
        ("identity_token", None, "SELECT hessra_authz.current_identity()", "urn:hessra:alice"),
    "hessra_authz.current_identity_revoked_below()":
        ("identity_token", None, "SELECT hessra_authz.current_identity_revoked_below()", []),
    "hessra_authz.current_identity_scope()":
        ("identity_token", None, "SELECT hessra_authz.current_identity_scope() ->> 'identity'", "urn:hessra:alice"),
    "hessra_authz.current_identity_subtree_end()":
        ("identity_token", None, "SELECT hessra_authz.current_identity_subtree_end()", "urn:hessra:alice;"),
    "hessra_authz.current_identity_subtree_start()":
        ("identity_token", None, "SELECT hessra_authz.current_identity_subtree_start()", "urn:hessra:alice:"),
    "hessra_authz.current_subject()": ("orders_token", "alice", "SELECT hessra_authz.current_subject()", "alice"),
    "hessra_authz.current_token()":
        ("orders_token", None, "SELECT hessra_authz.current_token() = current_setting('hessra.token')", True),
    "hessra_authz.designation_fallback(text,text,text[],jsonb)":
        ("capability_token", None, "SELECT hessra_authz.designation_fallback('invoices', 'read', ARRAY['tenant'])",
         False),
    "hessra_authz.designation_floor(text,text,text[],text,jsonb)":
        ("capability_token", None,
         "SELECT hessra_authz.designation_floor('invoices', 'read', ARRAY['tenant'], 'tenant') IS NULL", True),
    "hessra_authz.designation_nulls(text,text,text[],text,jsonb)":
        ("capability_token", None,
         "SELECT hessra_authz.designation_nulls('invoices', 'read', ARRAY['tenant'], 'tenant')", False),
    "hessra_authz.designation_row(text,text,jsonb,jsonb)":
        ("capability_token", None, "SELECT hessra_authz.designation_row('invoices', 'read', '{\"tenant\": \"t1\"}') "
                                   "AND NOT hessra_authz.designation_row('invoices', 'read', '{\"tenant\": \"t2\"}')",
         True),
    "hessra_authz.designation_values(text,text,text[],text,jsonb)":
        ("capability_token", None,
         "SELECT hessra_authz.designation_values('invoices', 'read', ARRAY['tenant'], 'tenant')", ["t1"]),
    "hessra_authz.explain(text,text,text,text,text,text)":
        ("orders_token", None, "SELECT hessra_authz.explain(current_setting('hessra.token'), 'alice', 'orders', "
                               "'read') ->> 'reason'", "ok"),
    "hessra_authz.explain_capability(text,text,text,jsonb,text)":
        ("capability_token", None, "SELECT hessra_authz.explain_capability(current_setting('hessra.token'), "
                                   "'invoices', 'read', '{\"tenant\": \"t2\"}') ->> 'reason'",
         "designation_mismatch:tenant"),
    "hessra_authz.token_identity(text,text)":
        ("identity_token", None, "SELECT hessra_authz.token_identity(current_setting('hessra.token'))",
         "urn:hessra:alice"),
    "hessra_authz.token_resources(text,text,text)":
        ("c1_token", None, "SELECT hessra_authz.token_resources(current_setting('hessra.token'), 'bob', 'read')",
         ["customer_orders/c1"]),
    "hessra_authz.verify_bearer(text,text)":
        ("identity_token", None, "SELECT hessra_authz.verify_bearer(current_setting('hessra.token'))", True),
    "hessra_authz.verify_capability(text,text,text)":
        ("orders_token", None, "SELECT hessra_authz.verify_capability(current_setting('hessra.token'), 'orders', "
                               "'read')", True),
    "hessra_authz.verify_capability(text,text,text,jsonb,text)":
        ("capability_token", None, "SELECT hessra_authz.verify_capability(current_setting('hessra.token'), "
                                   "'invoices', 'read', '{\"tenant\": \"t1\"}')", True),
    "hessra_authz.verify_identity(text,text,text,boolean)":
        ("identity_token", None, "SELECT hessra_authz.verify_identity(current_setting('hessra.token'), "
                                 "'urn:hessra:alice:laptop') AND NOT hessra_authz.verify_identity("
                                 "current_setting('hessra.token'), 'urn:hessra:bob')", True),
    "hessra_authz.verify_service_chain(text,text,text,text,jsonb,text)":
        ("chain_token", None, "SELECT hessra_authz.verify_service_chain(current_setting('hessra.token'), 'alice', "
                              "'svc', 'read', %(nodes)s::jsonb)", True),
    "hessra_authz.verify_service_chain(text,text,text,text,text,text)":
        ("chain_token", None, "SELECT hessra_authz.verify_service_chain(current_setting('hessra.token'), 'alice', "
                              "'svc', 'read', 'svc')", True),
    "hessra_authz.verify_token(text,text,text,text,text,text)":
        ("orders_token", None, "SELECT hessra_authz.verify_token(current_setting('hessra.token'), 'alice', "
                               "'orders', 'read') AND NOT hessra_authz.verify_token(current_setting('hessra.token'), "
                               "'mallory', 'orders', 'read')", True),
}


def functions(conn: psycopg.Connection, *, executable_by: str, public: bool) -> set[str]:
    """The functions of schema hessra_authz the role may (public) or may not execute."""
    return {row[0] for row in conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p "
        "WHERE p.pronamespace = 'hessra_authz'::regnamespace "
        "AND pg_catalog.has_function_privilege(%s, p.oid, 'EXECUTE') = %s", (executable_by, public))}


def test_every_public_function_works_on_the_standby(env: Env) -> None:
    with env.standby() as conn:
        public = functions(conn, executable_by=APP, public=True)
        missing = public - PUBLIC_CALLS.keys()
        assert not missing, f"public functions with no standby call in {__name__}: {sorted(missing)}"
        assert not PUBLIC_CALLS.keys() - public, "calls of functions that are gone or not public"
        conn.autocommit = False
        conn.read_only = True  # BEGIN READ ONLY, as a read-only pool would (a standby forces it anyway)
        for name, (token, subject, query, expected) in sorted(PUBLIC_CALLS.items()):
            with conn.transaction():
                conn.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', %s, true)",
                             (getattr(env, token) if token else "", subject or ""))
                assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
                got = conn.execute(query, {"nodes": Jsonb(env.chain_nodes)}).fetchone()[0]
                assert got == expected, name


# Admin functions (not executable by the application role), with arguments
# that would succeed on the primary.
ADMIN_CALLS: dict[str, str] = {
    "hessra_authz.add_key(text,integer,timestamp with time zone,timestamp with time zone,text)":
        "SELECT hessra_authz.add_key(%(key)s, 900)",
    "hessra_authz.retire_key(integer,timestamp with time zone)": "SELECT hessra_authz.retire_key(1)",
    "hessra_authz.revoke(text,text)": "SELECT hessra_authz.revoke(repeat('ab', 16))",
    "hessra_authz.revoke_token(text,text)": "SELECT hessra_authz.revoke_token(%(token)s)",
    "hessra_authz.revoke_identity(text,text)": "SELECT hessra_authz.revoke_identity('urn:hessra:alice')",
    "hessra_authz.set_service_chain(text,jsonb)": "SELECT hessra_authz.set_service_chain('svc2', %(nodes)s::jsonb)",
    "hessra_authz.drop_service_chain(text)": "SELECT hessra_authz.drop_service_chain('svc')",
    "hessra_authz.set_anchor(text)": "SELECT hessra_authz.set_anchor('db:other')",
    "hessra_authz.set_capability_options(boolean,text)": "SELECT hessra_authz.set_capability_options(true, 'deny')",
    "hessra_authz.set_audit(text,name)": "SELECT hessra_authz.set_audit('all')",
    "hessra_authz.grant_admin(name)": "SELECT hessra_authz.grant_admin(%(role)s)",
    "hessra_authz.revoke_admin(name)": "SELECT hessra_authz.revoke_admin(%(role)s)",
}


# Not for the application role, but reading only: they work on the standby.
MONITOR_CALLS: dict[str, str] = {
    "hessra_authz.database_stats()": "SELECT hessra_authz.database_stats() ? 'decisions'",
    "hessra_authz.reset_database_stats()": "SELECT hessra_authz.reset_database_stats() ? 'decisions'",
}


def test_monitoring_functions_work_on_the_standby(env: Env) -> None:
    with env.standby("postgres") as conn:
        for name, query in sorted(MONITOR_CALLS.items()):
            assert conn.execute(query).fetchone()[0] is True, name


def test_admin_functions_fail_with_a_read_only_error(env: Env) -> None:
    key = str(generate_keypair().public_key)
    with env.standby("postgres") as conn:
        admin = {name for name in functions(conn, executable_by=APP, public=False)
                 if not name.startswith("hessra_authz._")}
        assert admin == ADMIN_CALLS.keys() | MONITOR_CALLS.keys()
        for name, query in sorted(ADMIN_CALLS.items()):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as raised:
                conn.execute(query, {"key": key, "token": env.orders_token, "nodes": Jsonb(env.chain_nodes),
                                     "role": APP})
            message = str(raised.value)
            # PostgreSQL's own words, before anything is written (SQLSTATE 25006).
            assert ("in a read-only transaction" in message or "during recovery" in message), (name, message)
            print(name, "->", message.splitlines()[0])
            assert "Traceback" not in message and env.orders_token not in message, (name, message)
    # Nothing changed on the primary either.
    with env.primary() as conn:
        assert conn.execute("SELECT count(*) FROM hessra_authz.keys WHERE kid = 900").fetchone() == (0,)


# --- the shared decision table ---------------------------------------------------------------------


def shared_stats(conn: psycopg.Connection) -> dict:
    return conn.execute("SELECT hessra_authz.cache_stats() -> 'shared_decisions'").fetchone()[0]


def test_shared_decisions_work_on_the_standby(env: Env) -> None:
    """The file-backed table lives in the standby's own data directory (the
    base backup copied the primary's; its entries are keyed by configuration
    version, which replay keeps identical): a second standby backend takes
    the first one's decision."""
    token = mint_authorization(env.root, "carol", "orders", "read")
    with env.standby() as first, env.standby() as second:
        assert verify(first, token, "carol")
        before = shared_stats(second)
        assert verify(second, token, "carol")
        after = shared_stats(second)
        assert after is not None and after["hits"] == (before or {"hits": 0})["hits"] + 1, (before, after)
        # A denial is never shared: another subject is verified, and refused.
        assert not verify(second, token, "mallory")


# --- the application hooks, against the standby ------------------------------------------------------


def test_psycopg_hook_on_the_standby(env: Env) -> None:
    from hessra_pg.psycopg import hessra_transaction

    with env.pair.standby.connect(APP) as conn:
        conn.read_only = True
        for _ in range(2):  # the same connection, token after token
            with hessra_transaction(conn, token=env.orders_token, subject="alice"):
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (30,)
            with hessra_transaction(conn, token=env.c1_token, subject="bob"):
                assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (0,)
                assert conn.execute("SELECT count(*) FROM public.customer_orders").fetchone() == (10,)
        with conn.transaction():  # no token left behind
            assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (0,)
            assert conn.execute("SELECT current_setting('hessra.token', true)").fetchone()[0] in (None, "")


def test_sqlalchemy_hook_on_the_standby(env: Env) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    from hessra_pg.sqlalchemy import hessra_context, install_hessra
    from tests.app_helpers import sqlalchemy_url

    # One pooled connection, read-only transactions (postgresql_readonly: BEGIN READ ONLY).
    engine = create_engine(sqlalchemy_url(env.pair.standby.dsn_for(APP)), pool_size=1, max_overflow=0,
                           execution_options={"postgresql_readonly": True})
    try:
        maker = install_hessra(sessionmaker(engine))
        for token, subject, orders in ((env.orders_token, "alice", 30), (env.c1_token, "bob", 0), (None, None, 0)):
            with hessra_context(token=token, subject=subject), maker() as session:
                assert session.execute(text("SHOW transaction_read_only")).scalar() == "on"
                assert session.execute(text("SELECT count(*) FROM public.orders")).scalar() == orders
        with engine.connect() as conn:  # no hook on the engine: nothing
            assert conn.execute(text("SELECT count(*) FROM public.orders")).scalar() == 0
    finally:
        engine.dispose()


# --- doctor ---------------------------------------------------------------------------------------------


def doctor(capsys: pytest.CaptureFixture[str], dsn: str, *extra: str) -> tuple[int, dict[str, tuple[str, str]]]:
    import json

    from hessra_pg.cli import main

    capsys.readouterr()
    code = main(["doctor", "--dsn", dsn, "--json", *extra])
    out, err = capsys.readouterr()
    assert err == ""
    return code, {check["name"]: (check["status"], check["message"]) for check in json.loads(out)["checks"]}


def test_doctor_on_the_standby(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    app_dsn, admin_dsn = env.pair.standby.dsn_for(APP), env.pair.standby.dsn
    code, checks = doctor(capsys, app_dsn, "--admin-dsn", admin_dsn)
    assert code == 0, checks
    assert {name: status for name, (status, _) in checks.items() if status != "ok"} == {}
    assert checks["replica"][1].startswith("hot standby streaming from its primary (replayed up to ")
    assert checks["server Python"] == ("ok", "imports biscuit_auth and hessra_pg (hessra_authz.verify_token runs)")
    assert checks["policies on public.orders"][0] == "ok"
    # Without the admin connection the role can't see the receiver's status, only that it runs.
    code, checks = doctor(capsys, app_dsn)
    assert code == 0
    assert checks["replica"][1].startswith("hot standby receiving WAL from its primary")
    # As a superuser: the import probe is a plpython3u DO block, which runs on a standby.
    code, checks = doctor(capsys, admin_dsn)
    assert checks["server Python"][0] == "ok" and checks["replica"][0] == "ok"
    # The primary has no replica line.
    code, checks = doctor(capsys, env.pair.primary.dsn_for(APP), "--admin-dsn", env.pair.primary.dsn)
    assert code == 0 and "replica" not in checks


def test_paused_replay_is_a_lagging_standby(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A standby enforces what it has replayed: while replay is paused a
    revocation made on the primary is not enforced there, and doctor says so."""
    token = mint_authorization(env.root, "alice", "orders", "read")
    with env.standby() as conn, env.standby("postgres") as superuser:
        assert verify(conn, token)
        superuser.execute("SELECT pg_catalog.pg_wal_replay_pause()")
        try:
            with env.primary() as admin:
                admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
                target = admin.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
            time.sleep(0.2)
            assert verify(conn, token)  # not replayed: still allowed here
            code, checks = doctor(capsys, env.pair.standby.dsn_for(APP))
            assert code == 0  # a warning, not a failure
            status, message = checks["replica"]
            assert status == "warn" and "replay pause" in message and "not enforced here" in message
        finally:
            superuser.execute("SELECT pg_catalog.pg_wal_replay_resume()")
        env.pair.standby_cluster.wait_for_replay(target)
        assert not verify(conn, token)
