"""Pytest fixtures: a PostgreSQL server with the ``hessra_authz`` extension available.

Enable in a ``conftest.py``::

    pytest_plugins = ["hessra_pg.dev.testing"]

It comes with ``pip install 'hessra-pg[testing]'`` (pytest, and testcontainers
for the Docker backend; the local-cluster backend runs without testcontainers).

Fixtures:

- ``hessra_postgres`` (session): a running server with ``.dsn(dbname, user)``.
  When a Docker engine answers, a testcontainers container from the image in
  ``docker/`` (or ``$HESSRA_PG_TEST_IMAGE``); otherwise a throwaway
  :class:`~hessra_pg.dev.cluster.LocalCluster`, after :func:`hessra_pg.admin.install.install`
  put this checkout's extension and Python code into the local PostgreSQL.
  ``HESSRA_PG_TEST_BACKEND=local|docker`` forces a choice;
  ``HESSRA_PG_TEST_INSTALL=0`` skips the install (already done by hand).
- ``hessra_db`` (function): a fresh database with
  ``CREATE EXTENSION hessra_authz CASCADE`` applied, dropped afterwards;
  yields a :class:`HessraDatabase`.
- ``bare_db`` (function): the same without the extension (migrations).

- ``hessra_standby_pair`` (module; opt-in: only modules that ask for it pay
  for it): a primary and a streaming hot standby of it, private local
  clusters on free loopback ports, with a database holding hessra_authz on
  both; yields a :class:`StandbyPair` (``primary``/``standby`` databases,
  ``wait_for_replay()``). :func:`standby_pair` is the same as a context manager.

- ``policy_tester`` (function): a test key registered in ``hessra_db`` and a
  :class:`~hessra_pg.policytest.tester.PolicyTester` to mint tokens from a
  description (``.token("capability", resource=..., designations=...)``) and
  run statements as a role holding one (``with .as_role("app", token) as
  conn:``, rolled back afterwards); the key is deleted at the end. For
  another database: ``hessra_pg.policytest.tester.policy_tester_for(dsn)``.
  docs/policy-tests.md.

Fixture factories in pytest-postgresql's style, for fixtures with options of
your own (a port, server settings, an extension version, a schema loaded once
into a template, roles): ``from hessra_pg.dev.testing import factories``, then
``my_proc = factories.hessra_proc(...)`` and ``my_db = factories.hessra_db("my_proc", ...)``
(see :mod:`hessra_pg.dev.factories`).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
import os
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import hessra_pg
from hessra_pg.dev.cluster import SUPERUSER, LocalCluster
from hessra_pg.extras import needs_extra

with needs_extra("hessra_pg.dev.testing"):
    import pytest

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.dev.standby import StandbyCluster
    from hessra_pg.policytest.tester import PolicyTester

__all__ = ["HessraDatabase", "PostgresServer", "StandbyPair", "bare_db", "hessra_db", "hessra_postgres",
           "hessra_standby_pair", "policy_tester", "scratch_database", "standby_pair"]

DEFAULT_IMAGE_TAG = "hessra-pg:test"


class PostgresServer(Protocol):
    """What the fixtures need from a server: a DSN per database and user."""

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str: ...


@dataclass(frozen=True)
class HessraDatabase:
    """A scratch database with hessra_authz installed."""

    name: str
    dsn: str
    """Superuser DSN of this database."""
    server: PostgresServer

    def dsn_for(self, user: str) -> str:
        """DSN of this database for another role (trust auth: no password)."""
        return self.server.dsn(self.name, user)

    def connect(self, user: str = SUPERUSER, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to this database (close it, or use ``with``)."""
        import psycopg

        return psycopg.connect(self.dsn_for(user), **kwargs)


@pytest.fixture(scope="session")
def hessra_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, stopped at the end."""
    if _use_docker():
        container = _start_container()
        try:
            yield _ContainerServer(container)
        finally:
            container.stop()
        return
    if os.environ.get("HESSRA_PG_TEST_INSTALL", "1") != "0":
        from hessra_pg.admin.install import install

        # Every session tests the code in this checkout, not a stale copy.
        install()
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def hessra_db(hessra_postgres: PostgresServer) -> Iterator[HessraDatabase]:
    """A fresh database with ``CREATE EXTENSION hessra_authz CASCADE``; dropped afterwards."""
    with scratch_database(hessra_postgres, "hessra_test") as db:
        with db.connect(autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hessra_authz CASCADE")
        yield db


@pytest.fixture
def policy_tester(hessra_db: HessraDatabase) -> Iterator[PolicyTester]:
    """Mint test tokens under a key registered in ``hessra_db`` and run
    statements as a role holding one (see hessra_pg.policytest.tester)."""
    from hessra_pg.policytest.tester import policy_tester_for

    with policy_tester_for(hessra_db.dsn) as tester:
        yield tester


@pytest.fixture
def bare_db(hessra_postgres: PostgresServer) -> Iterator[HessraDatabase]:
    """A fresh database WITHOUT the extension (for migrations); dropped afterwards."""
    with scratch_database(hessra_postgres, "hessra_bare") as db:
        yield db


@contextmanager
def scratch_database(server: PostgresServer, prefix: str) -> Iterator[HessraDatabase]:
    """Create a uniquely named database, yield it, drop it (even if busy)."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(name)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield HessraDatabase(name=name, dsn=server.dsn(name), server=server)
    finally:
        with psycopg.connect(server.dsn(), autocommit=True) as admin:
            # FORCE terminates sessions a test left open.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


