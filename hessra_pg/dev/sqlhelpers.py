"""Install (or drop) the ``hessra_test`` SQL helpers in a TEST database.

The helpers (``hessra_pg/dev/sql/hessra_test.sql``) let policy tests written
in SQL, such as pgTAP files, act as a role holding a token
(``hessra_test.authenticate_as``) and mint tokens inside the database
(``hessra_test.capability_token(...)``). To mint there they register a key
whose PRIVATE half is stored in the database, so they are never for
production: :func:`install_test_helpers` refuses unless called with
``test_database=True`` (the CLI: ``--test-database``). They are not part of
the ``hessra_authz`` extension.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from hessra_pg.errors import SqlHelpersError

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA", "TOKEN_MODULES", "drop_test_helpers", "helpers_sql", "install_test_helpers"]

SCHEMA = "hessra_test"
#: The authoring modules hessra_test.mint() runs, in import order (a server
#: has only hessra_pg's verifier core: these are stored in hessra_test.token_code).
TOKEN_MODULES = ("hessra_pg.tokens.mint", "hessra_pg.tokens.identity", "hessra_pg.tokens.capability",
                 "hessra_pg.policytest.tokens")
CONFIRM_SETTING = "hessra_test.confirm"
CONFIRM_VALUE = "test-database"


def helpers_sql() -> str:
    """The text of hessra_test.sql."""
    return resources.files("hessra_pg.dev").joinpath("sql", "hessra_test.sql").read_text(encoding="utf-8")


def _module_source(name: str) -> str:
    package, _, module = name.rpartition(".")
    return resources.files(package).joinpath(module + ".py").read_text(encoding="utf-8")


def install_test_helpers(conn: psycopg.Connection[Any], *, test_database: bool = False) -> int:
    """Create schema ``hessra_test`` (functions, the test key) in ``conn``'s
    database, in one transaction; returns the test key's kid.

    ``test_database=True`` says this is a test database: without it nothing
    is done (SqlHelpersError). The role must be a superuser (the minting
    functions are PL/Python, an untrusted language)."""
    import psycopg
    from psycopg import sql

    if test_database is not True:
        raise SqlHelpersError(
            "refusing to install hessra_test without test_database=True: it stores a private signing key "
            "in the database, so anyone who can read it can mint tokens its policies accept; never in production",
            hint="pass --test-database (CLI) or test_database=True (Python) for a test database")
    try:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (CONFIRM_SETTING, CONFIRM_VALUE))
            # No parameters: one simple query, so the script's statements run in order.
            conn.execute(helpers_sql().encode())
            for position, name in enumerate(TOKEN_MODULES):
                conn.execute(sql.SQL("INSERT INTO {}.token_code (position, module, source) VALUES (%s, %s, %s)")
                             .format(sql.Identifier(SCHEMA)), (position, name, _module_source(name)))
            row = conn.execute(sql.SQL("SELECT kid FROM {}.signing_key").format(sql.Identifier(SCHEMA))).fetchone()
    except psycopg.errors.DuplicateSchema:
        raise SqlHelpersError("schema hessra_test already exists in this database",
                               hint="drop it first (hessra-pg policy test-helpers --drop) to install afresh") from None
    except psycopg.Error as error:
        message = getattr(error.diag, "message_primary", None) or type(error).__name__
        raise SqlHelpersError(f"can't install hessra_test: {message}", hint=error.diag.message_hint) from None
    assert row is not None
    return int(row[0])


def drop_test_helpers(conn: psycopg.Connection[Any]) -> tuple[bool, int | None]:
    """Delete the test key from hessra_authz.keys and drop schema
    ``hessra_test``, in one transaction; returns (whether it was installed,
    the deleted kid)."""
    import psycopg

    try:
        with conn.transaction():
            if conn.execute("SELECT to_regnamespace('hessra_test') IS NULL").fetchone() == (True,):
                return False, None
            row = conn.execute("SELECT kid FROM hessra_test.signing_key").fetchone()
            kid = None if row is None else int(row[0])
            if kid is not None:
                conn.execute("DELETE FROM hessra_authz.keys WHERE kid = %s", (kid,))
            conn.execute("DROP SCHEMA hessra_test CASCADE")
    except psycopg.Error as error:
        message = getattr(error.diag, "message_primary", None) or type(error).__name__
        raise SqlHelpersError(f"can't drop hessra_test: {message}") from None
    return True, kid
