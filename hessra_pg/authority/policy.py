"""A policy directory (clients.toml, resources.toml) read into what the
local authority decides with: who a caller is, and what it may ask for.

The files are the ones ``hessra-pg policy validate`` checks
(hessra_pg.repository.checker): :func:`load_policy` checks them first and
refuses a directory with any problem (RepositoryProblemsError), so what is
built here is what was checked, from the very bytes that were checked.

Matching rules (docs/authority.md):

- A client is named by ``identifier = { type = "san_uri" | "san_dns",
  value = "..." }`` (or an array of them). ``*`` matches one or more
  characters within one segment: between ``:`` for URIs
  (``urn:example:*`` matches ``urn:example:a``, not ``urn:example:a:b``),
  between ``.`` for DNS names (``worker-*.internal.com``). DNS names compare
  case-insensitively; a URI's scheme too (``URI:urn:x`` is ``uri:urn:x``).
- A certificate's subject alternative names are tried in the
  certificate's order, URIs and DNS names alike; the first one that names
  a client (clients in file order) decides the client, and that SAN is the
  caller's identity (the subject of its tokens).
- An identity from an identity token is matched the same way; when no
  client names it, its nearest ancestor (``a:b:c`` -> ``a:b`` -> ``a``)
  that names one does: a delegated identity acts with the rights of the
  client it descends from, under its own name.
- A domain member (an identity ``REALM:NAME`` minted by a realm, a client
  with ``[clients.domain]``) gets the rights of the role assigned to it
  (``[[clients.domain.role_assignments]]``, first match, ``*`` allowed), else
  of ``[clients.domain.default_role]``, else none.
- A grant without operations (``resources = ["NAME"]``) allows every
  operation the resource lists, or any operation if it lists none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.keys import canonical_public_key
from ..core.verifier import ChainNode
from ..repository.checker import (
    CAPABILITY,
    MULTI_PARTY,
    SERVICE_CHAIN,
    RepositoryProblemsError,
    check_repository,
)

__all__ = [
    "Client",
    "Domain",
    "Grant",
    "Identifier",
    "Party",
    "Policy",
    "Resource",
    "Role",
    "find_grant",
    "load_policy",
    "normalize_name",
]


def normalize_name(kind: str, value: str) -> str:
    """A SAN or identity as it is compared and used as a subject: DNS names
    lower-cased (without a trailing dot), a URI's scheme lower-cased."""
    if kind == "san_dns":
        return value.lower().rstrip(".")
    scheme, sep, rest = value.partition(":")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return scheme.lower() + ":" + rest
    return value


@dataclass(frozen=True)
class Identifier:
    """One ``identifier`` of a client (or an assigned identity pattern)."""

    kind: str  # "san_uri" | "san_dns"
    value: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        separator = ":" if self.kind == "san_uri" else "."
        pattern = normalize_name(self.kind, self.value)
        segment = f"[^{re.escape(separator)}]+"
        regex = segment.join(re.escape(part) for part in pattern.split("*"))
        flags = re.IGNORECASE if self.kind == "san_dns" else 0
        object.__setattr__(self, "_regex", re.compile(regex, flags))

    @property
    def wildcard(self) -> bool:
        return "*" in self.value

    def matches(self, kind: str, name: str) -> bool:
        """Whether a SAN (or identity) of this kind, normalized, is named."""
        return kind == self.kind and self._regex.fullmatch(normalize_name(kind, name)) is not None


