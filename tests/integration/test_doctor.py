"""`hessra-pg doctor` on a well set-up database and on deliberately broken
ones: each breakage is a FAIL (exit 1) or a warning (exit 0)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import hessra_pg
from hessra_pg.cli import main
from hessra_pg.admin.doctor import connect, log_risks, per_row_calls, run_checks
from hessra_pg.core.keys import generate_keypair
from hessra_pg.rls.policies import PolicySpec, drop_sql, generate_sql
from hessra_pg.dev.testing import HessraDatabase
from tests import vectors

SPECS = [
    PolicySpec("orders", mode="table", resource="orders"),
    PolicySpec("items", schema="shop", mode="row", expression="'items/' || id"),
    PolicySpec("documents", mode="identity", owner_column="owner"),
    PolicySpec("payments", mode="service_chain", resource="payments", chain="order_service",
               component="order_service"),
    PolicySpec("accounts", mode="designation", designations={"tenant_id": "tenant"}),
]
TABLES = ("public.orders", "shop.items", "public.documents", "public.payments", "public.accounts")


@pytest.fixture
def good(hessra_db: HessraDatabase, admin: psycopg.Connection, root, app_role: str) -> HessraDatabase:
    """Policies from hessra_pg.rls.policies (per statement, ENABLE + FORCE),
    tables owned by the superuser, an active key, the app role granted
    table privileges only."""
    admin.execute("CREATE SCHEMA shop")
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY, customer text);
        CREATE TABLE shop.items (id int PRIMARY KEY, name text);
        CREATE TABLE public.documents (id int PRIMARY KEY, owner text NOT NULL);
        CREATE TABLE public.payments (id int PRIMARY KEY, amount int);
        CREATE TABLE public.accounts (id int PRIMARY KEY, tenant text);
    """)
    admin.execute("SELECT hessra_authz.set_service_chain('order_service', %s::jsonb)",
                  (json.dumps(vectors.order_service_chain()),))
    admin.execute(generate_sql(SPECS))
    role = sql.Identifier(app_role)
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(role))
    admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, shop TO {}").format(role))
    return hessra_db


