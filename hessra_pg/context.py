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

from hessra_pg.errors import HessraContextError, HessraError

__all__ = [
    "CLEAR_SESSION_SQL",
    "NO_CONTEXT",
    "SET_CONTEXT_SQL",
    "UNSET",
    "HessraContext",
    "HessraContextError",
    "current_context",
    "hessra_context",
    "resolve_context",
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
