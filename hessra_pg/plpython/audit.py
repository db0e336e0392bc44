"""The audit trail of decisions (issue 16 item 1): one structured line in
the server log per audited decision.

The level (off, denied, all) is set by administrators in
hessra_authz.audit_settings, per database and optionally per role, and
travels with the rest of the configuration: a change bumps the
configuration generation, and hessra_authz._sync() hands the levels read
with the statement's snapshot to `load()` below together with the keys. No
session setting is read.

What is audited: every decision made by a verifying function (verify_*,
authorized, the policy set helpers, designation_row, ...), once per
statement per backend for each distinct (token, arguments): the first time
a statement asks, whether the answer was computed, found in this backend's
caches or in the shared decision table. Repeats within the statement (a
policy evaluated per row) are not logged again; the next statement is.
explain() and explain_capability() are diagnostics and are not audited.
A parallel worker is a backend: it logs the decisions it makes itself.

Cost when the level is off everywhere: one attribute test per decision
(Runtime.audit.active). Lines are rate-limited per backend by a token
bucket (BURST lines, then RATE per second); suppressed lines are counted
and reported by a `suppressed` line before the next line written, and in
hessra_authz.stats().
"""

from __future__ import annotations

import os
import sys
import time

from .stats import outcome_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

LEVELS = ("off", "denied", "all")
#: Lines a backend may write at once, and lines per second after that.
BURST = 200
RATE = 20.0
#: Distinct decisions remembered for the running statement (then forgotten:
#: repeats may be logged again, within the rate limit).
SEEN_MAX = 4096
#: Longest text field kept in a line (longer ones are cut, marked "...").
FIELD_MAX = 256


class AuditConfigError(ValueError):
    """An audit level that isn't off, denied or all reached the runtime."""


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > FIELD_MAX:
        return value[:FIELD_MAX] + "..."
    return value


def _asking_function() -> str:
    """The SQL-level function whose entry point asked (the first public
    function of an abi_* module up the stack), e.g. authorized."""
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            break
        name = frame.f_code.co_name
        if frame.f_globals.get("__name__", "").startswith("hessra_pg.plpython.abi_") and not (
                name.startswith("_") or name == "call"):
            return name
        frame = frame.f_back
    return "unknown"


