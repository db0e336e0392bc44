"""SQLAlchemy event hooks that set the token at the start of every transaction.

``install_hessra(target)`` listens for the start of each transaction:

- on a ``sessionmaker`` / ``Session`` (sub)class or instance /
  ``async_sessionmaker`` / ``AsyncSession``: the ORM ``after_begin`` event,
  fired when a session transaction first uses a connection;
- on an ``Engine`` / ``AsyncEngine`` (Core): the ``begin`` event of every
  connection of that engine, whoever uses it (Core, ORM, migrations).

Each time it runs ``SELECT pg_catalog.set_config('hessra.token', <token>,
true), pg_catalog.set_config('hessra.subject', <subject>, true)`` with the
values bound, always both, ``''`` when absent; with
``install_hessra(target, transport="set_local")``, ``SET LOCAL hessra.token =
'<literal>'; SET LOCAL hessra.subject = '<literal>'`` instead, after ``SET
LOCAL citus.propagate_set_commands = 'local'`` when the database has Citus
(asked once per DB-API connection; see :mod:`hessra_pg.context` for the
trade-off). The values are, first found:

1. an explicit per-session / per-connection setting,
   :func:`set_hessra_context` (``Session.info`` or the connection's execution
   options; both live exactly as long as that Session / Connection object);
2. the innermost ``with hessra_context(token=..., subject=...)``;
3. none.

``sqlalchemy.ext.asyncio`` is never imported here: since SQLAlchemy 2.1 it
needs greenlet (the ``sqlalchemy[asyncio]`` extra), which a sync application
need not have. The async types are looked up only once the application has
loaded that module, which it must have done to hold one of them.
"""

from __future__ import annotations

import sys
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker

from hessra_pg.context import (
    CITUS_DETECT_SQL,
    SET_CONFIG,
    SET_CONTEXT_SQL,
    SET_LOCAL,
    HessraContext,
    HessraContextError,
    check_transport,
    current_context,
    set_local_sql,
)

if TYPE_CHECKING:  # only for annotations: importing it needs greenlet
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

__all__ = ["clear_hessra_context", "install_hessra", "set_hessra_context"]

SESSION_INFO_KEY = "hessra_pg.context"
"""``Session.info`` key of the explicit per-session context."""
_APPLIED_KEY = "hessra_pg.applied"
#: The DB-API connection's ``info`` key caching whether its database has Citus.
_CITUS_KEY = "hessra_pg.citus"
EXECUTION_OPTION = "hessra_context"
"""Connection execution option holding the explicit per-connection context."""

# The set_config statement in each DB-API parameter style: values are always
# bound, never formatted into the text.
_STATEMENTS: dict[str, tuple[str, bool]] = {
    "format": (SET_CONTEXT_SQL, False),
    "pyformat": (SET_CONTEXT_SQL, False),
    "numeric_dollar": (SET_CONTEXT_SQL % ("$1", "$2"), False),
    "qmark": (SET_CONTEXT_SQL % ("?", "?"), False),
    "numeric": (SET_CONTEXT_SQL % (":1", ":2"), False),
    "named": (SET_CONTEXT_SQL % (":token", ":subject"), True),
}


_T = TypeVar("_T")


def _loaded_asyncio() -> ModuleType | None:
    """``sqlalchemy.ext.asyncio`` if the application has imported it, else None.

    Every AsyncEngine / AsyncSession / AsyncConnection / async_sessionmaker
    is an instance of a class of that module, so when it is not loaded no
    target can be one: nothing async to unwrap, and no greenlet needed.
    """
    return sys.modules.get("sqlalchemy.ext.asyncio")


def _sync_target(target: Any) -> Any:
    """The sync object behind an AsyncSession or AsyncConnection; anything else unchanged.

    Raises HessraContextError for an AsyncConnection not connected yet.
    """
    asyncio = _loaded_asyncio()
    if asyncio is None:
        return target
    if isinstance(target, asyncio.AsyncSession):
        return target.sync_session
    if isinstance(target, asyncio.AsyncConnection):
        if target.sync_connection is None:
            raise HessraContextError("this AsyncConnection is not connected yet: await it first")
        return target.sync_connection
    return target


