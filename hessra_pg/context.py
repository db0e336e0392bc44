"""The per-transaction token context shared by the SQLAlchemy and psycopg hooks.

The database reads the token from the settings ``hessra.token`` and
``hessra.subject``. The application sets both at the start of every
transaction, transaction-locally and with bound parameters::

    SELECT FROM pg_catalog.set_config('hessra.token', $1, true) AS hessra_token,
                pg_catalog.set_config('hessra.subject', $2, true) AS hessra_subject

(:data:`SET_CONTEXT_SQL`; an empty select list, so the token is not sent
back to the client). ``is_local = true`` makes the values vanish at
COMMIT or ROLLBACK, so a pooled connection never carries them to its next
user; binding keeps the token out of the query text (``pg_stat_activity``,
``log_statement``). Both settings are always set, to ``''`` when absent, so a
transaction without a token never sees an older one.

A second transport, ``transport="set_local"`` (:data:`SET_LOCAL`), sends
``SET LOCAL hessra.token = '<literal>'`` and ``SET LOCAL hessra.subject =
'<literal>'`` instead (quoted by ``psycopg.sql.Literal``), preceded by ``SET
LOCAL citus.propagate_set_commands = 'local'`` where Citus is installed in the
database: Citus forwards ``SET LOCAL`` to the workers that run a distributed
query, never a ``set_config()`` value. The price is that the token is in the
statement text (``log_statement = 'all'``, ``pg_stat_activity``,
``pg_stat_statements`` with ``track_utility``): docs/scale-out.md says what
to switch off. ``SET LOCAL`` ends with the transaction like ``set_config(...,
true)``, so nothing outlives COMMIT or ROLLBACK either way.

Values come from an explicit argument or from :func:`hessra_context`, a
context manager backed by a :class:`~contextvars.ContextVar` (per thread, per
asyncio task), so a web request handler can say "everything in this request
runs under this token".

This module imports neither SQLAlchemy nor psycopg: ``hessra_pg`` is also
imported inside the database server.
"""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from hessra_pg.errors import HessraContextError, HessraError

__all__ = [
    "CITUS_DETECT_SQL",
    "CLEAR_SESSION_SQL",
    "NO_CONTEXT",
    "SET_CONFIG",
    "SET_CONTEXT_SQL",
    "SET_LOCAL",
    "TRANSPORTS",
    "UNSET",
    "HessraContext",
    "HessraContextError",
    "current_context",
    "hessra_context",
    "check_transport",
    "resolve_context",
    "set_local_sql",
]

# psycopg / DB-API "format" placeholders. Only placeholders, never values:
# the token is always sent as a bound parameter.
SET_CONTEXT_SQL = (
    "SELECT FROM pg_catalog.set_config('hessra.token', %s, true) AS hessra_token, "
    "pg_catalog.set_config('hessra.subject', %s, true) AS hessra_subject"
)
"""Set both settings for the current transaction only (parameters: token, subject)."""

CLEAR_SESSION_SQL = (
    "SELECT pg_catalog.set_config('hessra.token', '', false), "
    "pg_catalog.set_config('hessra.subject', '', false)"
)
"""Clear both settings at session level (for pool reset callbacks)."""

SET_CONFIG = "set_config"
"""The default transport: ``set_config(..., true)`` with bound parameters."""
SET_LOCAL = "set_local"
"""The Citus transport: ``SET LOCAL`` with quoted literals (the token is in the statement text)."""
TRANSPORTS: tuple[str, ...] = (SET_CONFIG, SET_LOCAL)

CITUS_DETECT_SQL = "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')"
"""Whether Citus is installed in the connected database (asked once per connection)."""


@dataclass(frozen=True)
class HessraContext:
    """A token and the subject presenting it; either may be None (= none).

    The token is left out of ``repr()`` so that logging a context never logs
    the token.
    """

    token: str | None = field(default=None, repr=False)
    subject: str | None = None

    def __post_init__(self) -> None:
        # A bytes token would be sent as bytea and compared as its hex text:
        # refuse it here rather than deny every query for an obscure reason.
        for name in ("token", "subject"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"hessra {name} must be a str or None, not {type(value).__name__}")

    @property
    def params(self) -> tuple[str, str]:
        """The bound parameters of :data:`SET_CONTEXT_SQL`: ``''`` for none."""
        return (self.token or "", self.subject or "")

    def __repr__(self) -> str:
        token = "<set>" if self.token else None
        return f"HessraContext(token={token}, subject={self.subject!r})"