def _fields(kind: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """Subject, resource, operation and the other arguments of a decision,
    by kind (the argument tuples of hessra_pg.plpython.runtime)."""
    if kind == "authorization":
        _, subject, resource, operation, domain, prefix, chain, component, capability = args
        fields = {"subject": subject, "resource": resource, "operation": operation}
        if domain is not None:
            fields["domain"] = domain
        if prefix is not None:
            fields["prefix"] = prefix
        if chain is not None:
            fields["chain"] = chain[1] if chain[0] == "named" else "(nodes)"
        if component is not None:
            fields["component"] = component
        return fields
    if kind == "capability":
        _, resource, operation, designations, subject = args
        fields = {"subject": subject, "resource": resource, "operation": operation}
        if designations:
            fields["designations"] = {_cut(label): _cut(value) for label, value in designations[:16]}
        return fields
    if kind in ("identity", "bearer"):
        _, identity, domain, _ensure = args
        fields = {"subject": identity, "resource": None, "operation": None}
        if domain is not None:
            fields["domain"] = domain
        return fields
    if kind == "authorized_resources":
        return {"subject": args[1], "resource": None, "operation": args[2]}
    if kind == "capability rows":
        _, resource, operation, labels, _fixed, subject = args
        return {"subject": subject, "resource": resource, "operation": operation, "row_labels": list(labels)}
    return {"subject": None, "resource": None, "operation": None}


def _token_facts(statement: Any, token: str | None, result: Any) -> tuple[int | None, str | None, str | None]:
    """(kid, revocation id of the authority block, fingerprint) of the token:
    the kid only if it verified under a registered key; the revocation ids
    from the token's structure (they identify what was presented, valid or
    not); the fingerprint is the first 12 hex digits of SHA-256 of the last
    block's revocation id, never of the token."""
    if token is None:
        return None, None, None
    kid = getattr(result, "kid", None)
    ids: tuple[str, ...] = tuple(getattr(result, "revocation_ids", ()) or ())
    verified = statement.runtime.tokens.peek((statement.digest(token), statement.config.version))
    if verified is None and getattr(result, "valid", False):
        # Allowed by another backend's answer (the shared decision table:
        # a parallel worker, a pool's other connections): this backend has
        # not checked the signature, so the kid is unknown here. Check it
        # once (the token cache keeps it): the line names the right key.
        try:
            verified = statement.load(token, statement.now)
        except Exception:  # noqa: BLE001 (the line then has no kid; the decision stands)
            verified = None
    key = getattr(verified, "key", None)
    if key is not None:
        kid = key.kid if kid is None else kid
        ids = ids or tuple(verified.revocation_ids)
    if not ids:
        try:
            from ..core.biscuit import unverified_revocation_ids
            from ..core.encoding import decode_token

            ids = unverified_revocation_ids(decode_token(token))
        except Exception:  # noqa: BLE001 (an unreadable token has no ids)
            ids = ()
    if not ids:
        return kid, None, None
    import hashlib

    return kid, ids[0], hashlib.sha256(ids[-1].encode()).hexdigest()[:12]


class Audit:
    """Audit levels and the line budget of one backend."""

    __slots__ = ("active", "busy", "database_level", "roles", "version", "seen", "seen_statement",
                 "allowance", "refilled", "suppressed", "suppressed_total", "written", "errors", "sequence",
                 "prefix")

    def __init__(self) -> None:
        #: Whether any level is not off (the one test on the decision path).
        self.active = False
        #: Set while an audited decision is being made (no nested audit).
        self.busy = False
        self.database_level = "off"
        #: role OID -> level, for the roles with their own level
        self.roles: dict[int, str] = {}
        self.version: str | None = None
        self.seen: set[Any] = set()
        self.seen_statement: int | None = None
        self.allowance = float(BURST)
        self.refilled = time.monotonic()
        self.suppressed = 0
        self.suppressed_total = 0
        self.written = 0
        self.errors = 0
        self.sequence = 0
        self.prefix = f"{os.getpid()}-{os.urandom(3).hex()}"

    def load(self, version: str, level: str | None, role_oids: list[int] | None,
             role_levels: list[str] | None) -> None:
        """Take the levels _sync() read with configuration `version`."""
        levels = [level or "off", *(role_levels or ())]
        if any(item not in LEVELS for item in levels):
            raise AuditConfigError(f"unknown audit level in {levels!r}")
        self.version = version
        self.database_level = level or "off"
        self.roles = dict(zip((int(oid) for oid in role_oids or ()), role_levels or ()))
        self.active = any(item != "off" for item in levels)
        self.seen.clear()

    def level(self) -> str:
        if not self.roles:
            return self.database_level
        from .server_log import outer_user_id

        return self.roles.get(outer_user_id(), self.database_level)

    def remembered(self, statement: Any, token: str | None, args: tuple[Any, ...], compute: Callable[[], Any],
                   keep: Callable[[Any], bool], shared: bool) -> Any:
        """Statement.remembered(), then the audit line its result calls for."""
        self.busy = True
        try:
            result = statement.remembered(token, args, compute, keep, shared)
        finally:
            self.busy = False
        try:
            self.decided(statement, token, args, result)
        except Exception as error:  # noqa: BLE001 (an audit failure never changes a decision)
            self.errors += 1
            if self.errors == 1:
                from .runtime import internal_error

                internal_error(statement.runtime, error)
        return result

    def decided(self, statement: Any, token: str | None, args: tuple[Any, ...], result: Any) -> None:
        kind = args[0] if args else "unknown"
        if kind.startswith("explain"):
            return
        level = self.level()
        if level == "off":
            return
        outcome, reason = outcome_of(kind, result)
        if level == "denied" and outcome == "allowed":
            return
        if statement.statement_us != self.seen_statement or len(self.seen) >= SEEN_MAX:
            self.seen.clear()
            self.seen_statement = statement.statement_us
        key = (None if token is None else statement.digest(token), args)
        if key in self.seen:
            return
        self.seen.add(key)
        if not self._allowed():
            self.suppressed += 1
            self.suppressed_total += 1
            return
        self._write(self._line(statement, token, kind, args, outcome, reason, result))

    def _allowed(self) -> bool:
        now = time.monotonic()
        self.allowance = min(float(BURST), self.allowance + (now - self.refilled) * RATE)
        self.refilled = now
        if self.allowance < 1.0:
            return False
        self.allowance -= 1.0
        return True

    def _line(self, statement: Any, token: str | None, kind: str, args: tuple[Any, ...], outcome: str,
              reason: str, result: Any) -> dict[str, Any]:
        from .server_log import in_recovery, outer_user_id, parallel_worker, query_id, user_name

        self.sequence += 1
        kid, revocation_id, fingerprint = _token_facts(statement, token, result)
        line: dict[str, Any] = {
            "event": "decision",
            "decision_id": f"{self.prefix}-{self.sequence}",
            "user": user_name(outer_user_id()),
            "function": _asking_function(),
            "kind": kind,
        }
        line.update({name: _cut(value) for name, value in _fields(kind, args).items()})
        line.update({
            "outcome": outcome,
            "reason": getattr(result, "reason", reason) if outcome != "allowed" else reason,
            "kid": kid,
            "revocation_id": revocation_id,
            "fingerprint": fingerprint,
            "token": "absent" if token is None else "present",
            "statement_start_us": statement.statement_us,
            "query_id": query_id(),
            "standby": in_recovery(),
            "parallel_worker": parallel_worker(),
        })
        return line

    def _write(self, line: dict[str, Any]) -> None:
        import json

        from .server_log import write

        if self.suppressed:
            write("hessra_authz audit: " + json.dumps({"event": "suppressed", "suppressed": self.suppressed,
                                                       "rate_per_second": RATE, "burst": BURST},
                                                      separators=(",", ":")))
            self.suppressed = 0
        # ensure_ascii: a subject holding a newline or a quote can't forge a line.
        write("hessra_authz audit: " + json.dumps(line, separators=(",", ":"), ensure_ascii=True))
        self.written += 1

    def report(self) -> dict[str, Any]:
        return {"level": self.database_level, "role_levels": len(self.roles), "lines": self.written,
                "suppressed": self.suppressed_total, "pending_suppressed": self.suppressed, "errors": self.errors,
                "burst": BURST, "rate_per_second": RATE}

    def reset(self) -> None:
        self.written = self.suppressed_total = self.errors = 0