@pytest.fixture
def make_role(admin: psycopg.Connection) -> Iterator[Any]:
    """Create extra login roles (dropped afterwards)."""
    made: list[str] = []

    def make(options: str = "LOGIN") -> str:
        name = f"doc_{uuid.uuid4().hex[:10]}"
        admin.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))
        made.append(name)
        return name

    yield make
    for name in made:
        admin.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def doctor(capsys: pytest.CaptureFixture[str], dsn: str, *extra: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """Run `hessra-pg doctor --json`; (exit code, {check name: (status, message)})."""
    capsys.readouterr()
    code = main(["doctor", "--dsn", dsn, "--json", *extra])
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert report["ok"] is (code == 0)
    return code, {check["name"]: (check["status"], check["message"]) for check in report["checks"]}


def statuses(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: status for name, (status, _) in checks.items()}


def failing(checks: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: message for name, (status, message) in checks.items() if status == "fail"}


# -- the good database -----------------------------------------------------

def test_good_database(good: HessraDatabase, app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, good.dsn_for(app_role), "--admin-dsn", good.dsn)
    assert code == 0
    assert statuses(checks) == {
        "plpython3u": "ok",
        "extension": "ok",
        "server Python": "ok",
        "keys": "ok",
        **{f"table {table}": "ok" for table in TABLES},
        **{f"policies on {table}": "ok" for table in TABLES},
        "server log": "ok",
        "views": "ok",
        f"role {app_role}": "ok",
    }
    assert checks["extension"][1] == f"hessra_authz {hessra_pg.__version__} (same as hessra_pg {hessra_pg.__version__})"
    assert checks["keys"][1] == "1 active key (kid 100); none ends within 7 days"
    assert checks["policies on public.documents"][1] == "4 token policies, every hessra_authz call once per statement"
    assert checks[f"role {app_role}"][1] == ("not superuser, no BYPASSRLS, owns none of the 5 tables with token "
                                             "policies, can't administer keys")


def test_good_database_text_report(good: HessraDatabase, app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --admin-dsn the app role can't read the keys table: the key
    check is a warning (at least one key works), the exit status still 0."""
    capsys.readouterr()
    assert main(["doctor", "--dsn", good.dsn_for(app_role)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"hessra-pg doctor: database '{good.name}' as role '{app_role}' (PostgreSQL ")
    assert "  ok    server Python: imports biscuit_auth and hessra_pg (hessra_authz.verify_token runs)" in lines
    assert ("  warn  keys: at least one key is active; count and expiry dates not checked: this role can't read "
            "hessra_authz.keys (pass --admin-dsn with a hessra_admin member's DSN to check them)") in lines
    assert "  ok    table shop.items: row level security enabled and forced" in lines
    assert lines[-1] == "safe, with 1 warning"


def test_superuser_runs_the_import_probe_in_the_server(good: HessraDatabase) -> None:
    with connect(good.dsn) as conn:
        report = run_checks(conn)
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'  # restored
    checks = {check.name: check for check in report.checks}
    assert checks["server Python"].status == "ok"
    assert checks["server Python"].message.startswith("Python 3.")
    assert f"hessra_pg {hessra_pg.__version__} (" in checks["server Python"].message
    assert checks["role postgres"].status == "fail"
    assert report.exit_code == 1


# -- broken tables and policies -------------------------------------------

def test_rls_not_forced(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {"table public.orders": "row level security is not forced (the owner bypasses it)"}


def test_rls_not_enabled(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("ALTER TABLE shop.items DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {"table shop.items": "row level security is not enabled (its policies are ignored); "
                                                   "row level security is not forced (the owner bypasses it)"}


def test_per_row_policy(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("CREATE POLICY per_row ON public.orders FOR SELECT USING (hessra_authz.authorized('x', 'read'))")
    admin.execute("""CREATE POLICY correlated ON public.payments FOR UPDATE
        USING ((SELECT hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(),
                                                 'payments/' || id, 'write')))
        WITH CHECK (hessra_authz.verify_bearer(hessra_authz.current_token()))""")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {
        "policy per_row on public.orders": "evaluated once per row: hessra_authz.authorized() in USING",
        "policy correlated on public.payments":
            "evaluated once per row: hessra_authz.verify_token() (its subquery refers to the row) in USING; "
            "hessra_authz.verify_bearer() in WITH CHECK",
    }
    # The other tables are still fine, and the failing tables get no "ok" line.
    assert checks["policies on public.documents"][0] == "ok"
    assert "policies on public.orders" not in checks


def test_policies_read_with_postgres_parser(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """What the server deparses, read by PostgreSQL's own parser: a LATERAL
    (SELECT ...) inside a correlated EXISTS runs per row; a (VALUES ...)
    subquery once per statement; a table whose policies only mention
    hessra_authz in a string literal is not a token table."""
    admin.execute("""CREATE POLICY lateral_row ON public.orders AS RESTRICTIVE FOR SELECT USING (EXISTS (
        SELECT 1 FROM unnest((SELECT hessra_authz.authorized_resources('read'))) r(res),
               LATERAL (SELECT hessra_authz.verify_token(hessra_authz.current_token(),
                                                         hessra_authz.current_subject(), r.res, 'read') AS ok) v
         WHERE v.ok AND r.res = 'orders/' || id))""")
    admin.execute("CREATE POLICY values_form ON public.payments AS RESTRICTIVE FOR SELECT "
                  "USING ((VALUES (hessra_authz.authorized('payments', 'read'))))")
    admin.execute("""CREATE TABLE public.notes (id int PRIMARY KEY, note text);
        ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY literal ON public.notes USING (note <> 'hessra_authz.authorized(')""")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {
        "policy lateral_row on public.orders":
            "evaluated once per row: hessra_authz.verify_token() (its subquery refers to the row) in USING",
    }
    assert checks["policies on public.payments"][0] == "ok"
    assert not [name for name in checks if "public.notes" in name]


def test_permissive_policy_without_a_token_check(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                                 make_role, capsys: pytest.CaptureFixture[str]) -> None:
    """Permissive policies are OR-ed: one that checks no token opens the table to this
    role without a token. Reading the settings (current_token()) is no check either."""
    admin.execute("INSERT INTO public.orders VALUES (1, 'c'), (2, 'd')")
    admin.execute("CREATE POLICY everyone ON public.orders FOR SELECT USING (true)")
    admin.execute("CREATE POLICY narrowing ON public.orders AS RESTRICTIVE FOR SELECT USING (id > 0)")
    admin.execute("CREATE POLICY any_token ON public.payments FOR ALL "
                  "USING (hessra_authz.current_token() <> '') WITH CHECK (true)")
    other = make_role("NOLOGIN")
    admin.execute(sql.SQL("CREATE POLICY for_other ON public.documents FOR SELECT TO {} USING (true)")
                  .format(sql.Identifier(other)))
    with good.connect(app_role) as app:  # the hole the check is about
        assert app.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 2
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {
        "policy everyone on public.orders":
            "permissive FOR SELECT policy without a token check: this role passes it with no token "
            "(permissive policies are OR-ed with the token policies)",
        "policy any_token on public.payments":
            "permissive FOR ALL policy without a token check: this role passes it with no token "
            "(permissive policies are OR-ed with the token policies)",
    }
    assert "policy narrowing on public.orders" not in checks  # restrictive: AND-ed
    assert "policy for_other on public.documents" not in checks  # not this role's


# -- views ------------------------------------------------------------------


def test_views_without_security_invoker(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                        make_role, capsys: pytest.CaptureFixture[str]) -> None:
    """A view runs with its owner's rights unless security_invoker: the app reads every
    row through one owned by the (superuser) table owner. Views over such views too."""
    admin.execute("INSERT INTO public.orders VALUES (1, 'c'), (2, 'd')")
    owner = make_role("NOLOGIN")
    admin.execute(sql.SQL("GRANT SELECT ON shop.items TO {}; GRANT USAGE ON SCHEMA shop TO {}")
                  .format(sql.Identifier(owner), sql.Identifier(owner)))
    admin.execute(sql.SQL("""
        CREATE VIEW public.all_orders AS SELECT * FROM public.orders;
        CREATE VIEW public.order_ids WITH (security_invoker = true) AS SELECT id FROM public.all_orders;
        CREATE VIEW public.order_count AS SELECT count(*) FROM public.order_ids;
        CREATE VIEW public.safe_orders WITH (security_invoker = on) AS SELECT * FROM public.orders;
        CREATE VIEW public.not_granted AS SELECT * FROM public.orders;
        CREATE VIEW shop.item_names AS SELECT name FROM shop.items;
        ALTER VIEW shop.item_names OWNER TO {owner};
        CREATE MATERIALIZED VIEW public.order_snapshot AS SELECT * FROM public.orders;
        CREATE VIEW public.unrelated AS SELECT 1 AS one;
        GRANT SELECT ON public.all_orders, public.order_ids, public.order_count, public.safe_orders,
                        shop.item_names, public.order_snapshot, public.unrelated TO {app};
    """).format(owner=sql.Identifier(owner), app=sql.Identifier(app_role)))
    with good.connect(app_role) as app:  # the hole the check is about: no token, every row
        assert app.execute("SELECT count(*) FROM public.all_orders").fetchone()[0] == 2
        assert app.execute("SELECT * FROM public.order_count").fetchone()[0] == 2
        assert app.execute("SELECT count(*) FROM public.safe_orders").fetchone()[0] == 0
    with connect(good.dsn_for(app_role)) as conn:
        report = run_checks(conn)
    checks = {check.name: check for check in report.checks if check.status == "fail"}
    assert sorted(checks) == ["materialized view public.order_snapshot", "view public.all_orders",
                              "view public.order_count", "view shop.item_names"]
    assert checks["view public.all_orders"].message == (
        "not security_invoker: reads public.orders with the rights of its owner postgres, who bypasses row "
        "level security (a superuser): this role reads every row through it")
    assert checks["view public.all_orders"].hint == "ALTER VIEW public.all_orders SET (security_invoker = true)"
    assert checks["view public.order_count"].message == (
        "not security_invoker: reads public.orders (through public.all_orders, public.order_ids) with the "
        "rights of its owner postgres, who bypasses row level security (a superuser): this role reads every "
        "row through it")
    assert checks["view public.order_count"].hint == ("ALTER VIEW public.order_count SET (security_invoker = true); "
                                                      "ALTER VIEW public.all_orders SET (security_invoker = true)")
    assert checks["view shop.item_names"].message == (
        f"not security_invoker: reads shop.items with the rights of its owner {owner}: the policies are checked "
        "for that role, not for this one")
    assert checks["materialized view public.order_snapshot"].message == (
        "holds the rows of public.orders that its owner postgres read at its last REFRESH: row level security "
        "doesn't apply to reading it")
    assert checks["materialized view public.order_snapshot"].hint == (
        f"REVOKE ALL ON public.order_snapshot FROM PUBLIC, {app_role} (or drop it: a view WITH "
        "(security_invoker = true) is filtered per reader)")
    # The fix lines fix it.
    for name in ("view public.all_orders", "view public.order_count", "view shop.item_names"):
        for statement in checks[name].hint.split("; "):
            admin.execute(statement)
    admin.execute(sql.SQL("GRANT SELECT ON public.all_orders TO {}").format(sql.Identifier(owner)))
    admin.execute(checks["materialized view public.order_snapshot"].hint.split(" (")[0])
    with good.connect(app_role) as app:
        assert app.execute("SELECT * FROM public.order_count").fetchone()[0] == 0
    code, after = doctor(capsys, good.dsn_for(app_role))
    assert code == 0 and failing(after) == {}
    assert after["views"] == ("ok", "no view or materialized view this role can use reads a table with token "
                                    "policies with another role's rights")


# -- the server log ----------------------------------------------------------


def _database_setting(admin: psycopg.Connection, database: str, setting: str, value: str | None) -> None:
    query = "ALTER DATABASE {} RESET {}" if value is None else "ALTER DATABASE {} SET {} = " + value
    admin.execute(sql.SQL(query).format(sql.Identifier(database), sql.Identifier(setting)))


def test_statement_logging_with_bound_parameters(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The token is bound into set_config(): logged statements carry it in their
    parameters unless log_parameter_max_length = 0."""
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert checks["server log"] == ("ok", "no setting logs this role's bound parameters (log_statement = 'none', "
                                          "log_min_duration_statement = -1, log_parameter_max_length = -1, "
                                          "log_parameter_max_length_on_error = 0)")
    _database_setting(admin, good.name, "log_statement", "'all'")
    with connect(good.dsn_for(app_role)) as conn:
        report = run_checks(conn)
    log = next(check for check in report.checks if check.name == "server log")
    assert (log.status, log.message) == (
        "fail", "log_statement = 'all' logs every statement with its bound parameters (log_parameter_max_length = "
                "-1): the token the application binds into set_config() is written to the server log")
    fix = f'ALTER ROLE {app_role} IN DATABASE {good.name} SET log_parameter_max_length = 0'
    assert log.hint == f"{fix} (as a superuser; new sessions pick it up)"
    admin.execute(fix)
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 0 and checks["server log"][0] == "ok"

    admin.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET log_parameter_max_length")
                  .format(sql.Identifier(app_role), sql.Identifier(good.name)))
    _database_setting(admin, good.name, "log_statement", "'mod'")  # SELECT set_config(...) is not logged
    _database_setting(admin, good.name, "log_min_duration_statement", "0")
    _database_setting(admin, good.name, "log_parameter_max_length", "64")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {"server log": "log_min_duration_statement = 0 logs every statement with its bound "
                                             "parameters (log_parameter_max_length = 64): the token the application "
                                             "binds into set_config() is written to the server log"}

    _database_setting(admin, good.name, "log_min_duration_statement", "250")
    _database_setting(admin, good.name, "log_parameter_max_length_on_error", "-1")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 0
    assert checks["server log"] == (
        "warn", "log_min_duration_statement = 250 logs statements slower than 250 ms with their bound parameters "
                "(log_parameter_max_length = 64): a slow statement that binds a token writes it to the server log; "
                "log_parameter_max_length_on_error = -1 logs a failing statement with its bound parameters: a "
                "failing statement that binds a token writes it to the server log")

    _database_setting(admin, good.name, "log_min_duration_statement", None)
    _database_setting(admin, good.name, "log_parameter_max_length_on_error", None)
    _database_setting(admin, good.name, "log_transaction_sample_rate", "0.01")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks)["server log"].startswith("log_transaction_sample_rate = 0.01 logs every statement of "
                                                    "that share of transactions with its bound parameters")


