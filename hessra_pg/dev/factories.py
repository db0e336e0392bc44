"""Fixture factories in the style of pytest-postgresql, with hessra_authz built in.

pytest-postgresql's ``factories.postgresql_proc(...)`` makes a session fixture
that starts a server and fills a template database (``load=[...]``), and
``factories.postgresql("proc_fixture_name")`` a per-test fixture that clones
that template and drops the clone afterwards. These factories do the same for
a server with the ``hessra_authz`` extension, reachable as
``hessra_pg.dev.testing.factories``::

    # conftest.py
    from pathlib import Path
    from hessra_pg.dev.testing import factories

    pytest_plugins = ["hessra_pg.dev.testing"]

    # schema.sql: tables, policies, GRANT SELECT ON orders TO app
    shop_proc = factories.hessra_proc(roles=["app"], load=[Path("tests/schema.sql")])
    shop_db = factories.hessra_db("shop_proc")

    # test_orders.py
    def test_app_sees_nothing_without_a_token(shop_db):
        with shop_db.connect("app") as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)

:func:`hessra_proc` yields a :class:`HessraProc` (a server plus a template
database: ``CREATE EXTENSION hessra_authz [VERSION v] CASCADE``, then the
``load`` list, once per session, with session ``roles``); :func:`hessra_db` yields a
:class:`~hessra_pg.dev.testing.HessraDatabase` cloned from it, with ordinary
login roles (``LOGIN NOSUPERUSER NOBYPASSRLS``) and per-test ``load``, and
drops both afterwards (``DROP DATABASE ... WITH (FORCE)``).

Where the server comes from (:func:`hessra_proc`, one of):

- its own: a throwaway :class:`~hessra_pg.dev.cluster.LocalCluster` (``port``,
  ``bin_dir``/``pg_config``, ``settings``), after ``hessra-pg install`` of this
  checkout (``install``); or a testcontainers container when Docker answers
  (``backend``; the same rule as the ``hessra_postgres`` fixture);
- ``server="hessra_postgres"``: another fixture's server, so several
  templates (another ``extension_version``, another schema) share one server;
- ``dsn="host=... user=postgres"``: a server already running (CI services),
  where hessra_authz is installed; the role must be a superuser.

A loader is a ``Path`` or a ``str`` ending in ``.sql`` (the file's SQL, sent
as one multi-statement query: no psql meta-commands), a callable taking the
:class:`~hessra_pg.dev.testing.HessraDatabase` to fill, or an import string
``"package.module:function"`` naming such a callable. (pytest-postgresql's
callables take ``host, port, user, dbname, password``; ours take the database,
whose ``dsn``/``connect(user)`` work on a unix socket too.)

Why not pytest-postgresql itself: its ``postgresql_proc`` runs ``initdb`` and
``pg_ctl`` as the current user, which PostgreSQL refuses as root (CI here runs
as root; LocalCluster runs the server as the ``postgres`` OS user and checks
that it can reach the directory); it knows nothing of installing the extension
and the server-side Python before the server starts; it can't run on Docker;
and its template has no place for roles, which are cluster-wide and must be
created and dropped per test. The factory shapes are the same, so moving
between the two is a matter of names; pytest-postgresql is not a dependency.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from hessra_pg.dev import testing as _testing
from hessra_pg.dev.cluster import SUPERUSER, LocalCluster
from hessra_pg.dev.testing import HessraDatabase, PostgresServer

import pytest  # after hessra_pg.dev.testing, which says which extra brings it

__all__ = ["HessraProc", "Loader", "hessra_db", "hessra_proc"]

Loader = Union[Path, str, Callable[[HessraDatabase], object]]
"""An SQL file (Path, or str ending in .sql), a callable taking the database, or "module:function"."""

EXTENSION = "hessra_authz"
_MAX_IDENTIFIER = 63
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
_INSTALLED: set[str | None] = set()


@dataclass
class HessraProc:
    """What a :func:`hessra_proc` fixture yields: a server and the template of its test databases.

    Also a :class:`~hessra_pg.dev.testing.PostgresServer` (``dsn(dbname, user)``).
    ``template_dbname`` is None when databases are made without a template
    (a plain server fixture passed to :func:`hessra_db`).
    """

    server: PostgresServer
    dbname: str = "hessra_test"
    """Prefix of the test databases' names."""
    template_dbname: str | None = None
    extension: bool = True
    extension_version: str | None = None
    """The version of hessra_authz in the template (None without the extension)."""
    _session_roles: list[str] = field(default_factory=list, repr=False)

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return self.server.dsn(dbname, user)

    @contextlib.contextmanager
    def database(self, dbname: str | None = None, *, roles: Sequence[str] = (),
                 load: Sequence[Loader] = ()) -> Iterator[HessraDatabase]:
        """A fresh database (a clone of the template), with ``roles`` and ``load``; dropped afterwards.

        ``roles``: ordinary login roles (LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB
        NOCREATEROLE), created if missing and dropped afterwards by whoever
        created them. ``load`` runs after the roles exist (it may GRANT to them).
        """
        import psycopg
        from psycopg import sql

        for role in roles:
            _check_role_name(role)
        name = _unique_name(dbname or self.dbname)
        created_roles: list[str] = []
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            if self.template_dbname is not None:
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template_dbname)))
            else:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            db = HessraDatabase(name=name, dsn=self.dsn(name), server=self)
            if self.template_dbname is None and self.extension:
                self.extension_version = _create_extension(db, self.extension_version)
            created_roles = self._create_roles(roles)
            for loader in load:
                _run_loader(loader, db)
            yield db
        finally:
            with psycopg.connect(self.dsn(), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            self._drop_roles(created_roles)

    # --- roles ------------------------------------------------------------------------------

    def _create_roles(self, roles: Sequence[str]) -> list[str]:
        """Create the missing ones of ``roles`` (ordinary login roles); returns those it created."""
        import psycopg
        from psycopg import sql

        created: list[str] = []
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            for role in roles:
                if admin.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone():
                    continue
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
                              .format(sql.Identifier(role)))
                created.append(role)
        return created

    def _drop_roles(self, roles: Sequence[str]) -> None:
        import psycopg
        from psycopg import sql

        if not roles:
            return
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            for role in reversed(roles):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    # --- template ---------------------------------------------------------------------------

    def _make_template(self, roles: Sequence[str], load: Sequence[Loader]) -> None:
        import psycopg
        from psycopg import sql

        self._session_roles = self._create_roles(roles)
        name = _unique_name(f"{self.dbname}_tmpl")
        ident = sql.Identifier(name)
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        self.template_dbname = name
        db = HessraDatabase(name=name, dsn=self.dsn(name), server=self)
        if self.extension:
            self.extension_version = _create_extension(db, self.extension_version)
        for loader in load:
            _run_loader(loader, db)
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            # No one may connect to a template being cloned: lock it, and end
            # the sessions a loader left open.
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true").format(ident))
            admin.execute("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()", (name,))

    def _teardown(self) -> None:
        """Drop the template, then the session roles it created."""
        import psycopg
        from psycopg import sql

        if self.template_dbname is not None:
            ident = sql.Identifier(self.template_dbname)
            with psycopg.connect(self.dsn(), autocommit=True) as admin:
                if admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s",
                                 (self.template_dbname,)).fetchone():
                    admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(ident))
                    admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
            self.template_dbname = None
        self._drop_roles(self._session_roles)
        self._session_roles = []