@dataclass(frozen=True)
class Grant:
    """A right a client or role may ask for."""

    resource: str
    #: None: every operation (of those the resource lists, if it does)
    operations: frozenset[str] | None
    #: designations a capability token carries, in the order written
    designations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Role:
    name: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class Domain:
    """A realm's members: identities ``realm:...`` it mints (non-delegatable,
    domain-restricted), with the rights of their role."""

    realm: str
    roles: Mapping[str, Role]
    default_role: str | None
    #: (identity pattern, role name), first match wins
    assignments: tuple[tuple[Identifier, str], ...] = ()

    def is_member(self, identity: str) -> bool:
        return identity.startswith(self.realm + ":") and len(identity) > len(self.realm) + 1

    def role_for(self, identity: str) -> Role | None:
        """The role of a member: its assignment, else the default role."""
        if not self.is_member(identity):
            return None
        for pattern, role in self.assignments:
            if pattern.matches("san_uri", identity):
                return self.roles.get(role)
        return self.roles.get(self.default_role) if self.default_role else None


@dataclass(frozen=True)
class Client:
    name: str
    identifiers: tuple[Identifier, ...]
    grants: tuple[Grant, ...]
    #: identity_token_enabled = true: may get identity tokens and use them
    identity_tokens: bool = False
    domain: Domain | None = None


@dataclass(frozen=True)
class Party:
    """A multi-party sign-off a token needs (SignoffInfo of hessra-api)."""

    component: str
    public_key: str
    authorization_service: str | None = None


@dataclass(frozen=True)
class Resource:
    name: str
    #: None: the resource lists no operations
    operations: frozenset[str] | None = None
    chain: tuple[ChainNode, ...] = ()
    parties: tuple[Party, ...] = ()
    capability: bool = False
    anchor: str | None = None


@dataclass(frozen=True)
class Policy:
    """What a policy directory says, ready for decisions."""

    clients: tuple[Client, ...] = ()
    resources: Mapping[str, Resource] = field(default_factory=dict)
    #: PEM certificates of [cacerts] (None: the file has none)
    cacerts: str | None = None
    #: clients that no certificate or identity can name (no identifier)
    unnamed: tuple[str, ...] = ()

    def match_certificate(self, sans: Iterable[tuple[str, str]]) -> tuple[Client, str] | None:
        """The client a certificate names, and the caller's identity: the
        first SAN (URI or DNS, in the certificate's order) that names one."""
        for san_type, value in sans:
            kind = {"URI": "san_uri", "DNS": "san_dns"}.get(san_type)
            if kind is None or not isinstance(value, str) or not value:
                continue
            for client in self.clients:
                if any(identifier.matches(kind, value) for identifier in client.identifiers):
                    return client, normalize_name(kind, value)
        return None

    def client_for_identity(self, identity: str) -> Client | None:
        """The client an identity (from an identity token) acts as: the one
        that names it, else the one that names its nearest ancestor."""
        candidate = identity
        while candidate:
            for client in self.clients:
                if any(identifier.matches(identifier.kind, candidate) for identifier in client.identifiers):
                    return client
            candidate = candidate.rpartition(":")[0]
        return None

    def realm(self, domain: str) -> Client | None:
        """The realm client whose domain is `domain`."""
        for client in self.clients:
            if client.domain is not None and client.domain.realm == domain:
                return client
        return None


def find_grant(grants: Iterable[Grant], resources: Mapping[str, Resource], resource: str,
               operation: str) -> Grant | None:
    """The first grant allowing `operation` on `resource`, or None."""
    for grant in grants:
        if grant.resource != resource:
            continue
        if grant.operations is not None:
            if operation in grant.operations:
                return grant
            continue
        known = resources.get(resource)
        if known is None or known.operations is None or operation in known.operations:
            return grant
    return None


# -- building ----------------------------------------------------------------

def load_policy(directory: str | Path) -> Policy:
    """Check the policy directory (as ``hessra-pg policy validate`` does) and
    build its Policy. Raises RepositoryProblemsError if it has any problem,
    RepositoryReadError if it can't be read."""
    checked = check_repository(directory)
    if checked.problems:
        raise RepositoryProblemsError(checked.problems)
    documents = [data for data in checked.data if data is not None]
    resources: dict[str, Resource] = {}
    for data in documents:
        for name, spec in (data.get("resources") or {}).items():
            resources[name] = _resource(name, spec, checked.chains.get(name))
    clients: list[Client] = []
    cacerts: str | None = None
    for data in documents:
        clients.extend(_clients(data.get("clients")))
        if isinstance(data.get("cacerts"), dict):
            cacerts = data["cacerts"]["cert_chain"]
    return Policy(clients=tuple(clients), resources=resources, cacerts=cacerts,
                  unnamed=tuple(client.name for client in clients if not client.identifiers))


