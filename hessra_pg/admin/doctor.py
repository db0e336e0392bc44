"""``hessra-pg doctor``: is this database set up safely for token RLS?

One report of checks, each ``ok``, ``warn``, ``FAIL`` or ``skip``:

- ``plpython3u`` is available and created;
- the server's Python imports biscuit_auth and hessra_pg (a plpython3u DO
  block when the connecting role is a superuser, else a call of
  ``hessra_authz.verify_token`` that imports them);
- the ``hessra_authz`` extension is created, at this package's version;
- on a hot standby only: that it still follows its primary (streaming, replay
  not paused; warn otherwise: revocations made on the primary since are not
  enforced there), :mod:`hessra_pg.admin.doctor_replica`;
- keys: at least one active key (FAIL if none), none ending within the
  key horizon (:data:`EXPIRY_WARNING`, 7 days by default; warn), and some
  key active at every moment of the horizon, counting keys not yet active
  (warn, naming the moment from which none is);
- with an authority (``authority=``, :class:`hessra_pg.admin.keysync.Authority`):
  its current public key is the database's newest active key (FAIL when it
  is not registered or not active: every token it issues now is refused;
  warn when a newer key is registered, or the authority can't be reached);
- the server log: no setting writes the application's bound parameters
  (the token it binds into ``set_config()``) to it, nor the token by other
  ways (:mod:`hessra_pg.admin.doctor_logs`: plan dumps, auto_explain, the
  statement text of the SET LOCAL transport);
- every table with a policy that calls ``hessra_authz``: RLS enabled and
  FORCED, every such call evaluated once per statement (inside an
  uncorrelated ``(SELECT ...)``), no permissive policy that applies to the
  role and checks no token, no operator, function or type in a policy or
  index that the role owns (one planted before the policy was created);
- no view (without ``security_invoker``) or materialized view the role can
  use reads those tables with another role's rights;
- the connecting role: not superuser, no BYPASSRLS, not (a member of) the
  owner of those tables, cannot SET ROLE to a role that bypasses RLS, not a
  member of ``hessra_admin``;
- no schema ``hessra_test`` (test helpers, with a stored signing key);
- with ``production=True`` (:mod:`hessra_pg.admin.doctor_production`): what
  the role can trigger reveals nothing it shouldn't, the key
  administrators, the audit levels, other roles' log settings, and the
  production checklist (``Report.checklist``).

Run it with the application's DSN: the role checks are about the role that
connects. A FAIL means something is unsafe (exit status 1). psycopg is
imported only when connecting.

Policy expressions (``pg_get_expr()`` of each policy's USING and WITH CHECK)
are read with PostgreSQL's own parser through pglast, the optional extra
``hessra-pg[doctor]``: without it doctor stops before connecting with
:data:`PGLAST_MISSING` (:class:`DoctorRequirementError`, exit status 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import hessra_pg
from hessra_pg.admin.doctor_replica import check_replica
from hessra_pg.admin.doctor_citus import check_citus
from hessra_pg.admin.doctor_logs import CAPTURE_SETTINGS, SET_CONFIG, SET_LOCAL, capture_risks, check_statement_readers
from hessra_pg.admin.doctor_production import check_test_helpers, run_production_checks
from hessra_pg.errors import (
    DoctorConnectionError,
    DoctorRequirementError,
    HessraError,
    PolicyExpressionError,
    first_line,
)
from hessra_pg.rls.policies import intends_per_row

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.admin.keysync import Authority

__all__ = [
    "EXPIRY_WARNING",
    "LOG_SETTINGS",
    "Check",
    "DoctorConnectionError",
    "DoctorRequirementError",
    "LogRisk",
    "PGLAST_MISSING",
    "PolicyExpressionError",
    "Report",
    "connect",
    "diagnose",
    "log_risks",
    "per_row_calls",
    "require_parser",
    "run_checks",
    "verifying_calls",
]

#: The default key horizon: active keys ending within it are reported
#: (warn), and so is a moment within it at which no key is active.
EXPIRY_WARNING = timedelta(days=7)
DEFAULT_CONNECT_TIMEOUT = 10

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_LABELS = {OK: "ok", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}
_NOTICE_TAG = "hessra-doctor:"
#: GUC readers: plain SQL, cheap per row.
_CHEAP_FUNCTIONS = frozenset({"current_token", "current_subject"})
_INSTALL_HINT = ("run `hessra-pg install` on the database host: it installs biscuit-python and hessra_pg "
                 "for the Python that PL/Python embeds")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str
    message: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """Every check, with where they ran."""

    database: str
    role: str
    server_version: str
    checks: list[Check] = field(default_factory=list)
    #: The production checklist (production mode only): one line per item.
    checklist: list[Check] | None = None

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status == WARN]

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "role": self.role,
            "server_version": self.server_version,
            "checks": [check.as_dict() for check in self.checks],
            "failures": len(self.failures),
            "warnings": len(self.warnings),
            **({} if self.checklist is None else {"checklist": [item.as_dict() for item in self.checklist]}),
        }

    def lines(self) -> list[str]:
        """The human-readable report."""
        out = [f"hessra-pg doctor: database {self.database!r} as role {self.role!r} "
               f"(PostgreSQL {self.server_version}, hessra_pg {hessra_pg.__version__})"]
        for check in self.checks:
            out.append(f"  {_LABELS[check.status]:<4}  {check.name}: {check.message}")
            if check.hint and check.status in (WARN, FAIL):
                out.append(f"        fix: {check.hint}")
        if self.checklist is not None:
            out.append("production checklist:")
            out.extend(f"  {_LABELS[item.status]:<4}  {item.name}: {item.message}" for item in self.checklist)
        failures, warnings = len(self.failures), len(self.warnings)
        if failures:
            verdict = f"UNSAFE: {_plural(failures, 'failure')}, {_plural(warnings, 'warning')}"
        elif warnings:
            verdict = f"safe, with {_plural(warnings, 'warning')}"
        else:
            verdict = "safe: every check passed"
        out.append(verdict)
        return out


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# -- connecting ------------------------------------------------------------

def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection; DoctorConnectionError if it fails.
    An empty DSN means libpq's PG* environment variables. A 10 s connect
    timeout applies unless the DSN or PGCONNECT_TIMEOUT sets one."""
    import os

    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise DoctorConnectionError(f"invalid DSN: {first_line(error)}") from None
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    kwargs.setdefault("autocommit", True)
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as error:
        raise DoctorConnectionError(f"cannot connect to the database: {first_line(error)}") from None


def _db_message(error: Any) -> str:
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return primary or first_line(error)


