"""``hessra-pg citus enable|status``: the hessra_authz configuration on every Citus node."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, add_json_argument, command_parser, guarded, print_json

EXIT_PROBLEMS = 1
DSN_HELP = ("libpq connection string or URI of the coordinator; a superuser (or the owner of hessra_authz's "
            "tables) for enable and for comparing the nodes (default: the PG* environment variables)")


def register(subparsers: Any) -> None:
    """Add ``citus`` and its verbs."""
    citus = subparsers.add_parser(
        "citus",
        help="Citus mode: keys, chains, revocations and the anchor on every node",
        description="Citus mode: the hessra_authz configuration replicated to every node (docs/scale-out.md).",
    )
    verbs = citus.add_subparsers(dest="citus_command", metavar="VERB", required=True)
    enable = command_parser(
        verbs, "enable",
        help="make the configuration tables Citus reference tables (every node gets a copy)",
        description=(
            "Make hessra_authz.keys, service_chains, revocations, capability_settings and audit_settings Citus reference "
            "tables, so that every node (the coordinator included) holds a copy that each change updates in "
            "one distributed transaction, and have every node recompute what its verifier loads. Run it on "
            "the coordinator once Citus, the coordinator (citus_set_coordinator_host) and the workers are "
            "set up and hessra_authz is created; again after adding nodes (it only does what is missing)."
        ),
        examples="  hessra-pg citus enable --dsn 'host=coordinator dbname=app user=postgres'",
    )
    enable.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    enable.set_defaults(func=guarded(_enable))
    status = command_parser(
        verbs, "status",
        help="whether the configuration is replicated, and each node's configuration digest",
        description=("Print which configuration tables are not reference tables yet, and each node's digest "
                     "of the configuration its verifier loads (equal digests: the nodes agree). Exit status 1 "
                     "when a table is not replicated or the nodes differ."),
        examples="  hessra-pg citus status --dsn 'host=coordinator dbname=app user=postgres' --json",
    )
    status.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    add_json_argument(status)
    status.set_defaults(func=guarded(_status))


def _enable(args: argparse.Namespace) -> int:
    from hessra_pg.admin.citus import distribute_configuration
    from hessra_pg.admin.doctor import connect

    with connect(args.dsn) as conn:
        done = distribute_configuration(conn)
    print(f"distributed: {', '.join(done)}" if done else "already distributed: nothing to do")
    print("every node recomputed its configuration")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from hessra_pg.admin.citus import CitusModeError, citus_installed, node_configurations, undistributed_tables
    from hessra_pg.admin.doctor import connect

    with connect(args.dsn) as conn:
        if not citus_installed(conn):
            raise CitusModeError("Citus is not installed in this database")
        pending = undistributed_tables(conn)
        nodes = node_configurations(conn)
    digests = {node.digest for node in nodes}
    ok = not pending and len(digests) == 1 and None not in digests
    if args.json:
        print_json({"ok": ok, "not_distributed": pending,
                    "nodes": [{"nodeid": n.nodeid, "digest": n.digest, "error": n.error} for n in nodes]})
    else:
        print("configuration tables: " + ("all reference tables" if not pending
                                          else f"not distributed: {', '.join(pending)}"))
        for node in nodes:
            print(f"node {node.nodeid}: {node.digest or 'unreadable: ' + (node.error or '').strip()}")
        print("ok: every node verifies with the same configuration" if ok else "NOT in step")
    return EXIT_OK if ok else EXIT_PROBLEMS
