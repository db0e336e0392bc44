"""Keys that follow the authority: ``hessra-pg keys sync``.

Hessra's authority publishes its root public key at ``GET /public_key``
(``{"response_msg": ..., "public_key": "<PEM>"}``, as the SDK's
``hessra-api`` crate defines it) and rotates it on its own schedule. This
module fetches that key over verified TLS and brings
``hessra_authz.keys`` in line with it:

- the key is new to the database: register it (``hessra_authz.add_key``,
  the next free kid, or the authority's own when its response names one in
  ``root_key_id`` or ``kid``) and schedule the end of the previous newest
  active key at now + grace (``hessra_authz.retire_key``) unless it already
  ends sooner (sync never extends a key);
- the key is registered and active: nothing to do (a second run changes
  nothing);
- the key is registered but inactive (retired, or not yet valid), or the
  authority's kid is taken by another key: :class:`KeySyncConflict`, nothing
  changed. Sync never revives a retired key nor moves a key's window: that
  is for a person to decide.

Every change happens in one transaction, so a failure anywhere changes
nothing. The grace must outlast every token the old key signed: the longest
lifetime of a token the authority issues plus clock skew
(:data:`DEFAULT_GRACE`, 24 h + 5 min).

No network call ever happens inside a query: this runs beside the database
(a systemd timer, cron, a sidecar, or :meth:`KeySync.watch`), never in it.

    from hessra_pg.admin.keysync import Authority, KeySync

    sync = KeySync(Authority("authority.internal:8443", ca="ca.pem"), dsn="dbname=shop user=dba")
    for change in sync.run():
        print(change.line())

The pieces: :func:`fetch_authority_key` (HTTPS ``GET /public_key`` with the
standard library's ``http.client`` and ``ssl``: the server certificate is
verified against the given CA only, host name included; an IP address
needs an IP SAN) and :func:`sync_keys` (one transaction on a psycopg
connection).
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import hessra_pg
from hessra_pg.errors import HessraError, KeyFormatError, first_line

if TYPE_CHECKING:
    import ssl

    import psycopg

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "Authority",
    "AuthorityError",
    "AuthorityKey",
    "KeyChange",
    "KeySync",
    "KeySyncConflict",
    "KeySyncError",
    "backoff_delays",
    "fetch_authority_key",
    "format_duration",
    "parse_authority",
    "parse_duration",
    "sync_keys",
]

#: How long the previous key keeps verifying after a new one is registered:
#: the longest lifetime of a token a Hessra authority issues by default
#: (authorization tokens 5 min, identity tokens 1 h; 24 h covers identity
#: tokens minted for a day) plus 5 min of clock skew. Longer-lived tokens
#: need a longer --grace.
DEFAULT_GRACE = timedelta(hours=24, minutes=5)
#: How often --watch asks the authority.
DEFAULT_INTERVAL = timedelta(minutes=5)
#: Connect and read timeout of one request to the authority, in seconds.
DEFAULT_TIMEOUT = 10.0
#: A public key response is a few hundred bytes; refuse anything larger.
MAX_RESPONSE_BYTES = 64 * 1024
#: After a failure --watch retries after at most this (or the interval, if longer).
MAX_BACKOFF = timedelta(minutes=5)
#: The first retry comes after at most this (or the interval, if shorter).
FIRST_RETRY = timedelta(seconds=5)
#: KeySync's connections give up waiting for a lock (another sync, DDL on the
#: keys table) after this, and on any statement after twice as long.
LOCK_TIMEOUT = timedelta(seconds=30)
#: pg_advisory_xact_lock key: two syncs of one database run one after the other.
_LOCK_KEY = 0x6865737372616B73  # b"hessraks"
_MAX_KID = 2**31 - 1
PATH = "/public_key"


class AuthorityError(HessraError):
    """The authority's key could not be fetched: ``kind`` is ``config``
    (the CA or client certificate files), ``connection``, ``tls``, ``http``
    or ``format`` (the response is not the expected JSON or its key is not a
    public key). The message is one line and never quotes the response."""

    sqlstate = "08000"  # connection_exception

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class KeySyncError(HessraError):
    """The database refused to read or change its keys (nothing changed)."""

    sqlstate = "08000"  # connection_exception


class KeySyncConflict(KeySyncError):
    """The database holds the authority's key in a state sync does not
    change on its own: retired, not yet valid, or under another kid than the
    authority names (nothing changed; exit status 1)."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


# -- durations ---------------------------------------------------------------

_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")