def diagnose(dsn: str, *, admin_dsn: str | None = None, authority: Authority | None = None,
             key_horizon: timedelta = EXPIRY_WARNING, production: bool = False,
             transport: str | None = None) -> Report:
    """Connect with `dsn` (the application's role) and run every check.
    `admin_dsn`, if given, is used only to read hessra_authz.keys (and the
    audit levels). `authority`: compare the database's newest active key
    with the one the authority publishes. `key_horizon`: how far ahead the
    keys check looks. `production`: also the production checks and the
    checklist (:mod:`hessra_pg.admin.doctor_production`). `transport`: how
    the application sends its token, ``set_config`` or ``set_local``
    (default: set_local in a Citus database). DoctorRequirementError,
    before connecting, without pglast."""
    require_parser()
    options = dict(authority=authority, key_horizon=key_horizon, production=production, transport=transport)
    with connect(dsn) as conn:
        if admin_dsn is None:
            return run_checks(conn, **options)  # type: ignore[arg-type]
        with connect(admin_dsn) as admin:
            return run_checks(conn, admin_conn=admin, **options)  # type: ignore[arg-type]


# -- the checks ------------------------------------------------------------

@contextmanager
def _catalog_search_path(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Deparse with search_path = pg_catalog, so every hessra_authz name in
    a policy expression comes out schema-qualified."""
    previous = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    try:
        yield
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (previous,))


def run_checks(conn: psycopg.Connection[Any], *, admin_conn: psycopg.Connection[Any] | None = None,
               authority: Authority | None = None, key_horizon: timedelta = EXPIRY_WARNING,
               production: bool = False, transport: str | None = None) -> Report:
    """Run every check on an autocommit connection of the role to judge."""
    require_parser()
    if key_horizon <= timedelta(0):
        raise ValueError("key_horizon must be positive")
    if transport not in (None, SET_CONFIG, SET_LOCAL):
        raise ValueError(f"transport must be {SET_CONFIG!r} or {SET_LOCAL!r}")
    with _catalog_search_path(conn):
        role, database, version, superuser, bypassrls = conn.execute(
            "SELECT r.rolname, current_database(), current_setting('server_version'), r.rolsuper, r.rolbypassrls "
            "FROM pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
        report = Report(database=database, role=role, server_version=version.split(" ")[0])
        plpython = _check_plpython(conn, report)
        extension = _check_extension(conn, report)
        check_replica(conn, report, admin_conn)
        citus = extension and check_citus(conn, report, admin_conn)
        # Citus forwards only SET LOCAL: the token travels in statement text.
        transport = transport or (SET_LOCAL if citus else SET_CONFIG)
        _check_server_python(conn, report, superuser=superuser, plpython=plpython, extension=extension)
        keys = _check_keys(conn, report, admin_conn=admin_conn, extension=extension, horizon=key_horizon)
        if authority is not None:
            _check_authority(report, authority, keys, extension=extension, admin_conn_given=admin_conn is not None)
        log_settings = _check_server_log(conn, report, transport, citus=bool(citus))
        if transport == SET_LOCAL:
            check_statement_readers(conn, report)
        tables = _check_tables(conn, report)
        if tables:
            _check_bound_objects(conn, report, tables, superuser=superuser)
            _check_views(conn, report, tables)
        _check_role(conn, report, role=role, superuser=superuser, bypassrls=bypassrls, tables=tables)
        check_test_helpers(conn, report, production=production)
        if production:
            run_production_checks(conn, report, admin_conn, extension=extension, log_settings=log_settings,
                                  transport=transport, horizon=key_horizon)
    return report


def _check_plpython(conn: psycopg.Connection[Any], report: Report) -> bool:
    row = conn.execute(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'plpython3u'"
    ).fetchone()
    if row is None:
        report.checks.append(Check("plpython3u", FAIL, "not available on this server",
                                   "install PL/Python for this PostgreSQL (Debian: postgresql-plpython3-<major>)"))
        return False
    if row[1] is None:
        report.checks.append(Check("plpython3u", FAIL, "available but not created in this database",
                                   "CREATE EXTENSION hessra_authz CASCADE (as a superuser) also creates plpython3u"))
        return False
    report.checks.append(Check("plpython3u", OK, f"installed (version {row[1]})"))
    return True


#: The first extension version without the holes of issue 11 (docs/security.md).
SECURE_SINCE = (0, 3, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def _check_extension(conn: psycopg.Connection[Any], report: Report) -> bool:
    package = hessra_pg.__version__
    installed = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'").fetchone()
    available = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'hessra_authz'"
    ).fetchone()
    name = "extension"
    if installed is None:
        if available is None:
            report.checks.append(Check(name, FAIL, "hessra_authz is not available on this server", _INSTALL_HINT))
        else:
            report.checks.append(Check(name, FAIL, "hessra_authz is not created in this database",
                                       "CREATE EXTENSION hessra_authz CASCADE (as a superuser)"))
        return False
    version = installed[0]
    if _version_tuple(version) < SECURE_SINCE:
        report.checks.append(Check(
            name, FAIL, f"hessra_authz {version} in this database has known holes fixed in "
                        f"{'.'.join(map(str, SECURE_SINCE))} (session settings reach the verifier, stale snapshots, "
                        "triggers skipped in replica mode)",
            "ALTER EXTENSION hessra_authz UPDATE" if available and _version_tuple(available[0]) >= SECURE_SINCE
            else f"run `hessra-pg install` (hessra_pg {package}) on the database host, then "
                 "ALTER EXTENSION hessra_authz UPDATE"))
    elif version != package:
        files = available[0] if available else None
        hint = ("ALTER EXTENSION hessra_authz UPDATE" if files == package else
                f"run `hessra-pg install` (hessra_pg {package}) on the database host, then "
                "ALTER EXTENSION hessra_authz UPDATE")
        report.checks.append(Check(name, WARN, f"hessra_authz {version} in this database, but this hessra_pg is "
                                               f"{package}", hint))
    else:
        report.checks.append(Check(name, OK, f"hessra_authz {version} (same as hessra_pg {package})"))
    return True


_PROBE_DO = """DO $hessra_doctor$
import json, sys
from importlib import metadata
import biscuit_auth
import hessra_pg
try:
    biscuit_version = metadata.version("biscuit-python")
except Exception:
    biscuit_version = "?"
plpy.notice("%s" + json.dumps({"python": sys.version.split()[0], "biscuit": biscuit_version,
                                "hessra_pg": hessra_pg.__version__, "path": hessra_pg.__file__}))
$hessra_doctor$ LANGUAGE plpython3u""" % _NOTICE_TAG


def _check_server_python(conn: psycopg.Connection[Any], report: Report, *, superuser: bool, plpython: bool,
                         extension: bool) -> None:
    import psycopg

    name = "server Python"
    if superuser and plpython:
        notices: list[str] = []

        def collect(diag: Any) -> None:
            if diag.message_primary and diag.message_primary.startswith(_NOTICE_TAG):
                notices.append(diag.message_primary[len(_NOTICE_TAG):])

        conn.add_notice_handler(collect)
        try:
            conn.execute(_PROBE_DO)
        except psycopg.Error as error:
            report.checks.append(Check(name, FAIL, f"cannot import biscuit_auth and hessra_pg: {_db_message(error)}",
                                       _INSTALL_HINT))
            return
        finally:
            conn.remove_notice_handler(collect)
        info = json.loads(notices[-1]) if notices else {}
        found = (f"Python {info.get('python')} imports biscuit_auth {info.get('biscuit')} and "
                 f"hessra_pg {info.get('hessra_pg')} ({info.get('path')})")
        if info.get("hessra_pg") != hessra_pg.__version__:
            report.checks.append(Check(name, WARN, f"{found}; this hessra_pg is {hessra_pg.__version__}",
                                       "re-run `hessra-pg install` on the database host"))
        else:
            report.checks.append(Check(name, OK, found))
        return
    if not extension:
        report.checks.append(Check(name, SKIP, "not checked: needs the extension (or a superuser connection)"))
        return
    try:
        conn.execute("SELECT hessra_authz.verify_token(NULL, 'doctor', 'doctor', 'doctor')")
    except psycopg.Error as error:
        report.checks.append(Check(name, FAIL, f"hessra_authz.verify_token fails: {_db_message(error)}",
                                   _INSTALL_HINT))
        return
    report.checks.append(Check(name, OK, "imports biscuit_auth and hessra_pg (hessra_authz.verify_token runs)"))


_KEYS_SQL = """
SELECT kid,
       not_before <= now() AND (not_after IS NULL OR not_after > now()) AS active,
       not_before > now() AS future,
       not_after IS NOT NULL AND not_after > now() AND not_after <= now() + %s AS expiring,
       to_char(not_before AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"') AS starts,
       to_char(not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"') AS ends,
       round((extract(epoch FROM not_after - now()) / 86400)::numeric, 1) AS days_left,
       public_key, not_before, not_after, now()
  FROM hessra_authz.keys
 ORDER BY kid
"""


@dataclass(frozen=True)
class _Key:
    """A row of hessra_authz.keys, as the keys and authority checks read it."""

    kid: int
    active: bool
    future: bool
    expiring: bool
    starts: str
    ends: str | None
    days_left: Any
    public_key: str
    not_before: datetime
    not_after: datetime | None
    now: datetime


def _minute(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f}"


def _first_gap(keys: list[_Key], now: datetime, until: datetime) -> datetime | None:
    """The first moment in [now, until) at which no key is active (keys not
    yet active count from their not_before), or None."""
    moment = now
    while moment < until:
        ends = [key.not_after for key in keys
                if key.not_before <= moment and (key.not_after is None or key.not_after > moment)]
        if not ends:
            return moment
        if any(end is None for end in ends):
            return None
        moment = max(end for end in ends if end is not None)
    return None


def _check_keys(conn: psycopg.Connection[Any], report: Report, *, admin_conn: psycopg.Connection[Any] | None,
                extension: bool, horizon: timedelta = EXPIRY_WARNING) -> list[_Key] | None:
    """The keys check; returns the keys when they could be read."""
    import psycopg

    name = "keys"
    if not extension:
        report.checks.append(Check(name, SKIP, "not checked: the extension is not created"))
        return None
    reader = None
    for candidate in (admin_conn, conn):
        if candidate is not None and candidate.execute(
                "SELECT has_table_privilege('hessra_authz.keys', 'SELECT')").fetchone()[0]:
            reader = candidate
            break
    if reader is None:
        _probe_keys(conn, report, admin_conn_given=admin_conn is not None)
        return None
    try:
        keys = [_Key(*row) for row in reader.execute(_KEYS_SQL, (horizon,)).fetchall()]
    except psycopg.Error as error:
        report.checks.append(Check(name, FAIL, f"cannot read hessra_authz.keys: {_db_message(error)}"))
        return None
    active = [key for key in keys if key.active]
    future = [f"kid {key.kid} from {key.starts}" for key in keys if key.future]
    later = f"; not yet active: {', '.join(future)}" if future else ""
    if not active:
        report.checks.append(Check(name, FAIL, f"no active key: every presented token raises 'no active key'{later}",
                                   "SELECT hessra_authz.add_key('<PEM or alg/hex>') as a member of hessra_admin"))
        return keys
    kids = ", ".join(str(key.kid) for key in active)
    summary = f"{_plural(len(active), 'active key')} (kid {kids}){later}"
    expiring = [key for key in active if key.expiring]
    days = horizon.total_seconds() / 86400
    within = f"{days:g} day{'' if days == 1 else 's'}"
    if expiring:
        ends = ", ".join(f"kid {key.kid} ends {key.ends} (in {key.days_left} days)" for key in expiring)
        staying = [str(key.kid) for key in active if not key.expiring]
        now = keys[0].now
        gap = _first_gap(keys, now, now + horizon)
        rotating = "fine if the ending key is being rotated out: tokens it signed stop verifying when it ends"
        if staying:
            report.checks.append(Check(name, WARN, f"{summary}; {ends}; kid {', '.join(staying)} stays active",
                                       rotating))
        elif gap is None:
            successors = [str(key.kid) for key in keys if key.future and key.not_before < now + horizon]
            report.checks.append(Check(
                name, WARN, f"{summary}; {ends}; then kid {', '.join(successors)}, with no gap within {within}",
                rotating))
        else:
            last = max(key.not_after for key in expiring if key.not_after is not None)
            resume = min((key.not_before for key in keys if key.not_before > gap), default=None)
            then = ("then no key is active" if gap == last
                    else f"no key is active from {_minute(gap)} (in {_days(gap - now)} days)")
            if resume is not None:
                then += f" until {_minute(resume)}"
            report.checks.append(Check(
                name, WARN, f"{summary}; {ends}; {then}",
                "register the next key with hessra_authz.add_key() (or extend this one with retire_key(kid, "
                "later)) before it ends: then every token is refused"))
        return keys
    report.checks.append(Check(name, OK, f"{summary}; none ends within {within}"))
    return keys


def _check_authority(report: Report, authority: Authority, keys: list[_Key] | None, *, extension: bool,
                     admin_conn_given: bool) -> None:
    """Is the authority's current key the database's newest active key?"""
    from hessra_pg.admin.keysync import AuthorityError

    name = "authority"
    if not extension:
        report.checks.append(Check(name, SKIP, "not checked: the extension is not created"))
        return
    where = authority.host_port
    try:
        published = authority.fetch()
    except AuthorityError as error:
        report.checks.append(Check(name, WARN, f"not compared: {error}",
                                   "check --authority, --ca (and --mtls-cert/--mtls-key), and that the authority "
                                   "is up"))
        return
    if keys is None:
        why = ("the --admin-dsn role can't read it either" if admin_conn_given
               else "pass --admin-dsn with a hessra_admin member's DSN")
        report.checks.append(Check(name, WARN, f"not compared: this role can't read hessra_authz.keys ({why})"))
        return
    sync = (f"hessra-pg keys sync --authority {where} --ca ... --dsn <a key administrator's DSN> (registers it, "
            "and ends the previous key after a grace)")
    active = sorted((key for key in keys if key.active), key=lambda key: (key.not_before, key.kid), reverse=True)
    mine = next((key for key in keys if key.public_key == published.public_key), None)
    if mine is None:
        newest = f" (the newest active key is kid {active[0].kid})" if active else ""
        report.checks.append(Check(
            name, FAIL, f"the authority at {where} signs with a key this database doesn't have: every token it "
                        f"issues now is refused{newest}", sync))
        return
    if published.kid is not None and published.kid != mine.kid:
        report.checks.append(Check(
            name, FAIL, f"the authority at {where} names its key kid {published.kid}, but this database has it as "
                        f"kid {mine.kid}: tokens carrying root_key_id {published.kid} are refused",
            "register the key under the authority's kid (a key administrator fixes hessra_authz.keys by hand)"))
        return
    if not mine.active:
        state = (f"not active before {mine.starts}" if mine.future else f"retired since {mine.ends}")
        report.checks.append(Check(
            name, FAIL, f"the authority at {where} signs with kid {mine.kid}, {state}: every token it issues now "
                        "is refused",
            "a key administrator decides: keys sync never revives a retired key nor moves a key's window"))
        return
    ending = f"; it ends {mine.ends}" if mine.not_after is not None else ""
    if active[0].kid != mine.kid:
        report.checks.append(Check(
            name, WARN, f"the authority at {where} signs with kid {mine.kid}, but kid {active[0].kid} is newer"
                        f"{ending}",
            "fine if the newer key was registered ahead of the authority's next rotation; if the authority went "
            f"back to kid {mine.kid}, make sure it doesn't end while the authority uses it"))
        return
    report.checks.append(Check(name, OK, f"the authority at {where} signs with kid {mine.kid}, the newest active "
                                         f"key{ending}"))


def _probe_keys(conn: psycopg.Connection[Any], report: Report, *, admin_conn_given: bool) -> None:
    """Without read access to the keys table: present a token signed by a
    throwaway key. 'no active key' is an ERROR; otherwise at least one key
    is active (and this token fails its signature check)."""
    import psycopg

    from hessra_pg.core.keys import generate_keypair
    from hessra_pg.tokens.mint import mint_authorization

    token = mint_authorization(generate_keypair(), "hessra-doctor", "hessra-doctor", "probe")
    try:
        conn.execute("SELECT hessra_authz.verify_token(%s, 'hessra-doctor', 'hessra-doctor', 'probe')", (token,))
    except psycopg.Error as error:
        message = _db_message(error)
        if "no active key" in message:
            report.checks.append(Check("keys", FAIL, "no active key: every presented token raises 'no active key'",
                                       "SELECT hessra_authz.add_key('<PEM or alg/hex>') as a member of hessra_admin"))
        else:
            report.checks.append(Check("keys", FAIL, f"verifying a probe token fails: {message}"))
        return
    why = ("the --admin-dsn role can't read it either" if admin_conn_given
           else "pass --admin-dsn with a hessra_admin member's DSN to check them")
    report.checks.append(Check("keys", WARN, "at least one key is active; count and expiry dates not checked: "
                                             f"this role can't read hessra_authz.keys ({why})"))


# -- the server log ----------------------------------------------------------

#: The settings that decide whether bound parameters reach the server log.
LOG_SETTINGS = ("log_statement", "log_min_duration_statement", "log_min_duration_sample",
                "log_statement_sample_rate", "log_transaction_sample_rate", "log_parameter_max_length",
                "log_parameter_max_length_on_error")


@dataclass(frozen=True)
class LogRisk:
    """One way tokens bound as parameters reach the server log, and the
    setting whose 0 stops it."""

    status: str
    message: str
    setting: str
    value: str = "0"  # the value that stops it


def _statement_logging(settings: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """What logs this role's statements: (every statement, or a random share
    of them; only slow ones). Each is logged with its bound parameters
    unless log_parameter_max_length = 0."""
    every, slow = [], []
    if settings["log_statement"] == "all":
        every.append("log_statement = 'all' logs every statement")
    duration = int(settings["log_min_duration_statement"])
    if duration == 0:
        every.append("log_min_duration_statement = 0 logs every statement")
    elif duration > 0:
        slow.append(f"log_min_duration_statement = {duration} logs statements slower than {duration} ms")
    if float(settings["log_transaction_sample_rate"]) > 0:
        every.append(f"log_transaction_sample_rate = {settings['log_transaction_sample_rate']} logs every "
                     "statement of that share of transactions")
    sample, rate = int(settings["log_min_duration_sample"]), settings["log_statement_sample_rate"]
    if sample == 0 and float(rate) > 0:
        every.append(f"log_min_duration_sample = 0 with log_statement_sample_rate = {rate} logs that share of "
                     "every statement")
    elif sample > 0 and float(rate) > 0:
        slow.append(f"log_min_duration_sample = {sample} with log_statement_sample_rate = {rate} logs that share "
                    f"of the statements slower than {sample} ms")
    return every, slow


def log_risks(settings: Mapping[str, str]) -> list[LogRisk]:
    """The ways the token an application binds into ``set_config()`` reaches
    the server log under these settings (``pg_settings.setting`` values of
    :data:`LOG_SETTINGS`). The statement text shows only ``$1``; the
    parameters come with every logged statement unless
    log_parameter_max_length = 0, and with a failing one when
    log_parameter_max_length_on_error is not 0 (even a truncated token is
    more than the log should hold)."""
    risks = []
    limit = int(settings["log_parameter_max_length"])
    every, slow = _statement_logging(settings)
    if limit != 0 and every:
        risks.append(LogRisk(FAIL, f"{' and '.join(every)} with its bound parameters (log_parameter_max_length = "
                                   f"{limit}): the token the application binds into set_config() is written to "
                                   "the server log", "log_parameter_max_length"))
    elif limit != 0 and slow:
        risks.append(LogRisk(WARN, f"{' and '.join(slow)} with their bound parameters (log_parameter_max_length = "
                                   f"{limit}): a slow statement that binds a token writes it to the server log",
                             "log_parameter_max_length"))
    on_error = int(settings["log_parameter_max_length_on_error"])
    if on_error != 0:
        risks.append(LogRisk(WARN, f"log_parameter_max_length_on_error = {on_error} logs a failing statement with "
                                   "its bound parameters: a failing statement that binds a token writes it to the "
                                   "server log", "log_parameter_max_length_on_error"))
    return risks


def _check_server_log(conn: psycopg.Connection[Any], report: Report,
                      transport: str = SET_CONFIG, *, citus: bool = False) -> dict[str, str | None] | None:
    """The server log check; returns the settings it read (None if it
    couldn't), for the role settings check to start from."""
    # The values of this session are the application's: they include what
    # ALTER DATABASE / ALTER ROLE ... SET give this role in this database.
    rows = conn.execute("SELECT name, setting, source FROM pg_settings WHERE name = ANY (%s)",
                        (list(LOG_SETTINGS + CAPTURE_SETTINGS),)).fetchall()
    settings: dict[str, str | None] = {name: setting for name, setting, _ in rows}
    sources = {name: source for name, _, source in rows}
    missing = [name for name in LOG_SETTINGS if name not in settings]
    if missing:
        report.checks.append(Check("server log", SKIP, f"not checked: this role can't read {', '.join(missing)}"))
        return None
    for name in CAPTURE_SETTINGS:  # a module's settings are in pg_settings only while it is loaded
        settings.setdefault(name, None)
    risks = log_risks(settings) + capture_risks(settings, transport)  # type: ignore[arg-type]
    if citus:  # the citus transport check reports track_utility (doctor_citus)
        risks = [risk for risk in risks if risk.setting != "pg_stat_statements.track_utility"]
    if not risks:
        report.checks.append(Check("server log", OK, (
            f"no setting logs this role's bound parameters (log_statement = '{settings['log_statement']}', "
            f"log_min_duration_statement = {settings['log_min_duration_statement']}, "
            f"log_parameter_max_length = {settings['log_parameter_max_length']}, "
            f"log_parameter_max_length_on_error = {settings['log_parameter_max_length_on_error']})")))
        return settings
    role, database = conn.execute("SELECT quote_ident(current_user), quote_ident(current_database())").fetchone()
    fixes = []
    for risk in risks:
        if sources.get(risk.setting) in ("client", "session"):
            fixes.append(f"remove {risk.setting} from the connection's options")
        else:
            # ROLE IN DATABASE wins over the database, role and server values.
            fixes.append(f"ALTER ROLE {role} IN DATABASE {database} SET {risk.setting} = {risk.value}")
    status = FAIL if any(risk.status == FAIL for risk in risks) else WARN
    report.checks.append(Check("server log", status, "; ".join(risk.message for risk in risks),
                               "; ".join(_unique(fixes)) + " (as a superuser; new sessions pick it up)"))
    return settings


# -- policies --------------------------------------------------------------

_POLICIES_SQL = r"""
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified,
       quote_ident(c.relname) AS alias, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner) AS owner, pg_has_role(c.relowner, 'MEMBER') AS acts_as_owner,
       p.polname, p.polcmd, p.polpermissive,
       pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS with_check,
       0 = ANY (p.polroles) OR EXISTS (SELECT FROM unnest(p.polroles) AS r(oid)
                                        WHERE r.oid <> 0 AND pg_has_role(r.oid, 'MEMBER')) AS applies,
       quote_ident(p.polname) AS quoted_name,
       obj_description(p.oid, 'pg_policy') AS comment
  FROM pg_policy p
  JOIN pg_class c ON c.oid = p.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE p.polrelid IN (SELECT polrelid FROM pg_policy
                       WHERE pg_get_expr(polqual, polrelid) LIKE '%hessra\_authz.%'
                          OR pg_get_expr(polwithcheck, polrelid) LIKE '%hessra\_authz.%')
 ORDER BY n.nspname, c.relname, p.polname
"""

_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


@dataclass
class _Table:
    oid: int
    qualified: str
    owner: str
    acts_as_owner: bool


@dataclass
class _Policy:
    """A policy of a table whose policies mention hessra_authz, with its
    expressions read: (clause, its hessra_authz calls), or why one could
    not be read."""

    row: tuple[Any, ...]
    clauses: list[tuple[str, list[_Call]]] = field(default_factory=list)
    unreadable: str | None = None

    @property
    def calls_hessra(self) -> bool:
        return self.unreadable is not None or any(calls for _, calls in self.clauses)


def _read_policy(row: tuple[Any, ...]) -> _Policy:
    alias, qual, with_check = row[2], row[10], row[11]
    policy = _Policy(row)
    for clause, text in (("USING", qual), ("WITH CHECK", with_check)):
        if not text:
            continue
        try:
            policy.clauses.append((clause, _hessra_calls(text, alias)))
        except PolicyExpressionError as error:
            policy.unreadable = f"its {clause} expression can't be read ({error})"
    return policy


def _check_tables(conn: psycopg.Connection[Any], report: Report) -> list[_Table]:
    tables: dict[int, list[_Policy]] = {}
    for row in conn.execute(_POLICIES_SQL).fetchall():
        tables.setdefault(row[0], []).append(_read_policy(row))
    # The SQL finds the text 'hessra_authz.'; only a call makes a token table
    # (not a string literal that mentions one).
    tables = {oid: policies for oid, policies in tables.items() if any(p.calls_hessra for p in policies)}
    if not tables:
        report.checks.append(Check("tables", WARN, "no table has a policy that calls hessra_authz: nothing is "
                                                   "enforced with tokens yet",
                                   "generate policies with `hessra-pg policy generate`"))
        return []
    result = []
    for policies in tables.values():
        oid, qualified, alias, enabled, forced, owner, acts_as_owner = policies[0].row[:7]
        result.append(_Table(oid, qualified, owner, acts_as_owner))
        problems = []
        if not enabled:
            problems.append("row level security is not enabled (its policies are ignored)")
        if not forced:
            problems.append("row level security is not forced (the owner bypasses it)")
        if problems:
            fixes = ([f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY"] if not enabled else []) + \
                    ([f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY"] if not forced else [])
            report.checks.append(Check(f"table {qualified}", FAIL, "; ".join(problems), "; ".join(fixes)))
        else:
            report.checks.append(Check(f"table {qualified}", OK, "row level security enabled and forced"))
        good, per_row, bad = 0, 0, []
        for policy in policies:
            name, command, permissive, _, _, applies, quoted_name, comment = policy.row[7:15]
            label = f"policy {name} on {qualified}"
            if policy.unreadable is not None:
                bad.append(Check(label, WARN, f"not checked: {policy.unreadable}",
                                 "check it by hand (every hessra_authz call inside a (SELECT ...) with no column "
                                 "of the row); a newer pglast may read it: pip install -U 'hessra-pg[doctor]'"))
                continue
            if not any(not call.cheap for _, calls in policy.clauses for call in calls):
                # Permissive policies are OR-ed: one this role passes without
                # a token opens the table as far as it reaches.
                if permissive and applies:
                    report.checks.append(Check(
                        label, FAIL,
                        f"permissive FOR {_COMMANDS[command]} policy without a token check: this role passes it "
                        "with no token (permissive policies are OR-ed with the token policies)",
                        f"DROP POLICY {quoted_name} ON {qualified}; or re-create it AS RESTRICTIVE, TO roles other "
                        "than this one, or with a token check"))
                continue
            slow = [f"{_describe(call)} in {clause}" for clause, calls in policy.clauses for call in calls
                    if call.per_row]
            if slow and intends_per_row(comment):
                # Generated with --no-subquery (Citus refuses subqueries in
                # the policies of distributed tables): per row by design.
                per_row += 1
            elif slow:
                bad.append(Check(label, FAIL, "evaluated once per row: " + "; ".join(slow), _PER_STATEMENT_HINT))
            else:
                good += 1
        if bad:
            report.checks.extend(bad)
        elif good or per_row:
            noun = "token policy" if good + per_row == 1 else "token policies"
            parts = ["every hessra_authz call once per statement"] if good else []
            if per_row:
                parts.append(f"{per_row} without subqueries by design (--no-subquery, for Citus: "
                             "hessra_authz calls once per row)")
            report.checks.append(Check(f"policies on {qualified}", OK, f"{good + per_row} {noun}, " + "; ".join(parts)))
    return result


_PER_STATEMENT_HINT = ("wrap each call in (SELECT ...) with no column of the row inside; for row-dependent checks "
                       "compare with (SELECT hessra_authz.authorized_resources(...)) (`hessra-pg policy generate` "
                       "writes these forms)")


# -- reading policy expressions --------------------------------------------
#
# Policy expressions are read with PostgreSQL's own parser (libpg_query,
# through pglast), never with patterns: string literals, dollar quoting,
# comments, quoted identifiers and nesting are the parser's business. The
# text is what pg_get_expr() deparses under search_path = pg_catalog, so
# every hessra_authz function comes out schema-qualified, and every column
# inside a subquery comes out qualified by its relation's name.

#: The one line doctor fails with when its parser is not installed.
PGLAST_MISSING = "hessra-pg doctor needs pglast: pip install 'hessra-pg[doctor]'"


def require_parser() -> Any:
    """The pglast module; DoctorRequirementError if it is not installed."""
    try:
        import pglast
        import pglast.ast
    except ImportError:
        raise DoctorRequirementError(PGLAST_MISSING, module="pglast", extra="doctor") from None
    return pglast


@dataclass(eq=False)
class _Subquery:
    """One SubLink (a ``(SELECT ...)``, EXISTS, IN, ARRAY(...)) of a policy
    expression: PostgreSQL runs it once per statement unless it refers to
    the row (it is correlated)."""

    correlated: bool = False


#: The per-row verifier of designation policies, meant to run per row only
#: behind its guard: ... (SELECT ... hessra_authz.designation_fallback(...) ...) AND ... .
_GUARDED_PER_ROW = "designation_row"
_GUARD = "designation_fallback"


@dataclass(frozen=True)
class _Call:
    function: str
    cheap: bool
    location: int
    subqueries: tuple[_Subquery, ...]  # the enclosing ones, outermost first
    guard: _Subquery | None = None  # a designation_fallback subquery ANDed before, for designation_row

    @property
    def per_row(self) -> bool:
        """Evaluated for every row: no enclosing subquery runs apart from
        the row (an uncorrelated one is planned once per statement, as an
        InitPlan or a materialized SubPlan, whatever it is nested in).
        designation_row behind an uncorrelated designation_fallback runs
        only for tokens that need per-row verification: by design."""
        if self.guard is not None and not self.guard.correlated:
            return False
        return not self.cheap and all(subquery.correlated for subquery in self.subqueries)


def _identifier(name: str) -> str:
    """The name a (possibly quoted) SQL identifier denotes: quote_ident()
    output or a name as written in SQL."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name.lower()


class _ExpressionReader:
    """Walks pglast's raw parse tree of one expression, keeping the
    subqueries a node sits in and the FROM items each SELECT names."""

    def __init__(self, ast: Any, table: str | None) -> None:
        self.ast = ast
        self.table = table
        self.calls: list[_Call] = []
        self.subqueries: list[_Subquery] = []
        self.scopes: list[set[str]] = []  # FROM item names of each enclosing SELECT, innermost last
        self.guards: list[_Subquery] = []
        from pglast.enums import BoolExprType

        self.and_expr = BoolExprType.AND_EXPR

    def visit(self, node: Any) -> None:
        ast = self.ast
        if isinstance(node, (list, tuple)):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.BoolExpr) and node.boolop == self.and_expr and node.args:
            # `... (SELECT ... designation_fallback(...) ...) ... AND designation_row(...)`:
            # an earlier argument decides whether designation_row runs.
            pushed = 0
            for arg in node.args:
                before = len(self.calls)
                self.visit(arg)
                for call in self.calls[before:]:
                    if call.function == _GUARD and call.subqueries:
                        self.guards.append(call.subqueries[-1])
                        pushed += 1
            del self.guards[len(self.guards) - pushed:]
            return
        if isinstance(node, ast.SubLink):
            self.visit(node.testexpr)  # `x IN (SELECT ...)`: x is evaluated with the row
            self.subqueries.append(_Subquery())
            self.visit(node.subselect)
            self.subqueries.pop()
            return
        if isinstance(node, ast.SelectStmt):
            self.scopes.append(self._from_names(node.fromClause))
            self._visit_fields(node)
            self.scopes.pop()
            return
        if isinstance(node, ast.ColumnRef):
            if self.subqueries and self._refers_to_row(node):
                # Every subquery between this reference and the row depends on it.
                for subquery in self.subqueries:
                    subquery.correlated = True
            return
        if isinstance(node, ast.FuncCall):
            names = [part.sval for part in node.funcname]
            if len(names) >= 2 and names[-2] == "hessra_authz":
                guard = self.guards[-1] if self.guards and names[-1] == _GUARDED_PER_ROW else None
                self.calls.append(_Call(names[-1], names[-1] in _CHEAP_FUNCTIONS, node.location or 0,
                                        tuple(self.subqueries), guard))
        self._visit_fields(node)

    def _visit_fields(self, node: Any) -> None:
        for name in node:
            self.visit(getattr(node, name))

    def _from_names(self, items: Any) -> set[str]:
        """The names FROM items are referred to by ("" for one without)."""
        ast = self.ast
        names: set[str] = set()
        for item in items or ():
            if isinstance(item, ast.JoinExpr):
                names |= self._from_names((item.larg, item.rarg))
            alias = getattr(item, "alias", None)
            if alias is not None:
                names.add(alias.aliasname)
            elif isinstance(item, ast.RangeVar):
                names.add(item.relname)
            elif isinstance(item, ast.RangeFunction) and isinstance(item.functions[0][0], ast.FuncCall):
                names.add(item.functions[0][0].funcname[-1].sval)  # unnest(...) is referred to as unnest
            elif not isinstance(item, ast.JoinExpr):
                names.add("")
        return names

    def _refers_to_row(self, column: Any) -> bool:
        """Whether a column reference inside a subquery is to the policy's
        row: ``table.column`` (or ``table.*``) unless a FROM item of an
        enclosing subquery has that name; an unqualified name when no
        enclosing subquery has a FROM item that could hold it (deparsed
        text never has one: PostgreSQL qualifies every column there)."""
        if self.table is None:
            return False
        names = [part.sval if isinstance(part, self.ast.String) else "*" for part in column.fields]
        if len(names) == 1:
            return names[0] != "*" and not any(self.scopes)
        qualifier = names[-2]
        return qualifier == self.table and not any(qualifier in scope for scope in self.scopes)


def _hessra_calls(expression: str, table: str | None = None) -> list[_Call]:
    """The hessra_authz calls of a (deparsed) policy expression, in text
    order; `table` is the policy's table as quote_ident() writes it (needed
    to tell correlated subqueries)."""
    pglast = require_parser()
    try:
        statements = pglast.parse_sql(f"SELECT {expression}\n")
    except pglast.parser.ParseError as error:
        raise PolicyExpressionError(f"PostgreSQL's parser rejects it: {error}") from None
    ast = pglast.ast
    select = statements[0].stmt if len(statements) == 1 else None
    if not (isinstance(select, ast.SelectStmt) and select.targetList and len(select.targetList) == 1
            and not any(getattr(select, clause) for clause in (
                "fromClause", "whereClause", "groupClause", "havingClause", "windowClause", "sortClause",
                "limitCount", "limitOffset", "lockingClause", "withClause", "intoClause", "distinctClause",
                "valuesLists", "larg", "rarg"))
            and select.targetList[0].name is None):
        raise PolicyExpressionError("it is not one scalar expression")
    reader = _ExpressionReader(ast, None if table is None else _identifier(table))
    reader.visit(select.targetList[0].val)
    return sorted(reader.calls, key=lambda call: call.location)


def verifying_calls(expression: str) -> list[str]:
    """The hessra_authz functions a deparsed policy expression calls that
    verify a token: current_token() and current_subject() only read the
    settings, so a policy with nothing else checks no token. Raises
    DoctorRequirementError without pglast, PolicyExpressionError on text
    that is not one expression."""
    return [call.function for call in _hessra_calls(expression) if not call.cheap]


def per_row_calls(expression: str, table_alias: str) -> list[str]:
    """The hessra_authz calls in a deparsed policy expression that run once
    per row: every call (except the cheap GUC readers current_token and
    current_subject) must sit inside a subquery (``(SELECT ...)``, EXISTS,
    IN, ARRAY(...)) that doesn't refer to the row of `table_alias` (the
    table's name as quote_ident() writes it; PostgreSQL deparses outer
    columns in a subquery as ``table_alias.column``). Returns descriptions
    like ``hessra_authz.authorized()``."""
    return [_describe(call) for call in _hessra_calls(expression, table_alias) if call.per_row]


def _describe(call: _Call) -> str:
    return f"hessra_authz.{call.function}(){' (its subquery refers to the row)' if call.subqueries else ''}"


# -- objects the role controls inside policies and indexes -------------------

# What the policies and indexes of the token tables depend on (names are
# bound when they are created). An object this role owns, or a role it is in,
# is code it wrote and can replace: an operator planted in a writable schema
# before the policy was created without a pinned search_path, say. Objects of
# superusers (pg_catalog, hessra_authz) are not this role's.
_BOUND_OBJECTS_SQL = """
WITH used AS (
    SELECT d.classid, d.objid, d.refclassid, d.refobjid,
           coalesce(p.polrelid, x.indrelid) AS table_oid,
           coalesce(f.proowner, o.oprowner, ty.typowner) AS owner, oc.proowner AS code_owner
      FROM pg_depend d
      LEFT JOIN pg_policy p ON d.classid = 'pg_policy'::regclass AND p.oid = d.objid
      LEFT JOIN pg_index x ON d.classid = 'pg_class'::regclass AND x.indexrelid = d.objid
      LEFT JOIN pg_proc f ON d.refclassid = 'pg_proc'::regclass AND f.oid = d.refobjid
      LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid
      LEFT JOIN pg_proc oc ON oc.oid = o.oprcode
      LEFT JOIN pg_type ty ON d.refclassid = 'pg_type'::regclass AND ty.oid = d.refobjid
     WHERE d.classid IN ('pg_policy'::regclass, 'pg_class'::regclass)
       AND d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass)
), controlled AS (
    SELECT used.*, CASE WHEN pg_has_role(owner, 'MEMBER') THEN owner ELSE code_owner END AS controller
      FROM used
     WHERE table_oid = ANY (%s::oid[])
       AND (pg_has_role(owner, 'MEMBER') OR pg_has_role(code_owner, 'MEMBER'))
)
SELECT DISTINCT
       CASE WHEN c.classid = 'pg_policy'::regclass THEN 'policy ' || p.polname
            ELSE 'index ' || i.relname END AS label,
       quote_ident(n.nspname) || '.' || quote_ident(t.relname) AS qualified,
       pg_describe_object(c.refclassid, c.refobjid, 0) AS object,
       quote_ident(r.rolname) AS controller
  FROM controlled c
  JOIN pg_roles r ON r.oid = c.controller AND NOT r.rolsuper
  JOIN pg_class t ON t.oid = c.table_oid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  LEFT JOIN pg_policy p ON c.classid = 'pg_policy'::regclass AND p.oid = c.objid
  LEFT JOIN pg_class i ON c.classid = 'pg_class'::regclass AND i.oid = c.objid
 ORDER BY qualified, label, object