# -- objects the role controls inside policies ------------------------------


def test_policy_bound_to_an_operator_this_role_owns(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """What a policy created without a pinned search_path (hessra-pg 0.2.0, or by hand)
    may have bound where public is writable: an operator the app role planted."""
    admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app_role)))
    with good.connect(app_role, autocommit=True) as app:
        app.execute("CREATE FUNCTION public.planted(text, integer) RETURNS text LANGUAGE sql IMMUTABLE "
                    "AS $$ SELECT 'orders/1' $$")
        app.execute("CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = integer, FUNCTION = public.planted)")
    admin.execute("CREATE POLICY legacy ON public.orders FOR SELECT USING (('orders/' || id) = ANY "
                  "((SELECT hessra_authz.authorized_resources('read'))::text[]))")
    admin.execute("CREATE INDEX legacy_resource ON public.orders (('orders/' || id))")
    try:
        code, checks = doctor(capsys, good.dsn_for(app_role))
    finally:
        admin.execute("DROP OPERATOR public.||(text, integer) CASCADE")
    assert code == 1
    message = (f"uses operator public.||(text,integer), owned by {app_role} (this role or one it is a member of): "
               "it decides what the expression computes")
    assert failing(checks) == {"policy legacy on public.orders": message,
                               "index legacy_resource on public.orders": message}


