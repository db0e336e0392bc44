"""The in-database side: what the PL/Python bodies of extension/ call.

Each SQL function body is two lines that pass `plpy` and the arguments here.
This module keeps per-backend caches (module globals live as long as the
backend's interpreter) and turns configuration problems into Postgres ERRORs
with a hint. Token problems are never errors: the verify functions return
false.

It never runs SQL itself: PL/Python runs every SPI query in a subtransaction,
which Postgres forbids in parallel mode. Freshness works in two steps:

- fast path: each plpgsql wrapper passes the statement's snapshot
  (`pg_current_snapshot()`) and top-level transaction id. If the snapshot is
  the one this backend last read the configuration with, every committed
  change visible now was visible then, so the configuration held is current,
  unless this very transaction changed it (the configuration triggers report
  that through `config_changed`; such a transaction always takes the slow
  path, and its snapshots are never remembered).
- slow path: the call returns STALE; the wrapper runs `hessra_authz._sync()`,
  which reads the configuration version (generation counter bumped by
  triggers, plus its row's xmin) with the statement's snapshot, hands this
  module the keys, chains and revocations (`load_config`) only when the
  version differs, and calls again with that version.

So a change is seen by every statement that starts after it commits, in
every backend, and a rolled-back change never lingers.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Callable, TypeVar

from .errors import ConfigurationError, HessraError, KeyFormatError
from .shared_cache import SharedDecisions
from .encoding import encode_token as encode_urlsafe
from .keys import canonical_public_key
from .verify import (
    ChainNode,
    Decision,
    RootKey,
    TokenRejected,
    VerifiedToken,
    load_token,
    Revocations,
    authorized_resources as resources_decision,
    parse_chain,
    proven_identity,
    verify,
)
from .verify import verify_identity as identity_decision

#: Signature-checked tokens kept per backend (least recently used dropped);
#: with tokens of at most 32 KiB this bounds the cache's memory.
TOKEN_CACHE_SIZE = 1024
#: Positive decisions kept per backend, each until the token's expiry or its
#: key's not_after, whichever is first, and only within one configuration
#: generation (a key, chain or revocation change drops them all).
DECISION_CACHE_SIZE = 4096


class _Config:
    """Keys and chains of one configuration generation."""

    def __init__(self, generation: str, keys: tuple[RootKey, ...], chains: dict[str, Any],
                 revocations: Revocations) -> None:
        self.generation = generation
        self.keys = keys
        self.revocations = revocations
        #: name -> tuple of ChainNode, or the ConfigurationError of a bad row
        self.chains = chains


_config: _Config | None = None
#: Positive decisions shared with the database's other backends, and the
#: database they belong to (hessra_pg.shared_cache).
_shared: SharedDecisions | None = None
_shared_database: int | None = None
#: The statement snapshot (text of pg_current_snapshot()) with which _config
#: was last confirmed current; None: the next call must go through _sync().
_confirmed_snapshot: str | None = None
#: Top-level transaction id of this backend's latest configuration change.
_changing_xid: str | None = None
#: Outcome asking the wrapper to run hessra_authz._sync() and call again.
STALE = "s"
#: Helper results by (arguments, statement time) within one configuration
#: version: pure functions of those, so the several per-statement helpers of
#: one RLS policy verify once.
_statement_results: dict[tuple[Any, ...], Any] = {}
_tokens: "OrderedDict[tuple[str, str], VerifiedToken | TokenRejected]" = OrderedDict()
_decisions: "OrderedDict[tuple[Any, ...], tuple[Decision, float]]" = OrderedDict()

_HINTS = {
    "no active key": "Add the authority's public key: SELECT hessra_authz.add_key('<PEM or alg/hex>');",
    "is not in the service chain": "Pass one of the chain's components, or NULL to require every node.",
    "no service chain named": "Register it with hessra_authz.set_service_chain(name, nodes).",
    "public key": "Keys are PEM (SPKI, P-256 or Ed25519) or 'ed25519/<64 hex>' / 'secp256r1/<66 hex>'.",
}


def _sql_errors(function: Callable[..., str]) -> Callable[..., str]:
    """Report hessra_pg errors as an error outcome instead of raising.

    An exception escaping PL/Python shows the user a Python traceback; the
    thin plpgsql wrappers of extension/ raise these outcomes as a clean
    ERROR (hessra_authz._raise) instead. Outcomes: 't', 'f', a JSON result,
    a JSON object with an "error" member, or STALE (call again after
    hessra_authz._sync()).
    """

    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return function(plpy, *args, **kwargs)
        except _Stale:
            return STALE
        except HessraError as error:
            message = f"hessra_authz: {error}"
            hint = next((text for needle, text in _HINTS.items() if needle in message), None)
            return json.dumps({"error": message, "hint": hint, "sqlstate": "22023"})

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


def _sql_errors_array(function: Callable[..., list[str | None]]) -> Callable[..., list[str | None]]:
    """_sql_errors for text[] results: ["ok", ...], ["s"] (STALE) or
    ["error", <JSON error object>], which the plpgsql wrapper slices, retries
    or raises."""
    guarded = _sql_errors(function)

    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> list[str | None]:
        outcome = guarded(plpy, *args, **kwargs)
        if isinstance(outcome, list):
            return outcome
        return [STALE] if outcome == STALE else ["error", outcome]

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


def _outcome(valid: bool) -> str:
    return "t" if valid else "f"


#: Bound of the per-version memo of per-statement helper results.
STATEMENT_RESULTS_SIZE = 1024


class _Stale(Exception):
    """The configuration held may be out of date: go through _sync()."""


def config_version() -> str | None:
    """The configuration version this backend holds (None: nothing yet)."""
    return None if _config is None else _config.generation


def config_changed(plpy: Any, xid: str) -> None:
    """Called by the configuration tables' triggers in the changing backend:
    until transaction `xid` ends, every call re-reads the version (its own
    uncommitted changes, and their rollback, are invisible to the snapshot
    comparison)."""
    global _changing_xid, _confirmed_snapshot
    _changing_xid = xid
    _confirmed_snapshot = None


def load_config(plpy: Any, version: str, keys: str, chains: str, revocations: str,
                database: int | None = None) -> None:
    """Take the configuration read by hessra_authz._sync() (JSON texts) in
    database `database` (OID)."""
    global _config, _confirmed_snapshot, _shared, _shared_database
    if database is not None and database != _shared_database:
        _shared, _shared_database = SharedDecisions.for_database(database), database
    parsed_chains: dict[str, Any] = {}
    for name, nodes in json.loads(chains).items():
        try:
            parsed_chains[name] = parse_chain(nodes)
        except ConfigurationError as error:
            parsed_chains[name] = ConfigurationError(f"service chain {name!r} is invalid: {error}")
    revoked = json.loads(revocations)
    _config = _Config(
        version,
        tuple(RootKey(k["kid"], k["public_key"], k["not_before"], k["not_after"]) for k in json.loads(keys)),
        parsed_chains,
        Revocations(ids=frozenset(revoked["ids"]), identities=frozenset(revoked["identities"])),
    )
    _confirmed_snapshot = None
    _tokens.clear()
    _decisions.clear()
    _statement_results.clear()


def _statement_config(plpy: Any, version: str | None, snapshot: str | None = None, xid: str | None = None) -> _Config:
    """The configuration current for this statement.

    `version` None (the wrapper's first attempt): the configuration held, if
    it was confirmed with this very snapshot outside a configuration-changing
    transaction; else _Stale. `version` given (after _sync()): the
    configuration _sync() just loaded, confirmed from now on for `snapshot`.
    """
    global _confirmed_snapshot
    if version is None:
        if (_config is None or snapshot is None or snapshot != _confirmed_snapshot
                or (xid is not None and xid == _changing_xid)):
            raise _Stale()
    else:
        if _config is None or _config.generation != version:
            raise ConfigurationError("configuration not loaded: call through the hessra_authz functions")
        # A snapshot taken inside a changing transaction sees its uncommitted
        # rows; the same snapshot text after a rollback would not.
        _confirmed_snapshot = None if xid is not None and xid == _changing_xid else snapshot
    if len(_statement_results) > STATEMENT_RESULTS_SIZE:
        _statement_results.clear()
    return _config


def _load(token: str | None, config: _Config, now: float) -> VerifiedToken:
    """Signature-check through the per-backend cache."""
    if token is None:
        raise TokenRejected("no_token", "no token was given")
    cache_key = (token, config.generation)
    cached = _tokens.get(cache_key)
    if cached is not None:
        _tokens.move_to_end(cache_key)
        if isinstance(cached, TokenRejected):
            raise cached
        if cached.key.active_at(now):
            return cached
    try:
        verified = load_token(token, config.keys, now)
    except TokenRejected as rejected:
        # Format and shape rejections depend on the token alone; key and
        # signature ones may change with time (a key's not_before), so only
        # the former are remembered.
        if rejected.reason in ("bad_token", "too_complex"):
            _remember(cache_key, rejected)
        raise
    _remember(cache_key, verified)
    return verified


def _remember(cache_key: tuple[str, str], value: VerifiedToken | TokenRejected) -> None:
    _tokens[cache_key] = value
    _tokens.move_to_end(cache_key)
    while len(_tokens) > TOKEN_CACHE_SIZE:
        _tokens.popitem(last=False)


R = TypeVar("R")


def _remembered(config: _Config, token: str | None, now: float, args: tuple[Any, ...],
                compute: Callable[[], R], keep: Callable[[R], bool] = lambda decision: decision.valid,
                shared: bool = False) -> R:
    """A result from the cache, or compute one and keep it if `keep` says so
    and the token verified: until the token's expiry or its key's end.

    Only results that can't turn from "no" to "yes" as time passes are kept:
    positive decisions, and the resources or identity a verified token grants
    (they can only shrink, at expiry). With `shared` (yes/no decisions whose
    caller needs only `valid`), positive ones are also shared with the
    database's other backends.
    """
    if token is None:
        return compute()
    token_digest = hashlib.blake2b(token.encode(), digest_size=16).digest()
    key = (config.generation, token_digest, args)
    hit = _decisions.get(key)
    if hit is not None and now < hit[1]:
        _decisions.move_to_end(key)
        return hit[0]
    shared_digest = None
    if shared and _shared is not None:
        shared_digest = SharedDecisions.digest(config.generation, repr(args), token_digest)
        until = _shared.allowed_until(shared_digest, now)
        if until is not None:
            result: Any = Decision(True, "ok")
            _keep_decision(key, result, until)
            return result
    result = compute()
    verified = _tokens.get((token, config.generation))
    if keep(result) and isinstance(verified, VerifiedToken) and verified.expiry_known:
        limits = [limit for limit in (verified.expires_at, verified.key.not_after) if limit is not None]
        until = min(limits) if limits else float("inf")
        _keep_decision(key, result, until)
        if shared_digest is not None and _shared is not None:
            _shared.record(shared_digest, until)
    return result


def _keep_decision(key: tuple[Any, ...], result: Any, until: float) -> None:
    _decisions[key] = (result, until)
    _decisions.move_to_end(key)
    while len(_decisions) > DECISION_CACHE_SIZE:
        _decisions.popitem(last=False)


def _chain(config: _Config, name: str | None) -> tuple[ChainNode, ...]:
    if name is None:
        raise ConfigurationError("service chain name must not be NULL")
    chain = config.chains.get(name)
    if chain is None:
        raise ConfigurationError(f"no service chain named {name!r}")
    if isinstance(chain, ConfigurationError):
        raise chain
    return chain


def _decide(
    plpy: Any,
    now: float,
    statement: tuple[str | None, str | None, str | None],
    token: str | None,
    *,
    subject: str | None,
    resource: str | None,
    operation: str | None,
    domain: str | None = None,
    prefix: str | None = None,
    chain_name: str | None = None,
    nodes_json: str | None = None,
    use_chain: bool = False,
    component: str | None = None,
    capability: bool = False,
    detailed: bool = False,
) -> Decision:
    """`detailed`: the caller reports the whole Decision (explain), so it is
    cached apart from the yes/no answers, which other backends may supply.

    The chain is keyed by its name or its nodes' JSON text and resolved only
    when the decision is computed: a cached "yes" implies it resolved under
    this configuration, and a cache hit must stay cheap.
    """
    config = _statement_config(plpy, *statement)
    chain_key = None if not use_chain else ("nodes", nodes_json) if nodes_json is not None else ("named", chain_name)

    def compute() -> Decision:
        chain: tuple[ChainNode, ...] | None = None
        if use_chain:
            chain = parse_chain(json.loads(nodes_json)) if nodes_json is not None else _chain(config, chain_name)
        return verify(
            token,
            config.keys,
            now=now,
            subject=subject,
            resource=resource,
            operation=operation,
            domain=domain,
            prefix=prefix,
            chain=chain,
            component=component,
            capability=capability,
            load=lambda text, at: _load(text, config, at),
            revoked=config.revocations,
            diagnose=detailed,
        )

    return _remembered(
        config, token, now,
        ("explain" if detailed else "authorization", subject, resource, operation, domain, prefix, chain_key,
         component, capability),
        compute,
        shared=not detailed,
    )


# -- SQL entry points ------------------------------------------------------

@_sql_errors
def verify_token(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, subject: str | None,
                 resource: str | None, operation: str | None, domain: str | None = None, prefix: str | None = None) -> str:
    return _outcome(_decide(plpy, now, (version, snapshot, xid), token, subject=subject, resource=resource, operation=operation,
                            domain=domain, prefix=prefix).valid)


@_sql_errors
def verify_capability(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, resource: str | None,
                      operation: str | None) -> str:
    return _outcome(_decide(plpy, now, (version, snapshot, xid), token, subject=None, resource=resource, operation=operation,
                            capability=True).valid)


@_sql_errors
def verify_service_chain(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, subject: str | None,
                         resource: str | None, operation: str | None, chain: str | None, component: str | None = None) -> str:
    return _outcome(_decide(plpy, now, (version, snapshot, xid), token, subject=subject, resource=resource, operation=operation,
                            chain_name=chain, use_chain=True, component=component).valid)


@_sql_errors
def verify_service_chain_nodes(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None,
                               subject: str | None, resource: str | None, operation: str | None, nodes: str | None, component: str | None = None) -> str:
    if nodes is None:
        raise ConfigurationError("service chain nodes must not be NULL")
    return _outcome(_decide(plpy, now, (version, snapshot, xid), token, subject=subject, resource=resource, operation=operation,
                            nodes_json=nodes, use_chain=True, component=component).valid)


@_sql_errors
def explain(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, subject: str | None,
            resource: str | None, operation: str | None, domain: str | None = None, prefix: str | None = None) -> str:
    decision = _decide(plpy, now, (version, snapshot, xid), token, subject=subject, resource=resource, operation=operation,
                       domain=domain, prefix=prefix, detailed=True)
    return json.dumps(decision.as_dict())


@_sql_errors
def canonical_key(plpy: Any, key: str) -> str:
    """Validate a PEM or alg/hex public key and return `alg/hex`."""
    try:
        return canonical_public_key(key)
    except KeyFormatError as error:
        raise KeyFormatError(f"invalid public key: {error}") from None


@_sql_errors
def canonical_chain(plpy: Any, nodes: str | None) -> str:
    """Validate a chain's JSON nodes and return them with canonical keys."""
    if nodes is None:
        raise ConfigurationError("service chain nodes must not be NULL")
    parsed = parse_chain(json.loads(nodes))
    return json.dumps([{"component": node.component, "public_key": node.public_key} for node in parsed])


@_sql_errors
def verify_identity(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, identity: str | None,
                    domain: str | None = None, ensure_subject_in_domain: bool | None = False) -> str:
    """Identity mode of spec §6.4; a NULL identity is false (use verify_bearer)."""
    if identity is None:
        return "f"
    config = _statement_config(plpy, version, snapshot, xid)
    ensure = bool(ensure_subject_in_domain)
    return _outcome(_remembered(
        config, token, now, ("identity", identity, domain, ensure),
        lambda: identity_decision(token, config.keys, now=now, identity=identity, domain=domain,
                                  ensure_subject_in_domain=ensure, load=lambda text, at: _load(text, config, at),
                                  revoked=config.revocations),
        shared=True,
    ).valid)


@_sql_errors
def verify_bearer(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, domain: str | None = None) -> str:
    """Bearer mode of spec §6.4: the token's own root subject is the actor."""
    config = _statement_config(plpy, version, snapshot, xid)
    return _outcome(_remembered(
        config, token, now, ("bearer", domain),
        lambda: identity_decision(token, config.keys, now=now, identity=None, domain=domain,
                                  load=lambda text, at: _load(text, config, at), revoked=config.revocations),
        shared=True,
    ).valid)


@_sql_errors
def token_identity(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, domain: str | None = None) -> str:
    """JSON {"identity": <the most specific identity proven, or null>}."""
    config = _statement_config(plpy, version, snapshot, xid)
    identity = proven_identity(token, config.keys, now=now, domain=domain,
                               load=lambda text, at: _load(text, config, at), revoked=config.revocations)
    return json.dumps({"identity": identity})


@_sql_errors
def authority_revocation_id(plpy: Any, token: str | None) -> str:
    """JSON {"revocation_id": ...} of a token's authority block (revoking it
    kills every token derived from it). The token is parsed, not verified:
    a token signed by a retired key can still be revoked."""
    import biscuit_auth

    from .encoding import decode_token
    from .errors import TokenFormatError

    if token is None or not token.strip():
        raise TokenFormatError("token must not be empty")
    data = decode_token(token)
    try:
        ids = biscuit_auth.UnverifiedBiscuit.from_base64(encode_urlsafe(data)).revocation_ids
    except Exception:
        raise TokenFormatError("token is not a valid Biscuit") from None
    return json.dumps({"revocation_id": ids[0]})


@_sql_errors_array
def identity_scope(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None) -> list[str | None]:
    """["ok", identity or NULL, "t"/"f" (it also proves every descendant
    identity:...), revoked identities below it...] for the owner-column
    policy helpers. Computed once per statement however many helpers ask,
    and kept until the token expires."""
    config = _statement_config(plpy, version, snapshot, xid)
    key = ("identity_scope", token, now)
    if key not in _statement_results:
        _statement_results[key] = _remembered(
            config, token, now, ("identity_scope",), lambda: _identity_scope(token, config, now),
            keep=lambda result: True)
    return _statement_results[key]


def _identity_scope(token: str | None, config: _Config, now: float) -> list[str | None]:
    load = lambda text, at: _load(text, config, at)  # noqa: E731
    identity = proven_identity(token, config.keys, now=now, load=load, revoked=config.revocations)
    if identity is None:
        return ["ok", None, "f"]
    # The token proves descendants iff it proves "identity:" (every check is
    # then a starts_with(... + ":") one); revocations are applied separately.
    descendants = identity_decision(token, config.keys, now=now, identity=identity + ":", load=load).valid
    below = sorted(r for r in config.revocations.identities if r.startswith(identity + ":"))
    return ["ok", identity, "t" if descendants else "f", *below]


@_sql_errors_array
def authorized_resources(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None, subject: str | None,
                         operation: str | None) -> list[str | None]:
    """["ok", resource...]: every resource verify_token accepts for this
    token, subject and operation (once per statement, kept until expiry)."""
    config = _statement_config(plpy, version, snapshot, xid)
    key = ("authorized_resources", token, subject, operation, now)
    if key not in _statement_results:
        _statement_results[key] = _remembered(
            config, token, now, ("authorized_resources", subject, operation),
            lambda: ["ok", *resources_decision(
                token, config.keys, now=now, subject=subject, operation=operation,
                load=lambda text, at: _load(text, config, at), revoked=config.revocations)],
            keep=lambda result: True)
    return _statement_results[key]


def cache_stats(plpy: Any) -> str:
    """JSON sizes and bounds of this backend's caches, and the hits and
    misses of the shared decision table (hessra_authz.cache_stats())."""
    from .verify import AUTHORIZER_CACHE_SIZE, _builders

    return json.dumps({
        "configuration_version": config_version(),
        "tokens": {"size": len(_tokens), "bound": TOKEN_CACHE_SIZE},
        "decisions": {"size": len(_decisions), "bound": DECISION_CACHE_SIZE},
        "authorizers": {"size": len(_builders), "bound": AUTHORIZER_CACHE_SIZE},
        "shared_decisions": None if _shared is None else {"hits": _shared.hits, "misses": _shared.misses},
    })
