"""Autogenerate for hessra policies, in the shape of alembic_utils'
``register_entities``: token policies declared with the application's
metadata are compared with the database, and ``alembic revision
--autogenerate`` writes ``op.create_hessra_policies`` / ``op.drop_hessra_policies``
for the difference.

Declaring (either or both; a spec without ``schema`` means ``public``)::

    from hessra_pg.alembic import register_policies
    from hessra_pg.rls.policies import PolicySpec, load_specs

    register_policies(Base.metadata, PolicySpec("orders", mode="row", expression="'orders/' || id"))
    register_policies(Base.metadata, *load_specs("policies.toml"))

    Table("documents", metadata, ..., info={"hessra_policies": {"mode": "identity", "owner_column": "owner"}})

``register_policies`` keeps its specs in ``metadata.info["hessra_policies"]``;
a table's ``info["hessra_policies"]`` holds a :class:`PolicySpec` or a mapping
of its fields (``table`` and ``schema`` default to the table's), or a list of
them. Autogenerate manages hessra policies only for a metadata that declares
some this way (``register_policies(metadata)`` with no spec opts in too: it
says "no hessra policies"), so a project that writes its policy operations by
hand sees no change.

What it compares: the tables of the declared specs, and every table that has
a hessra policy (one whose expression calls a ``hessra_authz`` function,
found through ``pg_depend``) in a schema autogenerate compares (the default
schema, all of them with ``include_schemas=True``) or in a declared spec's
schema; ``include_name`` / ``include_object`` see them as ``"table"``.

- a declared spec none of whose policies exists: ``create_hessra_policies``;
- a declared spec whose policies differ from what the spec creates (another
  mode, operation, resource, roles, ..., a missing policy, RLS not enabled or
  not forced): ``drop_hessra_policies`` of its existing policies, then
  ``create_hessra_policies`` (PostgreSQL has no CREATE OR REPLACE POLICY);
- a hessra policy no declared spec names: ``drop_hessra_policies`` (before the
  table's ``drop_table`` if autogenerate drops the table too).

How "differ" is decided: PostgreSQL stores a policy's expression as a parse
tree and prints it back (``pg_get_expr``) in its own words, never the text the
spec wrote, so text comparison with the spec is hopeless. Instead, inside a
SAVEPOINT that is always rolled back, the spec's policies are created on the
real table (search_path pinned as the operations pin it, ``lock_timeout``
bounded) and read back with ``pg_get_expr``; they are equal when command,
permissive/restrictive, roles and both expressions print the same as the
database's. This compares what the database would hold, catches policies
edited by hand, and works for policies made by any route (``hessra-pg policy
generate``, an older hessra-pg). If the rehearsal fails (no privilege on the
table, a lock not granted in time, a read-only standby), the comparison falls
back to the spec recorded in each policy's comment (see below) and logs a
warning.

Reversibility: ``create_hessra_policies`` comments each policy with its spec
(``hessra-pg spec: {...}``). A dropped policy whose recorded spec still
creates exactly it gets that spec in the downgrade
(``op.create_hessra_policies(...)``); any other (no comment, or edited since)
gets its definition as the database prints it
(``op.restore_hessra_policies(...)``). The upgrade's drop names only the
policies.

Not compared: the suggested index (declare it as an ``Index`` in the
metadata, or pass ``create_index=True`` in a hand-written operation), and
policies that call no hessra_authz function and no declared spec names.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from alembic.autogenerate import comparators
from alembic.operations import ops
from sqlalchemy import MetaData, Table, text
from sqlalchemy.exc import SQLAlchemyError

from hessra_pg.rls.policies import DEFAULT_SCHEMA, SAFE_SEARCH_PATH, PolicySpec, PolicySpecError, spec_from_mapping

from .operations import (
    CreateHessraPoliciesOp,
    DropHessraPoliciesOp,
    HessraOperation,
    RestoreHessraPoliciesOp,
    _Statement,
    spec_from_comment,
)

__all__ = ["INFO_KEY", "compare_hessra_policies", "declared_policies", "register_policies"]

log = logging.getLogger(__name__)

#: The key of ``MetaData.info`` and ``Table.info`` that holds declared specs.
INFO_KEY = "hessra_policies"
#: How long the rehearsal waits for a table lock before falling back to the recorded specs.
LOCK_TIMEOUT = "5s"


# -- declaring ---------------------------------------------------------------------------

def _schema(schema: str | None) -> str:
    return schema if schema is not None else DEFAULT_SCHEMA


def _as_spec(value: Any, *, where: str, table: Table | None = None) -> PolicySpec:
    if isinstance(value, PolicySpec):
        spec = value
    elif isinstance(value, Mapping):
        data = dict(value)
        if table is not None:
            data.setdefault("table", table.name)
            if table.schema is not None:
                data.setdefault("schema", table.schema)
        spec = spec_from_mapping(data, where=where)
    else:
        raise PolicySpecError(f"{where}: expected a PolicySpec or a mapping of its fields, got {type(value).__name__}")
    if table is not None and (spec.table, _schema(spec.schema)) != (table.name, _schema(table.schema)):
        raise PolicySpecError(f"{where}: the spec guards {spec.target}, not the table it is declared on")
    spec.policies()  # validates
    return spec


def register_policies(metadata: MetaData, *specs: PolicySpec | Mapping[str, Any]) -> list[PolicySpec]:
    """Declare hessra policy specs (or mappings of their fields, with
    ``table``) in ``metadata`` for autogenerate, and opt the metadata in:
    autogenerate then also drops hessra policies that no declared spec names.
    Returns the metadata's list of declared specs."""
    if not isinstance(metadata, MetaData):
        raise TypeError("register_policies(metadata, *specs): the first argument is a sqlalchemy MetaData")
    declared = metadata.info.setdefault(INFO_KEY, [])
    start = len(declared)
    declared.extend(_as_spec(spec, where=f"register_policies: spec {start + i}") for i, spec in enumerate(specs))
    return declared