def _install_async(target: Any, transport: str) -> bool:
    """Install on an AsyncEngine, async_sessionmaker or AsyncSession; False if it is none of them."""
    asyncio = _loaded_asyncio()
    if asyncio is None:
        return False
    if isinstance(target, asyncio.AsyncEngine):
        _install_engine(target.sync_engine, transport)
    elif isinstance(target, asyncio.async_sessionmaker):
        _install_async_sessionmaker(target, transport)
    elif isinstance(target, asyncio.AsyncSession):
        _install_session(target.sync_session, transport)
    else:
        return False
    return True


def install_hessra(target: _T, *, transport: str = SET_CONFIG) -> _T:
    """Set the token at the start of every transaction of ``target``; returns ``target``.

    ``target``: a ``sessionmaker``, a ``Session`` subclass or instance, a
    ``scoped_session``, an ``async_sessionmaker``, an ``AsyncSession``, an
    ``Engine`` or an ``AsyncEngine``. Installing twice is harmless. Install on
    the session factory *or* on the engine: on both, each transaction sets
    the values twice (the session's win).

    ``transport``: ``"set_config"`` (default: bound parameters) or
    ``"set_local"`` (``SET LOCAL`` with quoted literals, for Citus; the token
    is then in the statement text). Installing again with another transport
    raises :class:`~hessra_pg.context.HessraContextError`.
    """
    check_transport(transport)
    if _install_async(target, transport):
        return target
    if isinstance(target, Engine):
        _install_engine(target, transport)
    elif isinstance(target, (sessionmaker, scoped_session, Session)) or (
        isinstance(target, type) and issubclass(target, Session)
    ):
        _install_session(target, transport)
    else:
        raise TypeError(
            "install_hessra() takes a sessionmaker, Session class or instance, scoped_session, "
            f"async_sessionmaker, AsyncSession, Engine or AsyncEngine, not {type(target).__name__}"
        )
    return target


def set_hessra_context(
    target: Session | AsyncSession | Connection | AsyncConnection,
    token: str | None = None,
    subject: str | None = None,
) -> HessraContext:
    """Run the next transactions of this session or connection under ``token``/``subject``.

    Overrides :func:`~hessra_pg.context.hessra_context` for this object;
    ``token=None`` means "no token" (not "fall back"). Read when a transaction
    begins on a connection, so calling it after ``session.begin()`` but
    before the first query is fine. Changing it once the current transaction
    has run a statement raises :class:`~hessra_pg.context.HessraContextError`:
    commit or roll back first.
    """
    context = HessraContext(token, subject)
    target = _sync_target(target)
    if isinstance(target, Session):
        applied = target.info.get(_APPLIED_KEY)
        if applied is not None and applied != context:
            raise HessraContextError(_CHANGED)
        target.info[SESSION_INFO_KEY] = context
    elif isinstance(target, Connection):
        if target.in_transaction() and target.get_execution_options().get(EXECUTION_OPTION) != context:
            raise HessraContextError(_CHANGED)
        # Execution options belong to this Connection object, which is gone at
        # close(): unlike Connection.info, they never follow the DB-API
        # connection back into the pool.
        target.execution_options(**{EXECUTION_OPTION: context})
    else:
        raise TypeError(f"set_hessra_context() takes a Session or a Connection, not {type(target).__name__}")
    return context


def clear_hessra_context(target: Session | AsyncSession | Connection | AsyncConnection) -> None:
    """Drop the explicit setting of :func:`set_hessra_context`: ``hessra_context`` applies again."""
    try:
        target = _sync_target(target)
    except HessraContextError:
        return  # an AsyncConnection not connected yet has no setting to drop
    if isinstance(target, Session):
        target.info.pop(SESSION_INFO_KEY, None)
    elif isinstance(target, Connection):
        target.execution_options(**{EXECUTION_OPTION: None})
    else:
        raise TypeError(f"clear_hessra_context() takes a Session or a Connection, not {type(target).__name__}")


_CHANGED = ("the current transaction already set another hessra token: commit or roll back before "
            "changing it (the token is set once, when a transaction begins)")


# --- engines -----------------------------------------------------------------------------


# What install_hessra() already listened on, with its transport. Not
# event.contains(): SQLAlchemy keys its listener registry by id(), and a new
# class can reuse the id of a collected one (a fresh sessionmaker then looked
# installed and was not).
_installed: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _first_install(target: Any, transport: str) -> bool:
    """True when ``target`` has no hooks yet (it is then recorded with ``transport``)."""
    installed = _installed.get(target)
    if installed is None:
        _installed[target] = transport
        return True
    if installed != transport:
        raise HessraContextError(f"install_hessra() was already called on this target with transport "
                                 f"{installed!r}: one transport per engine or session factory")
    return False