def hessra_proc(
    *,
    server: str | None = None,
    dsn: str | None = None,
    backend: str | None = None,
    port: int | None = None,
    bin_dir: str | Path | None = None,
    pg_config: str | None = None,
    settings: Mapping[str, str | int | float | bool] | None = None,
    install: bool | None = None,
    dbname: str = "hessra_test",
    extension: bool = True,
    extension_version: str | None = None,
    roles: Sequence[str] = (),
    load: Sequence[Loader] = (),
    scope: str = "session",
) -> Any:
    """A fixture (default scope: session) yielding a :class:`HessraProc`.

    The server, one of: its own (default; ``backend`` ``"local"``/``"docker"``,
    default ``$HESSRA_PG_TEST_BACKEND`` or Docker when it answers), with, for a
    local cluster, ``port`` (None: unix socket only; 0: a free TCP port; N),
    ``bin_dir`` or ``pg_config``, ``settings`` (server settings; on Docker only
    those that need no restart), ``install`` (``hessra-pg install`` this
    checkout first; default: unless ``$HESSRA_PG_TEST_INSTALL=0``); or
    ``server``, the name of another fixture whose server to use (its own
    template aside); or ``dsn``, a running server (superuser role).

    The template: ``CREATE EXTENSION hessra_authz [VERSION extension_version]
    CASCADE`` unless ``extension=False``, then ``load``. ``roles``: ordinary
    login roles created first (so ``load`` may GRANT to them) and kept for the
    fixture's life. Test databases are named ``<dbname>_<random>``.
    """
    if backend not in (None, "local", "docker"):
        raise ValueError(f"backend must be 'local' or 'docker', not {backend!r}")
    own_options = {"backend": backend, "port": port, "bin_dir": bin_dir, "pg_config": pg_config,
                   "settings": settings, "install": install}
    given = [name for name, value in own_options.items() if value is not None]
    if server is not None and dsn is not None:
        raise ValueError("pass server or dsn, not both")
    if (server is not None or dsn is not None) and given:
        raise ValueError(f"{', '.join(given)} apply to a server of its own: not with "
                         f"{'server' if server is not None else 'dsn'}")
    _check_prefix(dbname)
    for role in roles:
        _check_role_name(role)
    role_names = list(roles)
    loaders = list(load)

    @pytest.fixture(scope=scope)
    def hessra_proc_fixture(request: pytest.FixtureRequest) -> Iterator[HessraProc]:
        with contextlib.ExitStack() as stack:
            if server is not None:
                base = request.getfixturevalue(server)
                if isinstance(base, HessraProc):
                    base = base.server
            elif dsn is not None:
                base = _DsnServer(dsn)
            else:
                base = stack.enter_context(_own_server(
                    backend=backend, port=port, bin_dir=bin_dir, pg_config=pg_config,
                    settings=settings, install=install))
            proc = HessraProc(base, dbname=dbname, extension=extension, extension_version=extension_version)
            stack.callback(proc._teardown)
            proc._make_template(role_names, loaders)
            yield proc

    return hessra_proc_fixture


