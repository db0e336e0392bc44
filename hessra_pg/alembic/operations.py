"""Alembic operations for hessra_authz, registered on :class:`alembic.operations.Operations`.

Each operation is a small class that knows its SQL and its reverse (used by
autogenerate to write the downgrade):

- ``op.create_hessra_extension()`` <-> ``op.drop_hessra_extension()``
- ``op.update_hessra_extension(v, from_version=f)`` <-> ``op.update_hessra_extension(f, from_version=v)``
- ``op.create_hessra_policies(table, **spec)`` <-> ``op.drop_hessra_policies(table, **spec)``
  (a drop needs only the names: ``op.drop_hessra_policies(table, names=[...])``; its
  reverse is then the spec or the definitions autogenerate attached)
- ``op.restore_hessra_policies(table, policies=[...])`` <-> ``op.drop_hessra_policies(table, names=[...])``
- ``op.add_hessra_key(key, kid)`` <-> ``op.delete_hessra_key(key=key, kid=kid)``
- ``op.retire_hessra_key(kid, at)`` <-> ``op.unretire_hessra_key(kid)`` (not_after back to NULL)
- ``op.set_hessra_service_chain(name, nodes, previous_nodes=p)`` -> ``op.set_hessra_service_chain(name, p)``,
  or without ``previous_nodes`` ``op.drop_hessra_service_chain(name, nodes=nodes)``

Statements are complete SQL with quoted identifiers and literals (no bind
parameters), executed as written online and printed as written in offline
(``--sql``) mode. Key, chain and policy inputs are validated when the
operation is built, before anything runs.

Every operation but the extension ones runs with ``search_path = pg_catalog,
pg_temp``, set before its statements and set back to the migration's value
after them (:func:`hessra_pg.rls.policies.session_search_path_pin`), online and
in the ``--sql`` output alike: names in a policy are bound when it is
created, and a role that can create objects in a schema on the migration's
path (``public`` in a database upgraded from PG 14 or older) could otherwise
plant an operator an exact argument-type match makes PostgreSQL prefer to
pg_catalog's. The statements qualify the operators and types they write too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from alembic.operations import MigrateOperation, Operations
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement

from hessra_pg.core.keys import canonical_public_key
from hessra_pg.rls.policies import (
    COMMANDS,
    DEFAULT_SCHEMA,
    SPEC_COMMENT_PREFIX,
    Policy,
    PolicySpec,
    PolicySpecError,
    quote_ident,
    quote_literal,
    session_search_path_pin,
    spec_from_mapping,
)
from hessra_pg.core.verifier import ChainNode, parse_chain

__all__ = [
    "AddHessraKeyOp",
    "CreateHessraExtensionOp",
    "CreateHessraPoliciesOp",
    "DeleteHessraKeyOp",
    "DropHessraExtensionOp",
    "DropHessraPoliciesOp",
    "DropHessraServiceChainOp",
    "HessraOperation",
    "RestoreHessraPoliciesOp",
    "RetireHessraKeyOp",
    "SetHessraServiceChainOp",
    "UnretireHessraKeyOp",
    "UpdateHessraExtensionOp",
    "run_sql",
    "spec_comment",
    "spec_from_comment",
]

EXTENSION = "hessra_authz"


# -- running plain SQL -----------------------------------------------------------

class _Statement(ExecutableDDLElement):
    """One complete SQL statement, compiled as written (no ``:name`` binds)."""

    inherit_cache = False

    def __init__(self, text: str) -> None:
        self.text = text


@compiles(_Statement)
def _compile_statement(element: _Statement, compiler: Any, **kw: Any) -> str:
    # format/pyformat drivers (psycopg, psycopg2) read % as a placeholder.
    if getattr(compiler.dialect, "paramstyle", None) in ("format", "pyformat"):
        return element.text.replace("%", "%%")
    return element.text


def run_sql(statements: str | Sequence[str], operations: Operations | None = None) -> None:
    """Run complete SQL statements as written: no ``:name`` bind parameters,
    ``%`` kept, printed unchanged in offline (``--sql``) mode, where
    ``op.execute("...")`` would treat ``:word`` as a bind and double ``%``.
    ``operations`` defaults to ``alembic.op`` (inside a revision)."""
    if operations is None:
        from alembic import op as operations  # type: ignore[no-redef]
    assert operations is not None
    if isinstance(statements, str):
        statements = [statements]
    context = operations.get_context()
    for statement in statements:
        statement = statement.rstrip().removesuffix(";")
        if context.as_sql:
            context.impl.static_output(statement + context.impl.command_terminator)
        else:
            operations.execute(_Statement(statement))


def _timestamp(value: datetime | str | None, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what}: give a timezone-aware datetime (or an ISO string with an offset)")
        return value.isoformat()
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"{what} must be a datetime or a timestamp string")


def _ts_sql(value: str) -> str:
    return f"{quote_literal(value)}::pg_catalog.timestamptz"


def _equals(column: str, value: str) -> str:
    """``column OPERATOR(pg_catalog.=) value``: pg_catalog's operator, not a planted one."""
    return f"{column} OPERATOR(pg_catalog.=) {value}"


