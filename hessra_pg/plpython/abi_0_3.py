"""PL/Python entry points of extension version 0.3.0.

Each SQL function body is one line that calls a function here with its
arguments. The verifying ones start with the statement context, the text
`hessra_authz._context()` builds once for every wrapper (statement start,
snapshot, transaction id: Runtime.call reads it), and the configuration
version (NULL on the first attempt). A new piece of context changes those
two places, not every wrapper. Every value crosses as an integer, a boolean
or text that no session setting formats (docs/security.md).

Outcomes are texts: 't', 'f', a JSON result, a JSON error object that
hessra_authz._raise() turns into an ERROR, or STALE ('s' followed by the
configuration version held: run hessra_authz._sync(held) and call again);
text[] results are headed "ok", "s" (then the version held) or "error". A
yes/no function never raises for any token or argument: an unexpected
exception denies (runtime.internal_error).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time: this is imported by every backend's first verification
    from typing import Any, Callable

from . import imports_without_gc

with imports_without_gc():
    from ..errors import ArgumentError, HessraError, InternalError, KeyFormatError, TokenFormatError
    from ..core.records import Revocations, RootKey, parse_chain
    from .runtime import (
        NO_CAPABILITY_SETTINGS,
        RUNTIME,
        STALE,
        CapabilitySettings,
        _Stale,
        error_outcome,
        internal_error,
    )

_EXPLAIN_FAILED = ('{"valid": false, "reason": "internal_error", "kid": null, "expires_at": null, '
                   '"revocation_ids": [], "detail": "the verifier failed unexpectedly"}')


def _entry(denied: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn exceptions into outcomes. `denied`: the result for an
    unexpected exception (fail closed); None makes it an error outcome."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        array = isinstance(denied, list)

        def call(*args: Any) -> Any:
            try:
                return function(*args)
            except _Stale:
                # The version held travels with the answer: _sync(held)
                # compares it in plpgsql, without calling back into Python.
                held = RUNTIME.config_version()
                return [STALE, held] if array else STALE + (held or "")
            except HessraError as error:
                outcome = error_outcome(error)
                return ["error", outcome] if array else outcome
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except BaseException as error:  # noqa: BLE001 (Rust panics are BaseExceptions)
                internal_error(RUNTIME, error)
                if denied is not None:
                    return list(denied) if array else denied
                outcome = error_outcome(InternalError(f"internal error ({type(error).__name__})"))
                return ["error", outcome] if array else outcome

        call.__name__ = function.__name__
        call.__doc__ = function.__doc__
        return call

    return decorate


def _bool(valid: bool) -> str:
    return "t" if valid else "f"


# -- verification --------------------------------------------------------------

@_entry("f")
def verify_token(context: str, version: str | None, token: str | None, subject: str | None,
                 resource: str | None, operation: str | None, domain: str | None, prefix: str | None) -> str:
    call = RUNTIME.call(context, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                             prefix=prefix).valid)


@_entry("f")
def verify_capability(context: str, version: str | None, token: str | None, resource: str | None,
                      operation: str | None) -> str:
    call = RUNTIME.call(context, version)
    return _bool(call.capability(token, resource, operation).valid)


@_entry("f")
def verify_service_chain(context: str, version: str | None, token: str | None, subject: str | None,
                         resource: str | None, operation: str | None, chain: str | None,
                         component: str | None) -> str:
    call = RUNTIME.call(context, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, chain_name=chain,
                             use_chain=True, component=component).valid)


@_entry("f")
def verify_service_chain_nodes(context: str, version: str | None, token: str | None, subject: str | None,
                               resource: str | None, operation: str | None, nodes: str | None,
                               component: str | None) -> str:
    if nodes is None:
        raise ArgumentError("service chain nodes must not be NULL",
                            hint='Pass a JSON array of {"component": ..., "public_key": ...} objects.')
    call = RUNTIME.call(context, version)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation, nodes_json=nodes,
                             use_chain=True, component=component).valid)


@_entry(_EXPLAIN_FAILED)
def explain(context: str, version: str | None, admin: bool, token: str | None, subject: str | None,
            resource: str | None, operation: str | None, domain: str | None, prefix: str | None) -> str:
    """The whole Decision for administrators; the reason code only for
    other roles (Decision.redacted)."""
    call = RUNTIME.call(context, version)
    decision = call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                           prefix=prefix, detailed=True)
    import json  # only explain and errors write JSON: keep it off the first call's imports

    return json.dumps((decision if admin else decision.redacted()).as_dict())


@_entry("f")
def verify_identity(context: str, version: str | None, token: str | None, identity: str | None,
                    domain: str | None, ensure_subject_in_domain: bool | None) -> str:
    """Identity mode of spec §6.4; a NULL identity is false (use verify_bearer)."""
    if identity is None:
        return "f"
    call = RUNTIME.call(context, version)
    return _bool(call.identity(token, identity, domain, bool(ensure_subject_in_domain)).valid)


@_entry("f")
def verify_bearer(context: str, version: str | None, token: str | None, domain: str | None) -> str:
    """Bearer mode of spec §6.4: the token's own root subject is the actor."""
    call = RUNTIME.call(context, version)
    return _bool(call.identity(token, None, domain).valid)


