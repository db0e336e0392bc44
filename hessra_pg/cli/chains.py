"""``hessra-pg chains import`` and ``hessra-pg chains list``: named service
chains in ``hessra_authz.service_chains``, from a policy repository."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hessra_pg.repository.checker import load_resources
from hessra_pg.errors import ChainsDatabaseError, HessraError

from .common import EXIT_OK, add_json_argument, command_parser, guarded, print_json

if TYPE_CHECKING:
    import psycopg

DSN_HELP = ("libpq connection string or URI; the role must be a member of hessra_admin "
            "(default: the PG* environment variables)")


def register(subparsers: Any) -> None:
    """Add ``chains import`` and ``chains list``."""
    chains = subparsers.add_parser(
        "chains",
        help="load service chains into the database from a policy repository",
        description="Named service chains (hessra_authz.service_chains), used by "
                    "hessra_authz.verify_service_chain(token, subject, resource, operation, chain, component).",
    )
    actions = chains.add_subparsers(dest="action", metavar="ACTION", required=True)

    imp = command_parser(
        actions, "import",
        help="set every service chain of a resources.toml in the database",
        description=(
            "Read the service chains of a Hessra policy repository's resources.toml (either layout: "
            "[resources.NAME] type = \"service_chain\" with nodes = [...], or mechanisms = "
            "[\"service_chain\"] with [resources.NAME.service_chain] nodes = [...]) and call "
            "hessra_authz.set_service_chain(NAME, nodes) for each, in one transaction. The file is "
            "checked first (as `hessra-pg policy validate` does); nothing is written if it has a "
            "problem. Chains already equal are left alone. Chains in the database but not in the "
            "file are kept unless --replace drops them.\n\n"
            "Prints one line per chain: created, updated, unchanged, dropped or kept."
        ),
        examples=(
            "  hessra-pg chains import policy/resources.toml --dsn 'dbname=shop user=dba' --dry-run\n"
            "  hessra-pg chains import policy/resources.toml --dsn 'dbname=shop user=dba' --replace"
        ),
    )
    imp.add_argument("resources", metavar="RESOURCES_TOML",
                     help="the resources.toml file, or a policy repository directory holding one")
    imp.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    imp.add_argument("--dry-run", action="store_true",
                     help="do everything in a transaction, then roll it back: shows what would change "
                          "and lets the database validate it, writes nothing")
    imp.add_argument("--replace", action="store_true",
                     help="also drop the chains that the file does not define")
    imp.set_defaults(func=guarded(_import))

    listing = command_parser(
        actions, "list",
        help="list the service chains in the database",
        description="List the named service chains: name, nodes in chain order, last update.",
    )
    listing.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    add_json_argument(listing)
    listing.set_defaults(func=guarded(_list))


def _describe(nodes: list[dict[str, str]]) -> str:
    count = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    return f"{count}: {' -> '.join(str(node.get('component')) for node in nodes)}"


def _database_error(error: Exception, action: str) -> ChainsDatabaseError:
    import psycopg

    diag = getattr(error, "diag", None)
    message = getattr(diag, "message_primary", None) or str(error).strip().splitlines()[0]
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return ChainsDatabaseError(f"cannot {action}: {message} (connect as a member of hessra_admin: "
                                   "GRANT hessra_admin TO <role>)")
    if isinstance(error, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
                          psycopg.errors.UndefinedFunction)):
        return ChainsDatabaseError(f"cannot {action}: {message} (is the hessra_authz extension created in "
                                   "this database?)")
    return ChainsDatabaseError(f"cannot {action}: {message}")


def _existing(conn: psycopg.Connection[Any]) -> dict[str, list[dict[str, str]]]:
    rows = conn.execute("SELECT name, nodes FROM hessra_authz.service_chains ORDER BY name").fetchall()
    return {name: nodes for name, nodes in rows}


def _import(args: argparse.Namespace) -> int:
    import psycopg
    from psycopg.types.json import Jsonb

    from hessra_pg.admin.doctor import connect

    chains = load_resources(args.resources)
    lines: list[str] = []
    counts = {"created": 0, "updated": 0, "unchanged": 0, "dropped": 0, "kept": 0}
    with connect(args.dsn, autocommit=False) as conn:
        try:
            with conn.transaction():
                existing = _existing(conn)
                for name, nodes in chains.items():
                    before = existing.get(name)
                    if before == nodes:
                        verb = "unchanged"
                    else:
                        conn.execute("SELECT hessra_authz.set_service_chain(%s, %s)", (name, Jsonb(nodes)))
                        verb = "created" if before is None else "updated"
                    counts[verb] += 1
                    lines.append(f"{verb:<9}  {name}  ({_describe(nodes)})")
                for name in sorted(set(existing) - set(chains)):
                    if args.replace:
                        conn.execute("SELECT hessra_authz.drop_service_chain(%s)", (name,))
                        counts["dropped"] += 1
                        lines.append(f"{'dropped':<9}  {name}")
                    else:
                        counts["kept"] += 1
                        lines.append(f"{'kept':<9}  {name}  (not in the file; --replace drops it)")
                if args.dry_run:
                    raise psycopg.Rollback()
        except psycopg.Error as error:
            raise _database_error(error, "import the service chains") from None
    for line in lines:
        print(line)
    summary = ", ".join(f"{count} {verb}" for verb, count in counts.items() if count)
    if not chains:
        print(f"no service chains in {args.resources}" + (f" ({summary})" if summary else ""))
    elif args.dry_run:
        print(f"dry run: {summary}; rolled back, nothing written")
    else:
        print(f"imported {len(chains)} service chain{'s' if len(chains) != 1 else ''}: {summary}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    import psycopg

    from hessra_pg.admin.doctor import connect

    with connect(args.dsn) as conn:
        try:
            rows = conn.execute(
                "SELECT name, nodes, updated_at FROM hessra_authz.service_chains ORDER BY name").fetchall()
        except psycopg.Error as error:
            raise _database_error(error, "read the service chains") from None
    if args.json:
        print_json([{"name": name, "nodes": nodes, "updated_at": updated.isoformat()}
                    for name, nodes, updated in rows])
        return EXIT_OK
    width = max((len(name) for name, _, _ in rows), default=0)
    for name, nodes, _ in rows:
        print(f"{name:<{width}}  {_describe(nodes)}")
    return EXIT_OK