def _kid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"kid must be a positive integer, got {value!r}")
    return value


def _nodes(nodes: Sequence[Mapping[str, str] | ChainNode]) -> list[dict[str, str]]:
    """Validated chain nodes as plain dicts (canonical keys)."""
    raw = [{"component": n.component, "public_key": n.public_key} if isinstance(n, ChainNode) else dict(n)
           for n in nodes]
    return [{"component": n.component, "public_key": n.public_key} for n in parse_chain(raw)]


# -- the base class ----------------------------------------------------------------

class HessraOperation(MigrateOperation):
    """Base of the hessra operations: :meth:`statements` gives the SQL,
    :meth:`arguments` the call that recreates the operation (for rendering
    and equality)."""

    op_name: ClassVar[str]
    #: Run :meth:`statements` with search_path pinned to pg_catalog (see the module docstring).
    pin_search_path: ClassVar[bool] = True

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments of ``op.<op_name>(...)`` (defaults left out)."""
        raise NotImplementedError

    def statements(self) -> list[str]:
        """The SQL statements this operation runs."""
        raise NotImplementedError

    def executed_statements(self) -> list[str]:
        """:meth:`statements` as they run: between the statements that pin
        search_path and set the migration's value back."""
        statements = self.statements()
        if not self.pin_search_path:
            return statements
        before, after = session_search_path_pin()
        return [*before, *statements, *after]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.arguments() == other.arguments()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.op_name, repr(self.arguments())))

    def __repr__(self) -> str:
        args, kwargs = self.arguments()
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{type(self).__name__}({', '.join(parts)})"


def _implementation(operations: Operations, operation: HessraOperation) -> None:
    run_sql(operation.executed_statements(), operations)


# -- extension -----------------------------------------------------------------------

@Operations.register_operation("create_hessra_extension")
class CreateHessraExtensionOp(HessraOperation):
    """``CREATE EXTENSION IF NOT EXISTS hessra_authz [VERSION v] CASCADE``
    (CASCADE creates plpython3u; needs a superuser)."""

    op_name = "create_hessra_extension"
    # Names no object: the extension's script runs with its own search_path.
    pin_search_path = False

    def __init__(self, *, version: str | None = None, cascade: bool = True) -> None:
        self.version = version
        self.cascade = cascade

    @classmethod
    def create_hessra_extension(cls, operations: Operations, *, version: str | None = None,
                                cascade: bool = True) -> None:
        """Create the hessra_authz extension (if it does not exist)."""
        operations.invoke(cls(version=version, cascade=cascade))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if self.version is not None:
            kwargs["version"] = self.version
        if not self.cascade:
            kwargs["cascade"] = False
        return [], kwargs

    def statements(self) -> list[str]:
        sql = f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}"
        if self.version is not None:
            sql += f" VERSION {quote_literal(self.version)}"
        if self.cascade:
            sql += " CASCADE"
        return [sql]

    def reverse(self) -> DropHessraExtensionOp:
        return DropHessraExtensionOp()


