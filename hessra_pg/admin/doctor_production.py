"""The doctor's production checks (``--production``) and its checklist.

- ``disclosure``: run as the application's role, what it can trigger
  (``explain()`` of a garbage token, of an expired one and of one signed by
  an unregistered key, ``cache_stats()``, the errors of bad arguments, every
  message sent to the client meanwhile) reveals nothing docs/security.md
  §5 keeps from it: no kid, no detail, ``unknown_key`` read as
  ``bad_signature``, no configuration version, no error detail, never the
  token's text. And the role can't read the server's files (the log, with
  its audit lines, is one).
- ``audit``: the levels of ``hessra_authz.audit_settings`` (extension 0.5.0;
  read with the admin connection): the database's and each role's.
- ``test helpers``: schema ``hessra_test`` (``hessra-pg policy
  test-helpers``) stores a private signing key: FAIL wherever it is found
  (:func:`check_test_helpers` runs without ``--production`` too, silent
  when absent).
- ``key administrators``: who may run ``add_key`` here.
- :func:`checklist`: one status per production item, read from the checks
  already in the report (nothing is queried again).

The probe tokens are minted here with a throwaway key; none of them is ever
printed (only whether a message contained one).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.admin.doctor import Check, Report

__all__ = ["check_admins", "check_audit", "check_disclosure", "check_test_helpers", "checklist",
           "run_production_checks"]

TEST_HELPERS_FIX = "hessra-pg policy test-helpers --dsn <a superuser's DSN for this database> --drop"
#: A kid no deployment uses, so a leaked one is recognisable.
_PROBE_KID = 1_987_654_321


def run_production_checks(conn: psycopg.Connection[Any], report: Report,
                          admin_conn: psycopg.Connection[Any] | None, *, extension: bool,
                          log_settings: dict[str, str | None] | None, transport: str, horizon: timedelta) -> None:
    """The production checks, then the checklist over every check."""
    from hessra_pg.admin.doctor_logs import check_role_settings

    check_disclosure(conn, report, extension=extension)
    check_admins(conn, report, extension=extension)
    check_audit(conn, report, admin_conn, extension=extension)
    if log_settings is not None:
        check_role_settings(conn, report, log_settings, transport)
    report.checklist = checklist(report, horizon.total_seconds() / 86400)


def check_test_helpers(conn: psycopg.Connection[Any], report: Report, *, production: bool) -> None:
    """FAIL when schema hessra_test exists; an ok line only in production mode."""
    from hessra_pg.admin.doctor import FAIL, OK, Check
    from hessra_pg.dev.sqlhelpers import SCHEMA

    row = conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL", (SCHEMA,)).fetchone()
    if row and row[0]:
        report.checks.append(Check("test helpers", FAIL, f"test helpers installed in this database (schema {SCHEMA}: "
                                                         "a signing key is stored in it)", TEST_HELPERS_FIX))
    elif production:
        report.checks.append(Check("test helpers", OK, f"schema {SCHEMA} is not in this database"))


# -- disclosure ----------------------------------------------------------------

@dataclass(frozen=True)
class _Probe:
    label: str
    token: str


def _probes() -> list[_Probe]:
    from hessra_pg.core.keys import generate_keypair
    from hessra_pg.tokens.mint import TokenTime, mint_authorization

    throwaway = generate_keypair()
    return [
        _Probe("a garbage token", "hessra-doctor-garbage-" + secrets.token_hex(16)),
        _Probe("an expired token", mint_authorization(throwaway, "hessra-doctor", "hessra-doctor", "probe",
                                                      time_config=TokenTime(start=int(time.time()) - 7200,
                                                                            duration=60))),
        _Probe("a token of an unregistered key", mint_authorization(throwaway, "hessra-doctor", "hessra-doctor",
                                                                    "probe", root_key_id=_PROBE_KID)),
    ]


def _mentions(text: str | None, probes: list[_Probe]) -> bool:
    """Whether text holds one of the tokens (or a 24-character piece of one)."""
    if not text:
        return False
    return any(probe.token[i:i + 24] in text for probe in probes for i in range(0, max(1, len(probe.token) - 23), 8))


def _explain_problems(explained: dict[str, Any], probe: _Probe, redacted_detail: str) -> list[str]:
    problems = []
    if explained.get("reason") in ("unknown_key", "key_inactive"):
        problems.append(f"explain() of {probe.label} says {explained['reason']} (which keys exist can be probed)")
    if explained.get("kid") is not None:
        problems.append(f"explain() of {probe.label} shows a kid")
    if explained.get("detail") not in (None, redacted_detail):
        problems.append(f"explain() of {probe.label} shows its detail")
    if explained.get("valid"):
        problems.append(f"explain() of {probe.label} says valid")
    return problems


def _error_problems(error: Any, what: str, probes: list[_Probe]) -> list[str]:
    diag = error.diag
    fields = (diag.message_primary, diag.message_detail, diag.message_hint, diag.context, diag.internal_query)
    problems = []
    if diag.message_detail:
        problems.append(f"the error of {what} has a detail")
    if any(_mentions(text, probes) for text in fields):
        problems.append(f"the error of {what} contains the token")
    return problems


def check_disclosure(conn: psycopg.Connection[Any], report: Report, *, extension: bool) -> None:
    """Trigger, as this role, what it can trigger and judge the answers."""
    import psycopg

    from hessra_pg.admin.doctor import FAIL, OK, SKIP, WARN, Check
    from hessra_pg.core.verifier import REDACTED_DETAIL

    name = "disclosure"
    problems: list[str] = []
    readable = conn.execute(
        "SELECT pg_catalog.pg_has_role('pg_read_server_files', 'MEMBER') "
        "OR pg_catalog.has_function_privilege('pg_catalog.pg_read_file(text)', 'EXECUTE')").fetchone()
    if readable and readable[0]:
        problems.append("this role can read the server's files (pg_read_server_files or pg_read_file): the server "
                        "log, its audit lines (kids, key reasons) and any logged statement included")
    if not extension:
        if problems:
            report.checks.append(Check(name, FAIL, "; ".join(problems), _disclosure_fix(report)))
        else:
            report.checks.append(Check(name, SKIP, "not checked: the extension is not created"))
        return
    probes = _probes()
    notices: list[Any] = []
    conn.add_notice_handler(notices.append)
    # A LOG-level message sent to the client (an audit line written with
    # plpy.log, say) would reach this role: ask for every one.
    previous = conn.execute("SELECT pg_catalog.current_setting('client_min_messages')").fetchone()[0]
    conn.execute("SELECT pg_catalog.set_config('client_min_messages', 'log', false)")
    tried = 0
    try:
        for probe in probes:
            try:
                row = conn.execute("SELECT hessra_authz.explain(%s, 'hessra-doctor', 'hessra-doctor', 'probe')::text",
                                   (probe.token,)).fetchone()
            except psycopg.Error as error:
                problems.extend(_error_problems(error, f"explain() of {probe.label}", probes))
                continue
            tried += 1
            text = row[0] if row else None
            if _mentions(text, probes):
                problems.append(f"explain() of {probe.label} echoes the token")
            if text:
                problems.extend(_explain_problems(json.loads(text), probe, REDACTED_DETAIL))
        problems.extend(_cache_stats_problems(conn))
        token = probes[1].token
        for what, query, params in (
                ("verify_service_chain() naming an unregistered chain",
                 "SELECT hessra_authz.verify_service_chain(%s, 'hessra-doctor', 'hessra-doctor', 'probe', %s)",
                 (token, "hessra-doctor-no-chain-" + secrets.token_hex(4))),
                ("verify_capability() with designations that are not an object",
                 "SELECT hessra_authz.verify_capability(%s, 'hessra-doctor', 'probe', '[1]'::jsonb)", (token,))):
            try:
                conn.execute(query, params)
            except psycopg.errors.UndefinedFunction:
                continue  # an extension version without it
            except psycopg.Error as error:
                tried += 1
                problems.extend(_error_problems(error, what, probes))
    finally:
        conn.execute("SELECT pg_catalog.set_config('client_min_messages', %s, false)", (previous,))
        conn.remove_notice_handler(notices.append)
    for notice in notices:
        texts = (notice.message_primary, notice.message_detail, notice.message_hint, notice.context)
        if _mentions(" ".join(t for t in texts if t), probes):
            problems.append("a message sent to this role contains the token")
            break
        if any(t and "hessra_authz audit" in t for t in texts):
            problems.append("an audit line reaches this role (it names kids and key reasons)")
            break
    if problems:
        report.checks.append(Check(name, FAIL, "; ".join(dict.fromkeys(problems)), _disclosure_fix(report)))
    elif not tried:
        report.checks.append(Check(name, WARN, "explain() and the errors could not be triggered as this role"))
    else:
        report.checks.append(Check(name, OK, "explain() of a garbage, an expired and an unregistered key's token, "
                                             "cache_stats() and the errors of bad arguments tell this role no kid, "
                                             "no detail, no key reason, no configuration version and never the "
                                             "token"))


def _cache_stats_problems(conn: psycopg.Connection[Any]) -> list[str]:
    import psycopg

    try:
        row = conn.execute("SELECT hessra_authz.cache_stats()::text").fetchone()
    except psycopg.errors.UndefinedFunction:
        return []
    stats = json.loads(row[0]) if row and row[0] else {}
    if stats.get("configuration_version") is not None:
        return ["cache_stats() shows the configuration version"]
    return []


def _disclosure_fix(report: Report) -> str:
    return (f"connect the application as a role that may not administer keys (REVOKE hessra_admin FROM {report.role}; "
            f"SELECT hessra_authz.revoke_admin('{report.role}')), is not a superuser nor in pg_read_server_files, "
            "and use hessra_authz 0.3.0 or later")


# -- audit ------------------------------------------------------------------------

_AUDIT_SQL = """
SELECT a.role::text, a.level FROM hessra_authz.audit_settings AS a
 ORDER BY a.role IS NOT NULL, a.role::text
