"""The doctor's Citus check: does every node verify with the same configuration?

In a database with Citus, the policies of distributed tables run on the
workers, each reading its own copy of the keys, chains, revocations and
anchor. That copy exists only when the configuration tables are Citus
reference tables (:mod:`hessra_pg.admin.citus`); otherwise the workers hold
the empty tables CREATE EXTENSION made, and deny every row (or raise "no
active key"). Without Citus this check adds nothing.

``pg_dist_partition`` is readable by any role; comparing the nodes' own
``config_state`` needs a superuser (``run_command_on_all_nodes`` connects
as the same role to every node): with the admin connection when it is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hessra_pg.admin.citus import citus_installed, node_configurations, undistributed_tables
from hessra_pg.errors import first_line

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.admin.doctor import Report

__all__ = ["check_citus"]

NAME = "citus"
_FIX = ("as a superuser on the coordinator: `hessra-pg citus enable --dsn ...` (or "
        "hessra_pg.admin.citus.distribute_configuration); docs/scale-out.md")


def check_citus(conn: psycopg.Connection[Any], report: Report,
                admin_conn: psycopg.Connection[Any] | None = None) -> bool:
    """Append the Citus check when the database has Citus; returns whether it has."""
    import psycopg

    from hessra_pg.admin.doctor import FAIL, OK, WARN, Check

    if not citus_installed(conn):
        return False
    _check_statement_stats(conn, report)
    pending = undistributed_tables(conn)
    if pending:
        report.checks.append(Check(NAME, FAIL, f"Citus is installed but {', '.join(pending)} "
                                               f"{'is' if len(pending) == 1 else 'are'} not replicated to the "
                                               "workers: their shards deny every row", _FIX))
        return True
    superuser = admin_conn is not None and admin_conn.execute(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()[0]
    if not superuser:
        report.checks.append(Check(NAME, OK, "the configuration tables are Citus reference tables (every node "
                                             "holds a copy); nodes not compared (needs --admin-dsn of a superuser)"))
        return True
    assert admin_conn is not None
    try:
        nodes = node_configurations(admin_conn)
    except psycopg.Error as error:
        report.checks.append(Check(NAME, WARN, "the configuration tables are Citus reference tables; comparing "
                                               f"the nodes failed: {first_line(error)}"))
        return True
    unreadable = [node for node in nodes if node.digest is None]
    digests = {node.digest for node in nodes if node.digest is not None}
    if unreadable or len(digests) > 1:
        what = (f"node {unreadable[0].nodeid} can't be read ({(unreadable[0].error or '').strip()})" if unreadable
                else "the nodes verify with different configurations")
        report.checks.append(Check(NAME, FAIL, what, "run it again to recompute every node's copy: " + _FIX))
    else:
        report.checks.append(Check(NAME, OK, f"the configuration is the same on all {len(nodes)} nodes "
                                             "(Citus reference tables)"))
    return True


def _check_statement_stats(conn: psycopg.Connection[Any], report: Report) -> None:
    """Under Citus the token travels as ``SET LOCAL hessra.token = '...'``
    (the only form Citus forwards), and pg_stat_statements keeps the text of
    utility statements, token included, while ``track_utility`` is on
    (who can read a running statement: doctor_logs.check_statement_readers)."""
    from hessra_pg.admin.doctor import WARN, Check

    row = conn.execute("SELECT pg_catalog.current_setting('pg_stat_statements.track_utility', true)").fetchone()
    if row and row[0] == "on":
        report.checks.append(Check(
            "citus transport", WARN,
            "pg_stat_statements.track_utility is on for this role: the SET LOCAL transport that Citus needs puts "
            "each token in the statement text, which pg_stat_statements keeps",
            "ALTER ROLE <application role> SET pg_stat_statements.track_utility = off (on every node), or "
            "turn it off in postgresql.conf; docs/scale-out.md \"The token transport\""))