def _metadatas(metadata: MetaData | Sequence[MetaData] | None) -> list[MetaData]:
    if metadata is None:
        return []
    return [metadata] if isinstance(metadata, MetaData) else list(metadata)


def declared_policies(metadata: MetaData | Sequence[MetaData] | None) -> list[PolicySpec] | None:
    """The specs declared in ``metadata`` (``register_policies``, then each
    table's ``info["hessra_policies"]``), or None when it declares none
    (autogenerate then leaves hessra policies alone)."""
    found = False
    specs: list[PolicySpec] = []
    for md in _metadatas(metadata):
        if INFO_KEY in md.info:
            found = True
            value = md.info[INFO_KEY]
            items = [value] if isinstance(value, (PolicySpec, Mapping)) else list(value)
            specs += [_as_spec(item, where=f"metadata.info[{INFO_KEY!r}][{i}]") for i, item in enumerate(items)]
        for table in md.tables.values():
            if INFO_KEY not in table.info:
                continue
            found = True
            value = table.info[INFO_KEY]
            items = [value] if isinstance(value, (PolicySpec, Mapping)) else list(value)
            specs += [_as_spec(item, where=f"{table.fullname}.info[{INFO_KEY!r}]", table=table) for item in items]
    return specs if found else None


# -- reading the database ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatabasePolicy:
    """One policy as the database has it (expressions as ``pg_get_expr`` prints them)."""

    schema: str
    table: str
    name: str
    command: str
    permissive: bool
    roles: tuple[str, ...]
    using: str | None
    with_check: str | None
    comment: str | None
    hessra: bool

    @property
    def signature(self) -> tuple[Any, ...]:
        """What must be equal for two policies to behave the same."""
        return self.command, self.permissive, self.roles, self.using, self.with_check

    def definition(self) -> dict[str, Any]:
        """The policy as ``op.restore_hessra_policies`` takes it."""
        definition: dict[str, Any] = {"name": self.name, "command": self.command, "using": self.using,
                                      "with_check": self.with_check, "restrictive": not self.permissive}
        if self.roles != ("public",):
            definition["roles"] = list(self.roles)
        return definition