def _declares(spec: Mapping[str, Any], mechanism: str) -> bool:
    mechanisms = spec.get("mechanisms")
    return spec.get("type") == mechanism or (isinstance(mechanisms, list) and mechanism in mechanisms)


def _resource(name: str, spec: Mapping[str, Any], chain: Sequence[Mapping[str, str]] | None) -> Resource:
    operations = spec.get("operations")
    parties: tuple[Party, ...] = ()
    if _declares(spec, MULTI_PARTY):
        parties = tuple(Party(node["component"], canonical_public_key(node["public_key"]),
                              node.get("authorization_service"))
                        for node in spec[MULTI_PARTY]["nodes"])
    return Resource(
        name=name,
        operations=frozenset(operations) if isinstance(operations, list) else None,
        chain=tuple(ChainNode(node["component"], node["public_key"]) for node in chain or ())
        if _declares(spec, SERVICE_CHAIN) else (),
        parties=parties,
        capability=_declares(spec, CAPABILITY),
        anchor=spec.get("anchor"),
    )


def _client_entries(clients: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, table) as the checker names them."""
    if isinstance(clients, dict):
        yield from clients.items()
    elif isinstance(clients, list):
        for spec in clients:
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                identifier = spec["identifier"]
                name = (identifier[0] if isinstance(identifier, list) else identifier)["value"]
            yield name, spec


def _clients(clients: Any) -> Iterator[Client]:
    for name, spec in _client_entries(clients):
        raw = spec.get("identifier")
        items = raw if isinstance(raw, list) else [raw] if raw is not None else []
        identifiers = tuple(Identifier(item["type"], item["value"]) for item in items)
        domain = None
        if isinstance(spec.get("domain"), dict):
            domain = _domain(identifiers[0].value, spec["domain"])
        yield Client(name=name, identifiers=identifiers, grants=_grants(spec),
                     identity_tokens=spec.get("identity_token_enabled") is True, domain=domain)


def _domain(realm: str, spec: Mapping[str, Any]) -> Domain:
    roles = {role["name"]: Role(role["name"], _grants(role)) for role in spec.get("roles") or ()}
    default = spec.get("default_role")
    default_name = None
    if isinstance(default, dict):
        default_name = default["name"]
        if "resources" in default or "permissions" in default:
            roles[default_name] = Role(default_name, _grants(default))
    assignments: list[tuple[Identifier, str]] = []
    for assignment in spec.get("role_assignments") or ():
        identities = [assignment["identity"]] if "identity" in assignment else assignment["identities"]
        assignments.extend((Identifier("san_uri", identity), assignment["role"]) for identity in identities)
    return Domain(realm=normalize_name("san_uri", realm), roles=roles, default_role=default_name,
                  assignments=tuple(assignments))


def _grants(spec: Mapping[str, Any]) -> tuple[Grant, ...]:
    grants: list[Grant] = []
    for entry in spec.get("resources") or ():
        if isinstance(entry, str):
            grants.append(Grant(entry, None))
        else:
            grants.append(_grant(entry, "name"))
    for entry in spec.get("permissions") or ():
        grants.append(_grant(entry, "resource"))
    return tuple(grants)


def _grant(entry: Mapping[str, Any], key: str) -> Grant:
    designations = tuple((label, value) for label, value in (entry.get("designations") or {}).items())
    return Grant(entry[key], frozenset(entry["operations"]), designations)
