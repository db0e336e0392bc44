"""Shared fixtures for tests against a real Postgres with hessra_authz."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.testing import HessraDatabase
from tests import vectors


@pytest.fixture
def admin(hessra_db: HessraDatabase) -> Iterator[psycopg.Connection]:
    """A superuser connection to the test database, autocommit."""
    with hessra_db.connect(autocommit=True) as conn:
        yield conn


@pytest.fixture
def vector_key(admin: psycopg.Connection) -> int:
    """Register the root key that signed every vector token."""
    return admin.execute("SELECT hessra_authz.add_key(%s)", (vectors.root_key_pem(),)).fetchone()[0]


@pytest.fixture
def root(admin: psycopg.Connection):
    """A fresh P-256 root key pair registered in the keys table (kid 100)."""
    pair = generate_keypair("secp256r1")
    admin.execute("SELECT hessra_authz.add_key(%s, 100)", (str(pair.public_key),))
    return pair


@pytest.fixture
def app_role(hessra_db: HessraDatabase, admin: psycopg.Connection) -> Iterator[str]:
    """An ordinary login role: not superuser, no BYPASSRLS, owns nothing."""
    name = f"app_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB").format(sql.Identifier(name)))
    yield name
    admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def scalar(conn: psycopg.Connection, query: str, params=()):
    return conn.execute(query, params).fetchone()[0]


# The application-side fixture shared by the SQLAlchemy/psycopg/pgbouncer/log tests.
from tests.app_helpers import app_env  # noqa: E402,F401
