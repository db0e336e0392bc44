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

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.testing import StandbyPair
from hessra_pg.tokens.mint import mint_authorization

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
    pair.wait_for_replay()
    return Env(pair, root, 1, mint_authorization(root, "alice", "orders", "read"),
               mint_authorization(root, "bob", "customer_orders/c1", "read"))


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


def test_snapshot_text_rule() -> None:
    from hessra_pg.plpython.runtime import snapshot_names_visibility as names

    assert names("730:730:", None)  # nothing in progress
    assert names("726:730:726,727", None)  # a primary's list
    assert names("726:730:", "726")  # only the caller's own transaction (a primary)
    assert not names("726:730:", None)  # a standby with transactions in progress
    assert not names("726:730:", "729")
    assert not names(None, None)
