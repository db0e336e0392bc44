"""``hessra-pg policy test CASES.toml`` and ``hessra-pg policy test-helpers``
(verbs of ``policy``, added by :mod:`hessra_pg.cli.policy`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hessra_pg.errors import PolicyTestRunError, first_line

from .common import EXIT_OK, CliInputError, command_parser, guarded

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def add_test(verbs: Any) -> argparse.ArgumentParser:
    """Add ``policy test``."""
    p = command_parser(
        verbs, "test",
        help="run a matrix of policy test cases (role, token, statements, expected rows) against a database",
        description=(
            "Run the cases of a TOML file against a database: each case runs its statements as a role "
            "(SET LOCAL ROLE) holding a token minted from a short description (kind, subject, resource, "
            "operation, designations, expiry), no token, or garbage, and compares what they return or "
            "whether they are allowed with what the case expects. docs/policy-tests.md describes the file.\n\n"
            "Nothing is left behind: the run is one transaction, rolled back at the end, in which a fresh "
            "test key is registered (hessra_authz.add_key), the [run] setup statements run, and each case "
            "runs in a savepoint rolled back before the next. The connecting role must be a member of "
            "hessra_admin and of every case's role (a superuser of a CI database is simplest). Meant for "
            "test and staging databases: the run holds the keys table's change lock until it ends.\n\n"
            "Prints one line per case (PASS, FAIL with the missing and unexpected rows, ERROR when the case "
            "can't run) and a summary. Exit status: 0 when every case passes, 1 when one fails or can't "
            "run, 2 when the file or the database can't be used."
        ),
        examples=(
            "  hessra-pg policy test tests/policies.toml --dsn 'dbname=shop_test user=postgres'\n"
            "  hessra-pg policy test tests/policies.toml --dsn \"$DATABASE_URL\" --junit policy-tests.xml"
        ),
    )
    p.add_argument("cases", metavar="CASES.toml", help="the policy test file")
    p.add_argument("--dsn", default="", metavar="DSN",
                   help="libpq connection string or URI (default: the PG* environment variables)")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    p.add_argument("--statement-timeout", type=int, default=60, metavar="SECONDS",
                   help="longest any one statement may run (default: 60; 0: no limit)")
    p.add_argument("--quiet", action="store_true", help="print only failed cases and the summary")
    p.set_defaults(func=guarded(_test))
    return p


def _test(args: argparse.Namespace) -> int:
    import psycopg

    from hessra_pg.policytest import load_cases, run_cases
    from hessra_pg.policytest.report import case_lines, write_junit

    if args.statement_timeout < 0:
        raise CliInputError("--statement-timeout must be 0 (no limit) or a number of seconds")
    cases = load_cases(args.cases)  # PolicyTestFileError: exit 2 with every problem

    def show(result: Any) -> None:
        if not (args.quiet and result.passed):
            for line in case_lines(result):
                print(line)
        sys.stdout.flush()

    try:
        with psycopg.connect(args.dsn, connect_timeout=10) as conn:
            report = run_cases(conn, cases, statement_timeout=args.statement_timeout or None, on_result=show)
    except psycopg.OperationalError as error:
        return _unusable(f"can't connect: {first_line(error)}")
    except PolicyTestRunError as error:
        return _unusable(str(error), error.hint)
    print(report.summary())
    if args.junit:
        try:
            write_junit(report, args.junit)
        except OSError as error:
            print(f"hessra-pg: error: can't write {args.junit}: {error.strerror}", file=sys.stderr)
            return EXIT_UNUSABLE
    return EXIT_OK if report.ok else EXIT_FAILED


def add_test_helpers(verbs: Any) -> argparse.ArgumentParser:
    """Add ``policy test-helpers``."""
    p = command_parser(
        verbs, "test-helpers",
        help="install the hessra_test SQL helpers (pgTAP) in a TEST database",
        description=(
            "Create schema hessra_test in a test database: hessra_test.authenticate_as(token, subject, role) "
            "and hessra_test.clear_authentication() to act as a role holding a token inside a transaction "
            "(as Supabase's tests.authenticate_as), and hessra_test.authorization_token / identity_token / "
            "capability_token / mint(jsonb) to mint tokens signed by a test key. Not part of the "
            "hessra_authz extension.\n\n"
            "NEVER IN PRODUCTION: the test key's private half is stored in the database, so whoever can read "
            "it can mint tokens that its policies accept. Refused unless --test-database says this is a test "
            "database. The role must be a superuser. --drop deletes the test key and the schema.\n\n"
            "Exit status: 0 when done, 2 when refused or the database can't be used."
        ),
        examples=(
            "  hessra-pg policy test-helpers --dsn 'dbname=shop_test user=postgres' --test-database\n"
            "  hessra-pg policy test-helpers --dsn 'dbname=shop_test user=postgres' --drop"
        ),
    )
    p.add_argument("--dsn", default="", metavar="DSN",
                   help="libpq connection string or URI of the TEST database (default: the PG* environment variables)")
    p.add_argument("--test-database", action="store_true",
                   help="confirm that this is a test database (required to install)")
    p.add_argument("--drop", action="store_true", help="delete the test key and drop schema hessra_test")
    p.set_defaults(func=guarded(_test_helpers))
    return p


def _test_helpers(args: argparse.Namespace) -> int:
    import psycopg

    from hessra_pg.dev.sqlhelpers import drop_test_helpers, install_test_helpers
    from hessra_pg.errors import SqlHelpersError

    if not args.drop and not args.test_database:
        raise CliInputError("refusing to install hessra_test without --test-database: it stores a private "
                            "signing key in the database (anyone who can read it can mint tokens its policies "
                            "accept); never in production")
    try:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=10) as conn:
            name = conn.info.dbname
            if args.drop:
                installed, kid = drop_test_helpers(conn)
                print(f"{name}: dropped hessra_test" + (f" and test key kid {kid}" if kid is not None else "")
                      if installed else f"{name}: hessra_test is not installed")
                return EXIT_OK
            kid = install_test_helpers(conn, test_database=True)
    except psycopg.OperationalError as error:
        return _unusable(f"can't connect: {first_line(error)}")
    except SqlHelpersError as error:
        return _unusable(str(error), error.hint)
    print(f"{name}: installed hessra_test (TEST ONLY), test key kid {kid}; remove with --drop")
    return EXIT_OK


def _unusable(message: str, hint: str | None = None) -> int:
    """Exit status 2 with a one-line error (and its hint): the run can't be
    made or the database can't be used."""
    print(f"hessra-pg: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return EXIT_UNUSABLE
