"""Logical replication of hessra_authz's configuration tables (docs/replicas.md).

A publisher and a subscriber, two private clusters on loopback, each with
the extension created. The publisher publishes the configuration tables
(keys, service_chains, revocations, capability_settings; not config_state,
which each database derives from them). The subscriber's apply worker runs
with session_replication_role = replica, where only ENABLE ALWAYS and
ENABLE REPLICA triggers fire, and it fires ROW triggers only: the
extension's bump_generation triggers (ALWAYS, FOR EACH STATEMENT) fire for
the initial copy and TRUNCATE, not for an applied INSERT, UPDATE or DELETE.
Since 0.5.0 the extension's refresh_on_apply (a deferred row trigger,
ENABLE REPLICA: fired in replica mode only) refreshes the subscriber's
configuration once per applied transaction, and backends already connected
there enforce it at their next statement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.cluster import LocalCluster
from hessra_pg.tokens.capability import mint_capability
from hessra_pg.tokens.mint import mint_authorization

DB = "hessra_logical"
APP = "logical_app"
CONFIG_TABLES = ("keys", "service_chains", "revocations", "capability_settings")



@dataclass
class Pair:
    publisher: LocalCluster
    subscriber: LocalCluster

    def pub(self, user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.publisher.dsn(DB, user), autocommit=True)

    def sub(self, user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.subscriber.dsn(DB, user), autocommit=True)


def _setup(cluster: LocalCluster) -> None:
    cluster.create_database(DB)
    with psycopg.connect(cluster.dsn(DB), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hessra_authz CASCADE")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(APP)))


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    from hessra_pg.admin.install import install

    install()
    with LocalCluster(settings={"wal_level": "logical"}) as publisher, LocalCluster() as subscriber:
        for cluster in (publisher, subscriber):
            _setup(cluster)
        yield Pair(publisher, subscriber)
        with psycopg.connect(subscriber.dsn(DB), autocommit=True) as conn:
            conn.execute("DROP SUBSCRIPTION IF EXISTS hessra_config")


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``check`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not replicated within {timeout} s")
        time.sleep(0.002)
    return time.monotonic() - started


def verify(conn: psycopg.Connection, token: str, resource: str = "orders") -> bool:
    return conn.execute("SELECT hessra_authz.verify_token(%s, 'alice', %s, 'read')", (token, resource)).fetchone()[0]


def test_configuration_reaches_subscribers_and_is_enforced(pair: Pair) -> None:
    root, other = generate_keypair(), generate_keypair()
    token = mint_authorization(root, "alice", "orders", "read")
    revoked = mint_authorization(root, "alice", "orders", "read")
    other_token = mint_authorization(other, "alice", "orders", "read")
    capability = mint_capability(root, "alice", "invoices", "read", anchor="db:main")
    with pair.pub() as pub:
        pub.execute("SELECT hessra_authz.add_key(%s, 1)", (str(root.public_key),))
        pub.execute("SELECT hessra_authz.set_anchor('db:main')")
        pub.execute("SELECT hessra_authz.set_service_chain('svc', %s)",
                    (Jsonb([{"component": "api", "public_key": str(generate_keypair().public_key)}]),))
        # Un-revoking is a DELETE: a table without a primary key needs a replica identity for it.
        pub.execute("ALTER TABLE hessra_authz.revocations REPLICA IDENTITY FULL")
        pub.execute("CREATE PUBLICATION hessra_config FOR TABLE "
                    + ", ".join(f"hessra_authz.{table}" for table in CONFIG_TABLES))

    with pair.sub(APP) as app, pair.sub() as sub:
        # Connected, and the (empty) configuration loaded, before the subscription exists:
        # no key is a configuration error, loud.
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no active key"):
            verify(app, token)
        sub.execute(sql.SQL("CREATE SUBSCRIPTION hessra_config CONNECTION {} PUBLICATION hessra_config").format(
            sql.Literal(pair.publisher.dsn(DB))))

        def synced() -> bool:
            states = sub.execute("SELECT array_agg(srsubstate) FROM pg_catalog.pg_subscription_rel").fetchone()[0]
            return states is not None and len(states) == len(CONFIG_TABLES) and set(states) == {"r"}

        eventually(synced)
        # The initial copy fired the triggers: the connected backend sees the key at its next statement.
        assert verify(app, token)
        assert app.execute("SELECT hessra_authz.verify_capability(%s, 'invoices', 'read', '{}')",
                           (capability,)).fetchone()[0]
        assert sub.execute("SELECT kids, anchor FROM hessra_authz.config_state").fetchone() == ([1], "db:main")
        assert sub.execute("SELECT count(*) FROM hessra_authz.service_chains").fetchone() == (1,)

        def applied_then(change: str, params: tuple, condition: str) -> float:
            with pair.pub() as pub:
                pub.execute(change, params)
            return eventually(lambda: sub.execute(condition).fetchone()[0])

        # A revocation reaches the subscriber and its connected backends.
        assert verify(app, revoked)
        delay = applied_then("SELECT hessra_authz.revoke_token(%s)", (revoked,),
                             "SELECT count(*) = 1 FROM hessra_authz.revocations")
        assert not verify(app, revoked)
        assert verify(app, token)
        print(f"revocation applied on the subscriber after {delay * 1000:.1f} ms")
        # Un-revoked (a DELETE on the publisher).
        applied_then("DELETE FROM hessra_authz.revocations", (), "SELECT count(*) = 0 FROM hessra_authz.revocations")
        assert verify(app, revoked)
        # A new key, then the old one retired.
        assert not verify(app, other_token)
        applied_then("SELECT hessra_authz.add_key(%s, 2)", (str(other.public_key),),
                     "SELECT count(*) = 2 FROM hessra_authz.keys")
        assert verify(app, other_token)
        applied_then("SELECT hessra_authz.retire_key(1)", (),
                     "SELECT not_after IS NOT NULL FROM hessra_authz.keys WHERE kid = 1")
        assert not verify(app, token)
        assert verify(app, other_token)
        # The anchor changes on the publisher: capability tokens for the old one fail.
        applied_then("SELECT hessra_authz.set_anchor('db:moved')", (),
                     "SELECT anchor = 'db:moved' FROM hessra_authz.capability_settings")
        assert sub.execute("SELECT kids, anchor FROM hessra_authz.config_state").fetchone() == ([1, 2], "db:moved")


def test_triggers_are_enable_always(pair: Pair) -> None:
    """What the subscriber's freshness rests on: the generation triggers fire in replica mode."""
    with pair.sub() as sub:
        enabled = dict(sub.execute("SELECT tgrelid::regclass::text, tgenabled FROM pg_catalog.pg_trigger "
                                   "WHERE tgname = 'bump_generation'").fetchall())
        assert set(enabled.values()) == {"A"}
        assert {f"hessra_authz.{table}" for table in CONFIG_TABLES} <= enabled.keys()
        # In replica mode (as the apply worker runs) a change still bumps the generation.
        before = sub.execute("SELECT generation FROM hessra_authz.config_state").fetchone()[0]
        with sub.transaction():
            sub.execute("SET LOCAL session_replication_role = replica")
            sub.execute("INSERT INTO hessra_authz.revocations (identity) VALUES ('urn:hessra:replica-mode')")
        after = sub.execute("SELECT generation FROM hessra_authz.config_state").fetchone()[0]
        assert after > before