@_entry(["ok", None])
def token_identity(context: str, version: str | None, token: str | None, domain: str | None) -> list[str | None]:
    """["ok", the most specific identity proven, or NULL]."""
    call = RUNTIME.call(context, version)
    return ["ok", call.token_identity(token, domain)]


@_entry(["ok", None, "f"])
def identity_scope(context: str, version: str | None, token: str | None) -> list[str | None]:
    call = RUNTIME.call(context, version)
    return call.identity_scope(token)


@_entry(["ok"])
def authorized_resources(context: str, version: str | None, token: str | None, subject: str | None,
                         operation: str | None) -> list[str | None]:
    call = RUNTIME.call(context, version)
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
                node_chains: list[str] | None, node_kinds: list[str | None] | None,
                node_components: list[str | None] | None, node_keys: list[str | None] | None,
                revoked_ids: list[str] | None, revoked_identities: list[str] | None, database: int | None,
                database_tag: str | None) -> str:
    """Take the configuration _sync() read: key windows as integer
    microseconds (no session setting formats them); service chains one row
    per node, in chain order (kind: the node's jsonb type, NULL for a chain
    without nodes; component and key NULL unless strings). Returns '' or an
    error outcome."""
    take_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds, node_components,
                node_keys, revoked_ids, revoked_identities, database, database_tag)
    return ""


def take_config(version: str, kids: list[int] | None, public_keys: list[str] | None,
                not_before_us: list[int | None] | None, not_after_us: list[int | None] | None,
                node_chains: list[str] | None, node_kinds: list[str | None] | None,
                node_components: list[str | None] | None, node_keys: list[str | None] | None,
                revoked_ids: list[str] | None, revoked_identities: list[str] | None, database: int | None,
                database_tag: str | None, capability: CapabilitySettings | None = None) -> bool:
    """Hand _sync()'s arrays to the runtime (every ABI's load_config);
    whether it took them (it refuses a generation older than one in force)."""
    keys, chains, revocations = config_parts(kids, public_keys, not_before_us, not_after_us, node_chains,
                                             node_kinds, node_components, node_keys, revoked_ids, revoked_identities)
    RUNTIME.load_config(version, keys, chains, revocations, database, database_tag or "",
                        capability or NO_CAPABILITY_SETTINGS)
    return RUNTIME.config_version() == version


def config_parts(kids: list[int] | None, public_keys: list[str] | None, not_before_us: list[int | None] | None,
                 not_after_us: list[int | None] | None, node_chains: list[str] | None,
                 node_kinds: list[str | None] | None, node_components: list[str | None] | None,
                 node_keys: list[str | None] | None, revoked_ids: list[str] | None,
                 revoked_identities: list[str] | None) -> tuple[tuple[RootKey, ...], dict[str, list[object]],
                                                                Revocations]:
    """The keys, chains and revocations of _sync()'s arrays (load_config)."""
    keys = tuple(
        RootKey(kid, key, None if before is None else before / 1_000_000, None if after is None else after / 1_000_000)
        for kid, key, before, after in zip(kids or (), public_keys or (), not_before_us or (), not_after_us or ()))
    chains: dict[str, list[object]] = {}
    for name, kind, component, key in zip(node_chains or (), node_kinds or (), node_components or (),
                                          node_keys or ()):
        nodes = chains.setdefault(name, [])
        if kind is not None:
            nodes.append({"component": component, "public_key": key} if kind == "object" else kind)
    revocations = Revocations(ids=frozenset(revoked_ids or ()), identities=frozenset(revoked_identities or ()))
    return keys, chains, revocations


@_entry(None)
def cache_stats(admin: bool) -> str:
    import json

    return json.dumps(RUNTIME.stats(bool(admin)))


# -- administration helpers -------------------------------------------------------

@_entry(None)
def canonical_key(key: str) -> str:
    """Validate a PEM or alg/hex public key and return `alg/hex`."""
    from ..core.keys import canonical_public_key

    try:
        return canonical_public_key(key)
    except KeyFormatError as error:
        raise KeyFormatError(f"invalid public key: {error}") from None


@_entry(None)
def canonical_chain(nodes: str | None) -> str:
    """Validate a chain's JSON nodes and return them with canonical keys."""
    import json

    if nodes is None:
        raise ArgumentError("service chain nodes must not be NULL",
                            hint='Pass a JSON array of {"component": ..., "public_key": ...} objects.')
    parsed = parse_chain(json.loads(nodes))
    return json.dumps([{"component": node.component, "public_key": node.public_key} for node in parsed])


@_entry(None)
def authority_revocation_id(token: str | None) -> str:
    """JSON {"revocation_id": ...} of a token's authority block (revoking it
    kills every token derived from it). The token is parsed, not verified:
    a token signed by a retired key can still be revoked."""
    import json

    from ..core.biscuit import unverified_revocation_ids
    from ..core.encoding import decode_token

    if token is None or not token.strip():
        raise TokenFormatError("token must not be empty")
    data = decode_token(token)
    try:
        ids = unverified_revocation_ids(data)
    except Exception:
        raise TokenFormatError("token is not a valid Biscuit") from None
    return json.dumps({"revocation_id": ids[0]})