@Operations.register_operation("drop_hessra_extension")
class DropHessraExtensionOp(HessraOperation):
    """``DROP EXTENSION IF EXISTS hessra_authz`` (its keys, chains and
    revocations go with it). Without ``cascade`` it fails while policies
    still use its functions: drop them first."""

    op_name = "drop_hessra_extension"
    pin_search_path = False

    def __init__(self, *, cascade: bool = False) -> None:
        self.cascade = cascade

    @classmethod
    def drop_hessra_extension(cls, operations: Operations, *, cascade: bool = False) -> None:
        """Drop the hessra_authz extension (if it exists)."""
        operations.invoke(cls(cascade=cascade))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [], ({"cascade": True} if self.cascade else {})

    def statements(self) -> list[str]:
        return [f"DROP EXTENSION IF EXISTS {EXTENSION}" + (" CASCADE" if self.cascade else "")]

    def reverse(self) -> CreateHessraExtensionOp:
        return CreateHessraExtensionOp()


@Operations.register_operation("update_hessra_extension")
class UpdateHessraExtensionOp(HessraOperation):
    """``ALTER EXTENSION hessra_authz UPDATE [TO version]``: the upgrade path
    that keeps policies and data (DROP + CREATE would need CASCADE, which drops
    every policy using the extension). Reversible when ``from_version`` is
    given and a ``hessra_authz--<to>--<from>.sql`` downgrade script exists.
    Run ``hessra-pg install`` on the database host first so the new version's
    files are there."""

    op_name = "update_hessra_extension"
    pin_search_path = False

    def __init__(self, version: str | None = None, *, from_version: str | None = None) -> None:
        self.version = version
        self.from_version = from_version

    @classmethod
    def update_hessra_extension(cls, operations: Operations, version: str | None = None, *,
                                from_version: str | None = None) -> None:
        """Update the extension in place (to its default version if ``version`` is None)."""
        operations.invoke(cls(version, from_version=from_version))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return ([self.version] if self.version is not None else []), (
            {"from_version": self.from_version} if self.from_version is not None else {})

    def statements(self) -> list[str]:
        to = f" TO {quote_literal(self.version)}" if self.version is not None else ""
        return [f"ALTER EXTENSION {EXTENSION} UPDATE{to}"]

    def reverse(self) -> UpdateHessraExtensionOp:
        if self.from_version is None:
            raise ValueError("update_hessra_extension can't be reversed without from_version")
        return UpdateHessraExtensionOp(self.from_version, from_version=self.version)


# -- policies --------------------------------------------------------------------------

# SPEC_COMMENT_PREFIX (imported from hessra_pg.rls.policies, where doctor
# reads it too): how the comment that ``create_hessra_policies`` puts on each
# of its policies starts; the rest is the spec as JSON (:func:`spec_comment`).
# Autogenerate reads it back to write the spec of a policy it drops into the downgrade.

#: PolicySpec fields that define what a policy checks (the others name it).
_DEFINING = frozenset({"mode", "resource", "expression", "owner_column", "chain", "component", "designations",
                       "fixed", "operations", "roles", "force", "restrictive", "no_subquery"})
_NAMING = frozenset({"schema", "commands", "names", "name_prefix"})
_POLICY_COMMANDS = (*COMMANDS, "ALL")


def _spec(table: str | PolicySpec, spec: Mapping[str, Any]) -> PolicySpec:
    if isinstance(table, PolicySpec):
        if spec:
            raise TypeError("pass either a PolicySpec or a table name with spec keywords, not both")
        return table
    return PolicySpec(table, **spec)


def spec_comment(spec: PolicySpec) -> str:
    """``hessra-pg spec: {"mode": "row", "table": "orders", ...}``: the comment
    ``create_hessra_policies`` sets on each policy it creates."""
    return SPEC_COMMENT_PREFIX + json.dumps(spec.to_mapping(), sort_keys=True, ensure_ascii=False)


