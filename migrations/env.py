"""Alembic environment: an empty PostgreSQL database -> hessra-ready, and back.

Run from the repository root (alembic.ini is there)::

    alembic -x dsn=postgresql://postgres@/app -x policy_repo=./policies upgrade head
    alembic -x dsn=postgresql://postgres@/app downgrade base
    alembic -x policy_repo=./policies upgrade head --sql     # print the SQL instead

Settings: ``-x NAME=VALUE``, else the environment variable, else the default.

=============  ==========================================  ===========================================
name           environment                                 meaning
=============  ==========================================  ===========================================
dsn            HESSRA_DATABASE_URL, DATABASE_URL,          the database (libpq DSN or URI, or an
               alembic.ini sqlalchemy.url                  SQLAlchemy ``postgresql+psycopg://`` URL)
policy_repo    HESSRA_POLICY_REPO                          Hessra policy repository directory:
                                                           ``resources.toml`` (service chains) and
                                                           ``public_key.pem`` / ``hessra_key.pem``
app_role       HESSRA_APP_ROLE (default ``hessra_app``)    the application role (created if missing)
app_login      HESSRA_APP_LOGIN (default false)            create it with LOGIN (set its password
                                                           yourself: ``\\password hessra_app``)
admin_roles    HESSRA_ADMIN_ROLES (comma-separated)        existing roles granted ``hessra_admin``
demo           HESSRA_DEMO (default true)                  revision 2 creates the ``demo`` schema
=============  ==========================================  ===========================================

Root public keys are also read from HESSRA_PUBLIC_KEY (PEM, alg/hex or
base64 PEM) or HESSRA_PUBLIC_KEY_FILE. Migrations run as a superuser
(CREATE EXTENSION hessra_authz needs one). A connection given in
``config.attributes["connection"]`` is used as is (programmatic runs).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL, make_url

import hessra_pg.alembic  # noqa: F401  (registers op.create_hessra_extension, op.add_hessra_key, ...)

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None  # these migrations are hand-written; see hessra_pg.alembic for autogenerate

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _setting(x: dict[str, str], name: str, env: tuple[str, ...], default: str | None = None) -> str | None:
    if name in x:
        return x[name]
    for variable in env:
        if os.environ.get(variable):
            return os.environ[variable]
    return default


def _flag(x: dict[str, str], name: str, env: str, default: bool) -> bool:
    value = _setting(x, name, (env,))
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def hessra_settings() -> dict[str, Any]:
    """The settings the revisions read from ``config.attributes["hessra"]``."""
    x = context.get_x_argument(as_dictionary=True)
    admin_roles = _setting(x, "admin_roles", ("HESSRA_ADMIN_ROLES",), "") or ""
    return {
        "policy_repo": _setting(x, "policy_repo", ("HESSRA_POLICY_REPO",)),
        "app_role": _setting(x, "app_role", ("HESSRA_APP_ROLE",), "hessra_app"),
        "app_login": _flag(x, "app_login", "HESSRA_APP_LOGIN", False),
        "admin_roles": [r.strip() for r in admin_roles.split(",") if r.strip()],
        "demo": _flag(x, "demo", "HESSRA_DEMO", True),
    }


def _database() -> str | None:
    x = context.get_x_argument(as_dictionary=True)
    return _setting(x, "dsn", ("HESSRA_DATABASE_URL", "DATABASE_URL")) or config.get_main_option("sqlalchemy.url")


def _sqlalchemy_url(database: str) -> URL | None:
    """An SQLAlchemy URL if `database` names a driver (postgresql+psycopg://...)."""
    scheme = database.split("://", 1)[0] if "://" in database else ""
    return make_url(database) if "+" in scheme else None


def run_migrations_offline() -> None:
    """``--sql``: print the SQL (no database needed)."""
    context.configure(dialect_name="postgresql", literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    database = _database()
    if not database:
        raise SystemExit("hessra migrations: no database: pass -x dsn=... or set HESSRA_DATABASE_URL")
    url = _sqlalchemy_url(database)
    if url is not None:
        engine = create_engine(url, poolclass=pool.NullPool)
    else:
        import psycopg

        # A libpq DSN or URI, given to psycopg as is (unix sockets, service files, PG* variables).
        engine = create_engine("postgresql+psycopg://", poolclass=pool.NullPool,
                               creator=lambda: psycopg.connect(database))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection: Any) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


config.attributes.setdefault("hessra", hessra_settings())
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
