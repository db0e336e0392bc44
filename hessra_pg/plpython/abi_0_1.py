"""The PL/Python entry points of extension version 0.1.0.

A database keeps running the function bodies of the extension version it
has until `ALTER EXTENSION hessra_authz UPDATE`, while the server-side
package is shared by every database of the cluster. 0.1.0's bodies call
these names with these signatures (no snapshot: every call comes with the
configuration version its wrapper has just read), so they keep working after
`hessra-pg install` of a newer package. Newer versions call
hessra_pg.plpython.abi_0_2; nothing else should use this module.
"""

from __future__ import annotations

from typing import Any

from . import abi_0_2 as backend
from .abi_0_2 import authority_revocation_id, canonical_chain, canonical_key, config_version

__all__ = [
    "authority_revocation_id",
    "authorized_resources",
    "canonical_chain",
    "canonical_key",
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


def load_config(plpy: Any, version: str, keys: str, chains: str, revocations: str) -> None:
    backend.load_config(plpy, version, keys, chains, revocations)


def verify_token(plpy: Any, now: float, version: str | None, token: str | None, subject: str | None,
                 resource: str | None, operation: str | None, domain: str | None = None,
                 prefix: str | None = None) -> str:
    return backend.verify_token(plpy, now, None, None, version, token, subject, resource, operation, domain, prefix)


def verify_capability(plpy: Any, now: float, version: str | None, token: str | None, resource: str | None,
                      operation: str | None) -> str:
    return backend.verify_capability(plpy, now, None, None, version, token, resource, operation)


def verify_service_chain(plpy: Any, now: float, version: str | None, token: str | None, subject: str | None,
                         resource: str | None, operation: str | None, chain: str | None,
                         component: str | None = None) -> str:
    return backend.verify_service_chain(plpy, now, None, None, version, token, subject, resource, operation, chain,
                                        component)


def verify_service_chain_nodes(plpy: Any, now: float, version: str | None, token: str | None, subject: str | None,
                               resource: str | None, operation: str | None, nodes: str | None,
                               component: str | None = None) -> str:
    return backend.verify_service_chain_nodes(plpy, now, None, None, version, token, subject, resource, operation,
                                              nodes, component)


def explain(plpy: Any, now: float, version: str | None, token: str | None, subject: str | None,
            resource: str | None, operation: str | None, domain: str | None = None, prefix: str | None = None) -> str:
    return backend.explain(plpy, now, None, None, version, token, subject, resource, operation, domain, prefix)


def verify_identity(plpy: Any, now: float, version: str | None, token: str | None, identity: str | None,
                    domain: str | None = None, ensure_subject_in_domain: bool | None = False) -> str:
    return backend.verify_identity(plpy, now, None, None, version, token, identity, domain, ensure_subject_in_domain)


def verify_bearer(plpy: Any, now: float, version: str | None, token: str | None, domain: str | None = None) -> str:
    return backend.verify_bearer(plpy, now, None, None, version, token, domain)


def token_identity(plpy: Any, now: float, version: str | None, token: str | None, domain: str | None = None) -> str:
    return backend.token_identity(plpy, now, None, None, version, token, domain)


def identity_scope(plpy: Any, now: float, version: str | None, token: str | None) -> list[str | None]:
    return backend.identity_scope(plpy, now, None, None, version, token)


def authorized_resources(plpy: Any, now: float, version: str | None, token: str | None, subject: str | None,
                         operation: str | None) -> list[str | None]:
    return backend.authorized_resources(plpy, now, None, None, version, token, subject, operation)
