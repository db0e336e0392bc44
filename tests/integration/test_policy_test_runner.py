"""hessra-pg policy test: a matrix of cases against a multi-tenant schema
under generated hessra policies, in a real database: passing and failing
cases (with their diffs), roles that don't exist, bad files, and nothing left
behind (keys table and data unchanged), through the API and the CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from xml.etree import ElementTree

import psycopg
import pytest
from psycopg import sql

from hessra_pg.dev.testing import HessraDatabase
from hessra_pg.errors import PolicyTestRunError
from hessra_pg.policytest import parse_cases, run_cases
from tests.integration.policytest_schema import create_shop, data_snapshot, keys_snapshot

PASSING = """
[run]
role = "{role}"
setup = ["INSERT INTO shop.orders VALUES (10, 'globex', 'set up by the run')"]

[tokens.acme_reader]
kind = "capability"
resource = "orders"
operation = "read"
designations = {{ tenant_id = "acme" }}

[tokens.acme_writer]
kind = "capability"
resource = "orders"
operation = "write"
designations = {{ tenant_id = "acme" }}

[tokens.any_tenant_reader]
kind = "capability"
resource = "orders"
operation = "read"

[[cases]]
name = "acme's reader sees exactly acme's orders"
token = "acme_reader"
sql = "SELECT id, tenant_id, item FROM shop.orders"
rows = [[2, "acme", "rocket"], [1, "acme", "anvil"]]

[[cases]]
name = "ordered rows"
token = "acme_reader"
sql = "SELECT id FROM shop.orders ORDER BY id DESC"
rows = [[2], [1]]
ordered = true

[[cases]]
name = "globex's reader sees globex's orders, with the setup row"
token = {{ kind = "capability", resource = "orders", operation = "read", designations = {{ tenant_id = "globex" }} }}
sql = "SELECT id FROM shop.orders"
rows = [[3], [10]]

[[cases]]
name = "a token without a tenant designation sees every tenant"
token = "any_tenant_reader"
sql = "SELECT id FROM shop.orders"
count = 5

[[cases]]
name = "no token, no rows"
token = "none"
sql = "SELECT * FROM shop.orders"
count = 0

[[cases]]
name = "garbage, no rows"
token = "garbage"
sql = "SELECT * FROM shop.orders UNION ALL SELECT id, 'x', body FROM shop.announcements"
count = 0

[[cases]]
name = "an expired token sees nothing"
token = {{ kind = "capability", resource = "orders", operation = "read", expired = true }}
sql = "SELECT * FROM shop.orders"
count = 0

[[cases]]
name = "a token signed by an unregistered key sees nothing"
token = {{ kind = "capability", resource = "orders", operation = "read", key = "unregistered" }}
sql = "SELECT * FROM shop.orders"
count = 0

[[cases]]
name = "acme's writer inserts an acme order"
token = "acme_writer"
sql = "INSERT INTO shop.orders VALUES (20, 'acme', 'glue')"
count = 1

[[cases]]
name = "acme's writer can't insert globex's order"
token = "acme_writer"
sql = "INSERT INTO shop.orders VALUES (21, 'globex', 'glue')"
allowed = false
sqlstate = "42501"

[[cases]]
name = "a reader can't insert"
token = "acme_reader"
sql = "INSERT INTO shop.orders VALUES (22, 'acme', 'glue')"
allowed = false

[[cases]]
name = "acme's writer updates no globex row"
token = "acme_writer"
sql = "UPDATE shop.orders SET item = 'stolen' WHERE tenant_id = 'globex'"
count = 0

[[cases]]
name = "several statements, the last one judged: a write-only token can't DELETE what it can't read"
token = "acme_writer"
sql = ["INSERT INTO shop.orders VALUES (23, 'acme', 'nails')", "DELETE FROM shop.orders WHERE id = 23 RETURNING item"]
rows = []

[[cases]]
name = "a row-resource authorization token sees its invoice"
token = {{ subject = "alice", resource = "invoices/1", operation = "read" }}
sql = "SELECT id, amount FROM shop.invoices"
rows = [[1, 10.5]]

[[cases]]
name = "another subject can't use alice's token"
token = {{ subject = "alice", resource = "invoices/1", operation = "read" }}
subject = "mallory"
sql = "SELECT id FROM shop.invoices"
count = 0

[[cases]]
name = "a table token sees every announcement"
token = {{ subject = "alice", resource = "announcements", operation = "read" }}
sql = "SELECT body FROM shop.announcements"
rows = [["hello"], ["maintenance on sunday"]]

[[cases]]
name = "an identity token sees its owner's documents"
token = {{ kind = "identity", subject = "urn:hessra:alice" }}
sql = "SELECT body FROM shop.documents"
rows = [["alice 1"], ["alice 2"]]

[[cases]]
name = "two statements in one string are refused by the server"
token = "acme_writer"
sql = "SELECT 1; COMMIT"
sqlstate = "42601"
"""

FAILING = """
[run]
role = "{role}"

