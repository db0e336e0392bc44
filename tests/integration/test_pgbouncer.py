"""Through a real pgbouncer in transaction pooling mode, the token stays in its transaction.

Transaction pooling hands each transaction whichever server connection is
free, so session-level state (``SET``, ``set_config(..., false)``) leaks
between clients: the first test shows that hazard, the others that the
transaction-local settings of hessra_pg.psycopg / hessra_pg.sqlalchemy don't.
psycopg runs with ``prepare_threshold=None`` (pgbouncer 1.18 has no prepared
statement support in transaction mode).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from hessra_pg.psycopg import hessra_pool_kwargs, hessra_pool_kwargs_async, hessra_transaction, hessra_transaction_async
from hessra_pg.sqlalchemy import hessra_context, install_hessra
from tests.app_helpers import CUSTOMERS, PROBE, AppEnv, Seen, probe_row, sqlalchemy_url
from tests.pgbouncer import PgBouncer

SERVER_CONNECTIONS = 2

pytestmark = pytest.mark.skipif(not PgBouncer.available(), reason="pgbouncer is not installed (scripts/bootstrap.sh)")


@pytest.fixture
def bouncer(hessra_postgres: object, app_env: AppEnv) -> Iterator[PgBouncer]:
    socket_dir = getattr(hessra_postgres, "socket_dir", None)
    if socket_dir is None:
        pytest.skip("pgbouncer tests need the local cluster")
    with PgBouncer(str(socket_dir), hessra_postgres.port, [app_env.role, "postgres"],  # type: ignore[attr-defined]
                   pool_size=SERVER_CONNECTIONS) as running:
        yield running


def bounced_dsn(bouncer: PgBouncer, app_env: AppEnv) -> str:
    return bouncer.dsn(app_env.db.name, app_env.role)


def probe(conn: psycopg.Connection) -> Seen:
    return probe_row(conn.execute(PROBE).fetchone())


def test_session_level_settings_leak_across_clients_but_ours_do_not(bouncer: PgBouncer, app_env: AppEnv) -> None:
    dsn = bounced_dsn(bouncer, app_env)
    # prepare_threshold=None: required with pgbouncer's transaction pooling.
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as careless, \
            psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as other:
        careless.execute("SELECT pg_catalog.set_config('hessra.token', %s, false), "
                         "pg_catalog.set_config('hessra.subject', 'alice', false)", (app_env.orders_token,))
        # Another client gets a server connection carrying that token (with
        # two server connections it may take a few tries to land on it).
        leaked = [probe(other) for _ in range(20)]
        assert any(seen.orders == 3 for seen in leaked), "expected the session-level SET to leak"
        # Our transactions always set both settings, so a transaction
        # without a token sees none even on the polluted server connection.
        for _ in range(20):
            with hessra_transaction(other, token=None, subject=None):
                assert probe(other).no_token
        # Clean up the server connection for the next test's sake.
        careless.execute("SELECT pg_catalog.set_config('hessra.token', '', false)")


def test_psycopg_pool_sequence_of_tokens(bouncer: PgBouncer, app_env: AppEnv) -> None:
    server_pids = set()
    with ConnectionPool(bounced_dsn(bouncer, app_env), min_size=4, max_size=4, open=True,
                        **hessra_pool_kwargs(pgbouncer=True)) as pool:
        for n in range(160):
            i = n % CUSTOMERS
            with pool.connection() as conn, hessra_transaction(conn, token=app_env.customer_tokens[i],
                                                               subject=app_env.customer_subject(i)):
                seen = probe(conn)
            app_env.check_customer(seen, i)
            server_pids.add(seen.pid)
            # A transaction without a token right after one with a token.
            with pool.connection() as conn, hessra_transaction(conn):
                after = probe(conn)
            assert after.no_token
            with pool.connection() as conn:  # no hessra_transaction at all
                assert probe(conn).no_token
    assert len(server_pids) <= SERVER_CONNECTIONS


def test_threads_through_pgbouncer(bouncer: PgBouncer, app_env: AppEnv) -> None:
    served: dict[int, set[int]] = defaultdict(set)
    lock = threading.Lock()

    def worker(i: int) -> int:
        for n in range(150):
            with pool.connection() as conn:
                if n % 5 == 4:
                    with hessra_transaction(conn, token=None):
                        assert probe(conn).no_token
                    continue
                with hessra_transaction(conn, token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
                    seen = probe(conn)
            app_env.check_customer(seen, i)
            with lock:
                served[seen.pid].add(i)
        return 150

    with ConnectionPool(bounced_dsn(bouncer, app_env), min_size=4, max_size=4, open=True,
                        **hessra_pool_kwargs(pgbouncer=True)) as pool:
        with ThreadPoolExecutor(CUSTOMERS) as executor:
            assert sum(executor.map(worker, range(CUSTOMERS))) == 150 * CUSTOMERS
    assert len(served) <= SERVER_CONNECTIONS and all(len(w) > 1 for w in served.values())


def test_asyncio_through_pgbouncer(bouncer: PgBouncer, app_env: AppEnv) -> None:
    async def main() -> None:
        async with AsyncConnectionPool(bounced_dsn(bouncer, app_env), min_size=4, max_size=4, open=False,
                                       **hessra_pool_kwargs_async(pgbouncer=True)) as pool:
            async def task(i: int) -> None:
                async with hessra_context(token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
                    for _ in range(60):
                        async with pool.connection() as conn:
                            async with hessra_transaction_async(conn):
                                seen = probe_row(await (await conn.execute(PROBE)).fetchone())
                            app_env.check_customer(seen, i)
                            async with hessra_transaction_async(conn, token=None):
                                assert probe_row(await (await conn.execute(PROBE)).fetchone()).no_token

            await asyncio.gather(*(task(i) for i in range(CUSTOMERS)))

    asyncio.run(main())


def test_sqlalchemy_through_pgbouncer(bouncer: PgBouncer, app_env: AppEnv) -> None:
    # connect_args: prepare_threshold=None, as for plain psycopg.
    eng = create_engine(sqlalchemy_url(bounced_dsn(bouncer, app_env)), pool_size=4, max_overflow=0,
                        connect_args={"prepare_threshold": None})
    maker = install_hessra(sessionmaker(eng))
    try:
        for n in range(80):
            i = n % CUSTOMERS
            with hessra_context(token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
                with maker() as session:
                    app_env.check_customer(probe_row(session.execute(text(PROBE)).one()), i)
            with maker() as session:
                assert probe_row(session.execute(text(PROBE)).one()).no_token
    finally:
        eng.dispose()
