"""The PL/Python entry points of extension version 0.2.0.

A database keeps running the function bodies of the extension version it
has until `ALTER EXTENSION hessra_authz UPDATE`, while the server-side
package is shared by every database of the cluster. 0.2.0's bodies call
these names with these signatures, so they keep working after `hessra-pg
install` of a newer package; they run on the current runtime
(hessra_pg.plpython.runtime). Version 0.3.0 calls hessra_pg.plpython.abi_0_3;
nothing else should use this module.

Until it is updated, a 0.2.0 database keeps 0.2.0's SQL: its `_sync()` hands
key windows over as float epochs formatted by the session's
extra_float_digits (fixed in 0.3.0): update it (`hessra-pg doctor` says so).
"""

from __future__ import annotations

import json
from typing import Any

from . import abi_0_3
from .runtime import RUNTIME, STALE
from ..core.records import Revocations, RootKey

__all__ = [
    "STALE",
    "authority_revocation_id",
    "authorized_resources",
    "cache_stats",
    "canonical_chain",
    "canonical_key",
    "config_changed",
    "config_version",
    "explain",
    "identity_scope",
    "load_config",
    "token_identity",
    "verify_bearer",
    "verify_capability",
    "verify_identity",
    "verify_service_chain",
    "verify_service_chain_nodes",
    "verify_token",
]


def _v02(outcome: Any) -> Any:
    """0.3.0's STALE answer carries the version held; 0.2.0's wrappers
    expect it bare."""
    if isinstance(outcome, str):
        return STALE if outcome.startswith(STALE) else outcome
    return [STALE] if outcome[0] == STALE else outcome


def _context(now: float, snapshot: str | None, xid: str | None) -> str:
    """0.2.0's separate arguments as 0.3.0's context text (Runtime.call)."""
    return " ".join(str(part) for part in (round(now * 1_000_000), snapshot, xid) if part is not None)


def config_version() -> str | None:
    return RUNTIME.config_version()


def config_changed(plpy: Any, xid: str) -> None:
    RUNTIME.config_changed(xid)


def load_config(plpy: Any, version: str, keys: str, chains: str, revocations: str,
                database: int | None = None) -> None:
    """Take the configuration read by 0.2.0's hessra_authz._sync() (JSON texts)."""
    revoked = json.loads(revocations)
    RUNTIME.load_config(
        version,
        tuple(RootKey(k["kid"], k["public_key"], k["not_before"], k["not_after"]) for k in json.loads(keys)),
        json.loads(chains),
        Revocations(ids=frozenset(revoked["ids"]), identities=frozenset(revoked["identities"])),
        database,
    )


def verify_token(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                 token: str | None, subject: str | None, resource: str | None, operation: str | None,
                 domain: str | None = None, prefix: str | None = None) -> str:
    return _v02(abi_0_3.verify_token(_context(now, snapshot, xid), version, token, subject, resource, operation,
                                     domain, prefix))


def verify_capability(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                      token: str | None, resource: str | None, operation: str | None) -> str:
    return _v02(abi_0_3.verify_capability(_context(now, snapshot, xid), version, token, resource, operation))


def verify_service_chain(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                         token: str | None, subject: str | None, resource: str | None, operation: str | None,
                         chain: str | None, component: str | None = None) -> str:
    return _v02(abi_0_3.verify_service_chain(_context(now, snapshot, xid), version, token, subject, resource,
                                             operation, chain, component))


def verify_service_chain_nodes(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                               token: str | None, subject: str | None, resource: str | None,
                               operation: str | None, nodes: str | None, component: str | None = None) -> str:
    return _v02(abi_0_3.verify_service_chain_nodes(_context(now, snapshot, xid), version, token, subject,
                                                   resource, operation, nodes, component))


def explain(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None, token: str | None,
            subject: str | None, resource: str | None, operation: str | None, domain: str | None = None,
            prefix: str | None = None) -> str:
    return _v02(abi_0_3.explain(_context(now, snapshot, xid), version, True, token, subject, resource, operation,
                                domain, prefix))


def verify_identity(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                    token: str | None, identity: str | None, domain: str | None = None,
                    ensure_subject_in_domain: bool | None = False) -> str:
    return _v02(abi_0_3.verify_identity(_context(now, snapshot, xid), version, token, identity, domain,
                                        ensure_subject_in_domain))


def verify_bearer(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                  token: str | None, domain: str | None = None) -> str:
    return _v02(abi_0_3.verify_bearer(_context(now, snapshot, xid), version, token, domain))


def token_identity(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                   token: str | None, domain: str | None = None) -> str:
    outcome = abi_0_3.token_identity(_context(now, snapshot, xid), version, token, domain)
    if outcome[0] == "ok":
        return json.dumps({"identity": outcome[1]})
    return STALE if outcome[0] == STALE else outcome[1]


def identity_scope(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                   token: str | None) -> list[str | None]:
    return _v02(abi_0_3.identity_scope(_context(now, snapshot, xid), version, token))


def authorized_resources(plpy: Any, now: float, snapshot: str | None, xid: str | None, version: str | None,
                         token: str | None, subject: str | None, operation: str | None) -> list[str | None]:
    return _v02(abi_0_3.authorized_resources(_context(now, snapshot, xid), version, token, subject, operation))


def canonical_key(plpy: Any, key: str) -> str:
    return abi_0_3.canonical_key(key)


def canonical_chain(plpy: Any, nodes: str | None) -> str:
    return abi_0_3.canonical_chain(nodes)


def authority_revocation_id(plpy: Any, token: str | None) -> str:
    return abi_0_3.authority_revocation_id(token)


def cache_stats(plpy: Any) -> str:
    return abi_0_3.cache_stats(True)
