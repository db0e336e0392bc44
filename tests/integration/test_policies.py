"""Generated policies (hessra_pg.rls.policies) against real Postgres, as an
ordinary role: the rows it sees are exactly the rows the verifier allows
(computed per row as superuser), WITH CHECK rejects the writes it should,
and every verifier call runs once per statement (an InitPlan)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from hessra_pg.cli import main as cli_main
from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.rls.policies import PolicySpec, PolicySpecError, drop_sql, generate_sql, load_specs, quote_literal
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

# -- helpers -------------------------------------------------------------------


def _apply(admin: psycopg.Connection, spec: PolicySpec, app_role: str) -> None:
    admin.execute(generate_sql(spec))
    target = sql.SQL(spec.target)
    if spec.schema:
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(spec.schema),
                                                                         sql.Identifier(app_role)))
    admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(target, sql.Identifier(app_role)))


@contextlib.contextmanager
def _as_app(hessra_db, app_role: str, token: str | None, subject: str | None = None) -> Iterator[psycopg.Connection]:
    """A transaction as the application role with the token set (rolled back)."""
    with hessra_db.connect(app_role) as app:
        app.execute("SELECT set_config('hessra.token', coalesce(%s, ''), true), "
                    "set_config('hessra.subject', coalesce(%s, ''), true)", (token, subject))
        yield app
        app.rollback()


def _ids(conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> list[Any]:
    return sorted(r[0] for r in conn.execute(query, params).fetchall())


def _rejected(conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> bool:
    """True if RLS's WITH CHECK refused the statement (the transaction goes on)."""
    try:
        with conn.transaction():  # a savepoint, rolled back on error
            conn.execute(query, params)
    except errors.InsufficientPrivilege as error:
        assert "row-level security" in str(error), error
        return True
    return False


def _verifier_outside_initplans(node: dict[str, Any], in_init: bool = False) -> list[str]:
    """Plan nodes that mention a hessra_authz function outside an InitPlan
    subtree, i.e. a verifier call that could run once per row."""
    in_init = in_init or node.get("Parent Relationship") == "InitPlan"
    bad = []
    for key, value in node.items():
        if key != "Plans" and "hessra_authz." in json.dumps(value) and not in_init:
            bad.append(f"{node['Node Type']} / {key}: {value}")
    for child in node.get("Plans", []):
        bad += _verifier_outside_initplans(child, in_init)
    return bad


def assert_once_per_statement(conn: psycopg.Connection, query: str) -> str:
    """EXPLAIN VERBOSE shows the verifier only inside InitPlans (evaluated once)."""
    plan = conn.execute(f"EXPLAIN (VERBOSE, COSTS OFF, FORMAT JSON) {query}").fetchone()[0][0]["Plan"]
    text = json.dumps(plan)
    assert '"InitPlan"' in text, text
    assert _verifier_outside_initplans(plan) == [], text
    return text


# -- mode table ----------------------------------------------------------------


def test_table_mode(hessra_db, admin, root, app_role):
    admin.execute("CREATE TABLE public.docs (id int PRIMARY KEY, body text)")
    admin.execute("INSERT INTO public.docs SELECT g, 'b' FROM generate_series(1, 30) g")
    spec = PolicySpec("docs", schema="public", resource="docs")
    _apply(admin, spec, app_role)

    read = mint_authorization(root, "alice", "docs", "read")
    write = mint_authorization(root, "alice", "docs", "write")
    other = mint_authorization(root, "alice", "other", "read")
    cases = [(read, "alice"), (write, "alice"), (read, "bob"), (other, "alice"), ("garbage", "alice"),
             (None, None), (mint_authorization(generate_keypair(), "alice", "docs", "read"), "alice")]
    everything = list(range(1, 31))
    for token, subject in cases:
        expected = everything if scalar(admin, "SELECT hessra_authz.verify_token(%s, %s, 'docs', 'read')",
                                        (token, subject)) else []
        with _as_app(hessra_db, app_role, token, subject) as app:
            assert _ids(app, "SELECT id FROM public.docs") == expected
    assert scalar(admin, "SELECT hessra_authz.verify_token(%s, 'alice', 'docs', 'read')", (read,))

    with _as_app(hessra_db, app_role, read, "alice") as app:
        assert _rejected(app, "INSERT INTO public.docs VALUES (100, 'x')")
        assert app.execute("UPDATE public.docs SET body = 'x'").rowcount == 0  # USING: write needed
        assert app.execute("DELETE FROM public.docs").rowcount == 0
        assert_once_per_statement(app, "SELECT * FROM public.docs")
    with _as_app(hessra_db, app_role, write, "alice") as app:
        assert not _rejected(app, "INSERT INTO public.docs VALUES (100, 'x')")
        assert app.execute("UPDATE public.docs SET body = 'y'").rowcount == 31
        assert app.execute("SELECT count(*) FROM public.docs").fetchone()[0] == 0  # write token can't read
        assert_once_per_statement(app, "UPDATE public.docs SET body = 'z'")
        assert_once_per_statement(app, "DELETE FROM public.docs WHERE id < 5")
        assert app.execute("DELETE FROM public.docs").rowcount == 31