"""


def _check_bound_objects(conn: psycopg.Connection[Any], report: Report, tables: list[_Table], *,
                         superuser: bool) -> None:
    if superuser:
        return  # a member of every role: the role check already fails
    rows = conn.execute(_BOUND_OBJECTS_SQL, ([table.oid for table in tables],)).fetchall()
    found: dict[tuple[str, str], list[str]] = {}
    for label, qualified, what, controller in rows:
        found.setdefault((label, qualified), []).append(f"{what}, owned by {controller}")
    for (label, qualified), objects in found.items():
        report.checks.append(Check(
            f"{label} on {qualified}", FAIL,
            f"uses {'; '.join(objects)} (this role or one it is a member of): it decides what the expression "
            "computes",
            "re-create it with search_path = pg_catalog, pg_temp (`hessra-pg policy generate` scripts and the "
            "Alembic operations do), then drop what this role planted; and REVOKE CREATE ON SCHEMA public "
            "FROM PUBLIC"))


# -- views -------------------------------------------------------------------

# Every view and materialized view that reads a token table, directly or
# through other views: (view, table, the views in between, nearest the
# table first). A view's _RETURN rule depends on what it reads.
_VIEWS_SQL = """
WITH RECURSIVE reads(view_oid, table_oid, via) AS (
    SELECT r.ev_class, d.refobjid, ARRAY[]::oid[]
      FROM pg_depend d
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = ANY (%s::oid[]) AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, reads.table_oid, reads.via || reads.view_oid
      FROM reads
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = reads.view_oid
      JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
     WHERE r.ev_class <> reads.view_oid AND r.ev_class <> ALL (reads.via)
)
SELECT v.oid, quote_ident(vn.nspname) || '.' || quote_ident(v.relname), v.relkind,
       quote_ident(o.rolname), o.rolsuper, o.rolbypassrls, o.rolname = current_user,
       coalesce(v.reloptions, '{}'), has_table_privilege(v.oid, 'SELECT, INSERT, UPDATE, DELETE'),
       quote_ident(tn.nspname) || '.' || quote_ident(t.relname), reads.via
  FROM reads
  JOIN pg_class v ON v.oid = reads.view_oid
  JOIN pg_namespace vn ON vn.oid = v.relnamespace
  JOIN pg_roles o ON o.oid = v.relowner
  JOIN pg_class t ON t.oid = reads.table_oid
  JOIN pg_namespace tn ON tn.oid = t.relnamespace
 WHERE v.relkind IN ('v', 'm')
 ORDER BY vn.nspname, v.relname, 10