def hessra_db(
    process_fixture_name: str,
    *,
    dbname: str | None = None,
    roles: Sequence[str] = (),
    load: Sequence[Loader] = (),
    scope: str = "function",
) -> Any:
    """A fixture (default scope: function) yielding a fresh :class:`~hessra_pg.dev.testing.HessraDatabase`.

    ``process_fixture_name``: a :func:`hessra_proc` fixture (the database is a
    clone of its template), or any fixture yielding a server with
    ``dsn(dbname, user)``, e.g. ``"hessra_postgres"`` (the database then gets
    ``CREATE EXTENSION hessra_authz CASCADE``). ``dbname``: the name's prefix
    (default: the process fixture's). ``roles``: ordinary login roles to
    create (``db.connect("app")``), dropped afterwards. ``load``: loaders run
    in this database after the roles exist.
    """
    for role in roles:
        _check_role_name(role)
    if dbname is not None:
        _check_prefix(dbname)
    role_names = list(roles)
    loaders = list(load)

    @pytest.fixture(scope=scope)
    def hessra_db_fixture(request: pytest.FixtureRequest) -> Iterator[HessraDatabase]:
        proc = request.getfixturevalue(process_fixture_name)
        if not isinstance(proc, HessraProc):
            proc = HessraProc(proc)
        with proc.database(dbname, roles=role_names, load=loaders) as db:
            yield db

    return hessra_db_fixture


# --- servers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DsnServer:
    """A server already running, reached through a base DSN."""

    base: str

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.base, dbname=dbname, user=user)


