"""The doctor's log settings beyond bound parameters: what else writes a token to the server log.

:func:`hessra_pg.admin.doctor.log_risks` covers the parameters PostgreSQL
logs with a statement (the ``set_config()`` transport binds the token).
This module adds the settings that capture it in other ways:

- the ``SET LOCAL`` transport (Citus, ``--transport set_local``) puts the
  token in the statement text: ``log_statement = 'all'``,
  ``log_min_duration_statement = 0`` and the sampling settings write it
  whatever ``log_parameter_max_length`` is, and pg_stat_statements keeps it
  while ``pg_stat_statements.track_utility`` is on (PostgreSQL 15 does not
  normalize utility statements). ``log_statement = 'mod'`` and ``'ddl'``
  never log a ``SET``;
- ``debug_print_parse``/``_rewritten``/``_plan`` write query trees, with
  the constants a custom plan folds the bound token into;
- auto_explain logging every statement (``auto_explain.log_min_duration =
  0``) with ``log_verbose`` (the plan's output list shows the bound token as
  a constant) or, on PostgreSQL 16 and later, with its own
  ``log_parameter_max_length`` not 0;
- other roles' ``ALTER ROLE ... SET`` values in this database
  (``pg_db_role_setting``): their sessions log what this role's would not
  (:func:`check_role_settings`, production mode);
- with the ``SET LOCAL`` transport, roles that read other sessions'
  running statements (:func:`check_statement_readers`).

The values are this session's ``pg_settings``: a module's settings are
there only while it is loaded (None otherwise: they can't apply).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hessra_pg.context import SET_CONFIG, SET_LOCAL, TRANSPORTS

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.admin.doctor import LogRisk, Report

__all__ = ["CAPTURE_SETTINGS", "SET_CONFIG", "SET_LOCAL", "TRANSPORTS", "capture_risks", "check_role_settings",
           "check_statement_readers"]

DEBUG_PRINT = ("debug_print_parse", "debug_print_rewritten", "debug_print_plan")
#: Read beside doctor.LOG_SETTINGS; NULL when the module is not loaded.
CAPTURE_SETTINGS = DEBUG_PRINT + ("auto_explain.log_min_duration", "auto_explain.log_verbose",
                                  "auto_explain.log_parameter_max_length", "pg_stat_statements.track_utility")
_ON = frozenset({"on", "true", "yes", "1"})


def _int(value: str | None, default: int) -> int:
    try:
        return default if value is None else int(value)
    except ValueError:  # a placeholder someone SET without loading the module
        return default


def _statement_text_logging(settings: Mapping[str, str | None]) -> list[tuple[str, str, str]]:
    """What writes every statement's text (a SET LOCAL included):
    (description, setting, safe value)."""
    found = []
    if settings.get("log_statement") == "all":
        found.append(("log_statement = 'all' logs every statement's text", "log_statement", "'ddl'"))
    if _int(settings.get("log_min_duration_statement"), -1) == 0:
        found.append(("log_min_duration_statement = 0 logs every statement's text", "log_min_duration_statement",
                      "-1"))
    if float(settings.get("log_transaction_sample_rate") or 0) > 0:
        found.append((f"log_transaction_sample_rate = {settings['log_transaction_sample_rate']} logs the text of "
                      "every statement of that share of transactions", "log_transaction_sample_rate", "0"))
    if (_int(settings.get("log_min_duration_sample"), -1) == 0
            and float(settings.get("log_statement_sample_rate") or 0) > 0):
        found.append((f"log_min_duration_sample = 0 with log_statement_sample_rate = "
                      f"{settings['log_statement_sample_rate']} logs that share of statement texts",
                      "log_min_duration_sample", "-1"))
    return found


def capture_risks(settings: Mapping[str, str | None], transport: str = SET_CONFIG) -> list[LogRisk]:
    """The ways a token reaches the server log (or pg_stat_statements) that
    :func:`hessra_pg.admin.doctor.log_risks` doesn't cover, under these
    values of doctor.LOG_SETTINGS and :data:`CAPTURE_SETTINGS` (None: not
    loaded) for the application's `transport`."""
    from hessra_pg.admin.doctor import FAIL, WARN, LogRisk

    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    risks = []
    if transport == SET_LOCAL:
        for what, setting, value in _statement_text_logging(settings):
            risks.append(LogRisk(FAIL, f"{what}: with the SET LOCAL transport that text holds the token "
                                       "(log_parameter_max_length doesn't apply to it)", setting, value))
        if settings.get("pg_stat_statements.track_utility") in _ON:
            risks.append(LogRisk(FAIL, "pg_stat_statements.track_utility is on: pg_stat_statements keeps the text "
                                       "of each SET LOCAL, token included", "pg_stat_statements.track_utility",
                                 "off"))
    for name in DEBUG_PRINT:
        if settings.get(name) in _ON:
            risks.append(LogRisk(FAIL, f"{name} is on: it writes query trees to the server log, with the bound "
                                       "token as a constant", name, "off"))
    duration = _int(settings.get("auto_explain.log_min_duration"), -1)
    if duration >= 0:
        every = "every statement" if duration == 0 else f"statements slower than {duration} ms"
        status = FAIL if duration == 0 else WARN
        if settings.get("auto_explain.log_verbose") in _ON:
            risks.append(LogRisk(status, f"auto_explain logs the plan of {every} with log_verbose on: the plan of "
                                         "the application's set_config() shows the bound token as a constant",
                                 "auto_explain.log_verbose", "off"))
        limit = _int(settings.get("auto_explain.log_parameter_max_length"), 0)
        if limit != 0:
            risks.append(LogRisk(status, f"auto_explain logs {every} with its bound parameters "
                                         f"(auto_explain.log_parameter_max_length = {limit}): the token included",
                                 "auto_explain.log_parameter_max_length", "0"))
    return risks


