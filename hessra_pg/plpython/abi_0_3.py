"""PL/Python entry points of extension version 0.3.0.

Each SQL function body is one line that calls a function here with its
arguments. The verifying ones start with the statement context every
plpgsql wrapper passes: the statement's start (microseconds since the
epoch, int8), its snapshot (`pg_current_snapshot()::text`), the top-level
transaction id (or NULL), and the configuration version (NULL on the first
attempt). Every value crosses as an integer, a boolean or text that no
session setting formats (README "Session settings").

Outcomes are texts: 't', 'f', a JSON result, a JSON error object that
hessra_authz._raise() turns into an ERROR, or STALE ('s': run
hessra_authz._sync() and call again); set helpers return text[] headed
"ok", "s" or "error". A yes/no function never raises for any token or
argument: an unexpected exception denies (runtime.internal_error).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..errors import ConfigurationError, HessraError, KeyFormatError, TokenFormatError
from ..core.keys import canonical_public_key
from ..core.verifier import Revocations, RootKey, parse_chain
from .runtime import RUNTIME, STALE, _Stale, error_outcome, internal_error

_EXPLAIN_FAILED = json.dumps({"valid": False, "reason": "internal_error", "kid": None, "expires_at": None,
                              "revocation_ids": [], "detail": "the verifier failed unexpectedly"})


def _entry(denied: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn exceptions into outcomes. `denied`: the result for an
    unexpected exception (fail closed); None makes it an error outcome."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        array = isinstance(denied, list)

        def call(*args: Any) -> Any:
            try:
                return function(*args)
            except _Stale:
                return [STALE] if array else STALE
            except HessraError as error:
                outcome = error_outcome(error)
                return ["error", outcome] if array else outcome
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except BaseException as error:  # noqa: BLE001 (Rust panics are BaseExceptions)
                internal_error(RUNTIME, error)
                if denied is not None:
                    return list(denied) if array else denied
                outcome = error_outcome(HessraError(f"internal error ({type(error).__name__})"))
                return ["error", outcome] if array else outcome

        call.__name__ = function.__name__
        call.__doc__ = function.__doc__
        return call

    return decorate


def _bool(valid: bool) -> str:
    return "t" if valid else "f"


# -- verification --------------------------------------------------------------

@_entry("f")
def verify_token(statement_us: int, snapshot: str, xid: str | None, version: str | None, token: str | None,
                 subject: str | None, resource: str | None, operation: str | None, domain: str | None,
                 prefix: str | None) -> str:
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                             prefix=prefix).valid)


@_entry("f")
def verify_capability(statement_us: int, snapshot: str, xid: str | None, version: str | None, token: str | None,
                      resource: str | None, operation: str | None) -> str:
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.decide(token, subject=None, resource=resource, operation=operation, capability=True).valid)


@_entry("f")
def verify_service_chain(statement_us: int, snapshot: str, xid: str | None, version: str | None,
                         token: str | None, subject: str | None, resource: str | None, operation: str | None,
                         chain: str | None, component: str | None) -> str:
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, chain_name=chain,
                             use_chain=True, component=component).valid)


@_entry("f")
def verify_service_chain_nodes(statement_us: int, snapshot: str, xid: str | None, version: str | None,
                               token: str | None, subject: str | None, resource: str | None,
                               operation: str | None, nodes: str | None, component: str | None) -> str:
    if nodes is None:
        raise ConfigurationError("service chain nodes must not be NULL")
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, nodes_json=nodes,
                             use_chain=True, component=component).valid)


@_entry(_EXPLAIN_FAILED)
def explain(statement_us: int, snapshot: str, xid: str | None, version: str | None, admin: bool,
            token: str | None, subject: str | None, resource: str | None, operation: str | None,
            domain: str | None, prefix: str | None) -> str:
    """The whole Decision for administrators; the reason code only for
    other roles (Decision.redacted)."""
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    decision = call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                           prefix=prefix, detailed=True)
    return json.dumps((decision if admin else decision.redacted()).as_dict())


@_entry("f")
def verify_identity(statement_us: int, snapshot: str, xid: str | None, version: str | None, token: str | None,
                    identity: str | None, domain: str | None, ensure_subject_in_domain: bool | None) -> str:
    """Identity mode of spec §6.4; a NULL identity is false (use verify_bearer)."""
    if identity is None:
        return "f"
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.identity(token, identity, domain, bool(ensure_subject_in_domain)).valid)


@_entry("f")
def verify_bearer(statement_us: int, snapshot: str, xid: str | None, version: str | None, token: str | None,
                  domain: str | None) -> str:
    """Bearer mode of spec §6.4: the token's own root subject is the actor."""
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return _bool(call.identity(token, None, domain).valid)


