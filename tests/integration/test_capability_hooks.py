"""Capability tokens through the application integrations (issue 13): a
designation policy (PolicySpec mode designation) on a multi-tenant table,
this database's anchor set, and designated capability tokens set per
transaction by hessra_pg.sqlalchemy and hessra_pg.psycopg on pooled
connections, as an ordinary role.

Each tenant owns a different number of rows, so a transaction that sees any
row of another token, or the count of another tenant, is caught. Switching
tokens between transactions on one pooled connection (one backend, whose
per-token capability caches and prepared statements outlive a transaction)
never shows the previous token's rows; no token shows nothing; wrong anchors,
conflicting narrowings, expired tokens and writes outside the designated
tenant are denied. The last test runs the demo (`make demo`), whose
capability section checks its own counts.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import biscuit_auth
import psycopg
import pytest
from psycopg import errors, sql
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine, exc, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from hessra_pg.context import hessra_context
from hessra_pg.core.keys import generate_keypair
from hessra_pg.psycopg import hessra_pool_kwargs, hessra_transaction
from hessra_pg.rls.policies import PolicySpec, generate_sql
from hessra_pg.sqlalchemy import install_hessra, set_hessra_context
from hessra_pg.tokens.capability import designate, mint_capability
from hessra_pg.tokens.mint import TokenTime
from tests.app_helpers import sqlalchemy_url

ANCHOR = "db:hooks"
# tenant -> number of rows: all different, so counts tell tenants apart.
TENANTS = {"acme": 1, "globex": 2, "initech": 3, "umbrella": 4}
ALL = sorted(TENANTS)

# What one transaction saw: its token setting, the backend, the tenants and the row count.
PROBE = """
SELECT pg_catalog.current_setting('hessra.token', true),
       pg_catalog.pg_backend_pid(),
       (SELECT coalesce(array_agg(DISTINCT tenant_id ORDER BY tenant_id), '{}') FROM public.ledger),
       (SELECT count(*) FROM public.ledger)
"""


@dataclass(frozen=True)
class Seen:
    token: str | None
    pid: int
    tenants: list[str]
    rows: int


def _seen(row) -> Seen:
    return Seen(row[0] or None, row[1], list(row[2]), row[3])


class Base(DeclarativeBase):
    pass


class Ledger(Base):
    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str]
    amount: Mapped[int]


@dataclass(frozen=True)
class CapEnv:
    dsn: str
    tokens: dict[str, str]
    """Name -> capability token (see the fixture)."""
    visible: dict[str | None, list[str]]
    """Name (None: no token) -> the tenants whose rows it must see, sorted."""

    def check(self, name: str | None, seen: Seen) -> None:
        expected = self.visible[name]
        assert seen.token == (self.tokens[name] if name is not None else None), name
        assert seen.tenants == expected, (name, seen.tenants)
        assert seen.rows == sum(TENANTS[t] for t in expected), (name, seen.rows)

    def url(self, async_: bool = False):
        return sqlalchemy_url(self.dsn, async_)


@pytest.fixture
def cap_env(hessra_db, admin: psycopg.Connection, app_role: str) -> CapEnv:
    root = generate_keypair()  # Ed25519: cheap to verify
    admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
    admin.execute("SELECT hessra_authz.set_anchor(%s)", (ANCHOR,))
    admin.execute("CREATE TABLE public.ledger (id serial PRIMARY KEY, tenant_id text NOT NULL, amount int NOT NULL)")
    admin.cursor().executemany("INSERT INTO public.ledger (tenant_id, amount) VALUES (%s, %s)",
                               [(t, n) for t, count in TENANTS.items() for n in range(count)])
    admin.execute(generate_sql(PolicySpec("ledger", mode="designation", designations={"tenant_id": "tenant_id"})))
    admin.execute(sql.SQL("GRANT SELECT, INSERT ON public.ledger TO {}").format(sql.Identifier(app_role)))
    admin.execute(sql.SQL("GRANT USAGE ON SEQUENCE public.ledger_id_seq TO {}").format(sql.Identifier(app_role)))

    def mint(*designations: tuple[str, str], anchor: str | None = ANCHOR, operation: str = "read",
             resource: str = "ledger", **kwargs) -> str:
        return mint_capability(root, "svc", resource, operation, designations=list(designations), anchor=anchor,
                               **kwargs)

    tokens = {tenant: mint(("tenant_id", tenant)) for tenant in TENANTS}
    undesignated = mint()
    tokens.update({
        "undesignated": undesignated,
        # Any holder narrows with a keyless block.
        "narrowed_initech": designate(undesignated, root.public_key, [("tenant_id", "initech")]),
        "acme_or_umbrella": _append_or(undesignated, root, ["acme", "umbrella"]),
        # No anchor check: accepted by any database (unless require_anchor).
        "unanchored": mint(("tenant_id", "acme"), anchor=None),
        # Denials.
        "other_anchor": mint(("tenant_id", "acme"), anchor="db:elsewhere"),
        "acme_as_globex": designate(tokens["acme"], root.public_key, [("tenant_id", "globex")]),
        "expired": mint(("tenant_id", "acme"), time_config=TokenTime(start=int(time.time()) - 600), valid_for=60),
        "other_resource": mint(("tenant_id", "acme"), resource="orders"),
        "write_acme": mint(("tenant_id", "acme"), operation="write"),
    })
    visible: dict[str | None, list[str]] = {tenant: [tenant] for tenant in TENANTS}
    visible.update({None: [], "undesignated": ALL, "narrowed_initech": ["initech"],
                    "acme_or_umbrella": ["acme", "umbrella"], "unanchored": ["acme"]})
    for denied in ("other_anchor", "acme_as_globex", "expired", "other_resource", "write_acme"):
        visible[denied] = []
    return CapEnv(dsn=hessra_db.dsn_for(app_role), tokens=tokens, visible=visible)


def _append_or(token: str, root, tenants: list[str]) -> str:
    """A holder's block accepting either tenant (an `or` of designations)."""
    biscuit = biscuit_auth.Biscuit.from_base64(token, root.public_key)
    params = {f"t{i}": t for i, t in enumerate(tenants)}
    source = "check if " + " or ".join(f'designation("tenant_id", {{t{i}}})' for i in range(len(tenants))) + ";"
    return biscuit.append(biscuit_auth.BlockBuilder(source, params)).to_base64()