def test_one_refresh_per_applied_transaction(pair: Pair) -> None:
    """The extension alone refreshes the subscriber on apply (0.4.0 needed a
    recipe), once per applied transaction however many rows it holds; on the
    publisher a statement refreshes once, the row trigger adds nothing."""
    with pair.sub() as sub:
        def state() -> tuple[int, str]:
            return sub.execute("SELECT generation, revoked_ids::text FROM hessra_authz.config_state").fetchone()

        before = state()
        with pair.pub() as pub:
            generation = pub.execute("SELECT generation FROM hessra_authz.config_state").fetchone()[0]
            with pub.transaction():
                for n in range(40):
                    pub.execute("SELECT hessra_authz.revoke(%s)", (f"{n:02x}" * 32,))
            # 40 statements, 40 refreshes on the publisher (each statement trigger once)
            assert pub.execute("SELECT generation FROM hessra_authz.config_state").fetchone()[0] == generation + 40
            pub.execute("INSERT INTO hessra_authz.revocations (identity) "
                        "SELECT 'urn:bulk:' || n FROM generate_series(1, 50) AS n")
            assert pub.execute("SELECT generation FROM hessra_authz.config_state").fetchone()[0] == generation + 41
        eventually(lambda: sub.execute("SELECT count(*) = 50 FROM hessra_authz.revocations "
                                       "WHERE identity LIKE 'urn:bulk:%'").fetchone()[0])
        after = state()
        # two applied transactions: two refreshes, not 90
        assert after[0] == before[0] + 2, (before, after)
        assert "27" * 32 in after[1]