"""


def check_audit(conn: psycopg.Connection[Any], report: Report, admin_conn: psycopg.Connection[Any] | None, *,
                extension: bool) -> None:
    """The audit levels: the database's, this role's and every role's own."""
    import psycopg

    from hessra_pg.admin.doctor import OK, SKIP, WARN, Check

    name = "audit"
    if not extension:
        report.checks.append(Check(name, SKIP, "not checked: the extension is not created"))
        return
    present = conn.execute("SELECT pg_catalog.to_regclass('hessra_authz.audit_settings') IS NOT NULL").fetchone()
    if not (present and present[0]):
        report.checks.append(Check(name, WARN, "this hessra_authz has no audit trail (hessra_authz.audit_settings "
                                               "comes with 0.5.0): decisions leave no line in the server log",
                                   "ALTER EXTENSION hessra_authz UPDATE, then SELECT hessra_authz.set_audit('denied')"))
        return
    reader = next((c for c in (admin_conn, conn) if c is not None and c.execute(
        "SELECT pg_catalog.has_table_privilege('hessra_authz.audit_settings', 'SELECT')").fetchone()[0]), None)
    if reader is None:
        report.checks.append(Check(name, SKIP, "not checked: this role can't read hessra_authz.audit_settings (pass "
                                               "--admin-dsn with a hessra_admin member's DSN)"))
        return
    try:
        rows = reader.execute(_AUDIT_SQL).fetchall()
    except psycopg.Error as error:
        report.checks.append(Check(name, SKIP, f"not checked: {error.diag.message_primary or type(error).__name__}"))
        return
    database = next((level for role, level in rows if role is None), "off")
    own = {role: level for role, level in rows if role is not None}
    mine = own.get(report.role, database)
    roles = "".join(f", {role}: {level}" for role, level in own.items())
    summary = f"database: {database}{roles}; this role ({report.role}): {mine}"
    if mine == "off":
        report.checks.append(Check(name, WARN, f"{summary}: this role's denied decisions leave no trace",
                                   f"SELECT hessra_authz.set_audit('denied') (or set_audit('denied', "
                                   f"'{report.role}')) as a key administrator; docs/audit.md"))
    else:
        report.checks.append(Check(name, OK, summary))