@_entry(json.dumps({"identity": None}))
def token_identity(statement_us: int, snapshot: str, xid: str | None, version: str | None, token: str | None,
                   domain: str | None) -> str:
    """JSON {"identity": <the most specific identity proven, or null>}."""
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return json.dumps({"identity": call.token_identity(token, domain)})


@_entry(["ok", None, "f"])
def identity_scope(statement_us: int, snapshot: str, xid: str | None, version: str | None,
                   token: str | None) -> list[str | None]:
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return call.identity_scope(token)


@_entry(["ok"])
def authorized_resources(statement_us: int, snapshot: str, xid: str | None, version: str | None,
                         token: str | None, subject: str | None, operation: str | None) -> list[str | None]:
    call = RUNTIME.statement(statement_us, snapshot, xid, version)
    return call.resources(token, subject, operation)


# -- configuration ----------------------------------------------------------------

def config_version() -> str | None:
    """The configuration version this backend holds (None: nothing yet)."""
    return RUNTIME.config_version()


def config_changed(xid: str) -> None:
    RUNTIME.config_changed(xid)


@_entry(None)
def load_config(version: str, kids: list[int] | None, public_keys: list[str] | None,
                not_before_us: list[int | None] | None, not_after_us: list[int | None] | None,
                chain_names: list[str] | None, chain_nodes: list[str] | None, revoked_ids: list[str] | None,
                revoked_identities: list[str] | None, database: int | None, database_tag: str | None) -> str:
    """Take the configuration _sync() read: key windows as integer
    microseconds (no session setting formats them), chain nodes as jsonb
    text. Returns '' or an error outcome."""
    keys = tuple(
        RootKey(kid, key, None if before is None else before / 1_000_000, None if after is None else after / 1_000_000)
        for kid, key, before, after in zip(kids or (), public_keys or (), not_before_us or (), not_after_us or ()))
    chains = {name: json.loads(nodes) for name, nodes in zip(chain_names or (), chain_nodes or ())}
    revocations = Revocations(ids=frozenset(revoked_ids or ()), identities=frozenset(revoked_identities or ()))
    RUNTIME.load_config(version, keys, chains, revocations, database, database_tag or "")
    return ""


@_entry(None)
def cache_stats(admin: bool) -> str:
    return json.dumps(RUNTIME.stats(bool(admin)))


# -- administration helpers -------------------------------------------------------

@_entry(None)
def canonical_key(key: str) -> str:
    """Validate a PEM or alg/hex public key and return `alg/hex`."""
    try:
        return canonical_public_key(key)
    except KeyFormatError as error:
        raise KeyFormatError(f"invalid public key: {error}") from None


@_entry(None)
def canonical_chain(nodes: str | None) -> str:
    """Validate a chain's JSON nodes and return them with canonical keys."""
    if nodes is None:
        raise ConfigurationError("service chain nodes must not be NULL")
    parsed = parse_chain(json.loads(nodes))
    return json.dumps([{"component": node.component, "public_key": node.public_key} for node in parsed])


@_entry(None)
def authority_revocation_id(token: str | None) -> str:
    """JSON {"revocation_id": ...} of a token's authority block (revoking it
    kills every token derived from it). The token is parsed, not verified:
    a token signed by a retired key can still be revoked."""
    import biscuit_auth

    from ..core.encoding import decode_token, encode_token

    if token is None or not token.strip():
        raise TokenFormatError("token must not be empty")
    data = decode_token(token)
    try:
        ids = biscuit_auth.UnverifiedBiscuit.from_base64(encode_token(data)).revocation_ids
    except Exception:
        raise TokenFormatError("token is not a valid Biscuit") from None
    return json.dumps({"revocation_id": ids[0]})
