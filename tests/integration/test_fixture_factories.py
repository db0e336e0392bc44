"""hessra_pg.dev.testing.factories: pytest-postgresql-style fixture factories,
used here as a user would, in module-level fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

import hessra_pg
import pytest

from hessra_pg.dev import factories as factories_module
from hessra_pg.dev.cluster import LocalCluster
from hessra_pg.dev.testing import HessraDatabase, PostgresServer, factories

SCHEMA = Path(__file__).parent / "sql" / "factory_schema.sql"
_LEFT_OPEN: list[psycopg.Connection[Any]] = []


def load_rows(db: HessraDatabase) -> None:
    with db.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 'acme'), (2, 'globex')")
        conn.execute("INSERT INTO loaded VALUES ('callable')")


def load_by_name(db: HessraDatabase) -> None:
    with db.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO loaded VALUES ('import string')")


def leave_a_session_open(db: HessraDatabase) -> None:
    # A careless loader: the template must still be clonable (the factory
    # ends the sessions left on it).
    _LEFT_OPEN.append(db.connect(autocommit=True))


def grant_reader(db: HessraDatabase) -> None:
    with db.connect(autocommit=True) as conn:
        conn.execute("GRANT SELECT ON orders, loaded TO factory_reader")


# On the session's server: a template with a schema, session roles and loaders.
shop_proc = factories.hessra_proc(
    server="hessra_postgres", dbname="shop", roles=["factory_app"],
    load=[SCHEMA, load_rows, f"{__name__}:load_by_name", leave_a_session_open],
)
shop_db = factories.hessra_db("shop_proc", roles=["factory_reader"], load=[grant_reader])
# Another template on the same server: an older extension version.
old_proc = factories.hessra_proc(server="hessra_postgres", extension_version="0.2.0")
old_db = factories.hessra_db("old_proc")
# A server of its own: a free TCP port and a server setting.
own_proc = factories.hessra_proc(port=0, settings={"work_mem": "7MB"})
own_db = factories.hessra_db("own_proc", dbname="own")
# A plain server fixture: no template, CREATE EXTENSION per database.
plain_db = factories.hessra_db("hessra_postgres", roles=["factory_plain"])


def _scalar(db: HessraDatabase, query: str, params: tuple[Any, ...] = (), user: str = "postgres") -> Any:
    with db.connect(user) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_the_template_holds_the_extension_the_schema_and_every_loader(shop_db: HessraDatabase,
                                                                       shop_proc: factories_module.HessraProc) -> None:
    assert shop_db.name.startswith("shop_") and shop_db.name != shop_proc.template_dbname
    assert _scalar(shop_db, "SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'") == \
        shop_proc.extension_version == hessra_pg.__version__
    assert _scalar(shop_db, "SELECT array_agg(what ORDER BY what) FROM loaded") == \
        ["callable", "import string", "sql file"]
    # Nobody connects to the template itself.
    with psycopg.connect(shop_proc.dsn(), autocommit=True) as admin:
        row = admin.execute("SELECT datallowconn, datistemplate FROM pg_database WHERE datname = %s",
                            (shop_proc.template_dbname,)).fetchone()
    assert row == (False, True)


def test_session_roles_get_the_templates_grants_and_rls_applies(shop_db: HessraDatabase) -> None:
    # factory_app: created by the proc fixture before the schema granted to it.
    with shop_db.connect("factory_app") as conn:
        assert conn.execute("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False, False, True)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,), "no token, no rows"


def test_per_test_roles_and_loaders(shop_db: HessraDatabase) -> None:
    assert _scalar(shop_db, "SELECT count(*) FROM loaded", user="factory_reader") == 3
    assert _scalar(shop_db, "SELECT count(*) FROM orders", user="factory_reader") == 0  # RLS


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_clone(shop_db: HessraDatabase, run: int) -> None:
    assert _scalar(shop_db, "SELECT count(*) FROM loaded") == 3
    with shop_db.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO loaded VALUES (%s)", (f"run {run}",))


def test_an_older_extension_version(old_db: HessraDatabase, old_proc: factories_module.HessraProc) -> None:
    assert old_proc.extension_version == "0.2.0"
    assert _scalar(old_db, "SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'") == "0.2.0"
    assert old_db.name.startswith("hessra_test_")


def test_a_server_of_its_own_on_tcp_with_settings(own_db: HessraDatabase, own_proc: factories_module.HessraProc,
                                                  hessra_postgres: PostgresServer) -> None:
    cluster = own_proc.server
    assert isinstance(cluster, LocalCluster) and cluster is not hessra_postgres
    assert cluster.listens_tcp
    with psycopg.connect(cluster.dsn(own_db.name, tcp=True)) as conn:
        assert conn.execute("SELECT current_setting('work_mem'), inet_server_port()").fetchone() == \
            ("7MB", cluster.port)
        assert conn.execute("SELECT hessra_authz.verify_token(NULL, 'a', 'b', 'c')").fetchone() == (False,)
    assert own_db.name.startswith("own_")


def test_a_plain_server_fixture_gets_the_extension_per_database(plain_db: HessraDatabase) -> None:
    assert _scalar(plain_db, "SELECT count(*) FROM pg_extension WHERE extname IN ('plpython3u', 'hessra_authz')") == 2
    assert _scalar(plain_db, "SELECT current_user", user="factory_plain") == "factory_plain"


def test_teardown_drops_databases_templates_and_the_roles_it_made(hessra_postgres: PostgresServer) -> None:
    proc = factories_module.HessraProc(hessra_postgres, dbname="gone", extension=False)
    proc._make_template(["factory_session"], [grant_nothing])
    template = proc.template_dbname
    with proc.database(roles=["factory_session", "factory_test"]) as db:
        assert _exists(hessra_postgres, "pg_database", "datname", db.name)
        assert _exists(hessra_postgres, "pg_roles", "rolname", "factory_test")
        assert _scalar(db, "SELECT count(*) FROM pg_extension WHERE extname = 'hessra_authz'") == 0
    assert not _exists(hessra_postgres, "pg_database", "datname", db.name)
    assert not _exists(hessra_postgres, "pg_roles", "rolname", "factory_test")
    assert _exists(hessra_postgres, "pg_roles", "rolname", "factory_session"), "the template's role stays"
    proc._teardown()
    assert not _exists(hessra_postgres, "pg_database", "datname", template)
    assert not _exists(hessra_postgres, "pg_roles", "rolname", "factory_session")


def test_a_server_given_by_dsn(hessra_postgres: PostgresServer) -> None:
    proc = factories_module.HessraProc(factories_module._DsnServer(hessra_postgres.dsn()))
    with proc.database("by_dsn", roles=["factory_dsn"]) as db:
        assert _scalar(db, "SELECT current_database()", user="factory_dsn") == db.name
        assert _scalar(db, "SELECT count(*) FROM pg_extension WHERE extname = 'hessra_authz'") == 1


def grant_nothing(db: HessraDatabase) -> None:
    with db.connect(autocommit=True) as conn:
        conn.execute("SELECT 1")


def _exists(server: PostgresServer, catalog: str, column: str, value: str | None) -> bool:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) FROM pg_catalog.{catalog} WHERE {column} = %s",
                            (value,)).fetchone() == (1,)


def test_factory_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="port apply to a server of its own: not with server"):
        factories.hessra_proc(server="hessra_postgres", port=0)
    with pytest.raises(ValueError, match="pass server or dsn"):
        factories.hessra_proc(server="hessra_postgres", dsn="host=x")
    with pytest.raises(ValueError, match="backend"):
        factories.hessra_proc(backend="podman")
    with pytest.raises(ValueError, match="role names"):
        factories.hessra_db("shop_proc", roles=["App; DROP"])
    with pytest.raises(ValueError, match="prefix"):
        factories.hessra_db("shop_proc", dbname="Bad-Name")
    with pytest.raises(ValueError, match="not an SQL file"):
        factories_module._run_loader("nothing", HessraDatabase("x", "x", factories_module._DsnServer("")))