[tokens.acme_reader]
kind = "capability"
resource = "orders"
operation = "read"
designations = {{ tenant_id = "acme" }}

[[cases]]
name = "passes"
token = "acme_reader"
sql = "SELECT id FROM shop.orders"
rows = [[1], [2]]

[[cases]]
name = "wrong rows"
token = "acme_reader"
sql = "SELECT id, tenant_id FROM shop.orders"
rows = [[1, "acme"], [3, "globex"]]

[[cases]]
name = "wrong count"
token = "acme_reader"
sql = "SELECT id FROM shop.orders"
count = 3

[[cases]]
name = "expected denied but allowed"
token = {{ kind = "capability", resource = "orders", operation = "write", designations = {{ tenant_id = "acme" }} }}
sql = "INSERT INTO shop.orders VALUES (30, 'acme', 'x')"
allowed = false

[[cases]]
name = "expected allowed but denied"
token = "acme_reader"
sql = "INSERT INTO shop.orders VALUES (31, 'acme', 'x')"
count = 1

[[cases]]
name = "wrong order"
token = "acme_reader"
sql = "SELECT id FROM shop.orders ORDER BY id"
rows = [[2], [1]]
ordered = true

[[cases]]
name = "no such role"
role = "ghost_{ghost}"
token = "acme_reader"
sql = "SELECT 1"
allowed = false

[[cases]]
name = "echoes its token"
token = "acme_reader"
sql = "SELECT pg_catalog.current_setting('hessra.token')::int"
count = 1
"""


@pytest.fixture
def shop(admin: psycopg.Connection, app_role: str) -> str:
    create_shop(admin, app_role)
    return app_role


def _run(db: HessraDatabase, text: str):
    with db.connect() as conn:
        return run_cases(conn, parse_cases(text, source="cases.toml"))


def test_passing_matrix_leaves_nothing_behind(hessra_db, admin, shop):
    keys, data = keys_snapshot(admin), data_snapshot(admin)
    report = _run(hessra_db, PASSING.format(role=shop))
    failed = [(r.name, r.status, r.details) for r in report.results if not r.passed]
    assert failed == []
    assert len(report.results) == 18 and report.ok
    assert report.summary() == "18 cases: 18 passed, 0 failed"
    assert keys_snapshot(admin) == keys and data_snapshot(admin) == data


def test_failing_cases_say_what_differs(hessra_db, admin, shop):
    keys, data = keys_snapshot(admin), data_snapshot(admin)
    report = _run(hessra_db, FAILING.format(role=shop, ghost=uuid.uuid4().hex[:8]))
    results = {r.name: r for r in report.results}
    assert not report.ok
    assert results["passes"].status == "PASS"
    assert results["wrong rows"].status == "FAIL"
    assert results["wrong rows"].details == ('missing:    [3, "globex"]', 'unexpected: [2, "acme"]')
    assert results["wrong count"].details == ("expected 3 rows, got 2",)
    assert results["expected denied but allowed"].details == ("expected an error (denied), but the statements ran",)
    denied = results["expected allowed but denied"].details
    assert len(denied) == 1 and denied[0].startswith("expected the statements to run, got ERROR 42501: "
                                                     "new row violates row-level security policy")
    assert results["wrong order"].details == ("same rows in another order: row 1 is [1], expected [2]",)
    ghost = results["no such role"]
    assert ghost.status == "ERROR" and ghost.details[0].startswith("role 'ghost_") and "does not exist" in ghost.details[0]
    echo = results["echoes its token"]
    assert echo.status == "FAIL" and "<token>" in echo.details[0] and "22P02" in echo.details[0]
    assert report.summary() == "8 cases: 1 passed, 6 failed, 1 could not run"
    assert keys_snapshot(admin) == keys and data_snapshot(admin) == data


def test_a_role_the_runner_cannot_become_is_an_error_not_a_denial(hessra_db, admin, shop):
    other = f"other_{uuid.uuid4().hex[:8]}"
    runner = f"runner_{uuid.uuid4().hex[:8]}"
    for name in (other, runner):
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    admin.execute(sql.SQL("GRANT hessra_admin TO {}").format(sql.Identifier(runner)))
    try:
        text = f"""