"""

_TRUE_WORDS = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})  # PostgreSQL's parse_bool


@dataclass
class _View:
    qualified: str
    materialized: bool
    owner: str
    bypass: str | None  # why the owner bypasses row level security, if it does
    own: bool  # owned by the connecting role: it runs with this role's rights anyway
    invoker: bool
    usable: bool
    paths: list[tuple[str, list[int]]] = field(default_factory=list)  # (table, views in between)


def _security_invoker(options: list[str]) -> bool:
    for option in options:
        key, _, value = option.partition("=")
        if key == "security_invoker":
            return value.strip().lower() in _TRUE_WORDS
    return False


def _views(conn: psycopg.Connection[Any], tables: list[_Table]) -> dict[int, _View]:
    views: dict[int, _View] = {}
    for (oid, qualified, kind, owner, superuser, bypassrls, own, options, usable, table,
         via) in conn.execute(_VIEWS_SQL, ([table.oid for table in tables],)):
        bypass = "a superuser" if superuser else "BYPASSRLS" if bypassrls else None
        view = views.setdefault(oid, _View(qualified, kind == "m", owner, bypass, own, _security_invoker(options),
                                           usable))
        view.paths.append((table, list(via)))
    return views


def _check_views(conn: psycopg.Connection[Any], report: Report, tables: list[_Table]) -> None:
    views = _views(conn, tables)
    problems = [check for check in (_view_check(view, views, conn) for view in views.values()) if check]
    report.checks.extend(problems)
    if not problems:
        report.checks.append(Check("views", OK, "no view or materialized view this role can use reads a table "
                                                "with token policies with another role's rights"))


def _view_check(view: _View, views: dict[int, _View], conn: psycopg.Connection[Any]) -> Check | None:
    """A FAIL for a view this role can use that reads a token table with
    another role's rights, else None. (A security_invoker view reads what it
    reads as this role, which then needs privileges on those views itself:
    the ones it has are checked on their own.)"""
    if not view.usable or view.own:
        return None
    read = _unique(table for table, _ in view.paths)
    if view.materialized:
        role = conn.execute("SELECT quote_ident(current_user)").fetchone()[0]
        return Check(f"materialized view {view.qualified}", FAIL,
                     f"holds the rows of {', '.join(read)} that its owner {view.owner} read at its last REFRESH: "
                     "row level security doesn't apply to reading it",
                     f"REVOKE ALL ON {view.qualified} FROM PUBLIC, {role} (or drop it: a view WITH "
                     "(security_invoker = true) is filtered per reader)")
    if view.invoker:
        return None
    # Rights switch at every view that is not security_invoker; the table is
    # read with those of the last one before it (the one nearest the table).
    chains = [[views[oid] for oid in via] for _, via in view.paths]
    definers = [next((v for v in chain if not v.invoker), view) for chain in chains]
    reader = next((v for v in definers if v.bypass), definers[0])
    between = _unique(v.qualified for chain in chains for v in chain)
    through = f" (through {', '.join(between)})" if between else ""
    rights = (f"its owner {reader.owner}" if reader.owner == view.owner
              else f"{reader.owner}, the owner of {reader.qualified}")
    if reader.bypass:
        effect = f", who bypasses row level security ({reader.bypass}): this role reads every row through it"
    else:
        effect = ": the policies are checked for that role, not for this one"
    to_fix = [view] + [v for chain in chains for v in reversed(chain) if not v.invoker and not v.materialized]
    fixes = _unique(f"ALTER VIEW {v.qualified} SET (security_invoker = true)" for v in to_fix)
    return Check(f"view {view.qualified}", FAIL,
                 f"not security_invoker: reads {', '.join(read)}{through} with the rights of {rights}{effect}",
                 "; ".join(fixes))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the role --------------------------------------------------------------

def _check_role(conn: psycopg.Connection[Any], report: Report, *, role: str, superuser: bool, bypassrls: bool,
                tables: list[_Table]) -> None:
    name = f"role {role}"
    if superuser:
        report.checks.append(Check(name, FAIL, "is a superuser: row level security does not apply to it",
                                   "connect the application as an ordinary role (NOSUPERUSER NOBYPASSRLS)"))
        return
    problems = []
    if bypassrls:
        problems.append("has BYPASSRLS: row level security does not apply to it")
    owned = [table for table in tables if table.acts_as_owner]
    if owned:
        listed = ", ".join(f"{table.qualified} (owner {table.owner})" for table in owned)
        problems.append(f"owns or is a member of the owner of {listed}: it can disable or drop the policies")
    escalations = [row[0] for row in conn.execute(
        "SELECT rolname FROM pg_roles WHERE (rolsuper OR rolbypassrls) AND rolname <> current_user "
        "AND pg_has_role(oid, 'MEMBER') ORDER BY rolname")]
    if escalations:
        problems.append(f"can SET ROLE to {', '.join(escalations)}, which bypass row level security")
    # Key administration is a per-database privilege since 0.3.0
    # (grant_admin): whoever may run add_key here, hessra_admin or not.
    admin = conn.execute(
        "SELECT has_function_privilege(p, 'EXECUTE') "
        "FROM to_regprocedure('hessra_authz.add_key(text, integer, timestamptz, timestamptz, text)') AS p "
        "WHERE p IS NOT NULL").fetchone()
    if admin and admin[0]:
        problems.append("administers this database's keys (hessra_admin, or grant_admin()): it can register its "
                        "own key and mint any token")
    if problems:
        report.checks.append(Check(name, FAIL, "; ".join(problems),
                                   "connect the application as a role that is not superuser, has NOBYPASSRLS, "
                                   "owns no table and is in no such role (GRANT only the table privileges it needs)"))
        return
    report.checks.append(Check(name, OK, f"not superuser, no BYPASSRLS, owns none of the "
                                         f"{_plural(len(tables), 'table')} with token policies, "
                                         "can't administer keys"))
