"""``hessra-pg doctor``: one report on whether a database is set up safely."""

from __future__ import annotations

import argparse
from typing import Any

from .common import CliInputError, add_json_argument, command_parser, guarded, print_json
from .keys import add_authority_arguments, authority_from_args

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
            "extension is created at this package's version; at least one key is active, none ends "
            "within the key horizon (--key-horizon, 7 days) and some key is active at every moment of it; "
            "with --authority, the authority's current public key is the database's newest active key; "
            "no logging setting writes bound parameters (the token) to the server "
            "log; every table with a policy that calls hessra_authz has row level security enabled and "
            "FORCED, every such call runs once per statement (inside an uncorrelated (SELECT ...)), no "
            "permissive policy lets the role in without a token, and no policy or index uses an operator, "
            "function or type the role owns; no view without security_invoker (nor materialized view) "
            "the role can use reads those tables with another role's rights; the role is not superuser, "
            "has no BYPASSRLS, does not own those tables and is not a member of hessra_admin; no "
            "hessra_test schema (test helpers, with a stored signing key).\n\n"
            "With --production (or --checklist): also trigger, as the role, explain() of bad tokens, "
            "cache_stats() and errors of bad arguments and FAIL if they tell it a kid, a detail, a key reason, "
            "the configuration version or the token; list key administrators, the audit levels (with "
            "--admin-dsn) and other roles' log settings; and end with the production checklist.\n\n"
            "Policy expressions are read with PostgreSQL's own parser, pglast: pip install "
            "'hessra-pg[doctor]'.\n\n"
            "With --authority (and --ca) doctor fetches the authority's GET /public_key over verified TLS: "
            "FAIL when the database doesn't have that key active (every token the authority issues now is "
            "refused: run `hessra-pg keys sync`), warn when a newer key is registered or the authority can't "
            "be reached. Reading the keys needs a role that may read hessra_authz.keys (--admin-dsn).\n\n"
            "Exit status: 0 when nothing is unsafe (warnings allowed), 1 when a check FAILs, 2 when "
            "the database can't be reached, pglast is not installed, or the --ca/--mtls-* files can't be used."
        ),
        examples=(
            "  hessra-pg doctor --dsn 'host=db.internal dbname=shop user=app'\n"
            "  hessra-pg doctor --dsn postgresql://app@db/shop --admin-dsn postgresql://dba@db/shop --json\n"
            "  hessra-pg doctor --dsn postgresql://app@db/shop --admin-dsn postgresql://dba@db/shop --production\n"
            "  hessra-pg doctor --dsn postgresql://app@db/shop --admin-dsn postgresql://dba@db/shop \\\n"
            "      --authority authority.internal:8443 --ca hessra-ca.pem --key-horizon 14"
        ),
    )
    parser.add_argument("--dsn", default="", metavar="DSN", help=DSN_HELP)
    parser.add_argument("--admin-dsn", metavar="DSN",
                        help="a second connection, used only to read hessra_authz.keys (count, expiry "
                             "dates, the authority's key) when the judged role may not: a member of hessra_admin")
    parser.add_argument("--key-horizon", metavar="DAYS", type=_days, default=7,
                        help="report keys that end within DAYS days, and any moment within them at which no "
                             "key is active (default: %(default)s)")
    parser.add_argument("--production", "--checklist", dest="production", action="store_true",
                        help="also check, as this role, that explain(), errors and messages it can trigger reveal "
                             "nothing it shouldn't; list key administrators, the audit levels (with --admin-dsn) "
                             "and other roles' log settings; and print the production checklist at the end")
    parser.add_argument("--transport", choices=("set_config", "set_local"),
                        help="how the application sends its token: set_config() with bound parameters, or "
                             "SET LOCAL (its text holds the token, for the log settings and the roles that read "
                             "running statements to expose; the default in a Citus database)")
    add_json_argument(parser)
    add_authority_arguments(parser, required=False)
    parser.set_defaults(func=guarded(_doctor))


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"days must be an integer, got {text!r}") from None
    if not 1 <= value <= 3650:
        raise argparse.ArgumentTypeError(f"days must be between 1 and 3650, got {value}")
    return value


def _doctor(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from hessra_pg.admin.doctor import diagnose, require_parser

    authority = None
    if args.authority:
        require_parser()  # (before anything else, as without --authority)
        authority = authority_from_args(args)
    elif args.ca or args.mtls_cert or args.mtls_key or args.authority_timeout:
        raise CliInputError("--ca, --mtls-cert, --mtls-key and --authority-timeout go with --authority")
    report = diagnose(args.dsn, admin_dsn=args.admin_dsn, authority=authority,
                      key_horizon=timedelta(days=args.key_horizon), production=args.production,
                      transport=args.transport)
    if args.json:
        print_json(report.as_dict())
    else:
        print("\n".join(report.lines()))
    return report.exit_code