def spec_from_comment(comment: str | None) -> PolicySpec | None:
    """The spec recorded by :func:`spec_comment`, or None (no comment, another
    comment, or one that no longer makes a valid spec)."""
    if not comment or not comment.startswith(SPEC_COMMENT_PREFIX):
        return None
    try:
        data = json.loads(comment[len(SPEC_COMMENT_PREFIX):])
        return spec_from_mapping(data, where="policy comment")
    except (ValueError, TypeError):  # JSONDecodeError and PolicySpecError are ValueErrors
        return None


def _target(schema: str | None, table: str) -> str:
    return f"{quote_ident(schema if schema is not None else DEFAULT_SCHEMA)}.{quote_ident(table)}"


def _check_table(table: object, schema: object) -> None:
    PolicySpec(table, schema=schema, resource="-")  # type: ignore[arg-type]  (validates both names)


@Operations.register_operation("create_hessra_policies")
class CreateHessraPoliciesOp(HessraOperation):
    """The policies of :class:`hessra_pg.rls.policies.PolicySpec`: ENABLE/FORCE
    RLS, DROP POLICY IF EXISTS + CREATE POLICY per command, a comment on each
    policy recording the spec (:func:`spec_comment`), and with
    ``create_index`` the suggested index."""

    op_name = "create_hessra_policies"

    def __init__(self, table: str | PolicySpec, *, create_index: bool = False, **spec: Any) -> None:
        self.spec = _spec(table, spec)
        self.create_index = create_index
        self.spec.policies()  # validate now

    @classmethod
    def create_hessra_policies(cls, operations: Operations, /, table: str | PolicySpec, *,
                               create_index: bool = False, **spec: Any) -> None:
        """Guard ``table`` with hessra policies; ``spec`` takes the
        :class:`~hessra_pg.rls.policies.PolicySpec` fields (mode, schema,
        resource, expression, owner_column, chain, component, designations,
        fixed, operations, commands, roles, names, name_prefix, force,
        restrictive, no_subquery). (``operations``
        is positional-only above so that the spec's ``operations=`` keyword
        reaches ``**spec``.)"""
        operations.invoke(cls(table, create_index=create_index, **spec))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        kwargs = self.spec.to_mapping()
        table = kwargs.pop("table")
        if self.create_index:
            kwargs["create_index"] = True
        return [table], kwargs

    def statements(self) -> list[str]:
        statements = self.spec.create_statements(indexes=False)
        comment = quote_literal(spec_comment(self.spec))
        statements += [f"COMMENT ON POLICY {quote_ident(policy.name)} ON {policy.target} IS {comment};"
                       for policy in self.spec.policies()]
        if self.create_index:
            statements += self.spec.index_sql()
        return statements

    def reverse(self) -> DropHessraPoliciesOp:
        return DropHessraPoliciesOp(self.spec, drop_index=self.create_index)


