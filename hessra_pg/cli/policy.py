"""``hessra-pg policy generate``: RLS policy SQL from flags or a TOML file.

``register()`` adds the ``policy`` command with one subparser per verb; a
verb is added by an ``add_<verb>(verbs)`` function (``add_generate`` here).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hessra_pg.rls.policies import COMMANDS, MODES, PolicySpec, PolicySpecError, drop_sql, generate_sql, load_specs

from .common import EXIT_OK, CliInputError, command_parser, guarded

EXIT_PROBLEMS = 1


def register(subparsers: Any) -> None:
    """Add ``policy`` and its verbs."""
    policy = subparsers.add_parser(
        "policy",
        help="generate (and check) Row-Level Security policies for hessra tokens",
        description="Row-Level Security policies that check hessra tokens, once per statement.",
    )
    verbs = policy.add_subparsers(dest="policy_command", metavar="VERB", required=True)
    add_generate(verbs)
    add_validate(verbs)
    from .policy_test import add_test, add_test_helpers

    add_test(verbs)
    add_test_helpers(verbs)


def add_generate(verbs: Any) -> argparse.ArgumentParser:
    """Add ``policy generate``."""
    p = command_parser(
        verbs, "generate",
        help="print the SQL that guards a table with hessra policies",
        description=(
            "Print SQL for one table (from flags) or for every table of a TOML file (--from): "
            "ENABLE and FORCE ROW LEVEL SECURITY, one policy per command (USING for SELECT, UPDATE, "
            "DELETE; WITH CHECK for INSERT, UPDATE), and the suggested index, in one transaction. "
            "Every verifier call is a scalar subquery, evaluated once per statement (with --no-subquery, "
            "for Citus, once per row).\n\n"
            "Modes: table (every row needs --resource), row (each row's resource is the SQL "
            "--expression, checked against authorized_resources()), identity (the --owner-column holds "
            "the identity that owns the row), service_chain (--resource along the named --chain, as "
            "this database's --component), designation (the current token is a capability for --resource, "
            "default the table, and each row's --column holds the value of the designation --label; pairs "
            "repeat, in order; --fixed LABEL=VALUE supplies a literal).\n\n"
            "Commands map to operations: SELECT -> read, INSERT/UPDATE/DELETE -> write unless "
            "--operation, --select-op, --write-op or --insert-op/--update-op/--delete-op say otherwise.\n\n"
            "The --expression is SQL inserted as written: it comes from the DBA, never from users. "
            "Names and literals are quoted.\n\n"
            "The script runs with search_path = pg_catalog, pg_temp (SET LOCAL inside its transaction; "
            "with --no-transaction, set and then restored), so an operator or function someone created "
            "in a writable schema such as public can't bind into a policy: qualify your own functions "
            "in --expression."
        ),
        examples=(
            "  hessra-pg policy generate --table orders --resource orders | psql\n"
            "  hessra-pg policy generate --schema shop --table orders --mode row \\\n"
            "      --expression \"'orders/' || id\"\n"
            "  hessra-pg policy generate --table documents --mode identity --owner-column owner\n"
            "  hessra-pg policy generate --table payments --mode service_chain --resource payments \\\n"
            "      --chain payments --component ledger_db\n"
            "  hessra-pg policy generate --table orders --mode designation --label tenant_id --column tenant_id\n"
            "  hessra-pg policy generate --table notes --mode designation --label tenant_id --column tenant \\\n"
            "      --label user --column author --fixed region=eu\n"
            "  hessra-pg policy generate --table orders --resource orders --no-subquery   # Citus\n"
            "  hessra-pg policy generate --from policies.toml\n"
            "  hessra-pg policy generate --from policies.toml --drop"
        ),
    )
    source = p.add_argument_group("what to guard (flags, or --from)")
    source.add_argument("--from", dest="from_file", metavar="FILE.toml",
                        help="read the specs from a TOML file (one spec at the top level, or [[policies]] tables); "
                             "the spec flags below are then not allowed")
    source.add_argument("--table", help="the table to guard")
    source.add_argument("--schema", help="its schema (default: public); the SQL always names it, since it runs "
                                         "with search_path = pg_catalog, pg_temp")
    source.add_argument("--mode", choices=MODES, default=None, help="how rows are checked (default: table)")
    source.add_argument("--resource", help="the resource checked (modes table and service_chain; mode designation: "
                                           "default the table's name)")
    source.add_argument("--expression", metavar="SQL",
                        help="mode row: SQL giving each row's resource as text, e.g. \"'orders/' || id\" (trusted)")
    source.add_argument("--owner-column", metavar="COLUMN", help="mode identity: the column holding the owner identity")
    source.add_argument("--chain", help="mode service_chain: the name of a chain set with set_service_chain()")
    source.add_argument("--component", help="mode service_chain: this database's component in the chain "
                                            "(default: none, every node must have attested)")
    source.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                        help="mode designation: a designation label (repeat; each pairs with the --column in the "
                             "same position)")
    source.add_argument("--column", action="append", dest="columns", metavar="COLUMN",
                        help="mode designation: the column holding that label's value")
    source.add_argument("--fixed", action="append", metavar="LABEL=VALUE",
                        help="mode designation: a designation the policy supplies as a literal (repeat)")
    ops = p.add_argument_group("operations per command")
    ops.add_argument("--operation", metavar="OP", help="one operation for every command")
    ops.add_argument("--select-op", metavar="OP", help="operation for SELECT (default: read)")
    ops.add_argument("--write-op", metavar="OP", help="operation for INSERT, UPDATE and DELETE (default: write)")
    ops.add_argument("--insert-op", metavar="OP", help="operation for INSERT")
    ops.add_argument("--update-op", metavar="OP", help="operation for UPDATE")
    ops.add_argument("--delete-op", metavar="OP", help="operation for DELETE")
    ops.add_argument("--commands", metavar="LIST",
                     help=f"comma-separated commands that get a policy (default: {','.join(COMMANDS)}); "
                          "the others are denied")
    shape = p.add_argument_group("policy shape")
    shape.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                       help="apply the policies to this role only (repeat; default: PUBLIC)")
    shape.add_argument("--name-prefix", metavar="PREFIX",
                       help="policy names are PREFIX_<table>_<command> (default: hessra)")
    shape.add_argument("--restrictive", action="store_true",
                       help="AS RESTRICTIVE: ANDed with the table's other policies instead of ORed")
    shape.add_argument("--no-force", action="store_true",
                       help="leave out FORCE ROW LEVEL SECURITY (the table owner then bypasses the policies)")
    shape.add_argument("--no-subquery", action="store_true",
                       help="write the checks without (SELECT ...), as Citus requires on distributed tables: "
                            "every hessra_authz call then runs once per row (each policy is commented so that "
                            "doctor knows it is intended; docs/scale-out.md)")
    out = p.add_argument_group("output")
    out.add_argument("--no-index", action="store_true", help="leave out the suggested index")
    out.add_argument("--no-transaction", action="store_true",
                     help="no BEGIN/COMMIT around the statements (search_path is then pinned with set_config() "
                          "and restored at the end)")
    out.add_argument("--drop", action="store_true",
                     help="print the SQL that drops the policies instead (RLS stays enabled: fail closed)")
    out.add_argument("--disable", action="store_true",
                     help="with --drop: also NO FORCE and DISABLE ROW LEVEL SECURITY")
    p.set_defaults(func=guarded(_generate))
    return p


_SPEC_FLAGS = ("table", "schema", "mode", "resource", "expression", "owner_column", "chain", "component",
               "labels", "columns", "fixed", "operation", "select_op", "write_op", "insert_op", "update_op", "delete_op", "commands", "roles",
               "name_prefix")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _spec_from_args(args: argparse.Namespace) -> PolicySpec:
    if not args.table:
        raise CliInputError("policy generate needs --table (or --from FILE.toml)")
    operations: dict[str, str] = {}
    if args.operation:
        clash = [n for n in ("select_op", "write_op", "insert_op", "update_op", "delete_op") if getattr(args, n)]
        if clash:
            raise CliInputError(f"--operation sets every command: don't combine it with {_flag(clash[0])}")
        operations = {command: args.operation for command in COMMANDS}
    if args.select_op:
        operations["SELECT"] = args.select_op
    if args.write_op:
        operations.update({"INSERT": args.write_op, "UPDATE": args.write_op, "DELETE": args.write_op})
    for command in ("insert", "update", "delete"):
        value = getattr(args, f"{command}_op")
        if value:
            operations[command.upper()] = value
    labels, columns = list(args.labels or ()), list(args.columns or ())
    if len(labels) != len(columns):
        raise CliInputError(f"give one --column per --label, in the same order ({len(labels)} --label, "
                            f"{len(columns)} --column)")
    if (args.mode or "table") == "designation" and not labels:
        raise CliInputError("mode designation needs --label LABEL --column COLUMN (repeat for several labels)")
    if (args.mode or "table") != "designation" and (labels or args.fixed):
        raise CliInputError("--label, --column and --fixed apply to --mode designation")
    designations = dict(zip(labels, columns)) if labels else None
    if designations is not None and len(designations) != len(labels):
        raise CliInputError("each --label may be given once")
    fixed: dict[str, str] | None = None
    for item in args.fixed or ():
        label, sep, value = item.partition("=")
        if not sep or not label:
            raise CliInputError(f"--fixed takes LABEL=VALUE, got {item!r}")
        fixed = fixed or {}
        if label in fixed:
            raise CliInputError(f"--fixed gives label {label!r} twice")
        fixed[label] = value
    kwargs: dict[str, Any] = {
        "table": args.table,
        "designations": designations,
        "fixed": fixed,
        "mode": args.mode or "table",
        "schema": args.schema,
        "resource": args.resource,
        "expression": args.expression,
        "owner_column": args.owner_column,
        "chain": args.chain,
        "component": args.component,
        "operations": operations or None,
        "roles": tuple(args.roles or ()),
        "force": not args.no_force,
        "restrictive": args.restrictive,
        "no_subquery": args.no_subquery,
    }
    if args.commands:
        kwargs["commands"] = tuple(c for c in (part.strip() for part in args.commands.split(",")) if c)
    if args.name_prefix:
        kwargs["name_prefix"] = args.name_prefix
    return PolicySpec(**kwargs)


def _generate(args: argparse.Namespace) -> int:
    if args.disable and not args.drop:
        raise CliInputError("--disable only applies with --drop")
    try:
        if args.from_file:
            given = [n for n in _SPEC_FLAGS if getattr(args, n)]
            switches = [flag for flag, on in (("--no-force", args.no_force), ("--restrictive", args.restrictive),
                                              ("--no-subquery", args.no_subquery)) if on]
            if given or switches:
                flag = _flag(given[0]) if given else switches[0]
                raise CliInputError(f"{flag} can't be combined with --from: put it in the TOML file")
            specs = load_specs(args.from_file)
        else:
            specs = [_spec_from_args(args)]
        if args.drop:
            text = drop_sql(specs, disable=args.disable, indexes=False, transaction=not args.no_transaction)
        else:
            text = generate_sql(specs, indexes=not args.no_index, transaction=not args.no_transaction)
    except PolicySpecError as error:
        raise CliInputError(str(error)) from None
    sys.stdout.write(text)
    return EXIT_OK


def add_validate(verbs: Any) -> argparse.ArgumentParser:
    """Add ``policy validate``."""
    p = command_parser(
        verbs, "validate",
        help="check a Hessra policy repository (resources.toml, clients.toml)",
        description=(
            "Check a Hessra policy repository: PATH is a directory holding resources.toml and "
            "optionally clients.toml, or a single .toml file. Reports TOML syntax errors, public keys "
            "that don't parse, service chains declared without nodes (or nodes without a declaration), "
            "duplicate components in a chain, duplicate resource or client names (also across the "
            "two files), clients naming a resource that is not defined or an operation the resource "
            "does not list, and private keys, each as FILE:LINE: message.\n\n"
            "Exit status: 0 when clean, 1 when there are problems, 2 when PATH can't be read."
        ),
        examples=(
            "  hessra-pg policy validate policy/\n"
            "  hessra-pg policy validate policy/resources.toml --json"
        ),
    )
    p.add_argument("path", metavar="PATH", help="a policy repository directory, or one .toml file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=guarded(_validate))
    return p


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _validate(args: argparse.Namespace) -> int:
    import json

    from hessra_pg.repository.checker import check_repository

    result = check_repository(args.path)
    if args.json:
        print(json.dumps({
            "ok": result.ok,
            "files": result.files,
            "problems": [{"file": p.file, "line": p.line, "message": p.message} for p in result.problems],
        }, indent=2))
    elif result.ok:
        print(f"{args.path}: ok ({_count(len(result.files), 'file')}, {_count(len(result.resources), 'resource')}, "
              f"{_count(len(result.chains), 'service chain')}, {_count(len(result.clients), 'client')})")
    else:
        for problem in result.problems:
            print(problem)
        print(f"hessra-pg: {_count(len(result.problems), 'problem')}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_PROBLEMS
