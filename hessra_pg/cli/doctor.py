"""``hessra-pg doctor``: one report on whether a database is set up safely."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_json_argument, command_parser, guarded, print_json

DSN_HELP = ("libpq connection string or URI of the role to judge, normally the application's "
            "(default: the PG* environment variables)")


def register(subparsers: Any) -> None:
    """Add ``doctor``."""
    parser = command_parser(
        subparsers, "doctor",
        help="check that a database is set up safely for token RLS",
        description=(
            "Connect as the application's role and check, each as ok / warn / FAIL: plpython3u is "
            "present; the server's Python imports biscuit_auth and hessra_pg; the hessra_authz "
            "extension is created at this package's version; at least one key is active and none "
            "ends within 7 days; no logging setting writes bound parameters (the token) to the server "
            "log; every table with a policy that calls hessra_authz has row level security enabled and "
            "FORCED, every such call runs once per statement (inside an uncorrelated (SELECT ...)), no "
            "permissive policy lets the role in without a token, and no policy or index uses an operator, "
            "function or type the role owns; no view without security_invoker (nor materialized view) "
            "the role can use reads those tables with another role's rights; the role is not superuser, "
            "has no BYPASSRLS, does not own those tables and is not a member of hessra_admin.\n\n"
            "Policy expressions are read with PostgreSQL's own parser, pglast: pip install "
            "'hessra-pg[doctor]'.\n\n"
            "Exit status: 0 when nothing is unsafe (warnings allowed), 1 when a check FAILs, 2 when "
            "the database can't be reached or pglast is not installed."
        ),
        examples=(
            "  hessra-pg doctor --dsn 'host=db.internal dbname=shop user=app'\n"
            "  hessra-pg doctor --dsn postgresql://app@db/shop --admin-dsn postgresql://dba@db/shop --json"
        ),
    )
    parser.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    parser.add_argument("--admin-dsn", metavar="DSN",
                        help="a second connection, used only to read hessra_authz.keys (count and expiry "
                             "dates) when the judged role may not: a member of hessra_admin")
    add_json_argument(parser)
    parser.set_defaults(func=guarded(_doctor))


def _doctor(args: argparse.Namespace) -> int:
    from hessra_pg.admin.doctor import diagnose

    report = diagnose(args.dsn, admin_dsn=args.admin_dsn)
    if args.json:
        print_json(report.as_dict())
    else:
        print("\n".join(report.lines()))
    return report.exit_code