# --- a primary and its hot standby ----------------------------------------------------


@dataclass(frozen=True)
class StandbyPair:
    """A database with hessra_authz on a primary, and the same database on its hot standby."""

    primary: HessraDatabase
    """The database on the primary (read-write)."""
    standby: HessraDatabase
    """The same database on the standby (read-only queries)."""
    primary_cluster: LocalCluster
    standby_cluster: StandbyCluster

    def wait_for_replay(self, timeout: float = 30.0) -> float:
        """Wait until the standby has replayed everything committed on the
        primary so far; returns the seconds waited."""
        return self.standby_cluster.wait_for_replay(timeout=timeout)


@contextmanager
def standby_pair(dbname: str = "hessra_test", *, install: bool | None = None,
                 settings: dict[str, str | int | float | bool] | None = None) -> Iterator[StandbyPair]:
    """Start a primary (a LocalCluster on a free loopback port) with
    ``CREATE EXTENSION hessra_authz CASCADE`` in database ``dbname``, then a
    streaming hot standby of it; yield the pair; stop both.

    The primary commits synchronously (``synchronous_commit = on``; its
    ``fsync = off`` keeps that cheap) so each commit reaches the standby at
    once rather than at the WAL writer's next round. ``install``: run
    ``hessra-pg install`` of this checkout first (default: unless
    ``$HESSRA_PG_TEST_INSTALL=0``). ``settings``: extra primary settings.
    """
    import psycopg
    from psycopg import sql

    if install if install is not None else os.environ.get("HESSRA_PG_TEST_INSTALL", "1") != "0":
        from hessra_pg.admin.install import install as install_checkout

        install_checkout()
    with LocalCluster(port=0, settings={"synchronous_commit": True, **(settings or {})}) as primary:
        primary.create_database(dbname)
        with psycopg.connect(primary.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE EXTENSION {} CASCADE").format(sql.Identifier("hessra_authz")))
        with primary.standby() as standby:
            yield StandbyPair(
                primary=HessraDatabase(name=dbname, dsn=primary.dsn(dbname), server=primary),
                standby=HessraDatabase(name=dbname, dsn=standby.dsn(dbname), server=standby),
                primary_cluster=primary, standby_cluster=standby,
            )


@pytest.fixture(scope="module")
def hessra_standby_pair() -> Iterator[StandbyPair]:
    """A primary and a streaming hot standby with hessra_authz, for one test module (see standby_pair)."""
    with standby_pair() as pair:
        yield pair


# --- Docker / testcontainers ------------------------------------------------------------


class _ContainerServer:
    def __init__(self, container: Any) -> None:
        self._host = container.get_container_host_ip()
        self._port = int(container.get_exposed_port(5432))

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host={self._host} port={self._port} dbname={dbname} user={user}"


def _use_docker() -> bool:
    backend = os.environ.get("HESSRA_PG_TEST_BACKEND", "").lower()
    if backend in ("local", "docker"):
        return backend == "docker"
    if not os.environ.get("HESSRA_PG_TEST_IMAGE") and _docker_context_root() is None:
        return False
    try:
        import docker

        return bool(docker.from_env().ping())  # type: ignore[attr-defined]
    except Exception:  # no SDK, no socket, no permission: all mean "no Docker"
        return False


def _docker_context_root() -> Path | None:
    root = Path(hessra_pg.__file__).parent.parent
    return root if (root / "docker" / "Dockerfile").is_file() else None


def _start_container() -> Any:
    # Only here: without a Docker engine the plugin runs a local cluster and
    # needs neither the docker SDK nor testcontainers.
    with needs_extra("the Docker backend of hessra_pg.dev.testing (HESSRA_PG_TEST_BACKEND=docker)"):
        import docker

        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.postgres import PostgresContainer

    image = os.environ.get("HESSRA_PG_TEST_IMAGE")
    if not image:
        root = _docker_context_root()
        if root is None:
            raise RuntimeError("no docker/Dockerfile next to hessra_pg: set HESSRA_PG_TEST_IMAGE")
        image = DEFAULT_IMAGE_TAG
        docker.from_env().images.build(  # type: ignore[attr-defined]
            fileobj=_build_context(root), custom_context=True, dockerfile="docker/Dockerfile",
            tag=image, rm=True,
        )
    container = PostgresContainer(image, username=SUPERUSER, password=SUPERUSER, dbname="postgres")
    # Trust auth so tests can connect as the roles they create, as with LocalCluster.
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    return container.start()


def _build_context(root: Path) -> io.BytesIO:
    """A tar of just what the image needs: no .venv, no caches (no .dockerignore needed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in ("pyproject.toml", "README.md", "hessra_pg", "extension", "docker"):
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel,
                        filter=lambda info: None if "__pycache__" in info.name else info)
    buf.seek(0)
    return buf


def __getattr__(name: str) -> Any:
    # `from hessra_pg.dev.testing import factories`, loaded on first use.
    if name == "factories":
        from hessra_pg.dev import factories

        return factories
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
