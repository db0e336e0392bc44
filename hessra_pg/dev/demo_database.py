"""How the authority demo's application hands its token to Postgres.

With SQLAlchemy (the ``sqlalchemy`` extra): the engine hook,
``install_hessra(engine)``, and ``with hessra_context(token=..., subject=...)``
around the unit of work. Without it: the psycopg hook,
``with hessra_transaction(conn, token=..., subject=...)``. Either way the
token is set transaction-locally with bound parameters, and the demo sees
what RLS lets through as the application role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..context import hessra_context

__all__ = ["AppDatabase", "PsycopgApp", "Seen", "SqlAlchemyApp", "app_database"]

ORDERS_SQL = "SELECT id, customer, total FROM public.orders ORDER BY id"
# Why RLS let the rows through or not: the application role sees reasons
# with key details folded into bad_signature (docs/security.md).
EXPLAIN_SQL = ("SELECT hessra_authz.explain(hessra_authz.current_token(), hessra_authz.current_subject(), "
               "'orders', 'read')->>'reason'")


@dataclass(frozen=True)
class Seen:
    """The orders one transaction saw, and explain()'s reason."""

    rows: list[tuple[Any, ...]]
    reason: str


class AppDatabase(Protocol):
    via: str
    """The hook, as the application would write it (for the narration)."""

    def read_orders(self, token: str | None, subject: str | None) -> Seen: ...

    def close(self) -> None: ...


def app_database(dsn: str) -> AppDatabase:
    """The SQLAlchemy hook when SQLAlchemy is installed, else the psycopg hook."""
    try:
        return SqlAlchemyApp(dsn)
    except ImportError:  # MissingExtraError is one: hessra-pg[sqlalchemy] is not installed
        return PsycopgApp(dsn)


class SqlAlchemyApp:
    """A SQLAlchemy engine of the application role with the hessra hook."""

    via = ("SQLAlchemy hook: install_hessra(engine); "
           "with hessra_context(token=token, subject=identity): conn.execute(...)")

    def __init__(self, dsn: str) -> None:
        import psycopg
        from sqlalchemy import create_engine, text

        from ..sqlalchemy import install_hessra

        self._text = text
        # A libpq conninfo string (the cluster's socket) rather than a URL.
        self._engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
        install_hessra(self._engine)

    def read_orders(self, token: str | None, subject: str | None) -> Seen:
        with hessra_context(token=token, subject=subject), self._engine.connect() as conn:
            # One transaction (autobegin): the hook set the token at its start.
            rows = [tuple(row) for row in conn.execute(self._text(ORDERS_SQL))]
            reason = conn.execute(self._text(EXPLAIN_SQL)).scalar_one()
        return Seen(rows, str(reason))

    def close(self) -> None:
        self._engine.dispose()


class PsycopgApp:
    """A psycopg connection of the application role with hessra_transaction."""

    via = "psycopg hook: with hessra_transaction(conn, token=token, subject=identity): conn.execute(...)"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)

    def read_orders(self, token: str | None, subject: str | None) -> Seen:
        from ..psycopg import hessra_transaction

        with hessra_transaction(self._conn, token=token, subject=subject):
            rows = [tuple(row) for row in self._conn.execute(ORDERS_SQL).fetchall()]
            row = self._conn.execute(EXPLAIN_SQL).fetchone()
        return Seen(rows, str(row[0] if row else None))

    def close(self) -> None:
        self._conn.close()
