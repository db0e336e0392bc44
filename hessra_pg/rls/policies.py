"""Row-Level Security policies for hessra_authz, generated from a small spec.

A :class:`PolicySpec` describes how one table is guarded; it renders plain
SQL (``ENABLE`` and ``FORCE ROW LEVEL SECURITY``, one policy per command,
the suggested index) that a DBA can read, commit and run::

    from hessra_pg.rls.policies import PolicySpec, generate_sql

    spec = PolicySpec("orders", mode="row", schema="shop", expression="'orders/' || id")
    print(generate_sql(spec))

Modes (every verifier call is wrapped in a scalar subquery, so PostgreSQL
evaluates it once per statement as an InitPlan, never once per row):

- ``table``: every row needs ``authorized(resource, operation)``;
- ``row``: each row has a resource, the SQL ``expression`` (e.g.
  ``'orders/' || id``), which must be among
  ``authorized_resources(operation)``; an expression index is suggested;
- ``identity``: the ``owner_column`` holds an identity, and a row is visible
  when the current identity token proves it (docs/sql-reference.md "Rows owned by
  identities"); an index on ``(owner COLLATE "C")`` is suggested;
- ``service_chain``: ``verify_service_chain`` of the current token for
  ``resource`` along the named ``chain``, as ``component`` (NULL: every node
  must have attested);
- ``designation``: the current token is a capability for ``resource``
  (default: the table's name) whose designations the row satisfies:
  ``designations`` maps each label to the column holding its value
  (``{"tenant_id": "tenant_id"}``), ``fixed`` gives labels the policy
  supplies as literals. Per label the column is compared with the
  statement's accepted set (``col::text COLLATE "C" = ANY (...)``, or every
  non-NULL value, or NULL too), and a token whose checks give no exact set
  is verified row by row (``designation_row``) or denied, as the
  administrator set (docs/sql-reference.md "Capability tokens"); an index on
  ``(col::text COLLATE "C")`` is suggested per label (the policy can then
  read only the matching rows).

``no_subquery=True`` writes the same checks with no ``(SELECT ...)``
anywhere, for Citus (which refuses sublinks in the policies of a distributed
table): every hessra_authz call then runs once per row, where Citus runs the
shard query. Each mode keeps its meaning: ``table``, ``row``,
``service_chain`` and ``designation`` call the same helpers bare (they answer
the same for every row of a statement); ``identity`` calls
``verify_identity(current_token(), owner)`` per row, the definition the
per-statement form implements (docs/sql-reference.md "Rows owned by
identities"). Each such policy is commented :data:`NO_SUBQUERY_COMMENT` so
that ``hessra-pg doctor`` knows its per-row calls are intended.

Commands map to operations: SELECT -> ``read``, INSERT/UPDATE/DELETE ->
``write`` by default. SELECT and DELETE get ``USING``, INSERT gets
``WITH CHECK``, UPDATE both. Identifiers and literals are quoted; the row
``expression`` is SQL written by the DBA and is inserted as is (trusted
input: never build it from user data).

Names are bound when a policy is created, and an operator whose argument
types match exactly wins over pg_catalog's polymorphic one wherever it sits
in the search_path: a role that can create objects in a schema on the
creating session's path (``public`` in a database upgraded from PG 14 or
older) could otherwise plant ``public.||(text, integer)`` into a policy. So
every script runs with ``search_path = pg_catalog, pg_temp`` (pg_temp is
never searched for operators or functions), the table is always
schema-qualified (``public`` when no schema is given) and every operator,
type, collation and function the generator writes is pg_catalog- or
hessra_authz-qualified. The row ``expression`` then resolves only
pg_catalog names: qualify your own functions in it (``shop.order_key(id)``).

The same specs load from TOML (:func:`load_specs`) and back
``hessra-pg policy generate`` and the Alembic operations.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hessra_pg.errors import HessraError, PolicySpecError

__all__ = [
    "COMMANDS",
    "DEFAULT_OPERATIONS",
    "DEFAULT_SCHEMA",
    "MODES",
    "NO_SUBQUERY_COMMENT",
    "SAFE_SEARCH_PATH",
    "SPEC_COMMENT_PREFIX",
    "Policy",
    "PolicySpec",
    "PolicySpecError",
    "RESERVED_LABELS",
    "drop_sql",
    "generate_sql",
    "intends_per_row",
    "load_specs",
    "quote_ident",
    "quote_literal",
    "session_search_path_pin",
    "spec_from_mapping",
    "with_safe_search_path",
]

COMMANDS: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE", "DELETE")
DEFAULT_OPERATIONS: Mapping[str, str] = {"SELECT": "read", "INSERT": "write", "UPDATE": "write", "DELETE": "write"}
MODES: tuple[str, ...] = ("table", "row", "identity", "service_chain", "designation")
#: Labels a policy can't supply: the anchor is the database's own setting and
#: facets only ever come from attestations (hessra-capability-tokens.md §3.4).
RESERVED_LABELS = frozenset({"anchor", "facet"})
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names
_USING_COMMANDS = frozenset({"SELECT", "UPDATE", "DELETE"})
_CHECK_COMMANDS = frozenset({"INSERT", "UPDATE"})
_SCHEMA = "hessra_authz"
#: The schema of a spec that names none: the generated SQL always qualifies the table.
DEFAULT_SCHEMA = "public"
#: The search_path generated statements run with: no schema a user can create
#: objects in (pg_temp is never searched for operators or functions, and last
#: for tables and types).
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"
#: Where a script without its own transaction keeps the caller's search_path.
_SAVED_SEARCH_PATH = "hessra_pg.saved_search_path"
#: The comment on every policy of a ``no_subquery`` spec: doctor reads it as
#: "these per-row calls are intended".
NO_SUBQUERY_COMMENT = "hessra-pg: no-subquery policy (hessra_authz calls run once per row, for Citus)"
#: How the comment that the Alembic operation ``create_hessra_policies`` puts
#: on each of its policies starts; the rest is the spec as JSON.
SPEC_COMMENT_PREFIX = "hessra-pg spec: "


def intends_per_row(comment: str | None) -> bool:
    """Whether a policy's comment says it was generated with ``no_subquery``:
    :data:`NO_SUBQUERY_COMMENT`, or a spec comment recording ``"no_subquery": true``."""
    if not comment:
        return False
    if comment == NO_SUBQUERY_COMMENT:
        return True
    if comment.startswith(SPEC_COMMENT_PREFIX):
        try:
            data = json.loads(comment[len(SPEC_COMMENT_PREFIX):])
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("no_subquery") is True
    return False


# -- quoting -----------------------------------------------------------------

def _plain_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PolicySpecError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise PolicySpecError(f"{what} must not be empty")
    if "\x00" in value:
        raise PolicySpecError(f"{what} must not contain a NUL character")
    return value


def quote_ident(name: str) -> str:
    """An SQL identifier, always double-quoted (``"a""b"``), as psycopg's
    :class:`psycopg.sql.Identifier` renders it."""
    from psycopg import sql

    return sql.Identifier(_plain_text(name, "identifier")).as_string(None)


def quote_literal(value: str) -> str:
    """An SQL string literal: ``'it''s'``, or ``E'a\\\\b'`` when it contains
    backslashes (correct whatever ``standard_conforming_strings`` says)."""
    from psycopg import sql

    if not isinstance(value, str) or "\x00" in value:
        raise PolicySpecError("a literal must be a string without NUL characters")
    return sql.Literal(value).as_string(None).strip()


def _qualified(schema: str | None, name: str) -> str:
    """``"schema"."name"``: always qualified, since the statements run with
    search_path pinned to pg_catalog."""
    return f"{quote_ident(schema if schema is not None else DEFAULT_SCHEMA)}.{quote_ident(name)}"


def _op(symbol: str) -> str:
    """``OPERATOR(pg_catalog.=)``: the operator of pg_catalog, whatever
    operators other schemas hold."""
    return f"OPERATOR(pg_catalog.{symbol})"


_TEXT = "pg_catalog.text"
_COLLATE_C = 'COLLATE pg_catalog."C"'
#: Where designation policies split "every value" into a range and a tail
#: (any constant is exact; this one leaves the tail nearly empty in the
#: planner's statistics for most data, ASCII so any server encoding takes it).
_SPLIT = "'~~~~~~~~'"


def _bounded_name(*parts: str) -> str:
    """``part1_part2...``, shortened with a hash if over 63 bytes, so two
    long names never collapse into one truncated name."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