# -- mode row ------------------------------------------------------------------


def test_row_mode(hessra_db, admin, root, app_role):
    admin.execute("CREATE TABLE public.orders (id int PRIMARY KEY, item text)")
    admin.execute("INSERT INTO public.orders SELECT g, 'item' FROM generate_series(1, 5000) g")
    spec = PolicySpec("orders", mode="row", schema="public", expression="'orders/' || id")
    _apply(admin, spec, app_role)
    admin.execute("ANALYZE public.orders")
    assert scalar(admin, "SELECT count(*) FROM pg_indexes WHERE indexname = 'hessra_orders_resource'") == 1

    tokens = [
        (mint_authorization(root, "alice", "orders/42", "read"), "alice"),
        (mint_authorization(root, "alice", "orders/42", "read"), "bob"),
        (mint_authorization(root, "alice", "orders/7", "write"), "alice"),
        (mint_authorization(root, "alice", "orders", "read"), "alice"),
        ("garbage", "alice"),
        (None, None),
    ]
    for token, subject in tokens:
        expected = _ids(admin, "SELECT id FROM public.orders WHERE hessra_authz.verify_token(%s, %s, 'orders/' || id, 'read')",
                        (token, subject))
        with _as_app(hessra_db, app_role, token, subject) as app:
            assert _ids(app, "SELECT id FROM public.orders") == expected
    assert expected == [] and _ids(admin, "SELECT id FROM public.orders WHERE hessra_authz.verify_token("
                                   "%s, 'alice', 'orders/' || id, 'read')", (tokens[0][0],)) == [42]

    with _as_app(hessra_db, app_role, tokens[0][0], "alice") as app:
        plan = assert_once_per_statement(app, "SELECT * FROM public.orders")
        assert "hessra_orders_resource" in plan, plan  # the suggested index serves the policy
        assert _rejected(app, "INSERT INTO public.orders VALUES (42, 'dup?')")  # read token: no write
    write = mint_authorization(root, "alice", "orders/9001", "write")
    with _as_app(hessra_db, app_role, write, "alice") as app:
        assert not _rejected(app, "INSERT INTO public.orders VALUES (9001, 'mine')")
        assert _rejected(app, "INSERT INTO public.orders VALUES (9002, 'not mine')")
        assert app.execute("UPDATE public.orders SET item = 'changed'").rowcount == 1
        assert _rejected(app, "UPDATE public.orders SET id = 9003")  # WITH CHECK on the new row
        # A WHERE clause reads columns, so Postgres applies the SELECT policy too: a write-only token
        # changes rows only through statements that don't read them.
        assert app.execute("DELETE FROM public.orders WHERE id = 9001").rowcount == 0
        assert app.execute("DELETE FROM public.orders").rowcount == 1
        assert_once_per_statement(app, "UPDATE public.orders SET item = 'x' WHERE id > 10")


# -- mode identity ---------------------------------------------------------------


OWNERS = ["alice", "alice:laptop", "alice:laptop:agent", "alice:phone", "alice2", "alicex", "bob", "bob:alice"]