# -- key administrators ---------------------------------------------------------

_ADMINS_SQL = """
SELECT r.rolname, r.rolsuper
  FROM pg_catalog.pg_roles AS r
 WHERE r.rolcanlogin
   AND pg_catalog.has_function_privilege(r.oid, %s::pg_catalog.regprocedure, 'EXECUTE')
 ORDER BY r.rolsuper, r.rolname
"""
_ADD_KEY = "hessra_authz.add_key(text, integer, timestamptz, timestamptz, text)"


def check_admins(conn: psycopg.Connection[Any], report: Report, *, extension: bool) -> None:
    """Which login roles may run add_key here (they can mint any token by
    registering a key): listed, for the operator to compare with intent."""
    from hessra_pg.admin.doctor import OK, SKIP, Check

    name = "key administrators"
    found = conn.execute("SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL", (_ADD_KEY,)).fetchone()
    if not extension or not (found and found[0]):
        report.checks.append(Check(name, SKIP, "not checked: the extension is not created"))
        return
    rows = conn.execute(_ADMINS_SQL, (_ADD_KEY,)).fetchall()
    admins = [role for role, superuser in rows if not superuser]
    superusers = [role for role, superuser in rows if superuser]
    listed = ", ".join(admins) if admins else "none"
    report.checks.append(Check(name, OK, f"login roles that may run add_key here: {listed} (and "
                                         f"{len(superusers)} superuser{'' if len(superusers) == 1 else 's'})"))