@contextlib.contextmanager
def _own_server(*, backend: str | None, port: int | None, bin_dir: str | Path | None, pg_config: str | None,
                settings: Mapping[str, str | int | float | bool] | None,
                install: bool | None) -> Iterator[PostgresServer]:
    docker = backend == "docker" if backend is not None else _testing._use_docker()
    if docker:
        container = _testing._start_container()
        try:
            server = _testing._ContainerServer(container)
            if settings:
                _apply_settings(server, settings)
            yield server
        finally:
            container.stop()
        return
    if install if install is not None else os.environ.get("HESSRA_PG_TEST_INSTALL", "1") != "0":
        _install_once(pg_config)
    if bin_dir is None and pg_config is not None:
        from hessra_pg.admin.install import find_pg_config

        out = subprocess.run([find_pg_config(pg_config), "--bindir"], capture_output=True, text=True, check=True)
        bin_dir = out.stdout.strip()
    with LocalCluster(bin_dir=Path(bin_dir) if bin_dir is not None else None, port=port,
                      settings=settings) as cluster:
        yield cluster


def _install_once(pg_config: str | None) -> None:
    """``hessra-pg install`` this checkout, once per process and pg_config."""
    if pg_config in _INSTALLED:
        return
    from hessra_pg.admin.install import install

    install(pg_config=pg_config)
    _INSTALLED.add(pg_config)


def _apply_settings(server: PostgresServer, settings: Mapping[str, str | int | float | bool]) -> None:
    """ALTER SYSTEM + reload, for a server this process did not configure (Docker)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        restart = [row[0] for row in admin.execute(
            "SELECT name FROM pg_catalog.pg_settings WHERE name = ANY(%s) AND context = 'postmaster'",
            ([name.lower() for name in settings],))]
        if restart:
            raise ValueError(f"settings that need a server restart can't be applied on Docker: {', '.join(restart)}")
        for name, value in settings.items():
            text = ("on" if value else "off") if isinstance(value, bool) else str(value)
            admin.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.SQL(".").join(sql.Identifier(part) for part in name.split(".")), sql.Literal(text)))
        admin.execute("SELECT pg_catalog.pg_reload_conf()")


# --- databases -------------------------------------------------------------------------------


def _create_extension(db: HessraDatabase, version: str | None) -> str:
    """CREATE EXTENSION hessra_authz [VERSION v] CASCADE; returns the version created."""
    from psycopg import sql

    statement = sql.SQL("CREATE EXTENSION {} CASCADE").format(sql.Identifier(EXTENSION))
    if version is not None:
        statement = sql.SQL("CREATE EXTENSION {} VERSION {} CASCADE").format(
            sql.Identifier(EXTENSION), sql.Literal(version))
    with db.connect(autocommit=True) as conn:
        conn.execute(statement)
        row = conn.execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = %s",
                           (EXTENSION,)).fetchone()
    assert row is not None
    return str(row[0])


def _run_loader(loader: Loader, db: HessraDatabase) -> None:
    if isinstance(loader, Path) or (isinstance(loader, str) and loader.endswith(".sql")):
        text = Path(loader).read_text(encoding="utf-8")
        with db.connect(autocommit=True) as conn:
            # No parameters: sent as one simple query, so several statements run.
            conn.execute(text.encode())
        return
    if isinstance(loader, str):
        loader = _import_callable(loader)
    if not callable(loader):
        raise TypeError(f"a loader is an SQL file path, a callable or 'module:function', not {loader!r}")
    loader(db)


def _import_callable(spec: str) -> Callable[[HessraDatabase], object]:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"not an SQL file nor 'module:function': {spec!r}")
    target = getattr(importlib.import_module(module_name), attr)
    if not callable(target):
        raise TypeError(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


def _unique_name(prefix: str) -> str:
    suffix = uuid.uuid4().hex[:12]
    return f"{prefix[:_MAX_IDENTIFIER - len(suffix) - 1]}_{suffix}"


def _check_prefix(prefix: str) -> None:
    if not _ROLE_NAME.fullmatch(prefix):
        raise ValueError(f"database name prefix must be a lower-case SQL identifier: {prefix!r}")


def _check_role_name(role: str) -> None:
    if not _ROLE_NAME.fullmatch(role) or role.startswith("pg_"):
        raise ValueError(f"role names must be lower-case SQL identifiers, not pg_*: {role!r}")
