"""A psycopg 3 transaction that runs under a token (sync and async twins)."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from hessra_pg.context import (
    CITUS_DETECT_SQL,
    SET_CONFIG,
    SET_CONTEXT_SQL,
    SET_LOCAL,
    UNSET,
    HessraContext,
    HessraContextError,
    _Unset,
    check_transport,
    resolve_context,
    set_local_sql,
)

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


# Whether Citus is installed, per connection: asked once, by the first
# set_local transaction of a connection (an extension is not created or
# dropped under a running application; reconnecting asks again).
_citus: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _set_local(conn: psycopg.Connection[Any], context: HessraContext) -> None:
    citus = _citus.get(conn)
    if citus is None:
        citus = _citus[conn] = bool(conn.execute(CITUS_DETECT_SQL).fetchone()[0])  # type: ignore[index]
    # Never prepared: a prepared statement would keep the token's text in
    # pg_prepared_statements for the session (and several statements can't be prepared).
    conn.execute(set_local_sql(context, citus=citus, conn=conn), prepare=False)


async def _set_local_async(conn: psycopg.AsyncConnection[Any], context: HessraContext) -> None:
    citus = _citus.get(conn)
    if citus is None:
        row = await (await conn.execute(CITUS_DETECT_SQL)).fetchone()
        citus = _citus[conn] = bool(row[0])  # type: ignore[index]
    await conn.execute(set_local_sql(context, citus=citus, conn=conn), prepare=False)


@contextmanager
def hessra_transaction(
    conn: psycopg.Connection[Any],
    token: str | None | _Unset = UNSET,
    subject: str | None | _Unset = UNSET,
    *,
    transport: str = SET_CONFIG,
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

    ``transport="set_local"`` sends ``SET LOCAL`` statements with quoted
    literals instead of bound ``set_config()`` parameters (for Citus, which
    forwards only ``SET LOCAL`` to its workers; the token is then in the
    statement text: see :mod:`hessra_pg.context`).
    """
    context = resolve_context(token, subject)
    check_transport(transport)
    _check_idle(conn)
    with conn.transaction() as tx:
        # Always both settings, '' for none: a transaction without a token
        # also overrides anything a session-level SET left on the connection.
        if transport == SET_LOCAL:
            _set_local(conn, context)
        else:
            conn.execute(SET_CONTEXT_SQL, context.params)
        yield tx


@asynccontextmanager
async def hessra_transaction_async(
    conn: psycopg.AsyncConnection[Any],
    token: str | None | _Unset = UNSET,
    subject: str | None | _Unset = UNSET,
    *,
    transport: str = SET_CONFIG,
) -> AsyncIterator[psycopg.AsyncTransaction]:
    """:func:`hessra_transaction` for an :class:`~psycopg.AsyncConnection`: ``async with``."""
    context = resolve_context(token, subject)
    check_transport(transport)
    _check_idle(conn)
    async with conn.transaction() as tx:
        if transport == SET_LOCAL:
            await _set_local_async(conn, context)
        else:
            await conn.execute(SET_CONTEXT_SQL, context.params)
        yield tx