# -- the checklist -----------------------------------------------------------------

def _worst(checks: list[Check]) -> str:
    from hessra_pg.admin.doctor import FAIL, OK, SKIP, WARN

    statuses = {check.status for check in checks}
    for status in (FAIL, WARN, OK):
        if status in statuses:
            return status
    return SKIP


def _item(label: str, checks: list[Check], summary_ok: str, missing: str = "not checked") -> Check:
    from hessra_pg.admin.doctor import OK, SKIP, Check

    if not checks:
        return Check(label, SKIP, missing)
    status = _worst(checks)
    if status == OK:
        return Check(label, OK, summary_ok)
    worst = [check for check in checks if check.status == status]
    return Check(label, status, "; ".join(f"{check.name}: {check.message}" if check.name != label else check.message
                                          for check in worst))


def checklist(report: Report, horizon_days: float) -> list[Check]:
    """The production checklist, one line per item, from the report's checks."""
    from hessra_pg.admin.doctor import FAIL, OK, SKIP, WARN, Check

    by_name = {check.name: check for check in report.checks}
    named = lambda *prefixes: [c for c in report.checks if c.name.startswith(prefixes)]  # noqa: E731
    items = []
    keys = by_name.get("keys")
    # The keys check mixes both items: a FAIL is "no active key", a warning
    # about an ending key is the rotation horizon's.
    unread = keys is not None and keys.status == WARN and "can't read" in keys.message
    if keys is None or keys.status == SKIP:
        items += [Check("keys", SKIP, "not checked"), Check("rotation horizon", SKIP, "not checked")]
    elif keys.status == FAIL:
        items += [Check("keys", FAIL, keys.message), Check("rotation horizon", FAIL, "no active key")]
    elif unread:
        items += [Check("keys", OK, "at least one key is active"),
                  Check("rotation horizon", SKIP, "not checked: pass --admin-dsn to read the keys")]
    else:
        items.append(Check("keys", OK, keys.message.split(";")[0]))
        rotation = [keys] + ([by_name["authority"]] if "authority" in by_name else [])
        items.append(_item("rotation horizon", rotation, f"no key ends within {horizon_days:g} days"))
    admins = by_name.get("key administrators")
    items.append(_item("roles", named("role ", "key administrators"),
                       f"{report.role} is not superuser, has no BYPASSRLS, owns no token table"
                       + (f"; {admins.message}" if admins and admins.status == OK else "")))
    tables = named("table ")
    items.append(_item("RLS forced", tables or named("tables"),
                       f"enabled and forced on all {len(tables)} tables with token policies"))
    items.append(_item("policies per statement", named("policies on ", "policy "),
                       "every hessra_authz call once per statement (or per row by design)"))
    items.append(_item("views", named("views", "view ", "materialized view "),
                       "no view reads a token table with another role's rights"))
    items.append(_item("disclosure", named("disclosure"), "explain(), errors and messages reveal nothing to "
                                                          f"{report.role}"))
    audit = by_name.get("audit")
    items.append(_item("audit level", [audit] if audit else [],
                       audit.message if audit and audit.status == OK else ""))
    items.append(_item("log settings", named("server log", "role settings", "citus transport", "statement readers"),
                       "no setting writes a token to the server log"))
    items.append(_item("test helpers absent", named("test helpers"), "no hessra_test schema"))
    return [item if item.status != OK or item.message else Check(item.name, OK, "ok") for item in items]