@Operations.register_operation("drop_hessra_policies")
class DropHessraPoliciesOp(HessraOperation):
    """DROP POLICY IF EXISTS for the policies named by ``table``, ``schema``
    and either ``commands`` (default names, with ``name_prefix`` and ``names``
    as a mapping command -> name, as in the spec) or ``names`` as a list of
    policy names. Given a whole spec instead (a PolicySpec, or its defining
    fields: mode, resource, expression, ...) it drops that spec's policies and
    its reverse creates them again; given only names, its reverse is the one
    autogenerate attached (``_reverse``: the recorded spec or the policies'
    definitions), else it has none.

    RLS stays enabled (fail closed) unless ``disable_rls``; ``drop_index``
    drops the suggested index too (it needs the spec: the index name depends
    on the mode)."""

    op_name = "drop_hessra_policies"

    def __init__(self, table: str | PolicySpec, *, disable_rls: bool = False, drop_index: bool = False,
                 _reverse: HessraOperation | None = None, **spec: Any) -> None:
        self.disable_rls = disable_rls
        self.drop_index = drop_index
        self._reverse = _reverse
        self.spec: PolicySpec | None = None
        if isinstance(table, PolicySpec) or _DEFINING & spec.keys():
            self.spec = _spec(table, spec)
            self.table, self.schema = self.spec.table, self.spec.schema
            self.names = [policy.name for policy in self.spec.policies()]
            self.identity: dict[str, Any] = {}
            return
        unknown = sorted(set(spec) - _NAMING)
        if unknown:
            raise TypeError(f"drop_hessra_policies() got an unexpected keyword argument {unknown[0]!r}")
        if drop_index:
            raise PolicySpecError("drop_index needs the spec (its mode names the index): pass the spec's fields")
        schema, names = spec.get("schema"), spec.get("names")
        if isinstance(names, str):
            names = [names]
        if names is not None and not isinstance(names, Mapping):
            if "commands" in spec or "name_prefix" in spec:
                raise PolicySpecError("give names as a list of policy names, or commands (with name_prefix or "
                                      "a names mapping), not both")
            _check_table(table, schema)
            listed = list(names)
            for name in listed:
                quote_ident(name)  # a non-empty string without NUL
            if not listed or len(set(listed)) != len(listed):
                raise PolicySpecError("names must list one or more distinct policy names")
            self.names = listed
            self.identity = {"names": listed}
        else:
            naming = PolicySpec(table, resource="-", **spec)  # type: ignore[arg-type]  (validates the naming fields)
            self.names = [naming.policy_name(command) for command in naming.commands]
            self.identity = {k: v for k, v in naming.to_mapping().items() if k in _NAMING - {"schema"}}
        self.table, self.schema = table, schema
        if schema is not None:
            self.identity = {"schema": schema, **self.identity}

    @classmethod
    def drop_hessra_policies(cls, operations: Operations, /, table: str | PolicySpec, *, disable_rls: bool = False,
                             drop_index: bool = False, **spec: Any) -> None:
        """Drop hessra policies: ``table`` (and ``schema``) with ``commands``
        or a list of policy ``names`` is enough; the whole spec works too."""
        operations.invoke(cls(table, disable_rls=disable_rls, drop_index=drop_index, **spec))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        if self.spec is not None:
            kwargs = self.spec.to_mapping()
            table = kwargs.pop("table")
        else:
            table, kwargs = self.table, dict(self.identity)
        if self.disable_rls:
            kwargs["disable_rls"] = True
        if self.drop_index:
            kwargs["drop_index"] = True
        return [table], kwargs

    def statements(self) -> list[str]:
        if self.spec is not None:
            return self.spec.drop_statements(disable=self.disable_rls, indexes=self.drop_index)
        target = _target(self.schema, self.table)
        statements = [f"DROP POLICY IF EXISTS {quote_ident(name)} ON {target};" for name in self.names]
        if self.disable_rls:
            statements += [f"ALTER TABLE {target} NO FORCE ROW LEVEL SECURITY;",
                           f"ALTER TABLE {target} DISABLE ROW LEVEL SECURITY;"]
        return statements

    def reverse(self) -> HessraOperation:
        if self._reverse is not None:
            return self._reverse
        if self.spec is None:
            raise ValueError(f"drop_hessra_policies({self.table!r}, ...) can't be reversed without the spec: "
                             "pass its fields (mode, resource, expression, ...)")
        return CreateHessraPoliciesOp(self.spec, create_index=self.drop_index)