def test_identity_mode(hessra_db, admin, root, app_role):
    admin.execute("CREATE TABLE public.documents (id int PRIMARY KEY, owner text NOT NULL, body text)")
    admin.cursor().executemany("INSERT INTO public.documents VALUES (%s, %s, 'b')", list(enumerate(OWNERS, 1)))
    spec = PolicySpec("documents", mode="identity", schema="public", owner_column="owner")
    _apply(admin, spec, app_role)
    public = str(root.public_key)
    alice = mint_identity(root, "alice")
    laptop = delegate_identity(alice, public, "alice:laptop")
    fixed = mint_identity(root, "alice", delegatable=False)
    tokens = [alice, laptop, fixed, mint_identity(root, "bob"), "garbage", None,
              mint_authorization(root, "alice", "documents", "read")]

    def check_all() -> None:
        for token in tokens:
            expected = _ids(admin, "SELECT id FROM public.documents WHERE hessra_authz.verify_identity(%s, owner)",
                            (token,))
            with _as_app(hessra_db, app_role, token) as app:
                assert _ids(app, "SELECT id FROM public.documents") == expected, token

    check_all()
    with _as_app(hessra_db, app_role, alice) as app:
        assert _ids(app, "SELECT owner FROM public.documents") == ["alice", "alice:laptop", "alice:laptop:agent",
                                                                   "alice:phone"]
    admin.execute("SELECT hessra_authz.revoke_identity('alice:laptop:agent')")
    check_all()
    with _as_app(hessra_db, app_role, laptop) as app:
        assert _ids(app, "SELECT owner FROM public.documents") == ["alice:laptop"]
        assert not _rejected(app, "INSERT INTO public.documents VALUES (100, 'alice:laptop:new', 'x')")
        assert _rejected(app, "INSERT INTO public.documents VALUES (101, 'alice', 'x')")
        assert _rejected(app, "INSERT INTO public.documents VALUES (102, 'alice:phone', 'x')")
        assert _rejected(app, "UPDATE public.documents SET owner = 'bob' WHERE owner = 'alice:laptop'")
        assert app.execute("UPDATE public.documents SET body = 'y'").rowcount == 2
        assert app.execute("DELETE FROM public.documents WHERE owner = 'alice'").rowcount == 0
        assert_once_per_statement(app, "SELECT * FROM public.documents")
        assert_once_per_statement(app, "DELETE FROM public.documents WHERE id > 3")


# -- mode service_chain ------------------------------------------------------------