def _call(function: str, *args: str, subquery: bool = True) -> str:
    """``(SELECT hessra_authz.f(args))``: a scalar subquery, i.e. an InitPlan;
    with ``subquery=False`` the bare call (evaluated per row)."""
    call = f"{_SCHEMA}.{function}({', '.join(args)})"
    return f"(SELECT {call})" if subquery else call


# -- one policy ----------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """One ``CREATE POLICY`` on one command (alembic_utils' PGPolicy shape):
    Postgres has no CREATE OR REPLACE POLICY, so :meth:`create_sql` is
    preceded by :meth:`drop_sql` to replace one."""

    name: str
    schema: str | None
    table: str
    command: str
    using: str | None = None
    with_check: str | None = None
    roles: tuple[str, ...] = ()
    restrictive: bool = False

    @property
    def target(self) -> str:
        """The quoted, schema-qualified table."""
        return _qualified(self.schema, self.table)

    def create_sql(self) -> str:
        """The ``CREATE POLICY`` statement (with a trailing semicolon)."""
        lines = [f"CREATE POLICY {quote_ident(self.name)} ON {self.target}"]
        if self.restrictive:
            lines.append("    AS RESTRICTIVE")
        lines.append(f"    FOR {self.command}")
        if self.roles:
            lines.append("    TO " + ", ".join(_role(r) for r in self.roles))
        if self.using is not None:
            lines.append(f"    USING ({self.using})")
        if self.with_check is not None:
            lines.append(f"    WITH CHECK ({self.with_check})")
        return "\n".join(lines) + ";"

    def drop_sql(self) -> str:
        """``DROP POLICY IF EXISTS``."""
        return f"DROP POLICY IF EXISTS {quote_ident(self.name)} ON {self.target};"


def _role(name: str) -> str:
    special = name.upper()
    if special in ("PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"):
        return special
    return quote_ident(name)


# -- the spec ------------------------------------------------------------------

@dataclass(frozen=True)
class PolicySpec:
    """How one table is guarded by hessra tokens (see the module docstring).

    ``operations`` overrides the default command -> operation mapping (only
    the commands given change); ``commands`` chooses which commands get a
    policy (a command without one is denied by RLS to everyone but
    superusers/BYPASSRLS roles). ``names`` overrides policy names per command
    (default ``<name_prefix>_<table>_<command>``). ``roles`` limits the
    policies to those roles (default PUBLIC). ``restrictive`` makes them
    ``AS RESTRICTIVE`` (ANDed with the table's other policies instead of
    ORed). ``force`` adds ``FORCE ROW LEVEL SECURITY`` (the table owner is
    then subject to the policies too). ``no_subquery`` writes the checks
    without ``(SELECT ...)`` for Citus (see the module docstring).
    """

    table: str
    mode: str = "table"
    schema: str | None = None
    resource: str | None = None
    expression: str | None = None
    owner_column: str | None = None
    chain: str | None = None
    component: str | None = None
    designations: Mapping[str, str] | None = None
    fixed: Mapping[str, str] | None = None
    operations: Mapping[str, str] | None = None
    commands: Sequence[str] = COMMANDS
    roles: Sequence[str] = ()
    names: Mapping[str, str] | None = None
    name_prefix: str = "hessra"
    force: bool = True
    restrictive: bool = False
    no_subquery: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _plain_text(self.table, "table")
        if self.schema is not None:
            _plain_text(self.schema, "schema")
        mode = _plain_text(self.mode, "mode").lower().replace("-", "_")
        if mode not in MODES:
            raise PolicySpecError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        set_(self, "mode", mode)
        commands = tuple(_command(c) for c in ([self.commands] if isinstance(self.commands, str) else self.commands))
        if not commands:
            raise PolicySpecError("commands must name at least one of " + ", ".join(COMMANDS))
        if len(set(commands)) != len(commands):
            raise PolicySpecError("commands must not repeat a command")
        set_(self, "commands", commands)
        if self.operations is not None:
            if mode == "identity":
                raise PolicySpecError("identity mode has no operations: a row is its owner's, for every command")
            ops = {_command(c): _plain_text(op, f"operation for {c}") for c, op in dict(self.operations).items()}
            set_(self, "operations", ops)
        if self.names is not None:
            set_(self, "names", {_command(c): _plain_text(n, f"policy name for {c}") for c, n in dict(self.names).items()})
        roles = [self.roles] if isinstance(self.roles, str) else list(self.roles)
        set_(self, "roles", tuple(_plain_text(r, "role") for r in roles))
        _plain_text(self.name_prefix, "name_prefix")
        if mode == "designation" and self.resource is None:
            set_(self, "resource", self.table)  # the capability's resource: the table, unless given
        self._check_mode_fields()
        self._check_designations()

    def _check_mode_fields(self) -> None:
        required = {
            "table": ("resource",),
            "row": ("expression",),
            "identity": ("owner_column",),
            "service_chain": ("resource", "chain"),
            "designation": ("resource", "designations"),
        }[self.mode]
        optional = {"service_chain": {"component"}, "designation": {"fixed"}}.get(self.mode, set())
        allowed = set(required) | optional
        for name in ("resource", "expression", "owner_column", "chain", "component", "designations", "fixed"):
            value = getattr(self, name)
            if name in required and value is None:
                raise PolicySpecError(f"mode {self.mode} needs {name}")
            if value is not None:
                if name not in allowed:
                    raise PolicySpecError(f"{name} does not apply to mode {self.mode} (it needs {', '.join(required)})")
                if name not in ("designations", "fixed"):
                    _plain_text(value, name)

    def _check_designations(self) -> None:
        """Labels and columns of mode designation: text, no reserved label, no
        label twice (a fixed label is not also a row label), at least one row label."""
        if self.mode != "designation":
            return
        set_ = object.__setattr__
        for name, what in (("designations", "column"), ("fixed", "value")):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise PolicySpecError(f"{name} must map each label to a {what} ({{\"tenant_id\": ...}})")
            checked = {}
            for label, item in value.items():
                _plain_text(label, "designation label")
                if label in RESERVED_LABELS:
                    hint = ("the anchor is the database's own setting (hessra_authz.set_anchor)" if label == "anchor"
                            else "facets come only from attestations")
                    raise PolicySpecError(f"designation label {label!r} is reserved: {hint}")
                checked[label] = _plain_text(item, f"the {what} of designation {label!r}")
            set_(self, name, checked)
        assert self.designations is not None
        if not self.designations:
            raise PolicySpecError("mode designation needs at least one label -> column in designations")
        both = sorted(set(self.designations) & set(self.fixed or {}))
        if both:
            raise PolicySpecError(f"designation label {both[0]!r} is both a row label and a fixed one: give it once")

    # -- derived names ----------------------------------------------------------

    @property
    def target(self) -> str:
        """The quoted, schema-qualified table (schema ``public`` if none is given)."""
        return _qualified(self.schema, self.table)

    def operation(self, command: str) -> str:
        """The operation checked for a command."""
        command = _command(command)
        return dict(DEFAULT_OPERATIONS, **(self.operations or {}))[command]

    def policy_name(self, command: str) -> str:
        """The policy name for a command (deterministic, at most 63 bytes)."""
        command = _command(command)
        if self.names and command in self.names:
            return self.names[command]
        return _bounded_name(self.name_prefix, self.table, command.lower())

    def index_name(self) -> str | None:
        """The name of the suggested index, or None for modes without one
        (mode designation suggests one per label: :meth:`index_names`)."""
        suffix = {"row": "resource", "identity": "owner"}.get(self.mode)
        return _bounded_name(self.name_prefix, self.table, suffix) if suffix else None

    def index_names(self) -> list[str]:
        """The names of the suggested indexes."""
        if self.mode == "designation":
            assert self.designations is not None
            return [_bounded_name(self.name_prefix, self.table, column) for column in self.designations.values()]
        name = self.index_name()
        return [name] if name else []

    # -- SQL --------------------------------------------------------------------

    def condition(self, command: str) -> str:
        """The boolean SQL expression a row must satisfy for a command."""
        if self.mode == "identity":
            return self._identity_condition()
        operation = quote_literal(self.operation(command))
        if self.mode == "table":
            assert self.resource is not None
            return self._call("authorized", quote_literal(self.resource), operation)
        if self.mode == "row":
            return (f"({self.expression}) {_op('=')} ANY ("
                    f"{self._call('authorized_resources', operation)}::{_TEXT}[])")
        if self.mode == "designation":
            return self._designation_condition(operation)
        assert self.resource is not None and self.chain is not None
        component = f"{quote_literal(self.component)}::{_TEXT}" if self.component is not None else f"NULL::{_TEXT}"
        return self._call(
            "verify_service_chain",
            f"{_SCHEMA}.current_token()", f"{_SCHEMA}.current_subject()",
            f"{quote_literal(self.resource)}::{_TEXT}", f"{operation}::{_TEXT}",
            f"{quote_literal(self.chain)}::{_TEXT}", component,
        )

    def _call(self, function: str, *args: str) -> str:
        return _call(function, *args, subquery=not self.no_subquery)

    def _identity_condition(self) -> str:
        if self.no_subquery:
            # Per row, the definition itself: the current identity token
            # proves the owner (revocations included). The per-statement
            # form below needs a subquery to turn the revoked identities
            # into prefixes, which Citus refuses.
            assert self.owner_column is not None
            return (f"{_SCHEMA}.verify_identity({_SCHEMA}.current_token(), "
                    f"{self.target}.{quote_ident(self.owner_column)}::{_TEXT})")
        return self._identity_subquery_condition()

    def _identity_subquery_condition(self) -> str:
        # docs/sql-reference.md "Rows owned by identities", with the column qualified by the
        # table. Every subquery is uncorrelated: each is one InitPlan that the
        # leader evaluates (a parallel scan stays parallel), and the two
        # revocation arrays are read only when some identity below the
        # token's is revoked. The range comes first: a row found by owner
        # then needs three helper calls, not four (InitPlans run on demand).
        # Every operator is pg_catalog's: an owner column of type varchar
        # would otherwise bind a planted `=(varchar, text)`, an exact match.
        assert self.owner_column is not None
        owner = f"{self.target}.{quote_ident(self.owner_column)}"
        c = f"{owner} {_COLLATE_C}"
        below = f"{_SCHEMA}.current_identity_revoked_below()"
        return (
            f"(({c} {_op('>=')} {_call('current_identity_subtree_start')}\n"
            f"          AND {c} {_op('<')} {_call('current_identity_subtree_end')})\n"
            f"         OR {c} {_op('=')} {_call('current_identity')})\n"
            f"        AND ((SELECT pg_catalog.cardinality({below}) {_op('=')} 0)\n"
            f"             OR NOT ({owner} {_op('=')} ANY ((SELECT {below})::{_TEXT}[])\n"
            f"                     OR {owner} {_op('^@')} ANY ((SELECT coalesce(pg_catalog.array_agg("
            f"hessra_revoked.identity {_op('||')} ':'), '{{}}')\n"
            f"                                 FROM pg_catalog.unnest({below}) AS hessra_revoked(identity))"
            f"::{_TEXT}[])))"
        )

    def _designation_condition(self, operation: str) -> str:
        # Per label, uncorrelated InitPlans over one per-statement
        # computation (hessra_authz.capability_rows): the accepted values;
        # '' when every non-NULL value is accepted (e >= '' holds for every
        # string in "C"); whether NULL is. The labels are ANDed. Rows of a
        # token whose checks give no exact set (the sets are then empty) go
        # to the per-row verifier, through arms that pass every row only
        # when designation_fallback says so.
        # * Every OR arm holds an index condition on the first label's
        #   suggested index (a BitmapOr), each estimated small: "every value"
        #   is split at a constant into a range and a tail, so the planner
        #   doesn't take it for a third of the table.
        # * InitPlans run on demand: a row matching its values costs one
        #   helper call per label and statement.
        # * "C": token values compare byte for byte, as Datalog strings do; a
        #   column's own (possibly case-insensitive) collation would widen.
        assert self.designations is not None and self.resource is not None
        labels = "ARRAY[" + ", ".join(quote_literal(label) for label in self.designations) + f"]::{_TEXT}[]"
        fixed = quote_literal(json.dumps(dict(self.fixed or {}), ensure_ascii=False, sort_keys=True))
        head = (f"{quote_literal(self.resource)}::{_TEXT}", f"{operation}::{_TEXT}", labels)
        fixed_arg = f"{fixed}::pg_catalog.jsonb"
        split = f"{_SPLIT}::{_TEXT}"

        def arms(qualified: str, value: str, floor: str, nulls: str, then: str = "") -> list[str]:
            return [f"{value} {_op('>=')} {floor} AND {value} {_op('<=')} {split}{then}",
                    f"{value} {_op('>')} {split} AND {value} {_op('>=')} {floor}{then}",
                    f"{qualified} IS NULL AND {nulls}{then}"]

        terms = []
        for label, column in self.designations.items():
            qualified = f"{self.target}.{quote_ident(column)}"
            value = f"{qualified}::{_TEXT} {_COLLATE_C}"
            args = (*head, f"{quote_literal(label)}::{_TEXT}", fixed_arg)
            terms.append(f"({value} {_op('=')} ANY ({self._call('designation_values', *args)}::{_TEXT}[])\n"
                         + "".join(f"         OR ({arm})\n" for arm in
                                   arms(qualified, value, self._call("designation_floor", *args),
                                        self._call("designation_nulls", *args)))[:-1] + ")")
        first = next(iter(self.designations.values()))
        qualified = f"{self.target}.{quote_ident(first)}"
        fallback = f"{_SCHEMA}.designation_fallback({', '.join((*head, fixed_arg))})"
        row = ", ".join(f"{quote_literal(label)}::{_TEXT}, {self.target}.{quote_ident(column)}::{_TEXT}"
                        for label, column in self.designations.items())
        per_row = (f"\n             AND {_SCHEMA}.designation_row({head[0]}, {head[1]}, "
                   f"pg_catalog.jsonb_build_object({row}), {fixed_arg})")
        # The boolean first: `NULL AND ...` goes on to the next argument, and
        # the per-row verifier must not run for a token with exact sets
        # (nor twice for a row).
        gate = f"({fallback})" if self.no_subquery else f"(SELECT {fallback})"
        floor = f"CASE WHEN {fallback} THEN ''::{_TEXT} END"
        # (and a NULL value must not reach the verifier through the range arms).
        fallback_arms = [arm if arm.startswith(qualified + " IS NULL")
                         else f"{gate} AND {qualified} IS NOT NULL\n             AND {arm}"
                         for arm in arms(qualified, f"{qualified}::{_TEXT} {_COLLATE_C}",
                                         f"({floor})" if self.no_subquery else f"(SELECT {floor})", gate, per_row)]
        return ("(" + "\n        AND ".join(terms) + ")\n"
                + "".join(f"        OR ({arm})\n" for arm in fallback_arms)[:-1])

    def policies(self) -> list[Policy]:
        """One :class:`Policy` per command."""
        result = []
        for command in self.commands:
            condition = self.condition(command)
            result.append(Policy(
                name=self.policy_name(command),
                schema=self.schema,
                table=self.table,
                command=command,
                using=condition if command in _USING_COMMANDS else None,
                with_check=condition if command in _CHECK_COMMANDS else None,
                roles=tuple(self.roles),
                restrictive=self.restrictive,
            ))
        names = [p.name for p in result]
        if len(set(names)) != len(names):
            raise PolicySpecError("two commands got the same policy name: give distinct names")
        return result

    def index_sql(self) -> list[str]:
        """The suggested indexes (``CREATE INDEX IF NOT EXISTS``), if the mode has any."""
        if self.mode == "designation":
            assert self.designations is not None
            return [f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {self.target} "
                    f"(({quote_ident(column)}::{_TEXT} {_COLLATE_C}));"
                    for name, column in zip(self.index_names(), self.designations.values())]
        name = self.index_name()
        if name is None:
            return []
        if self.mode == "row":
            key = f"(({self.expression}))"
        else:
            assert self.owner_column is not None
            key = f"({quote_ident(self.owner_column)} {_COLLATE_C})"
        return [f"CREATE INDEX IF NOT EXISTS {quote_ident(name)} ON {self.target} {key};"]

    def drop_index_sql(self) -> list[str]:
        """``DROP INDEX IF EXISTS`` for the suggested indexes, if any."""
        return [f"DROP INDEX IF EXISTS {_qualified(self.schema, name)};" for name in self.index_names()]

    def create_statements(self, *, indexes: bool = True) -> list[str]:
        """ENABLE (and FORCE) RLS, then DROP POLICY IF EXISTS + CREATE POLICY
        per command (so re-running replaces them), then the suggested index.
        Run them with search_path pinned (:func:`with_safe_search_path`), as
        :func:`generate_sql` and the Alembic operations do: the row
        expression is bound in the session that creates the policy."""
        statements = [f"ALTER TABLE {self.target} ENABLE ROW LEVEL SECURITY;"]
        if self.force:
            statements.append(f"ALTER TABLE {self.target} FORCE ROW LEVEL SECURITY;")
        for policy in self.policies():
            statements += [policy.drop_sql(), policy.create_sql()]
            if self.no_subquery:
                statements.append(f"COMMENT ON POLICY {quote_ident(policy.name)} ON {policy.target} "
                                  f"IS {quote_literal(NO_SUBQUERY_COMMENT)};")
        if indexes:
            statements += self.index_sql()
        return statements

    def drop_statements(self, *, disable: bool = False, indexes: bool = False) -> list[str]:
        """DROP POLICY IF EXISTS per command. With ``disable``, also NO FORCE
        and DISABLE ROW LEVEL SECURITY (the table is then open to every role
        with privileges on it); without, a table left with no policy shows
        nothing to ordinary roles (fail closed). ``indexes`` drops the
        suggested index too."""
        statements = [policy.drop_sql() for policy in self.policies()]
        if disable:
            statements += [f"ALTER TABLE {self.target} NO FORCE ROW LEVEL SECURITY;",
                           f"ALTER TABLE {self.target} DISABLE ROW LEVEL SECURITY;"]
        if indexes:
            statements += self.drop_index_sql()
        return statements

    def to_mapping(self) -> dict[str, Any]:
        """The fields that differ from their defaults (TOML / keyword form)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default
            if f.name == "commands" and tuple(value) == COMMANDS:
                continue
            if f.name == "roles" and not value:
                continue
            if value == default:
                continue
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _command(value: object) -> str:
    command = _plain_text(value, "command").strip().upper()
    if command not in COMMANDS:
        raise PolicySpecError(f"unknown command {value!r}: use {', '.join(COMMANDS)}")
    return command