def test_no_token_policies(hessra_db: HessraDatabase, root, app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert code == 0
    assert checks["tables"] == ("warn", "no table has a policy that calls hessra_authz: nothing is enforced with "
                                        "tokens yet")
    assert checks[f"role {app_role}"] == ("ok", "not superuser, no BYPASSRLS, owns none of the 0 tables with token "
                                                "policies, can't administer keys")


# -- the connecting role ---------------------------------------------------

def test_connecting_as_superuser(good: HessraDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, good.dsn)
    assert code == 1
    assert failing(checks) == {"role postgres": "is a superuser: row level security does not apply to it"}
    assert checks["keys"][0] == "ok"  # a superuser can read the keys


def test_connecting_as_the_table_owner(good: HessraDatabase, admin: psycopg.Connection, make_role,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    owner = make_role()
    admin.execute(sql.SQL("ALTER TABLE public.orders OWNER TO {}").format(sql.Identifier(owner)))
    code, checks = doctor(capsys, good.dsn_for(owner))
    assert code == 1
    assert failing(checks) == {f"role {owner}": f"owns or is a member of the owner of public.orders (owner {owner}): "
                                                "it can disable or drop the policies"}


def test_member_of_the_owner_role(good: HessraDatabase, admin: psycopg.Connection, make_role, app_role: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    owner = make_role("NOLOGIN")
    admin.execute(sql.SQL("ALTER TABLE shop.items OWNER TO {}").format(sql.Identifier(owner)))
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(app_role)))
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {f"role {app_role}": f"owns or is a member of the owner of shop.items (owner {owner}): "
                                                   "it can disable or drop the policies"}


def test_bypassrls_role(good: HessraDatabase, make_role, capsys: pytest.CaptureFixture[str]) -> None:
    role = make_role("LOGIN BYPASSRLS")
    code, checks = doctor(capsys, good.dsn_for(role))
    assert code == 1
    assert failing(checks) == {f"role {role}": "has BYPASSRLS: row level security does not apply to it"}


def test_role_that_can_become_a_bypassing_role(good: HessraDatabase, admin: psycopg.Connection, make_role,
                                               app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    bypass = make_role("NOLOGIN BYPASSRLS")
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(bypass), sql.Identifier(app_role)))
    admin.execute(sql.SQL("GRANT hessra_admin TO {}").format(sql.Identifier(app_role)))
    try:
        code, checks = doctor(capsys, good.dsn_for(app_role))
    finally:
        admin.execute(sql.SQL("REVOKE hessra_admin FROM {}").format(sql.Identifier(app_role)))
    assert code == 1
    assert failing(checks) == {f"role {app_role}": (
        f"can SET ROLE to {bypass}, which bypass row level security; "
        "administers this database's keys (hessra_admin, or grant_admin()): it can register its "
        "own key and mint any token")}
    assert checks["keys"][0] == "ok"  # hessra_admin may read the keys table