def test_refresh_on_apply_stays_replica(pair: Pair) -> None:
    """DISABLE/ENABLE TRIGGER ALL (pg_restore --disable-triggers) leaves the
    triggers origin-only; the event trigger turns them back into ALWAYS
    (bump_generation) and REPLICA (refresh_on_apply)."""
    with pair.sub() as sub:
        for table in CONFIG_TABLES:
            sub.execute(f"ALTER TABLE hessra_authz.{table} DISABLE TRIGGER ALL")
            sub.execute(f"ALTER TABLE hessra_authz.{table} ENABLE TRIGGER ALL")
        enabled = dict(sub.execute("SELECT tgrelid::regclass::text, tgenabled FROM pg_catalog.pg_trigger "
                                   "WHERE tgname = 'refresh_on_apply'").fetchall())
        generation = dict(sub.execute("SELECT tgrelid::regclass::text, tgenabled FROM pg_catalog.pg_trigger "
                                      "WHERE tgname = 'bump_generation'").fetchall())
        # every configuration table has both, ALWAYS and REPLICA again
        assert enabled.keys() == generation.keys()
        assert set(generation.values()) == {"A"} and set(enabled.values()) == {"R"}
        assert {f"hessra_authz.{table}" for table in CONFIG_TABLES} <= enabled.keys()


def test_applied_changes_refresh_by_themselves(pair: Pair) -> None:
    """A revocation applied on the subscriber is in its configuration with
    no trigger of the user's own."""
    with pair.sub() as sub:
        assert sub.execute("SELECT count(*) FROM pg_catalog.pg_trigger AS t "
                           "JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid "
                           "WHERE c.relnamespace = 'hessra_authz'::regnamespace AND NOT t.tgisinternal "
                           "AND t.tgname NOT IN ('bump_generation', 'refresh_on_apply')").fetchone()[0] == 0
        before = sub.execute("SELECT generation, revoked_ids FROM hessra_authz.config_state").fetchone()
        with pair.pub() as pub:
            pub.execute("SELECT hessra_authz.revoke(repeat('cd', 16))")
        eventually(lambda: sub.execute("SELECT count(*) > 0 FROM hessra_authz.revocations "
                                       "WHERE revocation_id = repeat('cd', 16)").fetchone()[0])
        after = sub.execute("SELECT generation, revoked_ids FROM hessra_authz.config_state").fetchone()
        assert after[0] > before[0] and "cd" * 16 in after[1], (before, after)


def test_no_pending_trigger_events_outside_replica_mode(pair: Pair) -> None:
    """refresh_on_apply queues nothing in an ordinary transaction: a
    configuration change followed by ALTER TABLE of the same table (or DROP
    EXTENSION, as an Alembic downgrade does) in one transaction works."""
    with pair.pub() as pub:
        with pub.transaction():
            pub.execute("SELECT hessra_authz.revoke(repeat('ef', 16))")
            pub.execute("INSERT INTO hessra_authz.revocations (identity) VALUES ('urn:pending:check')")
            pub.execute("ALTER TABLE hessra_authz.revocations ALTER COLUMN reason SET STATISTICS 100")
            pub.execute("ALTER TABLE hessra_authz.revocations ALTER COLUMN reason SET STATISTICS -1")
