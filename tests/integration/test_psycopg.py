"""hessra_pg.psycopg against a real server: the token lives exactly one transaction."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from hessra_pg.context import NO_CONTEXT, HessraContext, HessraContextError, current_context, hessra_context
from hessra_pg.psycopg import (
    hessra_pool_kwargs,
    hessra_pool_kwargs_async,
    hessra_transaction,
    hessra_transaction_async,
    reset_hessra,
)
from tests.app_helpers import PROBE, AppEnv, Seen, probe_row


def probe(conn: psycopg.Connection) -> Seen:
    return probe_row(conn.execute(PROBE).fetchone())


async def aprobe(conn: psycopg.AsyncConnection) -> Seen:
    return probe_row(await (await conn.execute(PROBE)).fetchone())


def after(conn: psycopg.Connection) -> Seen:
    """The next transaction on the same connection, opened without any token."""
    with conn.transaction():
        return probe(conn)


# --- the token ends with its transaction ---------------------------------------------------


def test_commit_clears_token(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        with hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
            inside = probe(conn)
        assert inside.token == app_env.orders_token and inside.subject == "alice" and inside.orders == 3
        nxt = after(conn)
        assert nxt.pid == inside.pid and nxt.no_token
        # Also in autocommit statements outside any block.
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0


def test_setting_the_token_does_not_send_it_back(app_env: AppEnv) -> None:
    from hessra_pg.context import SET_CONTEXT_SQL

    with psycopg.connect(app_env.dsn) as conn:
        cursor = conn.execute(SET_CONTEXT_SQL, (app_env.orders_token, "alice"))
        assert not cursor.description  # no columns: the token does not travel back
        assert cursor.fetchall() == [()]
        assert probe(conn).token == app_env.orders_token
        conn.rollback()


def test_rollback_clears_token(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        with hessra_transaction(conn, token=app_env.orders_token, subject="alice") as tx:
            inside = probe(conn)
            raise psycopg.Rollback(tx)
        assert inside.orders == 3
        nxt = after(conn)
        assert nxt.pid == inside.pid and nxt.no_token


@pytest.mark.parametrize("failure", ["python", "sql"])
def test_exception_inside_block_clears_token(app_env: AppEnv, failure: str) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        pid = conn.info.backend_pid
        with pytest.raises((ValueError, psycopg.errors.DivisionByZero)):
            with hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
                assert probe(conn).orders == 3
                if failure == "python":
                    raise ValueError("boom")
                conn.execute("SELECT 1 / 0")
        nxt = after(conn)
        assert nxt.pid == pid and nxt.no_token


def test_no_token_transaction_overrides_a_session_level_leftover(app_env: AppEnv) -> None:
    # Someone used the connection the wrong way (session-level set_config):
    # a hessra_transaction without a token must still see none.
    with psycopg.connect(app_env.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.set_config('hessra.token', %s, false), "
                     "pg_catalog.set_config('hessra.subject', 'alice', false)", (app_env.orders_token,))
        assert probe(conn).orders == 3  # the leftover is live at session level
        with hessra_transaction(conn, token=None, subject=None):
            assert probe(conn).no_token


def test_works_on_autocommit_connections(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn, autocommit=True) as conn:
        with hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
            assert probe(conn).orders == 3
        assert probe(conn).no_token


def test_refuses_to_nest_inside_an_open_transaction(app_env: AppEnv) -> None:
    # Inside a transaction conn.transaction() is a savepoint, and the token
    # would outlive the block: refused.
    with psycopg.connect(app_env.dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(HessraContextError, match="no open transaction"):
            with hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
                pass
        conn.rollback()
        with conn.transaction():
            with pytest.raises(HessraContextError):
                with hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
                    pass


def test_values_from_hessra_context(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        with hessra_context(token=app_env.orders_token, subject="alice"):
            with hessra_transaction(conn):
                assert probe(conn).orders == 3
            # An explicit value wins, and None means none (no fallback).
            with hessra_transaction(conn, token=None):
                assert probe(conn).no_token
            with hessra_context():
                with hessra_transaction(conn):
                    assert probe(conn).no_token
        with hessra_transaction(conn):
            assert probe(conn).no_token


def test_identity_token_owner_rows(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        with hessra_transaction(conn, token=app_env.identity_token):
            seen = probe(conn)
            assert seen.documents == 2 and seen.orders == 0
        assert after(conn).no_token


def test_type_errors_are_refused() -> None:
    with pytest.raises(TypeError, match="str or None"):
        with hessra_transaction(None, token=b"bytes"):  # type: ignore[arg-type]
            pass


def test_hessra_context_scoping() -> None:
    outer = hessra_context(token="t1", subject="s1")
    with outer as entered:
        assert entered == current_context() == HessraContext("t1", "s1")
        with hessra_context():
            assert current_context() == NO_CONTEXT
            with outer:  # re-entering the same object is fine
                assert current_context().token == "t1"
            assert current_context() == NO_CONTEXT
        assert current_context().token == "t1"
        # A plain thread starts without the caller's context...
        seen: list[HessraContext] = []
        thread = threading.Thread(target=lambda: seen.append(current_context()))
        thread.start()
        thread.join()
        assert seen == [NO_CONTEXT]
        # ...asyncio.to_thread and tasks carry it, each task with its own.

        async def main() -> list[str | None]:
            async def task(i: int) -> str | None:
                async with hessra_context(token=f"task{i}"):
                    await asyncio.sleep(0)
                    return current_context().token

            results = list(await asyncio.gather(*(task(i) for i in range(3))))
            results.append(await asyncio.to_thread(lambda: current_context().token))
            return results

        assert asyncio.run(main()) == ["task0", "task1", "task2", "t1"]
    assert current_context() == NO_CONTEXT


# --- pools -----------------------------------------------------------------------------------


def test_pool_returns_connections_without_token(app_env: AppEnv) -> None:
    with ConnectionPool(app_env.dsn, min_size=1, max_size=1, open=True, **hessra_pool_kwargs()) as pool:
        with pool.connection() as conn, hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
            inside = probe(conn)
        assert inside.orders == 3
        with pool.connection() as conn:
            nxt = probe(conn)  # pool.connection() is itself a transaction
        assert nxt.pid == inside.pid and nxt.no_token
        # Raising inside: the pool rolls back, the token is gone.
        with pytest.raises(RuntimeError):
            with pool.connection() as conn, hessra_transaction(conn, token=app_env.orders_token, subject="alice"):
                raise RuntimeError
        with pool.connection() as conn:
            nxt = probe(conn)
        assert nxt.pid == inside.pid and nxt.no_token


@pytest.mark.parametrize("with_reset", [True, False])
def test_pool_reset_clears_session_level_settings(app_env: AppEnv, with_reset: bool) -> None:
    # Defence in depth: code that SETs the token at session level (the bug
    # this package exists to avoid) leaks it to the pool's next borrower
    # unless the pool's reset callback clears it.
    kwargs = hessra_pool_kwargs() if with_reset else {}
    with ConnectionPool(app_env.dsn, min_size=1, max_size=1, open=True, **kwargs) as pool:
        with pool.connection() as conn:
            conn.execute("SET hessra.subject = 'alice'")
            conn.execute("SELECT pg_catalog.set_config('hessra.token', %s, false)", (app_env.orders_token,))
            first = probe(conn)
        with pool.connection() as conn:
            nxt = probe(conn)
    assert first.orders == 3 and nxt.pid == first.pid
    if with_reset:
        assert nxt.no_token
    else:
        assert nxt.orders == 3  # the hazard is real


def test_reset_hessra_leaves_the_connection_idle(app_env: AppEnv) -> None:
    for autocommit in (False, True):
        with psycopg.connect(app_env.dsn, autocommit=autocommit) as conn:
            conn.execute("SET hessra.token = 'x'")
            if not autocommit:
                conn.commit()
            conn.execute("SELECT 1")
            reset_hessra(conn)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT current_setting('hessra.token', true)").fetchone()[0] == ""


def test_pool_kwargs_chain_and_pgbouncer_flag() -> None:
    calls = []
    kwargs = hessra_pool_kwargs(pgbouncer=True, reset=calls.append, kwargs={"application_name": "x"})
    assert kwargs["kwargs"] == {"application_name": "x", "prepare_threshold": None}
    assert hessra_pool_kwargs()["kwargs"] == {}
    assert callable(kwargs["reset"]) and hessra_pool_kwargs()["reset"] is reset_hessra


def test_async_transaction_and_pool(app_env: AppEnv) -> None:
    asyncio.run(_async_transaction_and_pool(app_env))


async def _async_transaction_and_pool(app_env: AppEnv) -> None:
    async with await psycopg.AsyncConnection.connect(app_env.dsn) as conn:
        async with hessra_transaction_async(conn, token=app_env.orders_token, subject="alice"):
            inside = await aprobe(conn)
        assert inside.orders == 3
        with pytest.raises(ValueError):
            async with hessra_transaction_async(conn, token=app_env.orders_token, subject="alice"):
                raise ValueError
        async with conn.transaction():
            nxt = await aprobe(conn)
        assert nxt.pid == inside.pid and nxt.no_token
        async with hessra_context(token=app_env.orders_token, subject="alice"):
            async with hessra_transaction_async(conn):
                assert (await aprobe(conn)).orders == 3

    async with AsyncConnectionPool(app_env.dsn, min_size=1, max_size=1, open=False,
                                   **hessra_pool_kwargs_async()) as pool:
        async with pool.connection() as conn:
            await conn.execute("SET hessra.token = 'leftover'")
            await conn.commit()
            async with hessra_transaction_async(conn, token=app_env.orders_token, subject="alice"):
                inside = await aprobe(conn)
        async with pool.connection() as conn:
            nxt = await aprobe(conn)
    assert inside.orders == 3 and nxt.pid == inside.pid and nxt.no_token


# --- concurrency ------------------------------------------------------------------------------

THREAD_TRANSACTIONS = 5_000
TASK_TRANSACTIONS = 5_000
WORKERS = 8
POOL_SIZE = 4


def _check_shared(app_env: AppEnv, served: dict[int, set[int]]) -> None:
    # The test only means something if physical connections really passed
    # between workers holding different tokens.
    assert len(served) <= POOL_SIZE
    assert any(len(workers) > 1 for workers in served.values()), served


def test_threads_each_see_only_their_own_rows(app_env: AppEnv) -> None:
    served: dict[int, set[int]] = defaultdict(set)
    lock = threading.Lock()
    per_worker = THREAD_TRANSACTIONS // WORKERS

    def worker(i: int) -> int:
        token, subject = app_env.customer_tokens[i], app_env.customer_subject(i)
        pids = set()
        for n in range(per_worker):
            with pool.connection() as conn:
                if n % 10 == 9:
                    # Every tenth borrow runs without a token: it must see nothing.
                    with hessra_transaction(conn, token=None, subject=None):
                        seen = probe(conn)
                    assert seen.no_token
                else:
                    with hessra_transaction(conn, token=token, subject=subject):
                        seen = probe(conn)
                    app_env.check_customer(seen, i)
            pids.add(seen.pid)
        with lock:
            for pid in pids:
                served[pid].add(i)
        return per_worker

    start = time.monotonic()
    with ConnectionPool(app_env.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=True,
                        **hessra_pool_kwargs()) as pool:
        pool.wait()
        with ThreadPoolExecutor(WORKERS) as executor:
            done = sum(executor.map(worker, range(WORKERS)))
    assert done == THREAD_TRANSACTIONS
    _check_shared(app_env, served)
    print(f"{done} threaded transactions in {time.monotonic() - start:.1f}s")


def test_asyncio_tasks_each_see_only_their_own_rows(app_env: AppEnv) -> None:
    asyncio.run(_asyncio_tasks(app_env))


async def _asyncio_tasks(app_env: AppEnv) -> None:
    served: dict[int, set[int]] = defaultdict(set)
    per_task = TASK_TRANSACTIONS // WORKERS

    async def task(i: int) -> int:
        # Each task has its own hessra_context (a ContextVar): the token is
        # never passed explicitly, so this also checks task isolation.
        async with hessra_context(token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
            for n in range(per_task):
                async with pool.connection() as conn:
                    if n % 10 == 9:
                        async with hessra_transaction_async(conn, token=None):
                            seen = await aprobe(conn)
                        assert seen.no_token
                    else:
                        async with hessra_transaction_async(conn):
                            seen = await aprobe(conn)
                        app_env.check_customer(seen, i)
                served[seen.pid].add(i)
                if n % 7 == 0:
                    await asyncio.sleep(0)  # shuffle the interleaving
        return per_task

    start = time.monotonic()
    async with AsyncConnectionPool(app_env.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False,
                                   **hessra_pool_kwargs_async()) as pool:
        await pool.wait()
        done = sum(await asyncio.gather(*(task(i) for i in range(WORKERS))))
    assert done == TASK_TRANSACTIONS
    _check_shared(app_env, served)
    print(f"{done} asyncio transactions in {time.monotonic() - start:.1f}s")