# -- other roles' settings ----------------------------------------------------

# pg_db_role_setting is readable by every role. Entries for this database
# (setdatabase = oid) and for every database (0); a role's own entries only
# (setrole = 0 are the database's, already in this session's values).
_ROLE_SETTINGS_SQL = """
SELECT r.rolname, s.setdatabase <> 0 AS in_database, s.setconfig
  FROM pg_catalog.pg_db_role_setting AS s
  JOIN pg_catalog.pg_roles AS r ON r.oid = s.setrole
 WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
   AND r.rolname <> current_user AND r.rolcanlogin
 ORDER BY r.rolname, in_database
"""


def check_role_settings(conn: psycopg.Connection[Any], report: Report, base: Mapping[str, str | None],
                        transport: str = SET_CONFIG) -> None:
    """One check, ``role settings``: the login roles other than this one
    whose own settings in this database (ALTER ROLE ... [IN DATABASE] SET)
    would log a token: each role's entries over `base` (this session's
    values; the database's own settings are in them). A warning: those are
    other roles' sessions (another application, a tool)."""
    from hessra_pg.admin.doctor import OK, WARN, Check, log_risks

    merged: dict[str, dict[str, str | None]] = {}
    for role, _, config in conn.execute(_ROLE_SETTINGS_SQL).fetchall():
        values = merged.setdefault(role, dict(base))
        for entry in config or ():
            name, _, value = entry.partition("=")
            if name in values:  # the IN DATABASE entries come last: they win
                values[name] = _normalize(name, value)
    findings = []
    for role, values in merged.items():
        try:
            risks = log_risks(values) + capture_risks(values, transport)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue  # a value PostgreSQL would refuse at login never applies
        if risks:
            findings.append((role, risks))
    if not findings:
        report.checks.append(Check("role settings", OK, "no other login role's own settings in this database log "
                                                        "a token"))
        return
    parts = [f"role {role}: {'; '.join(risk.message for risk in risks)}" for role, risks in findings]
    fixes = [f"ALTER ROLE {_quote(role)} IN DATABASE {_quote(report.database)} SET {risk.setting} = {risk.value}"
             for role, risks in findings for risk in risks]
    report.checks.append(Check("role settings", WARN, " | ".join(parts),
                               "; ".join(fixes) + " (if that role ever sets a token; as a superuser)"))


_DURATIONS = ("log_min_duration_statement", "log_min_duration_sample", "auto_explain.log_min_duration")
_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _normalize(name: str, value: str) -> str:
    """A stored ALTER ROLE value in pg_settings' form: durations in ms
    ('1s' -> '1000'), booleans lower case; sizes keep their number (only 0
    or not matters)."""
    value = value.strip().strip("'").lower()
    if name in _DURATIONS:
        number = value.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
        unit = value[len(number):].strip() or "ms"
        try:
            return str(int(float(number) * _UNITS_MS[unit]))
        except (KeyError, ValueError):
            return value
    if name.endswith("log_parameter_max_length") or name.endswith("log_parameter_max_length_on_error"):
        return value.rstrip("kmgtb").strip() or value
    return value


def _quote(name: str) -> str:
    return name if name.isidentifier() and name == name.lower() else '"' + name.replace('"', '""') + '"'


def check_statement_readers(conn: psycopg.Connection[Any], report: Report) -> None:
    """With the SET LOCAL transport, pg_stat_activity shows a session's
    ``SET LOCAL hessra.token = '...'`` until its next statement to members
    of pg_read_all_stats (pg_monitor includes it): warn about the login
    roles that are, superusers aside. pg_auth_members is readable by every
    role."""
    from hessra_pg.admin.doctor import WARN, Check

    readers = [row[0] for row in conn.execute(
        "SELECT r.rolname FROM pg_catalog.pg_roles AS r WHERE r.rolcanlogin AND NOT r.rolsuper "
        "AND pg_catalog.pg_has_role(r.oid, 'pg_read_all_stats', 'USAGE') ORDER BY 1").fetchall()]
    if readers:
        shown = ", ".join(readers[:5]) + (f" and {len(readers) - 5} more" if len(readers) > 5 else "")
        report.checks.append(Check(
            "statement readers", WARN,
            f"{shown} can read other sessions' statements (pg_read_all_stats, which pg_monitor includes): with "
            "the SET LOCAL transport, that is every token in flight",
            "revoke pg_monitor / pg_read_all_stats from roles that don't need it; a monitoring role needs only "
            "GRANT EXECUTE ON FUNCTION hessra_authz.database_stats() TO <role>; docs/scale-out.md "
            "\"The token transport\""))