def test_service_chain_mode(hessra_db, admin, root, app_role):
    nodes = {name: generate_keypair() for name in ("auth_service", "payment_service", "order_service")}
    chain = [ChainNode(name, str(pair.public_key)) for name, pair in nodes.items()]
    admin.execute("SELECT hessra_authz.set_service_chain('orders', %s::jsonb)",
                  (json.dumps([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    admin.execute("CREATE TABLE public.payments (id int PRIMARY KEY, amount int)")
    admin.execute("INSERT INTO public.payments SELECT g, g FROM generate_series(1, 20) g")
    spec = PolicySpec("payments", mode="service_chain", schema="public", resource="orders", chain="orders",
                      component="order_service")
    _apply(admin, spec, app_role)
    public = str(root.public_key)

    def token(operation: str, attest: Sequence[str], subject: str = "alice") -> str:
        t = mint_authorization(root, subject, "orders", operation, service_chain=chain)
        for name in attest:
            t = attest_service(t, public, "orders", nodes[name])
        return t

    full = token("read", ["auth_service", "payment_service"])
    cases = [(full, "alice"), (full, "bob"), (token("read", ["auth_service"]), "alice"),
             (token("read", []), "alice"), (token("write", ["auth_service", "payment_service"]), "alice"),
             (None, None)]
    for t, subject in cases:
        allowed = scalar(admin, "SELECT hessra_authz.verify_service_chain(%s, %s, 'orders', 'read', 'orders', "
                                "'order_service')", (t, subject))
        with _as_app(hessra_db, app_role, t, subject) as app:
            assert _ids(app, "SELECT id FROM public.payments") == (list(range(1, 21)) if allowed else [])
    with _as_app(hessra_db, app_role, full, "alice") as app:
        assert len(_ids(app, "SELECT id FROM public.payments")) == 20
        assert _rejected(app, "INSERT INTO public.payments VALUES (100, 1)")
        assert_once_per_statement(app, "SELECT * FROM public.payments WHERE amount > 3")
    with _as_app(hessra_db, app_role, token("write", ["auth_service", "payment_service"]), "alice") as app:
        assert not _rejected(app, "INSERT INTO public.payments VALUES (100, 1)")
    with _as_app(hessra_db, app_role, token("write", ["auth_service"]), "alice") as app:
        assert _rejected(app, "INSERT INTO public.payments VALUES (101, 1)")

    # No component: every node of the chain must have attested (NULL::text, not the jsonb overload).
    admin.execute("CREATE TABLE public.ledger (id int PRIMARY KEY)")
    admin.execute("INSERT INTO public.ledger VALUES (1)")
    _apply(admin, PolicySpec("ledger", mode="service_chain", schema="public", resource="orders", chain="orders"),
           app_role)
    everyone = token("read", ["auth_service", "payment_service", "order_service"])
    for t, expected in ((full, []), (everyone, [1])):
        with _as_app(hessra_db, app_role, t, "alice") as app:
            assert _ids(app, "SELECT id FROM public.ledger") == expected


# -- configuration -----------------------------------------------------------------


def test_operations_and_commands_are_configurable(hessra_db, admin, root, app_role):
    admin.execute("CREATE TABLE public.notes (id int PRIMARY KEY)")
    admin.execute("INSERT INTO public.notes VALUES (1), (2)")
    spec = PolicySpec("notes", schema="public", resource="notes", operations={"select": "view", "INSERT": "create"},
                      commands=("SELECT", "INSERT"), names={"SELECT": "notes viewers"})
    _apply(admin, spec, app_role)
    names = _ids(admin, "SELECT policyname FROM pg_policies WHERE tablename = 'notes'")
    assert names == ["hessra_notes_insert", "notes viewers"]
    with _as_app(hessra_db, app_role, mint_authorization(root, "a", "notes", "view"), "a") as app:
        assert _ids(app, "SELECT id FROM public.notes") == [1, 2]
    with _as_app(hessra_db, app_role, mint_authorization(root, "a", "notes", "read"), "a") as app:
        assert _ids(app, "SELECT id FROM public.notes") == []
    create = mint_authorization(root, "a", "notes", "create")
    with _as_app(hessra_db, app_role, create, "a") as app:
        assert not _rejected(app, "INSERT INTO public.notes VALUES (3)")
    everything = mint_authorization(root, "a", "notes", "write")
    with _as_app(hessra_db, app_role, everything, "a") as app:
        assert app.execute("DELETE FROM public.notes").rowcount == 0  # no DELETE policy: denied
    # drop: policies gone, RLS still on and forced (fail closed) unless disable=True
    admin.execute(drop_sql(spec))
    assert scalar(admin, "SELECT count(*) FROM pg_policies WHERE tablename = 'notes'") == 0
    assert admin.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                         "WHERE oid = 'public.notes'::regclass").fetchone() == (True, True)
    with _as_app(hessra_db, app_role, mint_authorization(root, "a", "notes", "view"), "a") as app:
        assert _ids(app, "SELECT id FROM public.notes") == []
    admin.execute(drop_sql(spec, disable=True))
    assert admin.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                         "WHERE oid = 'public.notes'::regclass").fetchone() == (False, False)


def test_generated_sql_is_idempotent(admin, app_role):
    admin.execute("CREATE TABLE public.t (id int PRIMARY KEY, owner text)")
    spec = PolicySpec("t", mode="identity", schema="public", owner_column="owner")
    for _ in range(2):
        admin.execute(generate_sql(spec))
    assert scalar(admin, "SELECT count(*) FROM pg_policies WHERE tablename = 't'") == 4
    assert scalar(admin, "SELECT count(*) FROM pg_indexes WHERE tablename = 't'") == 2  # pkey + owner "C"


# -- quoting ---------------------------------------------------------------------------


WEIRD_SCHEMA = 'Sch "ema'
WEIRD_TABLE = "My 'Odd' \"Table\""


@pytest.mark.parametrize("mode", ["table", "row", "identity"])
def test_names_with_spaces_quotes_and_case(hessra_db, admin, root, app_role, mode):
    schema, table = sql.Identifier(WEIRD_SCHEMA), sql.Identifier(WEIRD_SCHEMA, WEIRD_TABLE)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    # "identity" as the owner column: the name the policy's subquery uses internally.
    admin.execute(sql.SQL('CREATE TABLE {} ("Id X" int PRIMARY KEY, "identity" text, "Owner; Col" text)').format(table))
    admin.execute(sql.SQL("INSERT INTO {} VALUES (1, 'alice', 'alice'), (2, 'bob', 'bob'), (3, 'alice:x', 'carol')")
                  .format(table))
    resource = "it's \\ \"quoted\""
    spec = {
        "table": PolicySpec(WEIRD_TABLE, schema=WEIRD_SCHEMA, resource=resource, name_prefix='P "x'),
        "row": PolicySpec(WEIRD_TABLE, mode="row", schema=WEIRD_SCHEMA,
                          expression=f"{quote_literal(resource)} || '/' || \"Id X\""),
        "identity": PolicySpec(WEIRD_TABLE, mode="identity", schema=WEIRD_SCHEMA, owner_column="identity"),
    }[mode]
    _apply(admin, spec, app_role)
    if mode == "table":
        token, expected = mint_authorization(root, "s", resource, "read"), [1, 2, 3]
    elif mode == "row":
        token, expected = mint_authorization(root, "s", resource + "/2", "read"), [2]
    else:
        token, expected = mint_identity(root, "alice"), [1, 3]
    query = sql.SQL('SELECT "Id X" FROM {}').format(table).as_string(None)
    with _as_app(hessra_db, app_role, token, "s") as app:
        assert _ids(app, query) == expected
        assert_once_per_statement(app, query)
    with _as_app(hessra_db, app_role, mint_authorization(root, "s", "x", "read"), "s") as app:
        assert _ids(app, query) == []


def test_owner_column_with_unusual_name(hessra_db, admin, root, app_role):
    admin.execute('CREATE TABLE public."Docs" (id int PRIMARY KEY, "Owner; Col" text)')
    admin.execute("""INSERT INTO public."Docs" VALUES (1, 'alice'), (2, 'bob')""")
    _apply(admin, PolicySpec("Docs", mode="identity", schema="public", owner_column="Owner; Col"), app_role)
    with _as_app(hessra_db, app_role, mint_identity(root, "bob")) as app:
        assert _ids(app, 'SELECT id FROM public."Docs"') == [2]


# -- spec validation, TOML and the CLI ------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"table": "t"}, "needs resource"),
    ({"table": "t", "mode": "row"}, "needs expression"),
    ({"table": "t", "mode": "identity"}, "needs owner_column"),
    ({"table": "t", "mode": "service_chain", "resource": "r"}, "needs chain"),
    ({"table": "t", "mode": "nope", "resource": "r"}, "mode must be one of"),
    ({"table": "t", "resource": "r", "expression": "id"}, "does not apply"),
    ({"table": "t", "resource": "r", "commands": ["TRUNCATE"]}, "unknown command"),
    ({"table": "t", "resource": "r", "commands": []}, "at least one"),
    ({"table": "t", "mode": "identity", "owner_column": "o", "operations": {"SELECT": "r"}}, "no operations"),
    ({"table": "t\x00", "resource": "r"}, "NUL"),
    ({"table": "", "resource": "r"}, "must not be empty"),
    ({"table": "t", "resource": "r", "names": {"SELECT": "x", "INSERT": "x"}}, "same policy name"),
    ({"table": "t", "mode": "designation"}, "needs designations"),
    ({"table": "t", "mode": "designation", "designations": {}}, "at least one label"),
    ({"table": "t", "mode": "designation", "designations": ["tenant"]}, "must map each label"),
    ({"table": "t", "mode": "designation", "designations": {"anchor": "a"}}, "'anchor' is reserved"),
    ({"table": "t", "mode": "designation", "designations": {"facet": "f"}}, "'facet' is reserved"),
    ({"table": "t", "mode": "designation", "designations": {"t": "c"}, "fixed": {"t": "x"}}, "both a row label"),
    ({"table": "t", "mode": "designation", "designations": {"t": ""}}, "must not be empty"),
    ({"table": "t", "mode": "designation", "designations": {"t": "c"}, "fixed": {"r": 1}}, "must be a string"),
    ({"table": "t", "resource": "r", "designations": {"t": "c"}}, "does not apply to mode table"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(PolicySpecError, match=message):
        spec = PolicySpec(**kwargs)
        spec.policies()


def test_long_names_stay_distinct_and_bounded():
    spec = PolicySpec("t" * 70, resource="r")
    names = [spec.policy_name(c) for c in spec.commands]
    assert len(set(names)) == 4 and all(len(n.encode()) <= 63 for n in names)


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_from_flags_and_toml(tmp_path, hessra_db, admin, root, app_role):
    code, text, _ = _run_cli(["policy", "generate", "--schema", "public", "--table", "orders", "--mode", "row",
                              "--expression", "'orders/' || id", "--select-op", "view", "--write-op", "edit"])
    assert code == 0
    assert text == generate_sql(PolicySpec("orders", mode="row", schema="public", expression="'orders/' || id",
                                           operations={"SELECT": "view", "INSERT": "edit", "UPDATE": "edit",
                                                       "DELETE": "edit"}))
    toml = tmp_path / "policies.toml"
    toml.write_text("""
[[policies]]
schema = "public"
table = "orders"
mode = "row"
expression = "'orders/' || id"
operations = { SELECT = "view", INSERT = "edit", UPDATE = "edit", DELETE = "edit" }

[[policies]]
schema = "public"
table = "docs"
mode = "identity"
owner_column = "owner"
commands = ["SELECT"]
""")
    specs = load_specs(toml)
    assert [s.table for s in specs] == ["orders", "docs"]
    code, from_file, _ = _run_cli(["policy", "generate", "--from", str(toml)])
    assert code == 0 and from_file == generate_sql(specs)
    admin.execute("CREATE TABLE public.orders (id int PRIMARY KEY); INSERT INTO public.orders VALUES (1), (2);"
                  "CREATE TABLE public.docs (id int PRIMARY KEY, owner text)")
    admin.execute(from_file)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    with _as_app(hessra_db, app_role, mint_authorization(root, "a", "orders/2", "view"), "a") as app:
        assert _ids(app, "SELECT id FROM public.orders") == [2]
    code, dropped, _ = _run_cli(["policy", "generate", "--from", str(toml), "--drop", "--disable"])
    assert code == 0
    admin.execute(dropped)
    assert scalar(admin, "SELECT count(*) FROM pg_policies WHERE schemaname = 'public'") == 0

    single = tmp_path / "one.toml"
    single.write_text('table = "orders"\nresource = "orders"\nforce = false\n')
    code, text, _ = _run_cli(["policy", "generate", "--from", str(single), "--no-transaction"])
    assert code == 0 and "FORCE" not in text and not text.startswith("BEGIN")


@pytest.mark.parametrize("argv, message", [
    (["--mode", "row"], "needs --table"),
    (["--table", "t"], "needs resource"),
    (["--table", "t", "--resource", "r", "--operation", "x", "--select-op", "y"], "--select-op"),
    (["--from", "/nonexistent.toml"], "cannot read"),
    (["--from", "/dev/null", "--table", "t"], "--table can't be combined"),
    (["--table", "t", "--resource", "r", "--disable"], "--disable only applies"),
    (["--table", "t", "--resource", "r", "--commands", "SELECT,MERGE"], "unknown command"),
    (["--table", "t", "--mode", "designation"], "needs --label LABEL --column COLUMN"),
    (["--table", "t", "--mode", "designation", "--label", "a"], "one --column per --label"),
    (["--table", "t", "--mode", "designation", "--label", "a", "--column", "x", "--label", "a", "--column", "y"],
     "once"),
    (["--table", "t", "--mode", "designation", "--label", "a", "--column", "x", "--fixed", "b"], "LABEL=VALUE"),
    (["--table", "t", "--mode", "designation", "--label", "anchor", "--column", "x"], "reserved"),
    (["--table", "t", "--resource", "r", "--label", "a", "--column", "x"], "apply to --mode designation"),
])
def test_cli_errors(argv, message):
    code, out, err = _run_cli(["policy", "generate", *argv])
    assert code == 2 and out == "" and message in err, err


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[policies]]\ntable = "t"\nresorce = "r"\n')
    with pytest.raises(PolicySpecError, match=r"policies\[0\]: unknown key 'resorce'"):
        load_specs(bad)
    bad.write_text('table = "t"\nresource = \n')
    with pytest.raises(PolicySpecError, match="invalid TOML"):
        load_specs(bad)
    bad.write_text('table = "t"\nresource = "r"\nforce = "yes"\n')
    with pytest.raises(PolicySpecError, match="force must be true or false"):
        load_specs(bad)
    bad.write_text('table = "t"\nmode = "designation"\ndesignations = "tenant"\n')
    with pytest.raises(PolicySpecError, match="designations must be a table of label"):
        load_specs(bad)


def test_designation_mode_from_flags_toml_and_mapping(tmp_path):
    """The CLI flags, a TOML file and the spec's own mapping (what Alembic
    renders and records) give the same SQL; label order is kept."""
    spec = PolicySpec("notes", mode="designation", schema="app", designations={"tenant_id": "tenant", "user": "author"},
                      fixed={"region": "eu"})
    code, text, _ = _run_cli(["policy", "generate", "--schema", "app", "--table", "notes", "--mode", "designation",
                              "--label", "tenant_id", "--column", "tenant", "--label", "user", "--column", "author",
                              "--fixed", "region=eu"])
    assert code == 0 and text == generate_sql(spec)
    toml = tmp_path / "notes.toml"
    toml.write_text('schema = "app"\ntable = "notes"\nmode = "designation"\n'
                    'designations = { tenant_id = "tenant", user = "author" }\nfixed = { region = "eu" }\n')
    assert load_specs(toml) == [spec]
    assert PolicySpec(**spec.to_mapping()) == spec
    assert spec.resource == "notes"  # the table, by default
    assert list(PolicySpec(**{**spec.to_mapping(), "designations": {"user": "author", "tenant_id": "tenant"}})
                .designations) == ["user", "tenant_id"]
    assert text.count("CREATE INDEX") == 2 and '(("author"::pg_catalog.text COLLATE pg_catalog."C"))' in text


def test_plan_check_catches_a_per_row_policy(hessra_db, admin, root, app_role):
    """The EXPLAIN check above is not vacuous: a bare call (no scalar subquery) fails it."""
    admin.execute("""
        CREATE TABLE public.bare (id int PRIMARY KEY);
        ALTER TABLE public.bare ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.bare FORCE ROW LEVEL SECURITY;
        CREATE POLICY bare ON public.bare FOR SELECT USING (hessra_authz.authorized('bare/' || id, 'read'));
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.bare TO {}").format(sql.Identifier(app_role)))
    with _as_app(hessra_db, app_role, None) as app:
        plan = app.execute("EXPLAIN (VERBOSE, COSTS OFF, FORMAT JSON) SELECT * FROM public.bare").fetchone()[0][0]
        assert _verifier_outside_initplans(plan["Plan"]) != []
        with pytest.raises(AssertionError):
            assert_once_per_statement(app, "SELECT * FROM public.bare")


# -- planted operators (issue 11, hole 8) ------------------------------------------------
#
# Where `public` is writable (a database upgraded from PG 14 or older keeps CREATE for
# PUBLIC), an application role can create an operator whose argument types match a
# policy's operands exactly: PostgreSQL then prefers it to pg_catalog's polymorphic or
# coercing one whatever the search_path order. The generated SQL must bind none of them.


@pytest.fixture
def plant(hessra_db, admin: psycopg.Connection, app_role: str) -> Iterator[Any]:
    """``plant(*definitions)``: the application role creates objects in public, as an old
    upgraded database lets it. Dropped with CASCADE afterwards (a failing test may have
    left a policy depending on them)."""
    admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app_role)))

    def run(*definitions: str) -> None:
        with hessra_db.connect(app_role, autocommit=True) as app:
            for definition in definitions:
                app.execute(definition)

    yield run
    admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(app_role)))


def app_owned_dependencies(admin: psycopg.Connection, app_role: str) -> list[str]:
    """Functions, operators and types owned by the app role that a policy or index depends on."""
    return [r[0] for r in admin.execute("""
        SELECT pg_describe_object(d.classid, d.objid, 0) || ' -> ' || pg_describe_object(d.refclassid, d.refobjid, 0)
          FROM pg_depend d
          LEFT JOIN pg_proc f ON d.refclassid = 'pg_proc'::regclass AND f.oid = d.refobjid
          LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid
          LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
         WHERE d.classid IN ('pg_policy'::regclass, 'pg_class'::regclass)
           AND coalesce(f.proowner, o.oprowner, t.typowner) = %s::regrole
    """, (app_role,)).fetchall()]


PLANTED_CONCAT = (
    "CREATE FUNCTION public.planted_concat(text, integer) RETURNS text LANGUAGE sql IMMUTABLE "
    "AS $$ SELECT 'orders/42' $$",
    "CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = public.planted_concat)",
)


def test_row_mode_binds_no_planted_operator(hessra_db, admin, root, app_role, plant):
    """The app role's `public.||(text, integer)` would give every row the resource its
    token grants; the generated script (run as psql runs it) binds pg_catalog's."""
    admin.execute("CREATE TABLE public.orders (id int PRIMARY KEY, item text)")
    admin.execute("INSERT INTO public.orders SELECT g, 'item' FROM generate_series(1, 50) g")
    plant(*PLANTED_CONCAT)
    _apply(admin, PolicySpec("orders", mode="row", schema="public", expression="'orders/' || id"), app_role)
    assert app_owned_dependencies(admin, app_role) == []
    with _as_app(hessra_db, app_role, mint_authorization(root, "alice", "orders/42", "read"), "alice") as app:
        assert _ids(app, "SELECT id FROM public.orders") == [42]
    # The session that ran the script gets its search_path back.
    assert scalar(admin, "SHOW search_path") == '"$user", public'


def test_identity_mode_binds_no_planted_operator(hessra_db, admin, root, app_role, plant):
    """A varchar owner column: `public.=(varchar, text)` is an exact match where
    pg_catalog's text = text needs a coercion, so it would win."""
    admin.execute("CREATE TABLE public.documents (id int PRIMARY KEY, owner varchar NOT NULL)")
    admin.cursor().executemany("INSERT INTO public.documents VALUES (%s, %s)", list(enumerate(OWNERS, 1)))
    planted = []
    for op in ("=", ">=", "<", "^@"):
        function = f"public.planted_{len(planted)}"
        planted += [f"CREATE FUNCTION {function}(varchar, text) RETURNS boolean LANGUAGE sql IMMUTABLE "
                    "AS $$ SELECT true $$",
                    f"CREATE OPERATOR public.{op} (LEFTARG = varchar, RIGHTARG = text, FUNCTION = {function})"]
    plant(*planted)
    _apply(admin, PolicySpec("documents", mode="identity", schema="public", owner_column="owner"), app_role)
    assert app_owned_dependencies(admin, app_role) == []
    with _as_app(hessra_db, app_role, mint_identity(root, "bob")) as app:
        assert _ids(app, "SELECT owner FROM public.documents") == ["bob", "bob:alice"]  # bob and below
    with _as_app(hessra_db, app_role, None) as app:
        assert _ids(app, "SELECT owner FROM public.documents") == []


@pytest.mark.parametrize("mode", ["table", "row", "identity", "service_chain", "designation"])
def test_no_mode_binds_objects_from_the_callers_search_path(hessra_db, admin, root, app_role, plant, mode):
    """Worst case: the DBA's session searches public before pg_catalog, where the app
    role planted same-signature operators, functions and a type named text. Nothing the
    generated SQL binds (policies, index) belongs to the app role."""
    admin.execute("CREATE TABLE public.t (id int PRIMARY KEY, owner text)")
    admin.execute("SELECT hessra_authz.set_service_chain('c', %s::jsonb)",
                  (json.dumps([{"component": "a", "public_key": str(generate_keypair().public_key)}]),))
    planted = []
    for i, (op, left, right) in enumerate([("=", "text", "text"), (">=", "text", "text"), ("<", "text", "text"),
                                          ("||", "text", "text"), ("||", "text", "integer"),
                                          ("^@", "text", "text"), ("=", "integer", "integer")]):
        planted += [f"CREATE FUNCTION public.planted_{i}({left}, {right}) RETURNS "
                    f"{'text' if op == '||' else 'boolean'} LANGUAGE sql IMMUTABLE "
                    f"AS $$ SELECT {'$1::text' if op == '||' else 'true'} $$",
                    f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.planted_{i})"]
    planted += ["CREATE FUNCTION public.cardinality(text[]) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$",
                "CREATE FUNCTION public.array_agg(text) RETURNS text[] LANGUAGE sql AS $$ SELECT '{}'::text[] $$",
                "CREATE FUNCTION public.jsonb_build_object(VARIADIC text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE "
                "AS $$ SELECT '{}'::jsonb $$",
                # types named text and jsonb: `::text` would resolve to them in that session
                "CREATE DOMAIN public.text AS pg_catalog.text",
                "CREATE DOMAIN public.jsonb AS pg_catalog.jsonb"]
    plant(*planted)
    spec = {
        "table": PolicySpec("t", schema="public", resource="docs"),
        "row": PolicySpec("t", mode="row", schema="public", expression="'t/' || id"),
        "identity": PolicySpec("t", mode="identity", schema="public", owner_column="owner"),
        "service_chain": PolicySpec("t", mode="service_chain", schema="public", resource="r", chain="c",
                                    component="a"),
        "designation": PolicySpec("t", mode="designation", schema="public", designations={"owner": "owner",
                                                                                           "id": "id"}),
    }[mode]
    admin.execute("SET search_path = public, pg_catalog")
    admin.execute(generate_sql(spec))
    assert scalar(admin, "SHOW search_path") == "public, pg_catalog"
    admin.execute("RESET search_path")
    assert app_owned_dependencies(admin, app_role) == []


@pytest.mark.parametrize("no_transaction", [False, True], ids=["transaction", "no-transaction"])
def test_cli_script_through_psql_binds_no_planted_operator(hessra_db, admin, root, app_role, plant,
                                                           no_transaction):
    """`hessra-pg policy generate ... | psql`, the documented path, as psql runs it; with
    --no-transaction the session's own search_path comes back at the end."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    admin.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
    admin.execute("INSERT INTO public.orders SELECT g FROM generate_series(1, 50) g")
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    plant(*PLANTED_CONCAT)
    code, script, _ = _run_cli(["policy", "generate", "--table", "orders", "--mode", "row",
                                "--expression", "'orders/' || id", "--commands", "SELECT",
                                *(["--no-transaction"] if no_transaction else [])])
    assert code == 0 and '"public"."orders"' in script  # no --schema: public, named
    done = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", hessra_db.dsn],
                          input="SET search_path = public;\n" + script + "SHOW search_path;\n",
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "public"
    assert app_owned_dependencies(admin, app_role) == []
    with _as_app(hessra_db, app_role, mint_authorization(root, "alice", "orders/42", "read"), "alice") as app:
        assert _ids(app, "SELECT id FROM public.orders") == [42]
