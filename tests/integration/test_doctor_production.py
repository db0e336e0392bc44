"""`hessra-pg doctor --production`: disclosure probes run as the app role,
log settings that capture tokens (checked against the real server log), the
audit level, test helpers, and the checklist."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hessra_pg.admin import doctor_production
from hessra_pg.admin.doctor import FAIL, OK, WARN, connect, log_risks, run_checks
from hessra_pg.admin.doctor_logs import SET_CONFIG, SET_LOCAL, capture_risks
from hessra_pg.cli import main
from hessra_pg.dev.sqlhelpers import drop_test_helpers, install_test_helpers
from hessra_pg.dev.testing import HessraDatabase
from hessra_pg.tokens.mint import mint_authorization
from tests.integration.test_doctor import doctor, failing, good, statuses  # noqa: F401 (good is a fixture)

CHECKLIST = ["keys", "rotation horizon", "roles", "RLS forced", "policies per statement", "views", "disclosure",
             "audit level", "log settings", "test helpers absent"]


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The probe tokens doctor mints, recorded so no output may contain one."""
    seen: list[str] = []
    real = doctor_production._probes

    def recording() -> list[Any]:
        made = real()
        seen.extend(probe.token for probe in made)
        return made

    monkeypatch.setattr(doctor_production, "_probes", recording)
    return seen


@pytest.fixture
def audited(good: HessraDatabase, admin: psycopg.Connection) -> HessraDatabase:  # noqa: F811
    """The good database with audit level 'denied' (extension 0.5.0)."""
    if admin.execute("SELECT to_regclass('hessra_authz.audit_settings') IS NULL").fetchone()[0]:
        pytest.skip("this extension has no hessra_authz.audit_settings")
    admin.execute("SELECT hessra_authz.set_audit('denied')")
    return good


def production(capsys: pytest.CaptureFixture[str], db: HessraDatabase, role: str, *extra: str,
               admin_dsn: bool = True) -> tuple[int, dict[str, tuple[str, str]], dict[str, tuple[str, str]], str]:
    """`doctor --production --json`: (exit code, checks, checklist, raw output)."""
    capsys.readouterr()
    args = ["doctor", "--dsn", db.dsn_for(role), "--json", "--production", *extra]
    code = main(args + (["--admin-dsn", db.dsn] if admin_dsn else []))
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert report["ok"] is (code == 0)
    checks = {check["name"]: (check["status"], check["message"]) for check in report["checks"]}
    items = {item["name"]: (item["status"], item["message"]) for item in report["checklist"]}
    assert list(items) == CHECKLIST
    return code, checks, items, out


def no_token_in(text: str, tokens: list[str]) -> None:
    assert tokens, "the probes ran"
    for token in tokens:
        assert token[:24] not in text and token[-24:] not in text


# -- a database set up well ----------------------------------------------------