# -- whole scripts -------------------------------------------------------------

_PIN_COMMENT = f"-- hessra-pg: names resolve in pg_catalog only (search_path = {SAFE_SEARCH_PATH})"


def session_search_path_pin() -> tuple[list[str], list[str]]:
    """Statements that pin search_path to :data:`SAFE_SEARCH_PATH` for what
    runs between them, and give the caller's value back after. Session-level
    (``set_config(..., false)``), so they work inside a transaction and in
    autocommit alike, where ``SET LOCAL`` would silently do nothing; a
    rolled-back transaction undoes them with everything else."""
    before = [
        f"SELECT pg_catalog.set_config({quote_literal(_SAVED_SEARCH_PATH)}, "
        "pg_catalog.current_setting('search_path'), false);",
        f"SELECT pg_catalog.set_config('search_path', {quote_literal(SAFE_SEARCH_PATH)}, false);",
    ]
    after = [
        "SELECT pg_catalog.set_config('search_path', "
        f"pg_catalog.current_setting({quote_literal(_SAVED_SEARCH_PATH)}), false);",
    ]
    return before, after


def with_safe_search_path(statements: Iterable[str], *, transaction: bool = True) -> list[str]:
    """``statements`` run with search_path = pg_catalog, pg_temp: in their
    own transaction (``BEGIN; SET LOCAL ...; COMMIT;``), or, with
    ``transaction=False``, between :func:`session_search_path_pin`'s
    statements (the caller's search_path is restored at the end)."""
    body = list(statements)
    if transaction:
        return ["BEGIN;", _PIN_COMMENT, f"SET LOCAL search_path = {SAFE_SEARCH_PATH};", *body, "COMMIT;"]
    before, after = session_search_path_pin()
    return [_PIN_COMMENT, *before, *body, *after]