def parse_duration(text: str) -> timedelta:
    """'24h5m', '90s', '1.5h', '2d', '500ms' or plain seconds ('300') ->
    timedelta; ValueError unless it is a positive duration."""
    value = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        position, seconds = 0, 0.0
        for match in _DURATION.finditer(value):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
        if not value or position != len(value):
            raise ValueError(f"not a duration: {text!r} (e.g. 24h5m, 90s, 300, 2d)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    if seconds > 3650 * 86400:
        raise ValueError(f"duration must be at most ten years, got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """timedelta -> '24h5m', '90s', '0.2s' (a form parse_duration reads)."""
    total = delta.total_seconds()
    if total < 60 and total != int(total):
        return f"{total:g}s"
    seconds = int(round(total))
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# -- the authority -----------------------------------------------------------

def parse_authority(address: str) -> tuple[str, int]:
    """'HOST[:PORT]' (an IPv6 address in brackets; an optional https://)
    -> (host, port), port 443 by default. ValueError if unusable."""
    text = address.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() != "https":
            raise ValueError(f"the authority is reached over https only, not {scheme}://")
    text = text.rstrip("/")
    if not text or "/" in text or "@" in text or any(c.isspace() for c in text):
        raise ValueError(f"authority must be HOST[:PORT], got {address!r}")
    port_text = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"authority must be HOST[:PORT] ([IPv6]:PORT), got {address!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"an IPv6 authority is written in brackets: [{text}]:PORT")
    else:
        host = text
    if not host:
        raise ValueError(f"authority must be HOST[:PORT], got {address!r}")
    port = 443
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"authority port must be 1-65535, got {port_text!r}")
        port = int(port_text)
    return host, port


def _tls_context(ca: str, mtls_cert: str | None, mtls_key: str | None) -> ssl.SSLContext:
    """Trust only `ca`, verify the host name, TLS 1.2 or newer."""
    import ssl  # (here: the CLI imports this module to build its parser)

    if bool(mtls_cert) != bool(mtls_key):
        raise AuthorityError("--mtls-cert and --mtls-key go together: give both or neither", kind="config")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except FileNotFoundError:
        raise AuthorityError(f"cannot read the CA file {ca}: no such file", kind="config") from None
    except OSError as error:
        reason = error.strerror if getattr(error, "strerror", None) else "no CA certificate in it"
        if isinstance(error, ssl.SSLError):
            reason = "no PEM CA certificate in it"
        raise AuthorityError(f"cannot use the CA file {ca}: {reason}", kind="config") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if mtls_cert and mtls_key:
        try:
            context.load_cert_chain(mtls_cert, mtls_key)
        except FileNotFoundError:
            raise AuthorityError(f"cannot read the client certificate {mtls_cert} or its key {mtls_key}: "
                                 "no such file", kind="config") from None
        except (OSError, ssl.SSLError) as error:
            reason = "not a PEM certificate and a matching PEM private key"
            if not isinstance(error, ssl.SSLError) and getattr(error, "strerror", None):
                reason = error.strerror
            raise AuthorityError(f"cannot use the client certificate {mtls_cert} with {mtls_key}: {reason}",
                                 kind="config") from None
    return context


@dataclass(frozen=True)
class AuthorityKey:
    """The authority's current root public key."""

    public_key: str
    """Canonical ``alg/hex`` (what ``hessra_authz.keys`` stores)."""
    kid: int | None
    """The key id the authority gives (``root_key_id`` or ``kid``), if any."""
    source: str
    """``host:port`` it came from."""


@dataclass(frozen=True)
class Authority:
    """Where the authority is and how to trust it."""

    address: str
    """``HOST[:PORT]`` (port 443 by default)."""
    ca: str
    """PEM file of the CA that signed the authority's server certificate (the only one trusted)."""
    mtls_cert: str | None = None
    mtls_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        parse_authority(self.address)  # ValueError early

    @property
    def host_port(self) -> str:
        host, port = parse_authority(self.address)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def check(self) -> None:
        """Load the CA and client certificate now (AuthorityError if they
        can't be used); fetch() loads them again each time (they may be
        renewed while --watch runs)."""
        _tls_context(self.ca, self.mtls_cert, self.mtls_key)

    def fetch(self) -> AuthorityKey:
        return fetch_authority_key(self.address, self.ca, mtls_cert=self.mtls_cert, mtls_key=self.mtls_key,
                                   timeout=self.timeout)


def fetch_authority_key(address: str, ca: str, *, mtls_cert: str | None = None, mtls_key: str | None = None,
                        timeout: float = DEFAULT_TIMEOUT) -> AuthorityKey:
    """``GET https://HOST:PORT/public_key``, the server certificate verified
    against `ca` (host name included); a client certificate when given.
    Returns the key in canonical form; AuthorityError (one line, never the
    response body) on any failure."""
    import http.client
    import socket
    import ssl

    try:
        host, port = parse_authority(address)
    except ValueError as error:
        raise AuthorityError(str(error), kind="config") from None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = _tls_context(ca, mtls_cert, mtls_key)
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        connection.request("GET", PATH, headers={
            "Accept": "application/json",
            "User-Agent": f"hessra-pg/{hessra_pg.__version__} (keys sync)",
        })
        response = connection.getresponse()
        status, reason = response.status, response.reason
        body = response.read(MAX_RESPONSE_BYTES + 1)
    except ssl.SSLCertVerificationError as error:
        detail = (error.verify_message or first_line(error)).rstrip(".")
        raise AuthorityError(f"TLS: the certificate of the authority at {where} is not trusted: {detail} "
                             "(check --ca, and that the certificate names this host)", kind="tls") from None
    except ssl.SSLError as error:
        detail = re.sub(r"\s*\(_ssl\.c:\d+\)", "", error.reason or first_line(error))
        if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            detail = "the authority closed the connection"
        if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or "CERTIFICATE" in detail:
            detail += ("; does it want a client certificate (--mtls-cert, --mtls-key)?" if not mtls_cert
                       else "; does it accept this client certificate?")
        raise AuthorityError(f"TLS with the authority at {where} failed: {detail}", kind="tls") from None
    except (socket.timeout, TimeoutError):
        raise AuthorityError(f"the authority at {where} did not answer within {timeout:g} s",
                             kind="connection") from None
    except socket.gaierror as error:
        raise AuthorityError(f"cannot resolve the authority's host {host}: {error.strerror or error}",
                             kind="connection") from None
    except http.client.HTTPException as error:
        raise AuthorityError(f"the authority at {where} sent no valid HTTP response ({type(error).__name__})",
                             kind="http") from None
    except OSError as error:
        detail = error.strerror or type(error).__name__
        raise AuthorityError(f"cannot reach the authority at {where}: {detail}", kind="connection") from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        raise AuthorityError(f"the authority at {where} answered GET {PATH} with HTTP {status}"
                             + (f" {reason}" if reason else ""), kind="http")
    if len(body) > MAX_RESPONSE_BYTES:
        raise AuthorityError(f"the authority at {where} sent more than {MAX_RESPONSE_BYTES // 1024} KiB for "
                             f"GET {PATH}: not a public key response", kind="format")
    public_key, kid = _read_response(body, where)
    return AuthorityKey(public_key=public_key, kid=kid, source=where)


def _read_response(body: bytes, where: str) -> tuple[str, int | None]:
    """The canonical key and optional kid of a /public_key response body."""
    from hessra_pg.core.keys import canonical_public_key

    prefix = f"the authority at {where} answered GET {PATH} with"
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AuthorityError(f"{prefix} something that is not JSON", kind="format") from None
    if not isinstance(data, dict):
        raise AuthorityError(f"{prefix} JSON that is not an object", kind="format")
    for name in ("response_msg", "public_key"):
        if not isinstance(data.get(name), str):
            what = "no" if name not in data else "a non-string"
            raise AuthorityError(f"{prefix} {what} {name!r} field (expected "
                                 '{"response_msg": ..., "public_key": "<PEM>"})', kind="format")
    try:
        public_key = canonical_public_key(data["public_key"])
    except KeyFormatError as error:
        raise AuthorityError(f"{prefix} a 'public_key' that is not a usable public key: {error}",
                             kind="format") from None
    kids = {name: data[name] for name in ("root_key_id", "kid") if data.get(name) is not None}
    for name, value in kids.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_KID:
            raise AuthorityError(f"{prefix} a {name!r} that is not a positive 32-bit integer", kind="format")
    if len(set(kids.values())) > 1:
        raise AuthorityError(f"{prefix} 'root_key_id' and 'kid' that differ", kind="format")
    return public_key, next(iter(kids.values()), None)


# -- the database ------------------------------------------------------------

@dataclass(frozen=True)
class KeyChange:
    """One change sync made (or, in a dry run, would make)."""

    action: str
    """``add`` (a key registered) or ``retire`` (a key's end scheduled)."""
    kid: int
    public_key: str
    at: datetime
    """``add``: when the key starts verifying; ``retire``: when it stops."""
    source: str | None = None
    """``add``: the authority it came from."""
    grace: timedelta | None = None
    """``retire``: the grace it was given."""

    def line(self, *, dry_run: bool = False) -> str:
        """One line for the operator (the public key in ``alg/hex``; nothing secret)."""
        stamp = _utc(self.at)
        if self.action == "add":
            verb, text = "added", f"kid {self.kid}: {self.public_key} from {self.source}, verifies from {stamp}"
        else:
            grace = f" (now + {format_duration(self.grace)} grace)" if self.grace is not None else ""
            verb, text = "retiring", f"kid {self.kid}: stops verifying at {stamp}{grace}"
        if dry_run:
            verb = f"would {self.action}"
        return f"{verb:<12} {text}"

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kid": self.kid, "public_key": self.public_key, "at": self.at.isoformat(),
                "source": self.source, "grace_seconds": self.grace.total_seconds() if self.grace else None}


_KEYS = """
SELECT kid, public_key, not_before, not_after,
       not_before <= %(now)s AND (not_after IS NULL OR not_after > %(now)s) AS active
  FROM hessra_authz.keys
 ORDER BY not_before DESC, kid DESC
"""


def _database_error(error: Exception, action: str) -> KeySyncError:
    import psycopg

    diag = getattr(error, "diag", None)
    message = getattr(diag, "message_primary", None) or first_line(error)
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return KeySyncError(f"cannot {action}: {message} (connect as a member of hessra_admin, or a role given "
                            "hessra_authz.grant_admin())")
    if isinstance(error, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
                          psycopg.errors.UndefinedFunction)):
        return KeySyncError(f"cannot {action}: {message} (is the hessra_authz extension created in this database?)")
    return KeySyncError(f"cannot {action}: {message}")


def _utc(value: datetime) -> str:
    from datetime import timezone

    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def sync_keys(conn: psycopg.Connection[Any], key: AuthorityKey, *, grace: timedelta = DEFAULT_GRACE,
              dry_run: bool = False) -> list[KeyChange]:
    """Bring ``hessra_authz.keys`` in line with the authority's `key`, in
    one transaction (a savepoint when `conn` is already in a transaction:
    then the caller's commit or rollback decides), and return what changed
    ([] when nothing had to).

    A new key is registered (the authority's kid if it gives one, else the
    next free kid), and the previous newest active key gets
    ``not_after = now + grace`` unless it already ends earlier. Other keys
    are left alone. A dry run does the same and rolls it back (the database
    still checks everything). KeySyncConflict when the key is registered
    but inactive, or its kid doesn't match; KeySyncError when the database
    refuses; nothing is changed in either case."""
    import psycopg

    if grace <= timedelta(0):
        raise ValueError("grace must be positive")
    changes: list[KeyChange] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            rows = conn.execute(_KEYS, {"now": now}).fetchall()
            changes = _plan(conn, key, rows, now, grace)
            if dry_run:
                raise psycopg.Rollback()
    except psycopg.Error as error:
        raise _database_error(error, "sync hessra_authz.keys") from None
    return changes


def _plan(conn: psycopg.Connection[Any], key: AuthorityKey, rows: list[tuple[Any, ...]], now: datetime,
          grace: timedelta) -> list[KeyChange]:
    # Both canonical alg/hex: fetch_authority_key made key.public_key so, and
    # the keys table's check constraint holds every row to it.
    registered = next((row for row in rows if row[1] == key.public_key), None)
    if registered is not None:
        kid, _, not_before, not_after, active = registered
        if key.kid is not None and key.kid != kid:
            raise KeySyncConflict(
                f"the authority's key is registered as kid {kid}, but the authority names it kid {key.kid}: "
                f"tokens carrying root_key_id {key.kid} are refused; nothing changed (fix the keys table by hand)")
        if active:
            return []
        if not_before > now:
            raise KeySyncConflict(
                f"the authority's key is kid {kid}, valid only from {_utc(not_before)}: the tokens it signs now are "
                "refused until then; nothing changed (keys sync never moves a key's window)")
        raise KeySyncConflict(
            f"the authority's key is kid {kid}, retired at {_utc(not_after)}: the authority signs with a key this "
            "database retired; nothing changed (keys sync never revives a retired key)")
    if key.kid is not None and any(row[0] == key.kid for row in rows):
        raise KeySyncConflict(f"the authority names its key kid {key.kid}, but kid {key.kid} is another key in "
                              "this database; nothing changed (fix the keys table by hand)")
    previous = next((row for row in rows if row[4]), None)  # newest active: latest not_before, then kid
    new_kid = conn.execute(
        "SELECT hessra_authz.add_key(%s, %s::integer, comment => %s)",
        (key.public_key, key.kid, f"hessra-pg keys sync from {key.source} at {_utc(now)}"),
    ).fetchone()[0]
    starts = conn.execute("SELECT not_before FROM hessra_authz.keys WHERE kid = %s::integer",
                          (new_kid,)).fetchone()[0]
    changes = [KeyChange("add", new_kid, key.public_key, starts, source=key.source)]
    if previous is not None:
        kid, public_key, _, not_after, _ = previous
        ends = now + grace
        if not_after is None or not_after > ends:
            conn.execute("SELECT hessra_authz.retire_key(%s::integer, %s)", (kid, ends))
            changes.append(KeyChange("retire", kid, public_key, ends, grace=grace))
    return changes


# -- sync and watch ----------------------------------------------------------

def backoff_delays(interval: timedelta) -> Callable[[int], float]:
    """Seconds to wait after the n-th failure in a row (n = 1, 2, ...):
    min(interval, 5 s) doubled each time, up to max(interval, 5 min), with
    +-10 % jitter so that many sidecars don't retry in step."""
    first = min(interval, FIRST_RETRY).total_seconds()
    cap = max(interval, MAX_BACKOFF).total_seconds()

    def delay(failures: int) -> float:
        base = min(cap, first * 2 ** min(failures - 1, 32))
        return base * (0.9 + 0.2 * random.random())

    return delay


class KeySync:
    """One database following one authority."""

    def __init__(self, authority: Authority, dsn: str, *, grace: timedelta = DEFAULT_GRACE,
                 lock_timeout: timedelta = LOCK_TIMEOUT) -> None:
        if grace <= timedelta(0):
            raise ValueError("grace must be positive")
        self.authority = authority
        self.dsn = dsn
        self.grace = grace
        self.lock_timeout = lock_timeout

    def run(self, *, dry_run: bool = False) -> list[KeyChange]:
        """Fetch the authority's key, then sync (the network first: a
        failure there never opens a transaction)."""
        import psycopg

        from hessra_pg.admin.doctor import connect
        from hessra_pg.errors import DoctorConnectionError

        key = self.authority.fetch()
        milliseconds = max(1, int(self.lock_timeout.total_seconds() * 1000))
        try:
            with connect(self.dsn) as conn:
                try:  # a sync stuck behind a lock must not hang a --watch forever
                    conn.execute("SELECT set_config('lock_timeout', %s, false), "
                                 "set_config('statement_timeout', %s, false)",
                                 (f"{milliseconds}ms", f"{2 * milliseconds}ms"))
                except psycopg.Error as error:
                    raise _database_error(error, "set up the connection") from None
                return sync_keys(conn, key, grace=self.grace, dry_run=dry_run)
        except DoctorConnectionError as error:
            raise KeySyncError(str(error)) from None

    def watch(self, *, interval: timedelta = DEFAULT_INTERVAL, stop: threading.Event | None = None,
              on_changes: Callable[[list[KeyChange]], None] | None = None,
              on_error: Callable[[HessraError, float], None] | None = None,
              on_unchanged: Callable[[], None] | None = None) -> None:
        """Sync every `interval` until `stop` is set. A failure (the
        authority, the network, the database, a conflict) never ends the
        loop: it is reported to `on_error(error, retry_in_seconds)` and
        retried with exponential backoff (:func:`backoff_delays`).
        `on_changes` gets each non-empty list of changes; `on_unchanged` is
        called when the first successful run changes nothing (later runs
        that change nothing say nothing)."""
        stop = stop or threading.Event()
        delay = backoff_delays(interval)
        failures = 0
        said_unchanged = False
        while not stop.is_set():
            try:
                changes = self.run()
            except HessraError as error:
                failures += 1
                wait = delay(failures)
                if on_error is not None:
                    on_error(error, wait)
            except Exception as error:  # a bug must not end a watch either; say what it was
                failures += 1
                wait = delay(failures)
                if on_error is not None:
                    on_error(HessraError(f"unexpected {type(error).__name__} (a hessra-pg bug)"), wait)
            else:
                failures = 0
                wait = interval.total_seconds()
                if changes:
                    said_unchanged = True
                    if on_changes is not None:
                        on_changes(changes)
                elif not said_unchanged:
                    said_unchanged = True
                    if on_unchanged is not None:
                        on_unchanged()
            stop.wait(wait)