def _definition(table: str, schema: str | None, data: Mapping[str, Any]) -> Policy:
    if not isinstance(data, Mapping):
        raise PolicySpecError("each policy definition is a mapping (name, command, using, with_check, ...)")
    unknown = sorted(set(data) - {"name", "command", "using", "with_check", "roles", "restrictive"})
    if unknown:
        raise PolicySpecError(f"unknown policy definition key {unknown[0]!r}")
    name = data.get("name")
    quote_ident(name)  # type: ignore[arg-type]
    command = str(data.get("command", "ALL")).upper()
    if command not in _POLICY_COMMANDS:
        raise PolicySpecError(f"command must be one of {', '.join(_POLICY_COMMANDS)}, got {command!r}")
    using, with_check = data.get("using"), data.get("with_check")
    for what, value in (("using", using), ("with_check", with_check)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise PolicySpecError(f"{what} must be an SQL expression (a non-empty string)")
    if using is None and with_check is None:
        raise PolicySpecError(f"policy {name!r}: give using, with_check or both")
    roles = data.get("roles", ())
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    for role in roles:
        quote_ident(role)
    restrictive = data.get("restrictive", False)
    if not isinstance(restrictive, bool):
        raise PolicySpecError("restrictive must be true or false")
    return Policy(name=name, schema=schema, table=table, command=command, using=using,  # type: ignore[arg-type]
                  with_check=with_check, roles=roles, restrictive=restrictive)


@Operations.register_operation("restore_hessra_policies")
class RestoreHessraPoliciesOp(HessraOperation):
    """Re-create policies from their definitions as PostgreSQL prints them
    (``pg_get_expr`` read with search_path = pg_catalog, pg_temp, so the text
    binds the same names again): what autogenerate writes into a downgrade for
    policies it drops that carry no recorded spec (made by a script, by hand,
    or by an older hessra-pg). Each definition has ``name``, ``command``,
    ``using`` and/or ``with_check``, and optionally ``roles`` and
    ``restrictive``. Reverse: drop them by name."""

    op_name = "restore_hessra_policies"

    def __init__(self, table: str, *, policies: Sequence[Mapping[str, Any]], schema: str | None = None) -> None:
        _check_table(table, schema)
        self.table, self.schema = table, schema
        self.policies = [_definition(table, schema, data) for data in policies]
        names = [policy.name for policy in self.policies]
        if not names or len(set(names)) != len(names):
            raise PolicySpecError("policies must define one or more policies with distinct names")

    @classmethod
    def restore_hessra_policies(cls, operations: Operations, /, table: str, *,
                                policies: Sequence[Mapping[str, Any]], schema: str | None = None) -> None:
        """Create (or replace) policies from their recorded definitions."""
        operations.invoke(cls(table, policies=policies, schema=schema))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        definitions = []
        for policy in self.policies:
            definition: dict[str, Any] = {"name": policy.name, "command": policy.command}
            if policy.using is not None:
                definition["using"] = policy.using
            if policy.with_check is not None:
                definition["with_check"] = policy.with_check
            if policy.roles:
                definition["roles"] = list(policy.roles)
            if policy.restrictive:
                definition["restrictive"] = True
            definitions.append(definition)
        kwargs: dict[str, Any] = {"schema": self.schema} if self.schema is not None else {}
        kwargs["policies"] = definitions
        return [self.table], kwargs

    def statements(self) -> list[str]:
        statements: list[str] = []
        for policy in self.policies:
            statements += [policy.drop_sql(), policy.create_sql()]
        return statements

    def reverse(self) -> DropHessraPoliciesOp:
        kwargs: dict[str, Any] = {"schema": self.schema} if self.schema is not None else {}
        return DropHessraPoliciesOp(self.table, names=[policy.name for policy in self.policies], _reverse=self,
                                    **kwargs)


# -- keys --------------------------------------------------------------------------------

@Operations.register_operation("add_hessra_key")
class AddHessraKeyOp(HessraOperation):
    """``hessra_authz.add_key(key, kid, not_before, not_after, comment)``.
    Reverse: delete the key's row (tokens it signed stop verifying)."""

    op_name = "add_hessra_key"

    def __init__(self, key: str, kid: int | None = None, *, not_before: datetime | str | None = None,
                 not_after: datetime | str | None = None, comment: str | None = None) -> None:
        self.public_key = canonical_public_key(key)  # raises KeyFormatError early
        self.key = key
        self.kid = None if kid is None else _kid(kid)
        self.not_before = _timestamp(not_before, "not_before")
        self.not_after = _timestamp(not_after, "not_after")
        self.comment = comment

    @classmethod
    def add_hessra_key(cls, operations: Operations, key: str, kid: int | None = None, *,
                       not_before: datetime | str | None = None, not_after: datetime | str | None = None,
                       comment: str | None = None) -> None:
        """Register a root public key (PEM or alg/hex); ``kid`` None takes the next free one."""
        operations.invoke(cls(key, kid, not_before=not_before, not_after=not_after, comment=comment))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = [self.key] + ([self.kid] if self.kid is not None else [])
        kwargs = {k: v for k, v in (("not_before", self.not_before), ("not_after", self.not_after),
                                    ("comment", self.comment)) if v is not None}
        return args, kwargs

    def statements(self) -> list[str]:
        args = [f"key => {quote_literal(self.key)}"]
        if self.kid is not None:
            args.append(f"kid => {self.kid}")
        if self.not_before is not None:
            args.append(f"not_before => {_ts_sql(self.not_before)}")
        if self.not_after is not None:
            args.append(f"not_after => {_ts_sql(self.not_after)}")
        if self.comment is not None:
            args.append(f"comment => {quote_literal(self.comment)}")
        return [f"SELECT {EXTENSION}.add_key({', '.join(args)})"]

    def reverse(self) -> DeleteHessraKeyOp:
        return DeleteHessraKeyOp(key=self.key, kid=self.kid)


@Operations.register_operation("delete_hessra_key")
class DeleteHessraKeyOp(HessraOperation):
    """Delete a key row by public key and/or kid (the reverse of
    ``add_hessra_key``). Writes ``hessra_authz.keys`` directly, so it needs
    the table owner (the superuser that created the extension)."""

    op_name = "delete_hessra_key"

    def __init__(self, *, key: str | None = None, kid: int | None = None) -> None:
        if key is None and kid is None:
            raise ValueError("delete_hessra_key needs key or kid")
        self.key = key
        self.public_key = canonical_public_key(key) if key is not None else None
        self.kid = None if kid is None else _kid(kid)

    @classmethod
    def delete_hessra_key(cls, operations: Operations, *, key: str | None = None, kid: int | None = None) -> None:
        """Remove a registered key (by public key, kid or both)."""
        operations.invoke(cls(key=key, kid=kid))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [], {k: v for k, v in (("key", self.key), ("kid", self.kid)) if v is not None}

    def statements(self) -> list[str]:
        where = []
        if self.public_key is not None:
            where.append(_equals("public_key", quote_literal(self.public_key)))
        if self.kid is not None:
            where.append(_equals("kid", str(self.kid)))
        return [f"DELETE FROM {EXTENSION}.keys WHERE {' AND '.join(where)}"]

    def reverse(self) -> AddHessraKeyOp:
        if self.key is None:
            raise ValueError("delete_hessra_key(kid=...) can't be reversed without the key: pass key= too")
        return AddHessraKeyOp(self.key, self.kid)


@Operations.register_operation("retire_hessra_key")
class RetireHessraKeyOp(HessraOperation):
    """``hessra_authz.retire_key(kid, at)`` (default: now). Reverse: clear not_after."""

    op_name = "retire_hessra_key"

    def __init__(self, kid: int, at: datetime | str | None = None) -> None:
        self.kid = _kid(kid)
        self.at = _timestamp(at, "at")

    @classmethod
    def retire_hessra_key(cls, operations: Operations, kid: int, at: datetime | str | None = None) -> None:
        """End a key's validity at ``at`` (default: the migration's time)."""
        operations.invoke(cls(kid, at))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [self.kid] + ([self.at] if self.at is not None else []), {}

    def statements(self) -> list[str]:
        at = f", at => {_ts_sql(self.at)}" if self.at is not None else ""
        return [f"SELECT {EXTENSION}.retire_key(kid => {self.kid}{at})"]

    def reverse(self) -> UnretireHessraKeyOp:
        return UnretireHessraKeyOp(self.kid)


@Operations.register_operation("unretire_hessra_key")
class UnretireHessraKeyOp(HessraOperation):
    """Set a key's not_after back (default NULL: valid with no end), the
    reverse of ``retire_hessra_key``. Writes ``hessra_authz.keys`` directly
    (needs the table owner)."""

    op_name = "unretire_hessra_key"

    def __init__(self, kid: int, not_after: datetime | str | None = None) -> None:
        self.kid = _kid(kid)
        self.not_after = _timestamp(not_after, "not_after")

    @classmethod
    def unretire_hessra_key(cls, operations: Operations, kid: int, not_after: datetime | str | None = None) -> None:
        """Make a retired key valid again (until ``not_after``, default forever)."""
        operations.invoke(cls(kid, not_after))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [self.kid] + ([self.not_after] if self.not_after is not None else []), {}

    def statements(self) -> list[str]:
        value = _ts_sql(self.not_after) if self.not_after is not None else "NULL"
        return [f"UPDATE {EXTENSION}.keys SET not_after = {value} WHERE {_equals('kid', str(self.kid))}"]

    def reverse(self) -> RetireHessraKeyOp:
        return RetireHessraKeyOp(self.kid, self.not_after)


# -- service chains ------------------------------------------------------------------------

@Operations.register_operation("set_hessra_service_chain")
class SetHessraServiceChainOp(HessraOperation):
    """``hessra_authz.set_service_chain(name, nodes)``. Reverse: set
    ``previous_nodes`` back when given (replacing a chain), else drop the chain."""

    op_name = "set_hessra_service_chain"

    def __init__(self, name: str, nodes: Sequence[Mapping[str, str] | ChainNode], *,
                 previous_nodes: Sequence[Mapping[str, str] | ChainNode] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("service chain name must be a non-empty string")
        self.name = name
        self.nodes = _nodes(nodes)
        self.previous_nodes = None if previous_nodes is None else _nodes(previous_nodes)

    @classmethod
    def set_hessra_service_chain(cls, operations: Operations, name: str,
                                 nodes: Sequence[Mapping[str, str] | ChainNode], *,
                                 previous_nodes: Sequence[Mapping[str, str] | ChainNode] | None = None) -> None:
        """Create or replace a named chain ``[{"component", "public_key"}, ...]``."""
        operations.invoke(cls(name, nodes, previous_nodes=previous_nodes))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        kwargs = {"previous_nodes": self.previous_nodes} if self.previous_nodes is not None else {}
        return [self.name, self.nodes], kwargs

    def statements(self) -> list[str]:
        nodes = quote_literal(json.dumps(self.nodes))
        return [f"SELECT {EXTENSION}.set_service_chain({quote_literal(self.name)}, {nodes}::pg_catalog.jsonb)"]

    def reverse(self) -> HessraOperation:
        if self.previous_nodes is not None:
            return SetHessraServiceChainOp(self.name, self.previous_nodes, previous_nodes=self.nodes)
        return DropHessraServiceChainOp(self.name, nodes=self.nodes)


@Operations.register_operation("drop_hessra_service_chain")
class DropHessraServiceChainOp(HessraOperation):
    """``hessra_authz.drop_service_chain(name)``. Reversible when ``nodes``
    (the chain being dropped) is given."""

    op_name = "drop_hessra_service_chain"

    def __init__(self, name: str, *, nodes: Sequence[Mapping[str, str] | ChainNode] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("service chain name must be a non-empty string")
        self.name = name
        self.nodes = None if nodes is None else _nodes(nodes)

    @classmethod
    def drop_hessra_service_chain(cls, operations: Operations, name: str, *,
                                  nodes: Sequence[Mapping[str, str] | ChainNode] | None = None) -> None:
        """Remove a named chain (``nodes``: what it was, for the downgrade)."""
        operations.invoke(cls(name, nodes=nodes))

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return [self.name], ({"nodes": self.nodes} if self.nodes is not None else {})

    def statements(self) -> list[str]:
        return [f"SELECT {EXTENSION}.drop_service_chain({quote_literal(self.name)})"]

    def reverse(self) -> SetHessraServiceChainOp:
        if self.nodes is None:
            raise ValueError(f"drop_hessra_service_chain({self.name!r}) can't be reversed: pass nodes= "
                             "(the chain being dropped)")
        return SetHessraServiceChainOp(self.name, self.nodes)


OPERATIONS: tuple[type[HessraOperation], ...] = (
    CreateHessraExtensionOp, DropHessraExtensionOp, UpdateHessraExtensionOp, CreateHessraPoliciesOp, DropHessraPoliciesOp,
    RestoreHessraPoliciesOp,
    AddHessraKeyOp, DeleteHessraKeyOp, RetireHessraKeyOp, UnretireHessraKeyOp,
    SetHessraServiceChainOp, DropHessraServiceChainOp,
)

for _op in OPERATIONS:
    Operations.implementation_for(_op)(_implementation)
