"""A local Hessra authority: ``hessra-pg authority serve``.

An HTTPS server speaking the API of Hessra's authority (the endpoints and
JSON bodies of hessra-api, so Hessra's own clients talk to it) that issues
tokens from a policy directory (clients.toml, resources.toml; the files
``hessra-pg policy validate`` checks). **For development, tests and small
self-hosted setups: it is no replacement for a hardened authority.**

Modules, one concern each:

- ``policy``: the policy directory read into clients, grants, roles and
  resources, and the matching rules (SAN identifiers, wildcards, domains);
- ``keys``: the signing key file, watched; ``rotate_key``; retired keys;
- ``issuer``: who is asking and what they get (tokens, refusals);
- ``server``: the running authority: configuration, reloading, TLS, lifecycle;
- ``handler``: HTTP (http.server on ssl sockets): endpoints, bodies, the log;
- ``sandbox``: a throwaway authority with its own CA for tests.

Python API::

    from hessra_pg.authority import AuthorityConfig, serve_authority

    with serve_authority(policy_dir="policy", key_file="root.pem", tls_cert="server.pem",
                         tls_key="server.key", client_ca="ca.pem", port=0) as authority:
        authority.host, authority.port, authority.public_key_pem

docs/authority.md has the endpoints, the policy files and the operations.
"""

from __future__ import annotations

from .issuer import Caller, Issuer, Refusal, Settings
from .keys import KeyStore, rotate_key
from .policy import Policy, load_policy
from .server import Authority, AuthorityConfig, serve_authority

__all__ = [
    "Authority",
    "AuthorityConfig",
    "Caller",
    "Issuer",
    "KeyStore",
    "Policy",
    "Refusal",
    "Settings",
    "load_policy",
    "rotate_key",
    "serve_authority",
]
