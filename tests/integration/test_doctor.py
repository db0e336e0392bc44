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
from hessra_pg.doctor import connect, per_row_calls, run_checks
from hessra_pg.keys import generate_keypair
from hessra_pg.policies import PolicySpec, generate_sql
from hessra_pg.testing import HessraDatabase
from tests import vectors

SPECS = [
    PolicySpec("orders", mode="table", resource="orders"),
    PolicySpec("items", schema="shop", mode="row", expression="'items/' || id"),
    PolicySpec("documents", mode="identity", owner_column="owner"),
    PolicySpec("payments", mode="service_chain", resource="payments", chain="order_service",
               component="order_service"),
]
TABLES = ("public.orders", "shop.items", "public.documents", "public.payments")


@pytest.fixture
def good(hessra_db: HessraDatabase, admin: psycopg.Connection, root, app_role: str) -> HessraDatabase:
    """Policies from hessra_pg.policies (per statement, ENABLE + FORCE),
    tables owned by the superuser, an active key, the app role granted
    table privileges only."""
    admin.execute("CREATE SCHEMA shop")
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY, customer text);
        CREATE TABLE shop.items (id int PRIMARY KEY, name text);
        CREATE TABLE public.documents (id int PRIMARY KEY, owner text NOT NULL);
        CREATE TABLE public.payments (id int PRIMARY KEY, amount int);
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
        f"role {app_role}": "ok",
    }
    assert checks["extension"][1] == f"hessra_authz {hessra_pg.__version__} (same as hessra_pg {hessra_pg.__version__})"
    assert checks["keys"][1] == "1 active key (kid 100); none ends within 7 days"
    assert checks["policies on public.documents"][1] == "4 token policies, every hessra_authz call once per statement"
    assert checks[f"role {app_role}"][1] == ("not superuser, no BYPASSRLS, owns none of the 4 tables with token "
                                             "policies, not in hessra_admin")


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


def test_permissive_policy_without_a_token_check(good: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("CREATE POLICY everyone ON public.orders FOR SELECT USING (true)")
    admin.execute("CREATE POLICY narrowing ON public.orders AS RESTRICTIVE FOR SELECT USING (id > 0)")
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 0
    assert checks["policy everyone on public.orders"] == (
        "warn", "permissive FOR SELECT policy without a token check: what it allows needs no token "
                "(permissive policies are OR-ed with the token policies)")
    assert "policy narrowing on public.orders" not in checks


def test_no_token_policies(hessra_db: HessraDatabase, root, app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = doctor(capsys, hessra_db.dsn_for(app_role))
    assert code == 0
    assert checks["tables"] == ("warn", "no table has a policy that calls hessra_authz: nothing is enforced with "
                                        "tokens yet")
    assert checks[f"role {app_role}"] == ("ok", "not superuser, no BYPASSRLS, owns none of the 0 tables with token "
                                                "policies, not in hessra_admin")


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
        "is a member of hessra_admin: it can register its own key and mint any token")}
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
        report = run_checks(conn)
    checks = {check.name: check for check in report.checks}
    extension = checks["extension"]
    assert (extension.status, extension.message) == ("warn", "hessra_authz 0.2.0 in this database, but this "
                                                              "hessra_pg is 99.0.0")
    assert extension.hint.startswith("run `hessra-pg install` (hessra_pg 99.0.0) on the database host")
    assert checks["server Python"].status == "warn"
    assert checks["server Python"].message.endswith("; this hessra_pg is 99.0.0")


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