def check_transport(transport: str) -> str:
    """``transport`` if it names one of :data:`TRANSPORTS`; HessraContextError otherwise."""
    if transport not in TRANSPORTS:
        raise HessraContextError(f"unknown hessra transport {transport!r}: use {' or '.join(map(repr, TRANSPORTS))}")
    return transport


def set_local_sql(context: HessraContext, *, citus: bool, conn: Any = None) -> str:
    """The statements of the ``set_local`` transport, as one string: ``SET LOCAL
    citus.propagate_set_commands = 'local'`` (with ``citus``), then ``SET LOCAL``
    of both settings, ``''`` for none. Literals are quoted by
    ``psycopg.sql.Literal`` for ``conn`` (a psycopg connection) or, without one,
    in the form that reads the same whatever ``standard_conforming_strings``
    says. The result contains the token: never log it.
    """
    from psycopg import sql  # not at import time: hessra_pg also runs inside the server

    token, subject = context.params
    for name, value in (("token", token), ("subject", subject)):
        if "\x00" in value:
            # Said here, without the value: psycopg's own error would come from deep inside quoting.
            raise HessraContextError(f"hessra {name} must not contain a NUL character")
    statements = [sql.SQL("SET LOCAL hessra.token = {}").format(sql.Literal(token)),
                  sql.SQL("SET LOCAL hessra.subject = {}").format(sql.Literal(subject))]
    if citus:
        # Without it Citus keeps SET LOCAL on the coordinator (its default is 'none').
        statements.insert(0, sql.SQL("SET LOCAL citus.propagate_set_commands = 'local'"))
    return sql.SQL("; ").join(statements).as_string(conn)


NO_CONTEXT = HessraContext()
"""No token, no subject: what a transaction gets when nothing was set."""

_current: contextvars.ContextVar[HessraContext] = contextvars.ContextVar("hessra_pg_context", default=NO_CONTEXT)


def current_context() -> HessraContext:
    """The context set by the innermost active :func:`hessra_context` (or :data:`NO_CONTEXT`)."""
    return _current.get()


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
"""Default of ``token`` / ``subject`` arguments: "not given, use the current context"."""


def resolve_context(token: str | None | _Unset = UNSET, subject: str | None | _Unset = UNSET) -> HessraContext:
    """The context for explicit arguments, else the current :func:`hessra_context`.

    Both omitted: the current context. Either given: exactly the arguments
    (an omitted one is None), never half from the arguments and half from the
    context, because a token and its subject belong together.
    """
    if token is UNSET and subject is UNSET:
        return current_context()
    return HessraContext(None if token is UNSET else token, None if subject is UNSET else subject)


class hessra_context:  # noqa: N801 (used like a function: `with hessra_context(...)`)
    """Run the enclosed code under a token: ``with hessra_context(token=t, subject=s):``.

    Also ``async with``. Transactions *started* inside the block (by the
    SQLAlchemy hooks, or by ``hessra_transaction`` without explicit values)
    set this token and subject; the value is read when a transaction begins,
    not per statement. Nested blocks override and restore the outer value;
    ``hessra_context()`` with no arguments means "no token" inside it.

    Backed by a ContextVar: every thread and every asyncio task has its own.
    asyncio tasks inherit the value current when they are created; plain
    threads (and ``loop.run_in_executor``) start without one, while
    ``asyncio.to_thread`` and ``contextvars.copy_context().run`` carry it.
    """

    def __init__(self, token: str | None = None, subject: str | None = None) -> None:
        self.context = HessraContext(token, subject)
        # A stack, so the same object may be entered again while active.
        self._resets: list[contextvars.Token[HessraContext]] = []

    def __enter__(self) -> HessraContext:
        self._resets.append(_current.set(self.context))
        return self.context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.reset(self._resets.pop())

    async def __aenter__(self) -> HessraContext:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"hessra_context({self.context!r})"