# -- keys ------------------------------------------------------------------

def test_no_active_key(hessra_db: HessraDatabase, admin: psycopg.Connection, app_role: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    # Without read access the doctor presents a probe token: 'no active key' is an error.
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert code == 1
    assert failing(checks) == {"keys": "no active key: every presented token raises 'no active key'"}

    # With the keys table readable: a retired key and a future one are not active.
    retired = admin.execute("SELECT hessra_authz.add_key(%s, 7, now() - interval '2 days')",
                            (str(generate_keypair().public_key),)).fetchone()[0]
    admin.execute("SELECT hessra_authz.retire_key(%s, now() - interval '1 day')", (retired,))
    admin.execute("SELECT hessra_authz.add_key(%s, 8, timestamptz '2999-01-01 00:00+00')",
                  (str(generate_keypair().public_key),))
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role), "--admin-dsn", hessra_db.dsn)
    assert code == 1
    assert failing(checks) == {"keys": "no active key: every presented token raises 'no active key'; "
                                       "not yet active: kid 8 from 2999-01-01 00:00 UTC"}


def test_key_expiring_in_two_days(hessra_db: HessraDatabase, admin: psycopg.Connection, root, app_role: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("SELECT hessra_authz.add_key(%s, 5, now() - interval '1 day', now() + interval '2 days')",
                  (str(generate_keypair().public_key),))
    ends = admin.execute("SELECT to_char((now() + interval '2 days') AT TIME ZONE 'UTC', "
                         "'YYYY-MM-DD HH24:MI \"UTC\"')").fetchone()[0]
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role), "--admin-dsn", hessra_db.dsn)
    assert code == 0
    status, message = checks["keys"]
    assert status == "warn"
    assert message in (f"2 active keys (kid 5, 100); kid 5 ends {ends} (in 2.0 days); kid 100 stays active",
                       f"2 active keys (kid 5, 100); kid 5 ends {ends} (in 1.9 days); kid 100 stays active")
    assert failing(checks) == {}

    # The only key ends in 2 days: still a warning, the hint says what happens then.
    admin.execute("SELECT hessra_authz.retire_key(100)")
    capsys.readouterr()
    assert main(["doctor", "--dsn", hessra_db.dsn_for(app_role), "--admin-dsn", hessra_db.dsn]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  warn  keys: 1 active key (kid 5); kid 5 ends ") for line in lines)
    assert ("        fix: register the next key with hessra_authz.add_key() (or extend this one with "
            "retire_key(kid, later)) before it ends: then every token is refused") in lines


# -- the server side -------------------------------------------------------

def test_verify_functions_not_executable(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("REVOKE EXECUTE ON FUNCTION hessra_authz.verify_token(text, text, text, text, text, text) "
                  "FROM PUBLIC")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks)["server Python"] == ("hessra_authz.verify_token fails: permission denied for function "
                                                "verify_token")


def test_extension_not_created(hessra_postgres, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, hessra_postgres.dsn("postgres"))
    assert code == 1
    assert checks["extension"] == ("fail", "hessra_authz is not created in this database")
    assert checks["keys"] == ("skip", "not checked: the extension is not created")
    assert checks["plpython3u"][0] in ("ok", "fail")  # plpython3u may or may not be created in 'postgres'


def test_version_mismatch_is_a_warning(good: HessraDatabase, app_role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hessra_pg, "__version__", "99.0.0")
    with connect(good.dsn) as conn:
        installed = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'").fetchone()[0]
        report = run_checks(conn)
    checks = {check.name: check for check in report.checks}
    extension = checks["extension"]
    assert (extension.status, extension.message) == ("warn", f"hessra_authz {installed} in this database, but "
                                                              "this hessra_pg is 99.0.0")
    assert extension.hint.startswith("run `hessra-pg install` (hessra_pg 99.0.0) on the database host")
    assert checks["server Python"].status == "warn"
    assert checks["server Python"].message.endswith("; this hessra_pg is 99.0.0")


def test_an_extension_older_than_the_security_release_fails(good: HessraDatabase, admin: psycopg.Connection,
                                                            app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Policies that use 0.4.0's functions hold the downgrade back: drop them first.
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):
        admin.execute("ALTER EXTENSION hessra_authz UPDATE TO '0.2.0'")
    designation = [spec for spec in SPECS if spec.mode == "designation"]
    admin.execute(drop_sql(designation))
    admin.execute("ALTER EXTENSION hessra_authz UPDATE TO '0.2.0'")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks)["extension"].startswith("hessra_authz 0.2.0 in this database has known holes fixed in 0.3.0")
    admin.execute("ALTER EXTENSION hessra_authz UPDATE")
    admin.execute(generate_sql(designation))
    assert doctor(capsys, good.dsn_for(app_role))[0] == 0