# Both run inside the comparator's savepoint, with search_path = pg_catalog, pg_temp.
_POLICIES_SQL = """
SELECT n.nspname::text, c.relname::text, p.polname::text,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
       p.polpermissive,
       ARRAY(SELECT CASE WHEN r.oid = 0 THEN 'public' ELSE pg_get_userbyid(r.oid)::text END
               FROM unnest(p.polroles) AS r(oid) ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid),
       pg_get_expr(p.polwithcheck, p.polrelid),
       obj_description(p.oid, 'pg_policy'),
       EXISTS (SELECT FROM pg_depend d
                 JOIN pg_proc f ON f.oid = d.refobjid
                 JOIN pg_namespace fn ON fn.oid = f.pronamespace
                WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid
                  AND d.refclassid = 'pg_proc'::regclass AND fn.nspname = 'hessra_authz')
  FROM pg_policy p
  JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname::text = ANY (CAST(:schemas AS text[]))
   AND (CAST(:table AS text) IS NULL OR c.relname::text = :table)
 ORDER BY 1, 2, 3
"""

_TABLES_SQL = """
SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname::text = ANY (CAST(:schemas AS text[]))
"""

TableKey = tuple[str, str]  # (schema, table), schema never None


def _read_policies(connection: Any, schemas: Iterable[str], table: str | None = None) -> dict[TableKey, dict[str, DatabasePolicy]]:
    rows = connection.execute(text(_POLICIES_SQL), {"schemas": list(schemas), "table": table}).fetchall()
    result: dict[TableKey, dict[str, DatabasePolicy]] = {}
    for row in rows:
        policy = DatabasePolicy(schema=row[0], table=row[1], name=row[2], command=row[3], permissive=row[4],
                                roles=tuple(row[5]), using=row[6], with_check=row[7], comment=row[8], hessra=row[9])
        result.setdefault((policy.schema, policy.table), {})[policy.name] = policy
    return result


def _read_tables(connection: Any, schemas: Iterable[str]) -> dict[TableKey, tuple[bool, bool]]:
    rows = connection.execute(text(_TABLES_SQL), {"schemas": list(schemas)}).fetchall()
    return {(row[0], row[1]): (row[2], row[3]) for row in rows}


_savepoints = itertools.count()


@contextmanager
def _rolled_back(connection: Any, *, outermost: bool = False) -> Iterator[None]:
    """A savepoint that is always rolled back, errors included. The outermost
    one is a transaction of its own when the connection autocommits (where a
    savepoint can't exist)."""
    dbapi = getattr(connection.connection, "dbapi_connection", None)
    if outermost and getattr(dbapi, "autocommit", False) is True:
        connection.exec_driver_sql("BEGIN")
        try:
            yield
        finally:
            connection.exec_driver_sql("ROLLBACK")
        return
    name = f"hessra_pg_compare_{next(_savepoints)}"
    connection.exec_driver_sql(f"SAVEPOINT {name}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {name}")


def _rehearse(connection: Any, spec: PolicySpec) -> dict[str, DatabasePolicy]:
    """The policies ``spec`` creates, as the database stores them: created in a
    savepoint, read back, rolled back."""
    with _rolled_back(connection):
        for policy in spec.policies():
            for statement in (policy.drop_sql(), policy.create_sql()):
                connection.execute(_Statement(statement.removesuffix(";")))
        key = (_schema(spec.schema), spec.table)
        return _read_policies(connection, [key[0]], key[1]).get(key, {})


# -- comparing -----------------------------------------------------------------------------

def _same_spec(a: PolicySpec | None, b: PolicySpec) -> bool:
    return a is not None and dataclasses.replace(a, schema=_schema(a.schema)) == dataclasses.replace(
        b, schema=_schema(b.schema))


