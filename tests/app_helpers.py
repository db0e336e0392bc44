"""Shared setup for the application-side tests (SQLAlchemy, psycopg, pgbouncer, logs).

``app_env`` builds, in the test database:

- ``orders``: 3 rows under ``(SELECT hessra_authz.authorized('orders', 'read'))``;
- ``customer_orders``: ``i + 1`` rows for each customer ``cust<i>``, visible
  when the token grants ``customer_orders/cust<i>`` (``authorized_resources``),
  so a transaction that sees anything but exactly its own customer's rows is
  caught;
- ``documents``: rows owned by identities (``owner = current_identity()``);

and an Ed25519 root key (cheap to verify) with tokens for each of those.
Import the fixture into a test module: ``from tests.app_helpers import app_env``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from hessra_pg.tokens.identity import mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.dev.testing import HessraDatabase

CUSTOMERS = 8

SCHEMA = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.orders VALUES (1, 'acme'), (2, 'globex'), (3, 'initech');
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));

CREATE TABLE public.customer_orders (id serial PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.customer_orders (customer)
    SELECT 'cust' || c FROM generate_series(0, {last}) AS c, generate_series(0, c) AS n;
ALTER TABLE public.customer_orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.customer_orders FORCE ROW LEVEL SECURITY;
CREATE POLICY customer_orders_read ON public.customer_orders FOR SELECT
    USING ('customer_orders/' || customer = ANY ((SELECT hessra_authz.authorized_resources('read'))::text[]));

CREATE TABLE public.documents (id serial PRIMARY KEY, owner text NOT NULL, body text);
INSERT INTO public.documents (owner, body) VALUES
    ('urn:hessra:alice', 'alice 1'), ('urn:hessra:alice', 'alice 2'), ('urn:hessra:bob', 'bob 1');
ALTER TABLE public.documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.documents FORCE ROW LEVEL SECURITY;
CREATE POLICY documents_owner ON public.documents FOR SELECT
    USING (owner = (SELECT hessra_authz.current_identity()));
"""

# One statement that tells what a transaction can see: its settings, the
# backend serving it, and the rows of each table.
PROBE = """
SELECT pg_catalog.current_setting('hessra.token', true),
       pg_catalog.current_setting('hessra.subject', true),
       pg_catalog.pg_backend_pid(),
       (SELECT count(*) FROM public.orders),
       (SELECT count(*) FROM public.documents),
       (SELECT coalesce(array_agg(DISTINCT customer), '{}') FROM public.customer_orders),
       (SELECT count(*) FROM public.customer_orders)
"""


@dataclass(frozen=True)
class Seen:
    """What one transaction saw (see PROBE)."""

    token: str | None
    subject: str | None
    pid: int
    orders: int
    documents: int
    customers: list[str]
    customer_rows: int

    @property
    def no_token(self) -> bool:
        """No token in the settings ('' and NULL both mean none) and no row of any table."""
        return (not self.token and not self.subject and self.orders == 0 and self.documents == 0
                and self.customer_rows == 0)


def probe_row(row: Any) -> Seen:
    return Seen(row[0], row[1], row[2], row[3], row[4], list(row[5]), row[6])


@dataclass(frozen=True)
class AppEnv:
    db: HessraDatabase
    role: str
    dsn: str
    """The application role's DSN (not owner, not superuser, no BYPASSRLS)."""
    orders_token: str
    """alice may read orders."""
    identity_token: str
    """Identity token for urn:hessra:alice."""
    customer_tokens: list[str] = field(repr=False)
    """customer_tokens[i]: user<i> may read customer_orders/cust<i>."""

    @staticmethod
    def customer_subject(i: int) -> str:
        return f"user{i}"

    @staticmethod
    def customer_rows(i: int) -> int:
        return i + 1

    def check_customer(self, seen: Seen, i: int) -> None:
        """Assert a transaction run under customer_tokens[i] saw exactly cust<i>'s rows."""
        assert seen.subject == self.customer_subject(i)
        assert seen.token == self.customer_tokens[i]
        assert seen.customers == [f"cust{i}"], (i, seen.customers)
        assert seen.customer_rows == self.customer_rows(i)
        assert seen.orders == 0 and seen.documents == 0

    def sqlalchemy_url(self, async_: bool = False, dsn: str | None = None) -> Any:
        return sqlalchemy_url(dsn or self.dsn, async_)


def sqlalchemy_url(dsn: str, async_: bool = False) -> Any:
    """A SQLAlchemy URL (psycopg 3 driver, sync or async) for a libpq DSN."""
    from sqlalchemy.engine import URL

    params = conninfo_to_dict(dsn)
    query = {"host": str(params["host"]), "port": str(params["port"])}
    return URL.create("postgresql+psycopg_async" if async_ else "postgresql+psycopg",
                      username=str(params["user"]), database=str(params["dbname"]), query=query)


@pytest.fixture
def app_env(hessra_db: HessraDatabase, admin: psycopg.Connection, app_role: str) -> AppEnv:
    admin.execute(SCHEMA.format(last=CUSTOMERS - 1))
    for table in ("orders", "customer_orders", "documents"):
        admin.execute(sql.SQL("GRANT SELECT ON public.{} TO {}").format(sql.Identifier(table),
                                                                       sql.Identifier(app_role)))
    root = generate_keypair()  # Ed25519: the cheapest signature to verify
    admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
    return AppEnv(
        db=hessra_db,
        role=app_role,
        dsn=hessra_db.dsn_for(app_role),
        orders_token=mint_authorization(root, "alice", "orders", "read"),
        identity_token=mint_identity(root, "urn:hessra:alice"),
        customer_tokens=[mint_authorization(root, AppEnv.customer_subject(i), f"customer_orders/cust{i}", "read")
                         for i in range(CUSTOMERS)],
    )