def test_role_given_key_administration_in_this_database(good: HessraDatabase, admin: psycopg.Connection,
                                                       app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("SELECT hessra_authz.grant_admin(%s)", (app_role,))
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 1
    assert failing(checks)[f"role {app_role}"].startswith("administers this database's keys")
    admin.execute("SELECT hessra_authz.revoke_admin(%s)", (app_role,))
    assert doctor(capsys, good.dsn_for(app_role))[0] == 0


def test_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["doctor", "--dsn", "host=/nonexistent dbname=x"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("hessra-pg: error: cannot connect to the database: ")
    assert main(["doctor", "--dsn", "this is not a dsn"]) == 2
    assert capsys.readouterr().err.startswith("hessra-pg: error: invalid DSN: ")


# -- the expression check on its own ---------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ("( SELECT hessra_authz.authorized('orders'::text, 'read'::text) AS authorized)", []),
    ("hessra_authz.authorized('orders'::text, 'read'::text)", ["hessra_authz.authorized()"]),
    ("(('items/'::text || id) = ANY (( SELECT hessra_authz.authorized_resources('read'::text) "
     "AS authorized_resources)::text[]))", []),
    ("( SELECT hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(), "
     "('orders/'::text || orders.id), 'read'::text) AS verify_token)",
     ["hessra_authz.verify_token() (its subquery refers to the row)"]),
    # current_token()/current_subject() are cheap GUC readers, fine per row
    ("(customer = hessra_authz.current_subject())", []),
    # names inside literals and quoted identifiers are not calls or columns
    ("((note = 'hessra_authz.authorized(x) orders.id'::text) AND ( SELECT hessra_authz.verify_bearer("
     "hessra_authz.current_token()) AS verify_bearer))", []),
    ("( SELECT hessra_authz.authorized(E'it''s \\\\'::text, \"orders.x\".y) AS authorized)", []),
    # nested: the inner uncorrelated subquery makes it once per statement
    ("(NOT (EXISTS ( SELECT 1 FROM unnest(( SELECT hessra_authz.current_identity_revoked_below() AS x)) r(id) "
     "WHERE (orders.owner = r.id))))", []),
    ("(EXISTS ( SELECT 1 FROM hessra_authz.keys k WHERE (hessra_authz.authorized('o'::text, 'r'::text) "
     "AND (k.kid = orders.id))))", ["hessra_authz.authorized() (its subquery refers to the row)"]),
    ("( SELECT hessra_authz.authorized(\"Order Items\".name, 'r'::text) AS authorized)", []),
])
def test_per_row_calls(expression: str, expected: list[str]) -> None:
    assert per_row_calls(expression, "orders") == expected


def test_per_row_calls_with_a_quoted_table_name() -> None:
    expression = "( SELECT hessra_authz.authorized(\"Order Items\".name, 'r'::text) AS authorized)"
    assert per_row_calls(expression, '"Order Items"') == ["hessra_authz.authorized() (its subquery refers to the row)"]


_DEFAULT_LOG = {"log_statement": "none", "log_min_duration_statement": "-1", "log_min_duration_sample": "-1",
                "log_statement_sample_rate": "1", "log_transaction_sample_rate": "0",
                "log_parameter_max_length": "-1", "log_parameter_max_length_on_error": "0"}


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, []),
    ({"log_statement": "mod"}, []),  # SELECT set_config(...) is not a modification
    ({"log_statement": "ddl", "log_min_duration_sample": "100", "log_statement_sample_rate": "0"}, []),
    ({"log_statement": "all", "log_parameter_max_length": "0"}, []),  # the text shows only $1
    ({"log_statement": "all"}, [("fail", "log_parameter_max_length")]),
    ({"log_min_duration_sample": "0", "log_statement_sample_rate": "0.1"}, [("fail", "log_parameter_max_length")]),
    ({"log_min_duration_sample": "500"}, [("warn", "log_parameter_max_length")]),
    ({"log_min_duration_statement": "1000", "log_parameter_max_length_on_error": "100"},
     [("warn", "log_parameter_max_length"), ("warn", "log_parameter_max_length_on_error")]),
    ({"log_transaction_sample_rate": "0.5", "log_parameter_max_length": "0",
      "log_parameter_max_length_on_error": "-1"}, [("warn", "log_parameter_max_length_on_error")]),
])
def test_log_risks(changes: dict[str, str], expected: list[tuple[str, str]]) -> None:
    risks = log_risks({**_DEFAULT_LOG, **changes})
    assert [(risk.status, risk.setting) for risk in risks] == expected


