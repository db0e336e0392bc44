"""A multi-tenant schema guarded by generated hessra policies, for the policy test tests.

- ``shop.orders``: designation policies, label ``tenant_id`` from the column
  (capability tokens for resource ``orders``, designated to a tenant);
- ``shop.invoices``: row policies, each row's resource ``invoices/<id>``
  (authorization tokens);
- ``shop.announcements``: a table policy on resource ``announcements``;
- ``shop.documents``: rows owned by identities (identity tokens).

The application role gets SELECT/INSERT/UPDATE/DELETE on all of them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from hessra_pg.rls.policies import PolicySpec, generate_sql

TABLES = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, tenant_id text NOT NULL, item text NOT NULL);
INSERT INTO shop.orders VALUES (1, 'acme', 'anvil'), (2, 'acme', 'rocket'), (3, 'globex', 'lamp'),
                               (4, 'initech', 'stapler');
CREATE TABLE shop.invoices (id int PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO shop.invoices VALUES (1, 10.50), (2, 20), (3, 30);
CREATE TABLE shop.announcements (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO shop.announcements VALUES (1, 'hello'), (2, 'maintenance on sunday');
CREATE TABLE shop.documents (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
INSERT INTO shop.documents VALUES (1, 'urn:hessra:alice', 'alice 1'), (2, 'urn:hessra:alice', 'alice 2'),
                                  (3, 'urn:hessra:bob', 'bob 1');
"""

SPECS = [
    PolicySpec(table="orders", schema="shop", mode="designation", designations={"tenant_id": "tenant_id"}),
    PolicySpec(table="invoices", schema="shop", mode="row", expression="'invoices/' || id"),
    PolicySpec(table="announcements", schema="shop", mode="table", resource="announcements"),
    PolicySpec(table="documents", schema="shop", mode="identity", owner_column="owner"),
]


def create_shop(admin: psycopg.Connection, app_role: str) -> None:
    """The schema, its policies and the application role's grants (admin: autocommit superuser)."""
    admin.execute(TABLES.encode())
    admin.execute(generate_sql(SPECS).encode())
    role = sql.Identifier(app_role)
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(role))
    admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop TO {}").format(role))


def keys_snapshot(admin: psycopg.Connection) -> list[tuple]:
    """Every row of the keys table, to show a run left nothing behind."""
    return admin.execute("SELECT * FROM hessra_authz.keys ORDER BY kid").fetchall()


def data_snapshot(admin: psycopg.Connection) -> list[tuple]:
    return admin.execute(
        "SELECT 'orders', count(*) FROM shop.orders UNION ALL SELECT 'invoices', count(*) FROM shop.invoices "
        "UNION ALL SELECT 'announcements', count(*) FROM shop.announcements ORDER BY 1").fetchall()