def _script(statements: Iterable[str], transaction: bool) -> str:
    return "\n".join(with_safe_search_path(statements, transaction=transaction)) + "\n"


def generate_sql(specs: PolicySpec | Iterable[PolicySpec], *, indexes: bool = True,
                 transaction: bool = True) -> str:
    """The SQL script that creates (or replaces) the policies of one or more
    specs, wrapped in BEGIN/COMMIT unless ``transaction=False``, with
    search_path pinned to pg_catalog (:func:`with_safe_search_path`)."""
    specs = [specs] if isinstance(specs, PolicySpec) else list(specs)
    statements: list[str] = []
    for spec in specs:
        statements.append(f"-- hessra-pg: {spec.mode} policies"
                          + (" without subqueries (per-row calls, for Citus)" if spec.no_subquery else ""))
        created = spec.create_statements(indexes=False)
        statements += created
        if indexes and spec.index_sql():
            what = {"row": "the row resource expression", "identity": "the owner column",
                    "designation": "each designation column"}[spec.mode]
            statements.append(f"-- Suggested index on {what} (the policy compares it with a per-statement value)")
            statements += spec.index_sql()
    return _script(statements, transaction)


def drop_sql(specs: PolicySpec | Iterable[PolicySpec], *, disable: bool = False, indexes: bool = False,
             transaction: bool = True) -> str:
    """The SQL script that drops the policies of one or more specs (see
    :meth:`PolicySpec.drop_statements` for ``disable`` and ``indexes``)."""
    specs = [specs] if isinstance(specs, PolicySpec) else list(specs)
    statements: list[str] = []
    for spec in specs:
        statements += spec.drop_statements(disable=disable, indexes=indexes)
    return _script(statements, transaction)


