"""Citus mode: the hessra_authz configuration on every node.

The verifier of each node reads that node's own ``hessra_authz.config_state``,
which triggers on the configuration tables (``keys``, ``service_chains``,
``revocations``, ``capability_settings``, ``audit_settings``) recompute in the transaction that
changes them. Citus runs the policies of a distributed table on the workers,
where ``CREATE EXTENSION`` made empty tables: every shard denied every row.

:func:`distribute_configuration` makes the five tables Citus **reference
tables**: Citus keeps a copy on every node (the coordinator included, once it
is in the metadata) and applies every change to all of them in one
distributed transaction (two-phase commit). Citus creates the tables'
``bump_generation`` trigger on each copy, so each node recomputes its own
``config_state`` inside that same transaction: a key retired or a token
revoked is in force on every node for every statement that starts after the
change commits, as on one server (docs/scale-out.md says why this rather than
admin functions that write to each node). Citus refuses tables with triggers
unless ``citus.enable_unsafe_triggers`` is on: it is set for this transaction
only. The "unsafe" case is a trigger on a *sharded* table reaching other
shards, which a shard move can break; these tables are not sharded, and the
trigger reads only the node's own copies of them and writes the node-local
``config_state``.

Privileges are unchanged: the copies keep the tables' ACLs (no role but the
owner and ``hessra_admin`` members reading through the admin functions), and
the admin functions, run on the coordinator, write through Citus as their
owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from hessra_pg.context import CITUS_DETECT_SQL
from hessra_pg.errors import HessraError, first_line

__all__ = [
    "CONFIG_TABLES",
    "CitusModeError",
    "NodeConfig",
    "citus_installed",
    "distribute_configuration",
    "node_configurations",
    "undistributed_tables",
]

#: The configuration tables, as Citus reference tables in Citus mode.
CONFIG_TABLES: tuple[str, ...] = ("hessra_authz.keys", "hessra_authz.service_chains", "hessra_authz.revocations",
                                  "hessra_authz.capability_settings", "hessra_authz.audit_settings")

# One row per node: a digest of what its verifier loads (config_state without
# its per-node generation), to tell whether the nodes are in step.
# The audit roles by name: each node holds its own OIDs for them.
_DIGEST_SQL = ("SELECT md5(row(kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds, "
               "node_components, node_keys, revoked_ids, revoked_identities, anchor, require_anchor, "
               "fallback, audit_level, (SELECT array_agg(r.role::regrole::text || '=' || r.level ORDER BY 1) "
               "FROM unnest(audit_role_oids, audit_role_levels) AS r(role, level)))::text) "
               "FROM hessra_authz.config_state")


class CitusModeError(HessraError):
    """Citus mode can't be set up or read here (Citus missing, the coordinator
    not in the metadata, no privilege): the message says which and what to do."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


@dataclass(frozen=True)
class NodeConfig:
    """One node's view of the configuration: ``digest`` of its config_state (None: unreadable, see ``error``)."""

    nodeid: int
    digest: str | None
    error: str | None = None


def citus_installed(conn: psycopg.Connection[Any]) -> bool:
    """Whether the Citus extension exists in the connected database."""
    row = conn.execute(CITUS_DETECT_SQL).fetchone()
    return bool(row and row[0])


def undistributed_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The configuration tables that are not Citus reference tables yet (Citus must be installed)."""
    rows = conn.execute(
        "SELECT t.name FROM unnest(%s::text[]) WITH ORDINALITY AS t(name, position) "
        "WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition AS p "
        "                  WHERE p.logicalrelid = t.name::regclass AND p.partmethod = 'n' AND p.repmodel = 't') "
        "ORDER BY t.position", (list(CONFIG_TABLES),)).fetchall()
    return [row[0] for row in rows]


def _require_citus(conn: psycopg.Connection[Any]) -> None:
    if not citus_installed(conn):
        raise CitusModeError("Citus is not installed in this database: run CREATE EXTENSION citus "
                             "(on the coordinator) first (docs/scale-out.md)")


def distribute_configuration(conn: psycopg.Connection[Any]) -> list[str]:
    """Make the configuration tables reference tables (see the module
    docstring), then have every node recompute its ``config_state``; returns
    the tables distributed now (none when already done: safe to run again,
    e.g. after adding a node). Needs a superuser (or the tables' owner)
    connection to the coordinator, outside any transaction.
    """
    _require_citus(conn)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise CitusModeError("distribute_configuration needs a connection with no open transaction")
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_node WHERE groupid = 0)").fetchone()
    if not (row and row[0]):
        # Without a placement on the coordinator its own config_state would
        # never be recomputed: verification there would use stale keys.
        raise CitusModeError("the coordinator is not in the Citus metadata, so it would hold no copy of the "
                             "configuration: run SELECT citus_set_coordinator_host('<host>', <port>) first")
    pending = undistributed_tables(conn)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true)")
            for table in pending:
                conn.execute("SELECT pg_catalog.create_reference_table(%s::regclass)", (table,))
        with conn.transaction():
            # Copies for nodes added since (Citus copies over connections of
            # its own: after the tables are committed as reference tables).
            conn.execute("SELECT pg_catalog.replicate_reference_tables('block_writes')")
        with conn.transaction():
            # A statement-level trigger fires on every copy even when no row
            # changes: each node recomputes its config_state from its copies,
            # in one distributed transaction.
            conn.execute("UPDATE hessra_authz.capability_settings SET updated_at = updated_at")
    except psycopg.Error as error:
        raise CitusModeError(f"distributing the hessra_authz configuration failed: {first_line(error)}") from None
    return pending


def node_configurations(conn: psycopg.Connection[Any]) -> list[NodeConfig]:
    """Each node's configuration digest (``run_command_on_all_nodes``, so it
    needs a role that may read ``hessra_authz.config_state`` on every node: a
    superuser). All digests equal: the nodes verify with the same keys,
    chains, revocations and anchor."""
    _require_citus(conn)
    rows = conn.execute(sql.SQL("SELECT nodeid, success, result FROM pg_catalog.run_command_on_all_nodes({}) "
                                "ORDER BY nodeid").format(sql.Literal(_DIGEST_SQL))).fetchall()
    return [NodeConfig(nodeid, result if success else None, None if success else result)
            for nodeid, success, result in rows]