# -- the key horizon and the authority's key (issue 14) ------------------------------

def _utc_minute(admin: psycopg.Connection, expression: str) -> str:
    return admin.execute(f"SELECT to_char(({expression}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"')"
                         ).fetchone()[0]


def test_key_horizon(hessra_db: HessraDatabase, admin: psycopg.Connection, app_role: str,
                     capsys: pytest.CaptureFixture[str]) -> None:
    """The only key ends in 10 days: fine for 7 days, a warning for 14;
    a successor with a gap, and one without."""
    admin.execute("SELECT hessra_authz.add_key(%s, 5, now() - interval '1 day', now() + interval '10 days')",
                  (str(generate_keypair().public_key),))
    dsns = (hessra_db.dsn_for(app_role), "--admin-dsn", hessra_db.dsn)
    code, checks = doctor(capsys, *dsns)
    assert (code, checks["keys"]) == (0, ("ok", "1 active key (kid 5); none ends within 7 days"))
    code, checks = doctor(capsys, *dsns, "--key-horizon", "14")
    ends = _utc_minute(admin, "(SELECT not_after FROM hessra_authz.keys WHERE kid = 5)")  # (not now(): a minute may turn)
    assert code == 0 and checks["keys"][0] == "warn"
    assert checks["keys"][1] in (f"1 active key (kid 5); kid 5 ends {ends} (in {days} days); then no key is active"
                                 for days in ("10.0", "9.9"))

    # A successor from day 12: no key between day 10 and day 12.
    admin.execute("SELECT hessra_authz.add_key(%s, 6, now() + interval '12 days')", (str(generate_keypair().public_key),))
    starts = _utc_minute(admin, "(SELECT not_before FROM hessra_authz.keys WHERE kid = 6)")
    code, checks = doctor(capsys, *dsns, "--key-horizon", "14")
    assert code == 0 and checks["keys"][0] == "warn"
    assert checks["keys"][1].startswith(f"1 active key (kid 5); not yet active: kid 6 from {starts}; kid 5 ends {ends}")
    assert checks["keys"][1].endswith(f"; then no key is active until {starts}")

    # A successor from day 9, itself ending on day 11: the gap starts on day 11.
    admin.execute("SELECT hessra_authz.add_key(%s, 7, now() + interval '9 days', now() + interval '11 days')",
                  (str(generate_keypair().public_key),))
    code, checks = doctor(capsys, *dsns, "--key-horizon", "14")
    gap = _utc_minute(admin, "(SELECT not_after FROM hessra_authz.keys WHERE kid = 7)")
    assert checks["keys"][1].endswith(f"; no key is active from {gap} (in 11.0 days) until {starts}")

    # A successor from day 9 that stays: no gap; the rotation is still reported.
    admin.execute("DELETE FROM hessra_authz.keys WHERE kid IN (6, 7)")
    admin.execute("SELECT hessra_authz.add_key(%s, 8, now() + interval '9 days')", (str(generate_keypair().public_key),))
    code, checks = doctor(capsys, *dsns, "--key-horizon", "14")
    assert code == 0 and checks["keys"][0] == "warn"
    assert checks["keys"][1].endswith("; then kid 8, with no gap within 14 days")
    capsys.readouterr()
    assert main(["doctor", "--dsn", hessra_db.dsn_for(app_role), "--admin-dsn", hessra_db.dsn,
                 "--key-horizon", "14"]) == 0
    assert ("        fix: fine if the ending key is being rotated out: tokens it signed stop verifying when it ends"
            in capsys.readouterr().out.splitlines())

    capsys.readouterr()
    assert main(["doctor", "--dsn", hessra_db.dsn_for(app_role), "--key-horizon", "0"]) == 2
    assert "days must be between 1 and 3650" in capsys.readouterr().err


@pytest.fixture(scope="module")
def authority_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from hessra_pg.dev.certs import make_ca

    directory = tmp_path_factory.mktemp("doctor-pki")
    ca = make_ca(directory / "ca")
    return {"ca": ca, "other": make_ca(directory / "other", name="other-ca"),
            "server": ca.issue("authority", dns=["localhost"], ips=["127.0.0.1"], server=True)}


@pytest.fixture
def stub_authority(authority_pki: dict[str, Any]) -> Iterator[Any]:
    from tests.integration.test_keys_sync import StubAuthority

    server = StubAuthority(authority_pki["server"])
    yield server
    server.close()