# -- TOML ----------------------------------------------------------------------

_FIELDS = {f.name for f in fields(PolicySpec)}


def spec_from_mapping(data: Mapping[str, Any], *, where: str = "policy") -> PolicySpec:
    """A spec from a mapping with the field names of :class:`PolicySpec`
    (``operations`` and ``names`` as tables keyed by command)."""
    if not isinstance(data, Mapping):
        raise PolicySpecError(f"{where}: expected a table of policy settings")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise PolicySpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    if "table" not in data:
        raise PolicySpecError(f"{where}: 'table' is required")
    for key in ("force", "restrictive", "no_subquery"):
        if key in data and not isinstance(data[key], bool):
            raise PolicySpecError(f"{where}: {key} must be true or false")
    for key in ("operations", "names"):
        if key in data and not isinstance(data[key], Mapping):
            raise PolicySpecError(f"{where}: {key} must be a table keyed by command (SELECT = \"read\")")
    for key in ("designations", "fixed"):
        if key in data and not isinstance(data[key], Mapping):
            raise PolicySpecError(f"{where}: {key} must be a table of label = \"...\" (tenant_id = \"tenant_id\")")
    try:
        return PolicySpec(**dict(data))
    except PolicySpecError as error:
        raise PolicySpecError(f"{where}: {error}") from None


def load_specs(path: str | Path) -> list[PolicySpec]:
    """Specs from a TOML file: either the fields of one spec at the top
    level, or an array of tables ``[[policies]]``, one per table::

        [[policies]]
        schema = "shop"
        table = "orders"
        mode = "row"
        expression = "'orders/' || id"
        operations = { SELECT = "read", INSERT = "create" }
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise PolicySpecError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise PolicySpecError(f"{path}: invalid TOML: {error}") from None
    if "policies" in data:
        extra = sorted(set(data) - {"policies"})
        if extra:
            raise PolicySpecError(f"{path}: with [[policies]], put {extra[0]!r} inside each [[policies]] table")
        entries = data["policies"]
        if not isinstance(entries, list) or not entries:
            raise PolicySpecError(f"{path}: 'policies' must be a non-empty array of tables ([[policies]])")
        return [spec_from_mapping(entry, where=f"{path}: policies[{i}]") for i, entry in enumerate(entries)]
    return [spec_from_mapping(data, where=str(path))]
