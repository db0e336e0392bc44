"""Policies generated with ``no_subquery`` (``--no-subquery``, TOML, Alembic),
the form Citus accepts on distributed tables, on plain PostgreSQL: for every
mode the rows an ordinary role sees and the writes it may make are exactly
those of the per-statement form; no policy holds a sublink; doctor takes the
per-row calls as intended only on such policies. The same policies on a real
Citus are in test_citus.py."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy import Column, Integer, MetaData, Table, Text

from hessra_pg.cli import main as cli_main
from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.verifier import ChainNode
from hessra_pg.rls.policies import (
    NO_SUBQUERY_COMMENT,
    PolicySpec,
    PolicySpecError,
    generate_sql,
    intends_per_row,
    load_specs,
)
from hessra_pg.tokens.capability import designate, mint_capability
from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.tokens.mint import attest_service, mint_authorization
from tests.integration.test_alembic import _calls, _diff, _revision, script_dir  # noqa: F401 (fixture)
from tests.integration.test_doctor import doctor

OWNERS = ["alice", "alice:laptop", "alice:laptop:agent", "alice:phone", "alice2", "bob", "bob:alice"]


def _as_app(hessra_db: Any, app_role: str, token: str | None, subject: str | None = None) -> Any:
    @contextlib.contextmanager
    def run() -> Iterator[psycopg.Connection]:
        with hessra_db.connect(app_role) as app:
            app.execute("SELECT set_config('hessra.token', coalesce(%s, ''), true), "
                        "set_config('hessra.subject', coalesce(%s, ''), true)", (token, subject))
            yield app
            app.rollback()
    return run()


def _ids(conn: psycopg.Connection, table: str) -> list[int]:
    return sorted(r[0] for r in conn.execute(f"SELECT id FROM public.{table}").fetchall())


def _write_allowed(conn: psycopg.Connection, statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except errors.InsufficientPrivilege as error:
        assert "row-level security" in str(error), error
        return False
    return True


def _twins(admin: psycopg.Connection, app_role: str, create: str, rows: str, spec: dict[str, Any]) -> None:
    """Two copies of a table, ``<t>_s`` under the per-statement form and
    ``<t>_n`` under the no-subquery form of the same spec."""
    for suffix, no_subquery in (("s", False), ("n", True)):
        table = f"t_{suffix}"
        admin.execute(create.format(table=f"public.{table}"))
        admin.execute(rows.format(table=f"public.{table}"))
        admin.execute(generate_sql(PolicySpec(table, schema="public", no_subquery=no_subquery, **spec)))
        admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{} TO {}").format(
            sql.Identifier(table), sql.Identifier(app_role)))
    policies = admin.execute("SELECT tablename, qual, with_check FROM pg_policies WHERE tablename IN "
                             "('t_s', 't_n')").fetchall()
    for table, *clauses in policies:
        texts = " ".join(c for c in clauses if c)
        assert ("SELECT" in texts) == (table == "t_s"), texts  # no sublink in the no-subquery form
    comments = admin.execute("SELECT c.relname, obj_description(p.oid, 'pg_policy') FROM pg_policy p "
                             "JOIN pg_class c ON c.oid = p.polrelid WHERE c.relname IN ('t_s', 't_n')").fetchall()
    assert {(table, comment) for table, comment in comments} == {("t_s", None), ("t_n", NO_SUBQUERY_COMMENT)}


def _same(hessra_db: Any, app_role: str, cases: Sequence[tuple[str | None, str | None]],
          writes: Sequence[str] = ()) -> list[list[int]]:
    """Every case sees the same rows and may make the same writes through both forms."""
    seen = []
    for token, subject in cases:
        with _as_app(hessra_db, app_role, token, subject) as app:
            rows = _ids(app, "t_s")
            assert _ids(app, "t_n") == rows, (token, subject)
            for write in writes:
                assert _write_allowed(app, write.format(table="public.t_n")) == \
                    _write_allowed(app, write.format(table="public.t_s")), write
            seen.append(rows)
    return seen


def test_table_mode(hessra_db, admin, root, app_role):
    _twins(admin, app_role, "CREATE TABLE {table} (id int PRIMARY KEY)",
           "INSERT INTO {table} SELECT g FROM generate_series(1, 20) g", {"resource": "docs"})
    read = mint_authorization(root, "alice", "docs", "read")
    write = mint_authorization(root, "alice", "docs", "write")
    seen = _same(hessra_db, app_role, [(read, "alice"), (read, "bob"), (write, "alice"), ("junk", "alice"),
                                       (None, None)], ["INSERT INTO {table} VALUES (100)"])
    assert seen == [list(range(1, 21)), [], [], [], []]
    admin.execute("SELECT hessra_authz.revoke_token(%s)", (read,))
    assert _same(hessra_db, app_role, [(read, "alice")]) == [[]]


def test_row_mode(hessra_db, admin, root, app_role):
    _twins(admin, app_role, "CREATE TABLE {table} (id int PRIMARY KEY)",
           "INSERT INTO {table} SELECT g FROM generate_series(1, 50) g",
           {"mode": "row", "expression": "'orders/' || id"})
    seen = _same(hessra_db, app_role, [(mint_authorization(root, "alice", "orders/7", "read"), "alice"),
                                       (mint_authorization(root, "alice", "orders/77", "write"), "alice"),
                                       (mint_authorization(root, "alice", "orders/9", "read"), "bob")],
                 ["INSERT INTO {table} VALUES (77)", "INSERT INTO {table} VALUES (1000)"])
    assert seen == [[7], [], []]


def test_identity_mode(hessra_db, admin, root, app_role):
    rows = "INSERT INTO {table} VALUES " + ", ".join(f"({i}, '{o}')" for i, o in enumerate(OWNERS, 1))
    _twins(admin, app_role, "CREATE TABLE {table} (id int PRIMARY KEY, owner text NOT NULL)", rows,
           {"mode": "identity", "owner_column": "owner"})
    alice = mint_identity(root, "alice")
    laptop = delegate_identity(alice, str(root.public_key), "alice:laptop")
    cases = [(alice, None), (laptop, None), (mint_identity(root, "alice", delegatable=False), None),
             (mint_identity(root, "bob"), None), ("junk", None), (None, None)]
    writes = ["INSERT INTO {table} VALUES (100, 'alice:laptop:new')", "INSERT INTO {table} VALUES (101, 'alice')"]
    assert _same(hessra_db, app_role, cases, writes)[:2] == [[1, 2, 3, 4], [2, 3]]
    admin.execute("SELECT hessra_authz.revoke_identity('alice:laptop:agent')")
    assert _same(hessra_db, app_role, cases, writes)[:2] == [[1, 2, 4], [2]]


def test_service_chain_mode(hessra_db, admin, root, app_role):
    nodes = {name: generate_keypair() for name in ("auth", "payments")}
    chain = [ChainNode(name, str(pair.public_key)) for name, pair in nodes.items()]
    admin.execute("SELECT hessra_authz.set_service_chain('orders', %s::jsonb)",
                  (json.dumps([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    _twins(admin, app_role, "CREATE TABLE {table} (id int PRIMARY KEY)",
           "INSERT INTO {table} SELECT g FROM generate_series(1, 5) g",
           {"mode": "service_chain", "resource": "orders", "chain": "orders", "component": "payments"})
    token = mint_authorization(root, "alice", "orders", "read", service_chain=chain)
    attested = attest_service(token, str(root.public_key), "orders", nodes["auth"])
    assert _same(hessra_db, app_role, [(attested, "alice"), (token, "alice"), (attested, "bob")]) == \
        [[1, 2, 3, 4, 5], [], []]


def test_designation_mode(hessra_db, admin, root, app_role):
    admin.execute("SELECT hessra_authz.set_anchor('db:test')")
    rows = ("INSERT INTO {table} SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 't' || (g % 4) END "
            "FROM generate_series(1, 40) g")
    _twins(admin, app_role, "CREATE TABLE {table} (id int PRIMARY KEY, tenant text)", rows,
           {"mode": "designation", "resource": "notes", "designations": {"tenant_id": "tenant"}})
    public = str(root.public_key)
    cap = mint_capability(root, "svc", "notes", "read", anchor="db:test")
    t1 = designate(cap, public, [("tenant_id", "t1")])
    cases = [(cap, None), (t1, None), (designate(t1, public, [("tenant_id", "t2")]), None),
             (mint_capability(root, "svc", "notes", "read", anchor="db:other"), None), (None, None)]
    seen = _same(hessra_db, app_role, cases)
    assert len(seen[0]) == 40 and seen[1] == [i for i in range(1, 41) if i % 4 == 1 and i % 3]
    assert seen[2] == seen[3] == seen[4] == []


def test_doctor_takes_per_row_calls_as_intended_only_on_marked_policies(hessra_db, admin, root, app_role, capsys):
    admin.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
    admin.execute(generate_sql(PolicySpec("orders", resource="orders", no_subquery=True)))
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert checks["policies on public.orders"] == (
        "ok", "4 token policies, 4 without subqueries by design (--no-subquery, for Citus: hessra_authz calls "
              "once per row)")
    # The same per-row policy without the marker: a failure, as before.
    admin.execute("COMMENT ON POLICY hessra_orders_select ON public.orders IS 'mine'")
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert code == 1 and checks["policy hessra_orders_select on public.orders"] == (
        "fail", "evaluated once per row: hessra_authz.authorized() in USING")
    assert intends_per_row('hessra-pg spec: {"no_subquery": true, "table": "t"}')
    assert not intends_per_row('hessra-pg spec: {"table": "t"}') and not intends_per_row("hessra-pg spec: {")


def test_cli_and_toml(tmp_path, capsys):
    assert cli_main(["policy", "generate", "--table", "orders", "--resource", "orders", "--no-subquery"]) == 0
    out = capsys.readouterr().out
    assert "(SELECT" not in out and "hessra_authz.authorized('orders'::text, 'read'" not in out
    assert "USING (hessra_authz.authorized('orders', 'read'))" in out
    assert out.count("COMMENT ON POLICY") == 4 and "without subqueries" in out
    toml = tmp_path / "p.toml"
    toml.write_text('[[policies]]\ntable = "docs"\nmode = "identity"\nowner_column = "owner"\nno_subquery = true\n')
    assert load_specs(toml)[0].no_subquery is True
    assert cli_main(["policy", "generate", "--from", str(toml), "--no-subquery"]) == 2
    assert "--no-subquery can't be combined with --from" in capsys.readouterr().err
    toml.write_text('table = "docs"\nresource = "docs"\nno_subquery = "yes"\n')
    with pytest.raises(PolicySpecError, match="no_subquery must be true or false"):
        load_specs(toml)


def test_alembic_records_and_keeps_a_no_subquery_policy(hessra_db, admin, script_dir):  # noqa: F811
    admin.execute("CREATE TABLE public.notes (id int PRIMARY KEY, owner text)")
    metadata = MetaData()
    spec = {"mode": "identity", "owner_column": "owner", "no_subquery": True}
    Table("notes", metadata, Column("id", Integer, primary_key=True), Column("owner", Text),
          info={"hessra_policies": spec})
    text = _revision(hessra_db.dsn, script_dir, metadata, "n1")
    assert "op.create_hessra_policies('notes', mode='identity', owner_column='owner', no_subquery=True)" in text, text
    assert _diff(hessra_db.dsn, metadata) == []
    comments = admin.execute("SELECT obj_description(p.oid, 'pg_policy') FROM pg_policy p "
                             "WHERE p.polrelid = 'public.notes'::regclass").fetchall()
    assert len(comments) == 4 and all(intends_per_row(c) for (c,) in comments)
    # Declaring the per-statement form instead is a change.
    metadata = MetaData()
    Table("notes", metadata, Column("id", Integer, primary_key=True), Column("owner", Text),
          info={"hessra_policies": {"mode": "identity", "owner_column": "owner"}})
    assert [call[0] for call in _calls(_diff(hessra_db.dsn, metadata))] == ["drop", "create"]


def test_sql_has_no_subquery_for_any_mode():
    specs = [PolicySpec("t", resource="r"), PolicySpec("t", mode="row", expression="'t/' || id"),
             PolicySpec("t", mode="identity", owner_column="o"),
             PolicySpec("t", mode="service_chain", resource="r", chain="c"),
             PolicySpec("t", mode="designation", designations={"a": "x", "b": "y"}, fixed={"c": "1"})]
    for spec in specs:
        statements = PolicySpec(**{**spec.to_mapping(), "no_subquery": True}).create_statements()
        body = "\n".join(s for s in statements if s.startswith("CREATE POLICY"))
        assert "SELECT " not in body.replace("FOR SELECT", ""), body
        assert "(SELECT " in "\n".join(spec.create_statements())