class _TableComparison:
    """The operations that bring one table's policies to its declared specs."""

    def __init__(self, connection: Any, key: TableKey, specs: Sequence[PolicySpec],
                 existing: Mapping[str, DatabasePolicy], flags: tuple[bool, bool] | None) -> None:
        self.connection = connection
        self.key = key
        self.specs = specs
        self.existing = existing
        self.flags = flags

    def _matches(self, spec: PolicySpec, names: Sequence[str]) -> bool:
        """Whether the existing policies ``names`` are what ``spec`` creates for them."""
        try:
            rehearsed = _rehearse(self.connection, spec)
        except SQLAlchemyError as error:
            log.warning("hessra-pg: could not rehearse the policies of %s in a savepoint (%s); comparing the "
                        "spec recorded in their comments instead", spec.target, str(error).splitlines()[0])
            return all(_same_spec(spec_from_comment(self.existing[name].comment), spec) for name in names)
        return all(name in rehearsed and rehearsed[name].signature == self.existing[name].signature
                   for name in names)

    def _unchanged(self, spec: PolicySpec) -> bool:
        assert self.flags is not None
        enabled, forced = self.flags
        if not enabled or (spec.force and not forced):
            return False
        names = [policy.name for policy in spec.policies()]
        return all(name in self.existing for name in names) and self._matches(spec, names)

    def operations(self) -> tuple[list[HessraOperation], list[HessraOperation]]:
        """(drops, creates)."""
        declared = {policy.name for spec in self.specs for policy in spec.policies()}
        creates: list[HessraOperation] = []
        remove: set[str] = {name for name, policy in self.existing.items() if policy.hessra and name not in declared}
        for spec in self.specs:
            present = [policy.name for policy in spec.policies() if policy.name in self.existing]
            if self.flags is not None and present and self._unchanged(spec):
                continue
            remove.update(present)
            creates.append(CreateHessraPoliciesOp(spec))
        return self._drops(sorted(remove)), creates

    def _drops(self, names: Sequence[str]) -> list[HessraOperation]:
        """One drop per recorded spec, whose reverse is that spec for the
        commands it still re-creates exactly, and one for the other policies
        (no recorded spec, or edited since), whose reverse is their definitions."""
        groups: dict[str, tuple[PolicySpec, list[str]]] = {}
        unrecorded: list[str] = []
        for name in names:
            recorded = self._recorded(name)
            if recorded is None:
                unrecorded.append(name)
            else:
                key = json.dumps(recorded.to_mapping(), sort_keys=True)
                groups.setdefault(key, (recorded, []))[1].append(name)
        schema, table = self.key
        where = {} if schema == DEFAULT_SCHEMA else {"schema": schema}
        drops: list[HessraOperation] = []
        for recorded, group in groups.values():
            faithful = self._faithful(recorded, group)
            unrecorded += [name for name in group if name not in faithful]
            if faithful:
                subset = dataclasses.replace(recorded, commands=tuple(
                    command for command in recorded.commands if recorded.policy_name(command) in faithful))
                drops.append(DropHessraPoliciesOp(table, names=[name for name in group if name in faithful],
                                                  _reverse=CreateHessraPoliciesOp(subset), **where))
        if unrecorded:
            unrecorded.sort()
            restore = RestoreHessraPoliciesOp(table, policies=[self.existing[name].definition() for name in unrecorded],
                                              **where)
            drops.append(DropHessraPoliciesOp(table, names=unrecorded, _reverse=restore, **where))
        return drops

    def _recorded(self, name: str) -> PolicySpec | None:
        """The spec in the policy's comment, if it is a spec for this policy."""
        recorded = spec_from_comment(self.existing[name].comment)
        if recorded is None or (_schema(recorded.schema), recorded.table) != self.key:
            return None
        if name not in {policy.name for policy in recorded.policies()}:
            return None
        return recorded

    def _faithful(self, spec: PolicySpec, names: Sequence[str]) -> set[str]:
        """Those of ``names`` that ``spec`` re-creates exactly (all of them
        when the rehearsal can't run: the comment is then trusted)."""
        try:
            rehearsed = _rehearse(self.connection, spec)
        except SQLAlchemyError:
            return set(names)
        return {name for name in names
                if name in rehearsed and rehearsed[name].signature == self.existing[name].signature}