def _install_engine(engine: Engine, transport: str) -> None:
    if _first_install(engine, transport):
        event.listen(engine, "begin", _on_engine_begin_set_local if transport == SET_LOCAL else _on_engine_begin)


def _engine_context(connection: Connection) -> HessraContext:
    return connection.get_execution_options().get(EXECUTION_OPTION) or current_context()


def _on_engine_begin(connection: Connection) -> None:
    # SQLAlchemy runs this inside Connection.begin() with autobegin disabled,
    # before the DB-API transaction starts: our statement opens it.
    _apply(connection, _engine_context(connection))


def _on_engine_begin_set_local(connection: Connection) -> None:
    _apply_set_local(connection, _engine_context(connection))


# --- sessions ----------------------------------------------------------------------------


def _install_session(target: Any, transport: str) -> None:
    # Listen on what SQLAlchemy would: a sessionmaker's private class, a
    # scoped_session's factory's class, or the Session class or instance.
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        target = target.class_
    if _first_install(target, transport):
        event.listen(target, "after_begin", _after_begin_set_local if transport == SET_LOCAL else _after_begin)
        event.listen(target, "after_transaction_end", _after_transaction_end)


def _install_async_sessionmaker(maker: async_sessionmaker[Any], transport: str) -> None:
    # AsyncSessions run a plain Session (sync_session_class, by default the
    # global Session class). Events go on a subclass private to this factory,
    # so other factories and sessions are not affected.
    base = maker.kw.get("sync_session_class") or getattr(maker.class_, "sync_session_class", Session)
    if getattr(base, "_hessra_pg_factory", None) is maker:
        _first_install(base, transport)  # the same transport again, or an error
        return
    private = type(base.__name__, (base,), {"_hessra_pg_factory": maker})
    _install_session(private, transport)
    maker.configure(sync_session_class=private)


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    context = session.info.get(SESSION_INFO_KEY) or current_context()
    _apply(connection, context)
    session.info[_APPLIED_KEY] = context


def _after_begin_set_local(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    context = session.info.get(SESSION_INFO_KEY) or current_context()
    _apply_set_local(connection, context)
    session.info[_APPLIED_KEY] = context


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction, not a savepoint
        session.info.pop(_APPLIED_KEY, None)


# --- the statement -----------------------------------------------------------------------


def _apply(connection: Connection, context: HessraContext) -> None:
    # Straight to the DB-API cursor rather than Connection.execute(): with
    # echo=True SQLAlchemy logs bound parameters, which would put the token in
    # the application's log. (Under asyncio this is the adapted cursor, which
    # awaits inside SQLAlchemy's greenlet.)
    statement, named = _STATEMENTS.get(connection.dialect.paramstyle, (None, False))
    if statement is None:
        raise HessraContextError(f"unsupported DB-API paramstyle {connection.dialect.paramstyle!r}")
    token, subject = context.params
    params: Any = {"token": token, "subject": subject} if named else (token, subject)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(statement, params)
    finally:
        cursor.close()


def _apply_set_local(connection: Connection, context: HessraContext) -> None:
    # The set_local transport, on the DB-API cursor for the same reason as
    # _apply. Whether the database has Citus is kept in the DB-API
    # connection's info, which lives as long as that server connection
    # (across pool checkouts), so it is asked once per connection.
    fairy = connection.connection
    cursor = fairy.cursor()
    try:
        citus = fairy.info.get(_CITUS_KEY)
        if citus is None:
            cursor.execute(CITUS_DETECT_SQL)
            citus = fairy.info[_CITUS_KEY] = bool(cursor.fetchone()[0])
        driver = fairy.driver_connection
        # psycopg quotes for its own connection; any other driver gets the
        # literal form that reads the same under every standard_conforming_strings.
        quoting = driver if type(driver).__module__.startswith("psycopg.") else None
        # Two or more statements in one string: psycopg never prepares it, so
        # the token's text is not kept in pg_prepared_statements.
        cursor.execute(set_local_sql(context, citus=citus, conn=quoting))
    finally:
        cursor.close()
