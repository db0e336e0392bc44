"""A throwaway Citus cluster for tests and experiments: a coordinator and
workers, each a :class:`~hessra_pg.dev.cluster.LocalCluster` on a loopback
port with ``shared_preload_libraries = citus``, joined into one Citus
cluster, with hessra_authz created (Citus propagates it to the workers) and
its configuration distributed (:mod:`hessra_pg.admin.citus`).

Citus is not a dependency: :func:`citus_available` tells whether the local
PostgreSQL has it (``citus.control`` in its extension directory).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hessra_pg.dev.cluster import LocalCluster

__all__ = ["CITUS_SETTINGS", "CitusCluster", "citus_available", "citus_cluster"]

CITUS_SETTINGS: dict[str, str | int | float | bool] = {
    "shared_preload_libraries": "citus",
    # The nodes trust each other on loopback; libpq would otherwise look for
    # client certificates in the home directory of whoever started the server.
    "citus.node_conninfo": "sslmode=disable",
    "max_prepared_transactions": 50,  # two-phase commit of distributed transactions
}


def citus_available() -> tuple[bool, str]:
    """(True, path of citus.control) when the local PostgreSQL has Citus, else (False, why not)."""
    from hessra_pg.admin.install import InstallError, find_pg_config

    try:
        pg_config = find_pg_config()
    except InstallError as error:
        return False, str(error)
    out = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True)
    if out.returncode != 0:
        return False, f"{pg_config} --sharedir failed"
    control = Path(out.stdout.strip()) / "extension" / "citus.control"
    return (True, str(control)) if control.exists() else (False, f"no {control}")


@dataclass(frozen=True)
class CitusCluster:
    """A running coordinator and its workers, with database ``dbname``."""

    coordinator: LocalCluster
    workers: tuple[LocalCluster, ...]
    dbname: str

    def dsn(self, user: str = "postgres") -> str:
        """The coordinator's DSN for ``user`` (applications connect there)."""
        return self.coordinator.dsn(self.dbname, user)

    def worker_dsn(self, index: int = 0, user: str = "postgres") -> str:
        return self.workers[index].dsn(self.dbname, user)


@contextmanager
def citus_cluster(workers: int = 1, dbname: str = "app", *, distribute: bool = True,
                  settings: dict[str, str | int | float | bool] | None = None) -> Iterator[CitusCluster]:
    """Start a coordinator and ``workers`` workers on loopback, create Citus
    and hessra_authz in ``dbname`` (run ``hessra-pg install`` of the code you
    test first), distribute the configuration (unless ``distribute=False``);
    stop everything at the end. ``settings``: more server settings for every
    node (``shared_preload_libraries`` must keep ``citus`` first)."""
    import psycopg

    from hessra_pg.admin.citus import distribute_configuration

    merged = {**CITUS_SETTINGS, **(settings or {})}
    with ExitStack() as stack:
        nodes = [stack.enter_context(LocalCluster(port=0, settings=merged)) for _ in range(workers + 1)]
        for node in nodes:
            node.create_database(dbname)
            with psycopg.connect(node.dsn(dbname), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        coordinator = nodes[0]
        with psycopg.connect(coordinator.dsn(dbname), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (coordinator.port,))
            for worker in nodes[1:]:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
            conn.execute("CREATE EXTENSION hessra_authz CASCADE")
            if distribute:
                distribute_configuration(conn)
        yield CitusCluster(coordinator, tuple(nodes[1:]), dbname)