def _place(upgrade_ops: ops.UpgradeOps, key: TableKey, default_schema: str,
           drops: list[HessraOperation], creates: list[HessraOperation]) -> None:
    """Append the operations (after the table comparisons' create_table and
    add_column), with the drops before the table's drop_table if there is one."""
    for index, operation in enumerate(upgrade_ops.ops):
        if (isinstance(operation, ops.DropTableOp) and operation.table_name == key[1]
                and (operation.schema or default_schema) == key[0]):
            upgrade_ops.ops[index:index] = drops
            upgrade_ops.ops.extend(creates)
            return
    upgrade_ops.ops.extend([*drops, *creates])


def _included(autogen_context: Any, key: TableKey, default_schema: str, declared: bool,
              metadata_tables: Mapping[TableKey, Table]) -> bool:
    schema, name = key
    schema_name = None if schema == default_schema else schema
    if not autogen_context.run_name_filters(name, "table", {"schema_name": schema_name}):
        return False
    table = metadata_tables.get(key)
    if table is not None:
        return bool(autogen_context.run_object_filters(table, name, "table", False, None))
    if declared:  # declared by register_policies for a table the metadata does not model
        return True
    reflected = Table(name, MetaData(), schema=schema_name)
    return bool(autogen_context.run_object_filters(reflected, name, "table", True, None))


def compare_hessra_policies(autogen_context: Any, upgrade_ops: ops.UpgradeOps, schemas: Iterable[str | None]) -> None:
    """The autogenerate comparator (registered for ``"schema"``, after the
    table comparisons): see the module docstring."""
    declared = declared_policies(autogen_context.metadata)
    connection = autogen_context.connection
    if declared is None or connection is None:
        return
    default_schema = connection.dialect.default_schema_name or DEFAULT_SCHEMA
    by_table: dict[TableKey, list[PolicySpec]] = {}
    for spec in declared:
        by_table.setdefault((_schema(spec.schema), spec.table), []).append(spec)
    for (schema, table), specs in by_table.items():
        names = [policy.name for spec in specs for policy in spec.policies()]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            raise PolicySpecError(f"two declared specs on {schema}.{table} name the policy {duplicate!r}")
    scope = sorted({default_schema if s is None else s for s in schemas} | {key[0] for key in by_table})
    metadata_tables = {(table.schema or default_schema, table.name): table
                       for md in _metadatas(autogen_context.metadata) for table in md.tables.values()}

    planned: list[tuple[TableKey, list[HessraOperation], list[HessraOperation]]] = []
    with _rolled_back(connection, outermost=True):
        # Local to the savepoint: both go back with its rollback.
        connection.execute(text("SELECT pg_catalog.set_config('search_path', :path, true), "
                                "pg_catalog.set_config('lock_timeout', :timeout, true)"),
                           {"path": SAFE_SEARCH_PATH, "timeout": LOCK_TIMEOUT})
        existing = _read_policies(connection, scope)
        flags = _read_tables(connection, scope)
        keys = set(by_table) | {key for key, policies in existing.items()
                                if any(policy.hessra for policy in policies.values())}
        for key in sorted(keys):
            if not _included(autogen_context, key, default_schema, key in by_table, metadata_tables):
                continue
            comparison = _TableComparison(connection, key, by_table.get(key, []), existing.get(key, {}),
                                          flags.get(key))
            drops, creates = comparison.operations()
            if drops or creates:
                planned.append((key, drops, creates))
    for key, drops, creates in planned:
        _place(upgrade_ops, key, default_schema, drops, creates)


def _register() -> None:
    try:
        from alembic.util import DispatchPriority
    except ImportError:  # Alembic < 1.18: comparators run in registration order, after the table comparisons
        comparators.dispatch_for("schema")(compare_hessra_policies)
    else:
        comparators.dispatch_for("schema", priority=DispatchPriority.LAST,
                                 subgroup=INFO_KEY)(compare_hessra_policies)


_register()