def test_production_ready_database(audited: HessraDatabase, app_role: str, probes: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, checks, items, out = production(capsys, audited, app_role)
    assert code == 0
    assert checks["disclosure"][0] == "ok", checks["disclosure"]
    assert checks["test helpers"] == ("ok", "schema hessra_test is not in this database")
    assert checks["audit"] == ("ok", f"database: denied; this role ({app_role}): denied")
    assert checks["role settings"][0] == "ok"
    assert checks["key administrators"][0] == "ok" and app_role not in checks["key administrators"][1]
    assert {name: status for name, (status, _) in items.items()} == dict.fromkeys(CHECKLIST, "ok")
    assert items["RLS forced"][1] == "enabled and forced on all 5 tables with token policies"
    assert items["rotation horizon"][1] == "no key ends within 7 days"
    no_token_in(out, probes)

    # The text report: the checklist at the end, the verdict last.
    capsys.readouterr()
    assert main(["doctor", "--dsn", audited.dsn_for(app_role), "--admin-dsn", audited.dsn, "--checklist"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("production checklist:")
    assert [line.split(":")[0].split(None, 1)[1] for line in lines[start + 1:-1]] == CHECKLIST
    assert lines[-1] == "safe: every check passed"


def test_without_production_the_report_is_unchanged(good: HessraDatabase, app_role: str,  # noqa: F811
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["doctor", "--dsn", good.dsn_for(app_role), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "checklist" not in report
    assert not {"disclosure", "audit", "test helpers", "role settings"} & {c["name"] for c in report["checks"]}


# -- disclosure ------------------------------------------------------------------

def test_an_app_role_that_administers_keys_learns_too_much(audited: HessraDatabase, admin: psycopg.Connection,
                                                           app_role: str, probes: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("SELECT hessra_authz.grant_admin(%s)", (app_role,))
    code, checks, items, out = production(capsys, audited, app_role)
    assert code == 1
    status, message = checks["disclosure"]
    assert status == "fail"
    assert "says unknown_key (which keys exist can be probed)" in message
    assert "shows its detail" in message
    assert "cache_stats() shows the configuration version" in message
    assert items["disclosure"][0] == "fail" and items["roles"][0] == "fail"
    assert app_role in checks["key administrators"][1]
    no_token_in(out, probes)  # even when the answers say more than they should


def test_a_role_that_reads_the_server_files(audited: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute(sql.SQL("GRANT pg_read_server_files TO {}").format(sql.Identifier(app_role)))
    try:
        code, checks, items, _ = production(capsys, audited, app_role)
    finally:
        admin.execute(sql.SQL("REVOKE pg_read_server_files FROM {}").format(sql.Identifier(app_role)))
    assert code == 1
    assert checks["disclosure"][0] == "fail"
    assert checks["disclosure"][1].startswith("this role can read the server's files (pg_read_server_files")
    assert items["disclosure"][0] == "fail"


def test_the_redacted_answers_are_what_the_check_expects(audited: HessraDatabase, app_role: str) -> None:
    """The check passes because the answers are redacted, not because it
    looks away: the same probes as the app role, judged directly."""
    probes = doctor_production._probes()
    with audited.connect(app_role, autocommit=True) as app:
        for probe in probes:
            explained = app.execute("SELECT hessra_authz.explain(%s, 'a', 'b', 'c')", (probe.token,)).fetchone()[0]
            assert explained["valid"] is False and explained["kid"] is None
            assert explained["reason"] in ("bad_token", "bad_signature")
        with pytest.raises(psycopg.Error) as raised:
            app.execute("SELECT hessra_authz.verify_service_chain(%s, 'a', 'b', 'c', 'no_such_chain')",
                        (probes[1].token,))
        assert not raised.value.diag.message_detail


# -- audit ------------------------------------------------------------------------

def test_audit_levels(audited: HessraDatabase, admin: psycopg.Connection, app_role: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("SELECT hessra_authz.set_audit('off')")
    code, checks, items, _ = production(capsys, audited, app_role)
    assert code == 0  # a warning: nothing is unsafe, but denials leave no trace
    assert checks["audit"] == ("warn", f"database: off; this role ({app_role}): off: this role's denied decisions "
                                       "leave no trace")
    assert items["audit level"][0] == "warn"

    admin.execute("SELECT hessra_authz.set_audit('all', %s)", (app_role,))
    code, checks, items, _ = production(capsys, audited, app_role)
    assert checks["audit"] == ("ok", f"database: off, {app_role}: all; this role ({app_role}): all")
    assert items["audit level"] == checks["audit"]

    # Without --admin-dsn the levels can't be read by the app role.
    code, checks, items, _ = production(capsys, audited, app_role, admin_dsn=False)
    assert checks["audit"][0] == "skip" and "--admin-dsn" in checks["audit"][1]
    assert items["audit level"][0] == "skip"


# -- test helpers -----------------------------------------------------------------

def test_test_helpers_fail_with_or_without_production(good: HessraDatabase, admin: psycopg.Connection,  # noqa: F811
                                                      app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    install_test_helpers(admin, test_database=True)
    try:
        code, checks = doctor(capsys, good.dsn_for(app_role))
        assert code == 1
        assert failing(checks) == {"test helpers": "test helpers installed in this database (schema hessra_test: a "
                                                   "signing key is stored in it)"}
        with connect(good.dsn_for(app_role)) as conn:
            report = run_checks(conn)
        check = next(c for c in report.checks if c.name == "test helpers")
        assert check.hint == doctor_production.TEST_HELPERS_FIX
        assert "--drop" in check.hint
        code, checks, items, _ = production(capsys, good, app_role)
        assert items["test helpers absent"][0] == "fail"
    finally:
        drop_test_helpers(admin)
    code, checks = doctor(capsys, good.dsn_for(app_role))
    assert code == 0 and "test helpers" not in checks


# -- log settings -------------------------------------------------------------------

@pytest.fixture
def server_log(hessra_postgres: object) -> Path:
    path = getattr(hessra_postgres, "log_path", None)
    if path is None:
        pytest.skip("the server's log file is not reachable (not a local cluster)")
    return Path(path)


def logged_after(path: Path, start: int, dsn: str) -> str:
    """The server log since `start`, up to a marker statement written now."""
    marker = f"hessra-doctor-marker-{uuid.uuid4().hex}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DO $$ BEGIN RAISE LOG '%', {}; END $$").format(sql.Literal(marker)))
    deadline = time.monotonic() + 10
    while True:
        with path.open("rb") as log:
            log.seek(start)
            chunk = log.read().decode(errors="replace")
        if marker in chunk or time.monotonic() > deadline:
            assert marker in chunk
            return chunk
        time.sleep(0.05)


def holds(logged: str, token: str) -> bool:
    """Whether the log holds the token: as text, or as the decimal bytes a
    plan tree dump prints a text constant with (wrapped mid-number onto
    indented continuation lines)."""
    as_bytes = " ".join(str(byte) for byte in token.encode()[:48])
    return token in logged or as_bytes in re.sub(r"\n\s+", "", logged)


def role_setting(admin: psycopg.Connection, role: str, database: str, setting: str, value: str | None) -> None:
    query = ("ALTER ROLE {} IN DATABASE {} RESET {}" if value is None
             else "ALTER ROLE {} IN DATABASE {} SET {} = " + value)
    admin.execute(sql.SQL(query).format(sql.Identifier(role), sql.Identifier(database), sql.Identifier(setting)))


def send_token(dsn: str, token: str, transport: str) -> None:
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            if transport == SET_LOCAL:
                conn.execute(sql.SQL("SET LOCAL hessra.token = {}").format(sql.Literal(token)))
            else:
                conn.execute("SELECT pg_catalog.set_config('hessra.token', %s, true)", (token,))
            conn.execute("SELECT count(*) FROM public.orders")


def server_log_check(db: HessraDatabase, role: str, transport: str | None = None) -> tuple[str, str, str | None]:
    with connect(db.dsn_for(role)) as conn:
        report = run_checks(conn, transport=transport)
    check = next(c for c in report.checks if c.name == "server log")
    return check.status, check.message, check.hint


def test_set_local_transport_puts_the_token_in_logged_text(good: HessraDatabase, admin: psycopg.Connection,  # noqa: F811
                                                           app_role: str, root: Any, server_log: Path) -> None:
    """log_parameter_max_length = 0 protects set_config(), not SET LOCAL:
    doctor says so for --transport set_local, and the log shows why."""
    token = mint_authorization(root, "alice", "orders", "read")
    dsn = good.dsn_for(app_role)
    role_setting(admin, app_role, good.name, "log_statement", "'all'")
    role_setting(admin, app_role, good.name, "log_parameter_max_length", "0")
    assert server_log_check(good, app_role)[0] == OK
    status, message, hint = server_log_check(good, app_role, SET_LOCAL)
    assert status == FAIL
    assert message == ("log_statement = 'all' logs every statement's text: with the SET LOCAL transport that text "
                       "holds the token (log_parameter_max_length doesn't apply to it)")
    assert hint == f"ALTER ROLE {app_role} IN DATABASE {good.name} SET log_statement = 'ddl' (as a superuser; new " \
                   "sessions pick it up)"
    start = server_log.stat().st_size
    send_token(dsn, token, SET_CONFIG)
    send_token(dsn, token, SET_LOCAL)
    logged = logged_after(server_log, start, good.dsn)
    assert logged.count(token) == 1 and "SET LOCAL hessra.token" in logged  # only the SET LOCAL

    # 'mod' never logs a SET: ok for both transports, and the log agrees.
    role_setting(admin, app_role, good.name, "log_statement", "'mod'")
    assert server_log_check(good, app_role, SET_LOCAL)[0] == OK
    start = server_log.stat().st_size
    send_token(dsn, token, SET_LOCAL)
    assert token not in logged_after(server_log, start, good.dsn)


def test_set_local_transport_names_the_roles_that_read_running_statements(
        good: HessraDatabase, admin: psycopg.Connection, app_role: str, root: Any) -> None:  # noqa: F811
    """pg_stat_activity shows a session's SET LOCAL hessra.token = '...' to
    members of pg_read_all_stats (pg_monitor): doctor names them when the
    transport is SET LOCAL, and not for set_config(), which binds the token."""
    monitor = f"monitor_{uuid.uuid4().hex[:6]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(monitor)))
    try:
        def readers(transport: str) -> Any:
            with connect(good.dsn_for(app_role)) as conn:
                report = run_checks(conn, transport=transport)
            return next((c for c in report.checks if c.name == "statement readers"), None)

        assert readers(SET_CONFIG) is None
        check = readers(SET_LOCAL)
        assert check is not None and check.status == WARN and monitor in check.message
        assert "database_stats()" in (check.hint or "")
        token = mint_authorization(root, "alice", "orders", "read")
        with psycopg.connect(good.dsn_for(app_role)) as app, \
                psycopg.connect(good.dsn_for(monitor), autocommit=True) as watcher:
            with app.transaction():
                app.execute(sql.SQL("SET LOCAL hessra.token = {}").format(sql.Literal(token)))
                assert watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE strpos(query, %s) > 0",
                                       (token,)).fetchone()[0] == 1  # why it warns
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(monitor)))


def test_debug_print_plan(good: HessraDatabase, admin: psycopg.Connection, app_role: str, root: Any,  # noqa: F811
                          server_log: Path) -> None:
    token = mint_authorization(root, "alice", "orders", "read")
    role_setting(admin, app_role, good.name, "debug_print_plan", "on")
    status, message, hint = server_log_check(good, app_role)
    assert status == FAIL
    assert message == ("debug_print_plan is on: it writes query trees to the server log, with the bound token as a "
                       "constant")
    assert hint is not None and "SET debug_print_plan = off" in hint
    start = server_log.stat().st_size
    send_token(good.dsn_for(app_role), token, SET_CONFIG)
    assert holds(logged_after(server_log, start, good.dsn), token)  # why it fails


def test_auto_explain_verbose(good: HessraDatabase, admin: psycopg.Connection, app_role: str, root: Any,  # noqa: F811
                              server_log: Path) -> None:
    token = mint_authorization(root, "alice", "orders", "read")
    role_setting(admin, app_role, good.name, "session_preload_libraries", "'auto_explain'")
    role_setting(admin, app_role, good.name, "auto_explain.log_min_duration", "0")
    assert server_log_check(good, app_role)[0] == OK  # the plan alone shows $1
    start = server_log.stat().st_size
    send_token(good.dsn_for(app_role), token, SET_CONFIG)
    assert not holds(logged_after(server_log, start, good.dsn), token)

    role_setting(admin, app_role, good.name, "auto_explain.log_verbose", "on")
    status, message, _ = server_log_check(good, app_role)
    assert status == FAIL
    assert message.startswith("auto_explain logs the plan of every statement with log_verbose on")
    start = server_log.stat().st_size
    send_token(good.dsn_for(app_role), token, SET_CONFIG)
    assert holds(logged_after(server_log, start, good.dsn), token)  # why it fails

    role_setting(admin, app_role, good.name, "auto_explain.log_min_duration", "'1s'")
    assert server_log_check(good, app_role)[0] == WARN  # only slow statements


def test_other_roles_settings(audited: HessraDatabase, admin: psycopg.Connection, app_role: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    other = f"doc_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(other)))
    try:
        role_setting(admin, other, audited.name, "log_min_duration_statement", "'0s'")
        code, checks, items, _ = production(capsys, audited, app_role)
        assert code == 0 and checks["server log"][0] == "ok"  # this role's own sessions are fine
        assert checks["role settings"] == (
            "warn", f"role {other}: log_min_duration_statement = 0 logs every statement with its bound parameters "
                    "(log_parameter_max_length = -1): the token the application binds into set_config() is written "
                    "to the server log")
        assert items["log settings"][0] == "warn"
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))


# -- the checklist reflects the checks ----------------------------------------------

def test_checklist_lines_fail_with_their_checks(audited: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY")
    admin.execute("CREATE POLICY per_row ON public.payments AS RESTRICTIVE FOR SELECT "
                  "USING (hessra_authz.authorized('payments', 'read'))")
    admin.execute("SELECT hessra_authz.retire_key(100)")
    code, checks, items, _ = production(capsys, audited, app_role)
    assert code == 1
    assert items["RLS forced"] == ("fail", "table public.orders: row level security is not forced (the owner "
                                           "bypasses it)")
    assert items["policies per statement"][0] == "fail"
    assert items["policies per statement"][1].startswith("policy per_row on public.payments: evaluated once per row")
    assert items["keys"][0] == "fail" and items["rotation horizon"][0] == "fail"
    assert items["roles"][0] == "ok"


def test_rotation_horizon_warns(audited: HessraDatabase, admin: psycopg.Connection, app_role: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    admin.execute("SELECT hessra_authz.retire_key(100, now() + interval '2 days')")
    code, checks, items, _ = production(capsys, audited, app_role)
    assert code == 0
    assert items["keys"] == ("ok", "1 active key (kid 100)")
    assert items["rotation horizon"][0] == "warn" and "kid 100 ends" in items["rotation horizon"][1]


# -- the pure rules ------------------------------------------------------------------

_QUIET = {"log_statement": "none", "log_min_duration_statement": "-1", "log_min_duration_sample": "-1",
          "log_statement_sample_rate": "1", "log_transaction_sample_rate": "0", "log_parameter_max_length": "0",
          "log_parameter_max_length_on_error": "0"}


@pytest.mark.parametrize(("changes", "transport", "expected"), [
    ({}, SET_LOCAL, []),
    ({"log_statement": "mod"}, SET_LOCAL, []),
    ({"log_statement": "all"}, SET_CONFIG, []),  # log_parameter_max_length = 0: only $1
    ({"log_statement": "all"}, SET_LOCAL, [("fail", "log_statement")]),
    ({"log_transaction_sample_rate": "0.1"}, SET_LOCAL, [("fail", "log_transaction_sample_rate")]),
    ({"pg_stat_statements.track_utility": "on"}, SET_CONFIG, []),  # set_config() text holds $1
    ({"pg_stat_statements.track_utility": "on"}, SET_LOCAL, [("fail", "pg_stat_statements.track_utility")]),
    ({"auto_explain.log_min_duration": "0", "auto_explain.log_parameter_max_length": "-1"}, SET_CONFIG,
     [("fail", "auto_explain.log_parameter_max_length")]),
    ({"auto_explain.log_min_duration": "-1", "auto_explain.log_verbose": "on"}, SET_CONFIG, []),
    ({"debug_print_rewritten": "on"}, SET_CONFIG, [("fail", "debug_print_rewritten")]),
])
def test_capture_risks(changes: dict[str, str], transport: str, expected: list[tuple[str, str]]) -> None:
    settings = {**_QUIET, **changes}
    assert log_risks(settings) == []
    assert [(risk.status, risk.setting) for risk in capture_risks(settings, transport)] == expected


def test_capture_risks_refuses_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="transport"):
        capture_risks(_QUIET, "smoke_signals")
