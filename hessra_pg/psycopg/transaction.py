"""A psycopg 3 transaction that runs under a token (sync and async twins)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from hessra_pg.context import SET_CONTEXT_SQL, UNSET, HessraContextError, _Unset, resolve_context

__all__ = ["hessra_transaction", "hessra_transaction_async"]


def _check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    # Inside an open transaction, conn.transaction() would be a SAVEPOINT:
    # a set_config(..., true) made there survives RELEASE and outlives the
    # block until the outer transaction ends. Refuse instead.
    status = conn.info.transaction_status
    if status != TransactionStatus.IDLE:
        raise HessraContextError(
            f"hessra_transaction needs a connection with no open transaction (status {status.name}): "
            "commit or roll back first, so that the token lives exactly as long as this block"
        )


@contextmanager
def hessra_transaction(
    conn: psycopg.Connection[Any],
    token: str | None | _Unset = UNSET,
    subject: str | None | _Unset = UNSET,
) -> Iterator[psycopg.Transaction]:
    """Open a transaction on ``conn`` in which ``hessra.token``/``hessra.subject`` are set.

    ``with hessra_transaction(conn, token=t, subject=s):`` begins a
    transaction, sets both settings transaction-locally with bound parameters
    and commits at the end of the block (rolls back on an exception). The
    settings die with the transaction, so the connection carries no token
    afterwards. With neither ``token`` nor ``subject`` given, the current
    :func:`~hessra_pg.context.hessra_context` is used; given ``None`` (or
    omitted while the other is given) means none. Yields psycopg's
    :class:`~psycopg.Transaction`. The connection must not be inside a
    transaction already (:class:`~hessra_pg.context.HessraContextError`).
    """
    context = resolve_context(token, subject)
    _check_idle(conn)
    with conn.transaction() as tx:
        # Always both settings, '' for none: a transaction without a token
        # also overrides anything a session-level SET left on the connection.
        conn.execute(SET_CONTEXT_SQL, context.params)
        yield tx


@asynccontextmanager
async def hessra_transaction_async(
    conn: psycopg.AsyncConnection[Any],
    token: str | None | _Unset = UNSET,
    subject: str | None | _Unset = UNSET,
) -> AsyncIterator[psycopg.AsyncTransaction]:
    """:func:`hessra_transaction` for an :class:`~psycopg.AsyncConnection`: ``async with``."""
    context = resolve_context(token, subject)
    _check_idle(conn)
    async with conn.transaction() as tx:
        await conn.execute(SET_CONTEXT_SQL, context.params)
        yield tx