def test_authority_key_compared(good: HessraDatabase, admin: psycopg.Connection, root, app_role: str,
                                stub_authority: Any, authority_pki: dict[str, Any],
                                capsys: pytest.CaptureFixture[str]) -> None:
    where = f"127.0.0.1:{stub_authority.port}"
    args = (good.dsn_for(app_role), "--admin-dsn", good.dsn, "--authority", where,
            "--ca", str(authority_pki["ca"].cert))

    # The authority signs with the database's key (kid 100): ok.
    stub_authority.public_key = root.public_key
    code, checks = doctor(capsys, *args)
    assert code == 0
    assert checks["authority"] == ("ok", f"the authority at {where} signs with kid 100, the newest active key")

    # The authority has rotated: FAIL, every token it issues is refused; keys sync is the fix.
    stub_authority.rotate()
    code, checks = doctor(capsys, *args)
    assert code == 1
    assert failing(checks) == {"authority": f"the authority at {where} signs with a key this database doesn't "
                                            "have: every token it issues now is refused (the newest active key "
                                            "is kid 100)"}
    capsys.readouterr()
    assert main(["doctor", "--dsn", *args]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"        fix: hessra-pg keys sync --authority {where} --ca ... --dsn <a key administrator's DSN> " \
           "(registers it, and ends the previous key after a grace)" in out

    # After keys sync: ok again; the old key ends within the horizon (a warning, while both are active).
    assert main(["keys", "sync", "--authority", where, "--ca", str(authority_pki["ca"].cert), "--dsn", good.dsn]) == 0
    code, checks = doctor(capsys, *args)
    assert code == 0
    assert checks["authority"] == ("ok", f"the authority at {where} signs with kid 101, the newest active key")
    assert checks["keys"][0] == "warn" and checks["keys"][1].endswith("; kid 101 stays active")

    # A newer key registered by hand: a warning.
    admin.execute("SELECT hessra_authz.add_key(%s, 102)", (str(generate_keypair().public_key),))
    code, checks = doctor(capsys, *args)
    assert code == 0
    assert checks["authority"] == ("warn", f"the authority at {where} signs with kid 101, but kid 102 is newer")

    # The authority's key retired, or not active yet: FAIL.
    admin.execute("SELECT hessra_authz.retire_key(101, now() - interval '1 minute')")
    code, checks = doctor(capsys, *args)
    retired = _utc_minute(admin, "(SELECT not_after FROM hessra_authz.keys WHERE kid = 101)")
    assert code == 1
    assert failing(checks)["authority"] == (f"the authority at {where} signs with kid 101, retired since {retired}: "
                                            "every token it issues now is refused")
    stub_authority.rotate()
    admin.execute("SELECT hessra_authz.add_key(%s, 103, now() + interval '1 day')",
                  (str(stub_authority.public_key),))
    code, checks = doctor(capsys, *args)
    assert failing(checks)["authority"].startswith(f"the authority at {where} signs with kid 103, not active "
                                                   "before ")

    # The authority names another kid than the database's: FAIL.
    stub_authority.public_key = root.public_key
    stub_authority.extra = {"root_key_id": 7}
    code, checks = doctor(capsys, *args)
    assert failing(checks)["authority"] == (f"the authority at {where} names its key kid 7, but this database "
                                            "has it as kid 100: tokens carrying root_key_id 7 are refused")


def test_authority_unreachable_or_keys_unreadable(good: HessraDatabase, root, app_role: str,
                                                   stub_authority: Any, authority_pki: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    where = f"127.0.0.1:{stub_authority.port}"
    stub_authority.public_key = root.public_key
    # The authority's certificate is not trusted: a warning, nothing compared.
    code, checks = doctor(capsys, good.dsn_for(app_role), "--admin-dsn", good.dsn, "--authority", where,
                          "--ca", str(authority_pki["other"].cert))
    assert code == 0
    status, message = checks["authority"]
    assert status == "warn"
    assert message.startswith(f"not compared: TLS: the certificate of the authority at {where} is not trusted: ")
    # An HTTP error: the same.
    stub_authority.status, stub_authority.body = 500, b"{}"
    code, checks = doctor(capsys, good.dsn_for(app_role), "--admin-dsn", good.dsn, "--authority", where,
                          "--ca", str(authority_pki["ca"].cert))
    assert checks["authority"] == ("warn", f"not compared: the authority at {where} answered GET /public_key with "
                                           "HTTP 500 Internal Server Error")
    # The role can't read the keys table and no --admin-dsn: a warning.
    stub_authority.status, stub_authority.body = 200, None
    code, checks = doctor(capsys, good.dsn_for(app_role), "--authority", where, "--ca", str(authority_pki["ca"].cert))
    assert code == 0
    assert checks["authority"] == ("warn", "not compared: this role can't read hessra_authz.keys (pass --admin-dsn "
                                           "with a hessra_admin member's DSN)")
    # Without --authority there is no authority check; --ca alone is a usage error.
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert "authority" not in checks
    capsys.readouterr()
    assert main(["doctor", "--dsn", good.dsn_for(app_role), "--ca", str(authority_pki["ca"].cert)]) == 2
    assert "go with --authority" in capsys.readouterr().err
    assert main(["doctor", "--dsn", good.dsn_for(app_role), "--authority", where]) == 2
    assert "--authority needs --ca FILE" in capsys.readouterr().err