[[cases]]
name = "denied?"
role = "{other}"
token = "none"
sql = "SELECT 1"
allowed = false
"""
        with hessra_db.connect(runner) as conn:
            report = run_cases(conn, parse_cases(text))
        assert [(r.status, r.details) for r in report.results] == [
            ("ERROR", (f"the connecting role can't SET ROLE to {other!r} (not a member of it)",))]
    finally:
        for name in (other, runner):
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_role_that_may_not_add_keys_cannot_run(hessra_db, admin, shop):
    keys = keys_snapshot(admin)
    text = PASSING.format(role=shop)
    with hessra_db.connect(shop) as conn:
        with pytest.raises(PolicyTestRunError, match="can't register the run's test key") as caught:
            run_cases(conn, parse_cases(text))
    assert "hessra_admin" in (caught.value.hint or "")
    assert keys_snapshot(admin) == keys


def test_a_failing_setup_stops_the_run(hessra_db, admin, shop):
    keys = keys_snapshot(admin)
    text = PASSING.format(role=shop).replace("'set up by the run')", "'dup'), (10, 'acme', 'dup')")
    with pytest.raises(PolicyTestRunError, match=r"\[run\] setup\[0\] failed: duplicate key"):
        _run(hessra_db, text)
    assert keys_snapshot(admin) == keys


# -- the CLI as a subprocess --------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hessra_pg", "policy", "test", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_output_and_junit(hessra_db, admin, shop, tmp_path: Path):
    keys, data = keys_snapshot(admin), data_snapshot(admin)
    good = tmp_path / "good.toml"
    good.write_text(PASSING.format(role=shop))
    done = _cli(str(good), "--dsn", hessra_db.dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "PASS  acme's reader sees exactly acme's orders"
    assert lines[-1] == "18 cases: 18 passed, 0 failed"

    bad = tmp_path / "bad.toml"
    bad.write_text(FAILING.format(role=shop, ghost="x"))
    junit = tmp_path / "junit.xml"
    done = _cli(str(bad), "--dsn", hessra_db.dsn, "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "PASS  passes\n" in out
    assert 'FAIL  wrong rows\n      missing:    [3, "globex"]\n      unexpected: [2, "acme"]\n' in out
    assert "ERROR no such role\n      role 'ghost_x' does not exist\n" in out
    assert out.splitlines()[-1] == "8 cases: 1 passed, 6 failed, 1 could not run"
    suite = ElementTree.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("8", "6", "1")
    wrong = suite.find("testcase[@name='wrong rows']/failure")
    assert wrong is not None and 'unexpected: [2, "acme"]' in (wrong.text or "")

    quiet = _cli(str(bad), "--dsn", hessra_db.dsn, "--quiet")
    assert quiet.returncode == 1 and "PASS" not in quiet.stdout and "FAIL  wrong rows" in quiet.stdout
    assert keys_snapshot(admin) == keys and data_snapshot(admin) == data


def test_cli_unusable_file_or_database_exits_2(hessra_db, admin, shop, tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text('[[cases]]\nname = "x"\ntoken = "none"\nsql = "SELECT 1"\n')
    done = _cli(str(broken), "--dsn", hessra_db.dsn)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"hessra-pg: error: {broken}: case 'x' role: required (or [run] role): "
                           "the role the statements run as\n"
                           f"{broken}: case 'x': expects nothing: give rows, count, allowed or sqlstate\n"
                           ).replace(f"{broken}: case 'x' role", f"2 problems:\n{broken}: case 'x' role")

    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[[cases]\n")
    done = _cli(str(syntax), "--dsn", hessra_db.dsn)
    assert done.returncode == 2 and done.stderr.startswith(f"hessra-pg: error: {syntax}: not valid TOML: ")

    good = tmp_path / "good.toml"
    good.write_text(PASSING.format(role=shop))
    done = _cli(str(good), "--dsn", "host=/nonexistent-socket-dir dbname=x connect_timeout=2")
    assert done.returncode == 2 and done.stderr.startswith("hessra-pg: error: can't connect: ")
    assert "Traceback" not in done.stderr

    done = _cli(str(good), "--dsn", hessra_db.dsn_for(shop))
    assert done.returncode == 2
    assert done.stderr.startswith("hessra-pg: error: can't register the run's test key with hessra_authz.add_key: "
                                  "permission denied for function add_key\nhint: run as a role that is a member "
                                  "of hessra_admin")
    assert "Traceback" not in done.stderr


def _doc_block(language: str) -> str:
    text = (Path(__file__).parents[2] / "docs" / "policy-tests.md").read_text()
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_docs_example_passes(hessra_db, admin, app_role):
    """docs/policy-tests.md: its schema, its three generated policies, its CASES.toml."""
    from hessra_pg.rls.policies import PolicySpec, generate_sql

    admin.execute(_doc_block("sql").replace(" TO app;", f" TO {app_role};").encode())
    admin.execute(generate_sql([
        PolicySpec(table="orders", schema="shop", mode="designation", designations={"tenant_id": "tenant_id"}),
        PolicySpec(table="invoices", schema="shop", mode="row", expression="'invoices/' || id"),
        PolicySpec(table="documents", schema="shop", mode="identity", owner_column="owner"),
    ]).encode())
    text = _doc_block("toml").replace('"app"', f'"{app_role}"')
    report = _run(hessra_db, text)
    assert [(r.status, r.name) for r in report.results if not r.passed] == []
    assert len(report.results) == 8
