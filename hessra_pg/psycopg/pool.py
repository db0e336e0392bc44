"""psycopg_pool callbacks that return connections to the pool without a token.

Tokens set by :func:`~hessra_pg.psycopg.hessra_transaction` are
transaction-local and already gone when a connection goes back to the pool.
The reset callback is defence in depth against code that set them at session
level (``SET hessra.token``, ``set_config(..., false)``): it clears both, so
the next borrower starts clean whatever happened before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from hessra_pg.context import CLEAR_SESSION_SQL

__all__ = ["hessra_pool_kwargs", "hessra_pool_kwargs_async", "reset_hessra", "reset_hessra_async"]

# What transaction pooling (pgbouncer pool_mode = transaction) needs from
# psycopg: no server-side prepared statements, because the next transaction
# may run on another server connection that never saw the PREPARE.
PGBOUNCER_CONNECT_KWARGS: dict[str, Any] = {"prepare_threshold": None}


def reset_hessra(conn: psycopg.Connection[Any]) -> None:
    """Pool ``reset`` callback: clear ``hessra.token``/``hessra.subject`` for the session.

    Leaves the connection idle, as psycopg_pool requires. (``DISCARD ALL``
    would also do it but drops prepared statements and temp tables too.)
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()
    conn.execute(CLEAR_SESSION_SQL)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        # Not autocommit: the statement opened a transaction; keep its effect.
        conn.commit()


async def reset_hessra_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """:func:`reset_hessra` for an :class:`~psycopg_pool.AsyncConnectionPool`."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await conn.rollback()
    await conn.execute(CLEAR_SESSION_SQL)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await conn.commit()


def hessra_pool_kwargs(
    *,
    pgbouncer: bool = False,
    reset: Callable[[psycopg.Connection[Any]], None] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :class:`psycopg_pool.ConnectionPool`: ``ConnectionPool(dsn, **hessra_pool_kwargs())``.

    Sets ``reset`` to :func:`reset_hessra` (after your own ``reset``, if
    given). ``pgbouncer=True`` adds ``prepare_threshold=None`` to the
    connection ``kwargs`` (merged with yours) for transaction pooling.
    """
    def chained(conn: psycopg.Connection[Any]) -> None:
        if reset is not None:
            reset(conn)
        reset_hessra(conn)

    return {"reset": chained if reset is not None else reset_hessra, "kwargs": _connect_kwargs(pgbouncer, kwargs)}


def hessra_pool_kwargs_async(
    *,
    pgbouncer: bool = False,
    reset: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`hessra_pool_kwargs` for :class:`psycopg_pool.AsyncConnectionPool`."""
    async def chained(conn: psycopg.AsyncConnection[Any]) -> None:
        if reset is not None:
            await reset(conn)
        await reset_hessra_async(conn)

    return {"reset": chained if reset is not None else reset_hessra_async,
            "kwargs": _connect_kwargs(pgbouncer, kwargs)}


def _connect_kwargs(pgbouncer: bool, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(kwargs or {})
    if pgbouncer:
        merged.update(PGBOUNCER_CONNECT_KWARGS)
    return merged