# A sequence that switches between every kind of token, with no-token
# transactions between some, repeated so that psycopg prepares the probe
# (prepare_threshold 5) and the backend's per-token caches are warm.
SEQUENCE: list[str | None] = [
    "acme", "globex", None, "undesignated", "acme", "other_anchor", "initech", "narrowed_initech",
    "umbrella", "acme_as_globex", None, "acme_or_umbrella", "expired", "globex", "unanchored",
    "other_resource", "write_acme", "undesignated", None, "umbrella",
] * 3


@pytest.fixture
def engine(cap_env: CapEnv) -> Iterator[Engine]:
    """One pooled physical connection: consecutive transactions provably share it."""
    eng = create_engine(cap_env.url(), pool_size=1, max_overflow=0)
    yield eng
    eng.dispose()


def _sa_probe(conn) -> Seen:
    return _seen(conn.execute(text(PROBE)).one())


# --- SQLAlchemy ---------------------------------------------------------------------------------


def test_sqlalchemy_sessions_switch_capabilities_on_one_pooled_connection(cap_env: CapEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    pids = set()
    for name in SEQUENCE:
        with maker() as session:
            set_hessra_context(session, token=cap_env.tokens[name] if name else None)
            seen = _sa_probe(session)
            cap_env.check(name, seen)
            # The ORM goes through the same hook and the same policy.
            tenants = sorted({row.tenant_id for row in session.scalars(select(Ledger))})
            assert tenants == cap_env.visible[name], name
            session.commit()
        pids.add(seen.pid)
        # The next session on the pooled connection, without a token, sees
        # nothing; so does a plain Connection of the engine, which has no hook
        # (nothing sets the settings for it: a token left behind would show).
        with engine.connect() as conn:
            cap_env.check(None, seen_plain := _sa_probe(conn))
        assert seen_plain.pid == seen.pid
        with maker() as session:
            cap_env.check(None, _sa_probe(session))
    assert len(pids) == 1


def test_sqlalchemy_engine_hook_with_context(cap_env: CapEnv, engine: Engine) -> None:
    install_hessra(engine)
    pids = set()
    for name in SEQUENCE:
        with hessra_context(token=cap_env.tokens[name] if name else None), engine.begin() as conn:
            seen = _sa_probe(conn)
        cap_env.check(name, seen)
        pids.add(seen.pid)
        with engine.begin() as conn:  # outside the context
            cap_env.check(None, _sa_probe(conn))
    # One connection, several transactions under hessra_context, then a new one without.
    with engine.connect() as conn:
        for name in ("globex", "acme", "undesignated", "acme"):
            with hessra_context(token=cap_env.tokens[name]):
                seen = _sa_probe(conn)
                conn.commit()
            cap_env.check(name, seen)
            cap_env.check(None, _sa_probe(conn))
            conn.rollback()
    assert len(pids) == 1


def test_sqlalchemy_denials_and_explanations(cap_env: CapEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    reasons = {
        "acme": "ok",
        "other_anchor": "anchor_mismatch",
        "unanchored": "ok",
        "expired": "expired",
        "other_resource": "wrong_resource_or_operation",
        "write_acme": "wrong_resource_or_operation",
    }
    for name, reason in reasons.items():
        with maker() as session:
            set_hessra_context(session, token=cap_env.tokens[name])
            got = session.execute(text(
                "SELECT hessra_authz.explain_capability(hessra_authz.current_token(), 'ledger', 'read', "
                "'{\"tenant_id\": \"acme\"}')->>'reason'")).scalar_one()  # as for one of acme's rows
            verdict = session.execute(text(
                "SELECT hessra_authz.capability_rows('ledger', 'read', ARRAY['tenant_id'])")).scalar_one()
        assert got == reason, name
        assert verdict["statement"]["verdict"] == ("filter" if reason == "ok" else "none"), (name, verdict)
    # A write designated to acme inserts acme's rows, never another tenant's.
    # (Plain INSERTs: the ORM's INSERT ... RETURNING must also pass the
    # SELECT policy, which asks for read, and this token grants only write.)
    insert = text("INSERT INTO public.ledger (tenant_id, amount) VALUES (:tenant, 99)")
    with maker() as session:
        set_hessra_context(session, token=cap_env.tokens["write_acme"])
        assert session.execute(insert, {"tenant": "acme"}).rowcount == 1
        session.rollback()
    for name, tenant in (("write_acme", "globex"), ("acme", "acme"), (None, "acme"), ("other_anchor", "acme")):
        with maker() as session:
            set_hessra_context(session, token=cap_env.tokens[name] if name else None)
            with pytest.raises(exc.ProgrammingError, match="row-level security"):
                session.execute(insert, {"tenant": tenant})
            session.rollback()
        with maker() as session:  # the failed transaction left nothing behind
            cap_env.check(None, _sa_probe(session))
    with maker() as session:
        set_hessra_context(session, token=cap_env.tokens["undesignated"])
        cap_env.check("undesignated", _sa_probe(session))  # and nothing was inserted


def test_sqlalchemy_async_sessions_switch_capabilities(cap_env: CapEnv) -> None:
    asyncio.run(_async_switch(cap_env))


async def _async_switch(cap_env: CapEnv) -> None:
    eng = create_async_engine(cap_env.url(async_=True), pool_size=1, max_overflow=0)
    try:
        maker = install_hessra(async_sessionmaker(eng))
        pids = set()
        for name in SEQUENCE[:20]:
            async with maker() as session:
                set_hessra_context(session, token=cap_env.tokens[name] if name else None)
                seen = _seen((await session.execute(text(PROBE))).one())
                await session.commit()  # committed: a setting that outlived it would stay
            cap_env.check(name, seen)
            pids.add(seen.pid)
            async with eng.connect() as conn:  # no hook on the engine
                cap_env.check(None, _seen((await conn.execute(text(PROBE))).one()))
            async with maker() as session:
                cap_env.check(None, _seen((await session.execute(text(PROBE))).one()))
        assert len(pids) == 1
    finally:
        await eng.dispose()


# One worker per token: each tenant's own, then tokens that see all rows, a
# narrowed set, or none.
WORKER_TOKENS = [*ALL, "undesignated", "narrowed_initech", "acme_or_umbrella", "other_anchor"]
WORKERS = len(WORKER_TOKENS)
POOL_SIZE = 3
TRANSACTIONS = 50  # per worker


def _worker_token(i: int) -> str:
    return WORKER_TOKENS[i]


def test_sqlalchemy_threads_share_pooled_connections(cap_env: CapEnv) -> None:
    eng = create_engine(cap_env.url(), pool_size=POOL_SIZE, max_overflow=0)
    maker = install_hessra(sessionmaker(eng))
    served: dict[int, set[str]] = defaultdict(set)
    lock = threading.Lock()

    def worker(i: int) -> int:
        name = _worker_token(i)
        with hessra_context(token=cap_env.tokens[name]):
            for n in range(TRANSACTIONS):
                if n % 7 == 6:
                    with eng.connect() as conn:  # no hook on the engine
                        cap_env.check(None, _sa_probe(conn))
                    with maker() as session:
                        set_hessra_context(session, token=None)
                        cap_env.check(None, _sa_probe(session))
                    continue
                with maker() as session:
                    seen = _sa_probe(session)
                    cap_env.check(name, seen)
                    session.commit()
                with lock:
                    served[seen.pid].add(name)
        return TRANSACTIONS

    try:
        with ThreadPoolExecutor(WORKERS) as executor:
            assert sum(executor.map(worker, range(WORKERS))) == WORKERS * TRANSACTIONS
    finally:
        eng.dispose()
    assert len(served) <= POOL_SIZE and any(len(tenants) > 1 for tenants in served.values())


# --- psycopg ------------------------------------------------------------------------------------


def _pg_probe(conn: psycopg.Connection) -> Seen:
    return _seen(conn.execute(PROBE).fetchone())


def test_psycopg_pool_switches_capabilities_on_one_connection(cap_env: CapEnv) -> None:
    pids = set()
    with ConnectionPool(cap_env.dsn, min_size=1, max_size=1, open=True, **hessra_pool_kwargs()) as pool:
        for name in SEQUENCE:
            with pool.connection() as conn:
                with hessra_transaction(conn, token=cap_env.tokens[name] if name else None):
                    seen = _pg_probe(conn)
                cap_env.check(name, seen)
                pids.add(seen.pid)
                cap_env.check(None, _pg_probe(conn))  # after the block, on the same connection
            with pool.connection() as conn:  # the next borrower
                cap_env.check(None, _pg_probe(conn))
        # From hessra_context, several transactions on one borrowed connection.
        with pool.connection() as conn:
            for name in ("umbrella", "undesignated", "umbrella", "acme_or_umbrella"):
                with hessra_context(token=cap_env.tokens[name]), hessra_transaction(conn):
                    seen = _pg_probe(conn)
                cap_env.check(name, seen)
                pids.add(seen.pid)
    assert len(pids) == 1


def test_psycopg_write_denials_leave_the_connection_clean(cap_env: CapEnv) -> None:
    insert = "INSERT INTO public.ledger (tenant_id, amount) VALUES (%s, 1)"
    with ConnectionPool(cap_env.dsn, min_size=1, max_size=1, open=True, **hessra_pool_kwargs()) as pool:
        with pool.connection() as conn:
            with hessra_transaction(conn, token=cap_env.tokens["write_acme"]) as tx:
                conn.execute(insert, ("acme",))
                raise psycopg.Rollback(tx)
        for name, tenant in (("write_acme", "umbrella"), ("acme", "acme"), (None, "acme"),
                             ("other_anchor", "acme")):
            with pool.connection() as conn:
                with pytest.raises(errors.InsufficientPrivilege):
                    with hessra_transaction(conn, token=cap_env.tokens[name] if name else None):
                        conn.execute(insert, (tenant,))
                cap_env.check(None, _pg_probe(conn))
            with pool.connection() as conn, hessra_transaction(conn, token=cap_env.tokens["undesignated"]):
                cap_env.check("undesignated", _pg_probe(conn))


def test_psycopg_pool_threads(cap_env: CapEnv) -> None:
    served: dict[int, set[str]] = defaultdict(set)
    lock = threading.Lock()

    def worker(pool: ConnectionPool, i: int) -> int:
        name = _worker_token(i)
        for n in range(TRANSACTIONS):
            with pool.connection() as conn:
                if n % 7 == 6:
                    with hessra_transaction(conn, token=None):
                        cap_env.check(None, _pg_probe(conn))
                    continue
                with hessra_transaction(conn, token=cap_env.tokens[name]):
                    seen = _pg_probe(conn)
                cap_env.check(name, seen)
            with lock:
                served[seen.pid].add(name)
        return TRANSACTIONS

    with ConnectionPool(cap_env.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True,
                        **hessra_pool_kwargs()) as pool:
        pool.wait()
        with ThreadPoolExecutor(WORKERS) as executor:
            assert sum(executor.map(lambda i: worker(pool, i), range(WORKERS))) == WORKERS * TRANSACTIONS
    assert len(served) <= POOL_SIZE and any(len(tenants) > 1 for tenants in served.values())


# --- the demo -----------------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("HESSRA_PG_TEST_INSTALL", "1") == "0",
                    reason="the demo installs the extension (HESSRA_PG_TEST_INSTALL=0 asks for no install)")
def test_demo_capability_section(capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo` end to end, on its own cluster: it checks its own counts
    and reasons (exit 1 on a wrong one); here, that it passes and prints the
    capability cases."""
    from hessra_pg.dev import demo

    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "== Capability tokens: one table, 3 tenants (acme, globex, initech), 7 invoices ==" in out
    for line in (
        "-- capability designated to tenant acme: 3 row(s) visible (policy: filter, tenant_id in {acme}; region any)",
        "-- undesignated capability (anchored to db:demo only): 7 row(s) visible (policy: filter, tenant_id any; "
        "region any)",
        "-- capability anchored to another database (db:other): 0 row(s) visible (policy: none, anchor_mismatch)",
        "   explain_capability: anchor_mismatch",
        "-- undesignated capability, narrowed by its holder: designate tenant_id=initech: 2 row(s) visible",
        "-- acme's capability, narrowed by its holder: designate region=eu: 2 row(s) visible",
        "-- acme's capability, 'narrowed' to tenant globex (narrowing never widens): 0 row(s) visible",
        "Done: every count was as expected",
    ):
        assert line in out, line
