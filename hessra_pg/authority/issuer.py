"""What the local authority answers to each request: who the caller is,
whether the policy lets it have what it asks for, and the token.

No HTTP here (hessra_pg.authority.server does that): every method takes
plain values and returns the JSON body of the answer as a dict, in the
shapes of hessra-api (Hessra-Labs/hessra-sdk.rs, hessra-api/src/lib.rs:
TokenResponse, IdentityTokenResponse, MintIdentityTokenResponse,
SignTokenResponse, VerifyTokenResponse), each with ``response_msg``; a
refusal raises :class:`Refusal` with the HTTP status and the message.
Messages never contain a token. Every token carries the signing key's id
as its ``root_key_id`` (hessra_pg.authority.keys.key_id).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import biscuit_auth

from ..core.keys import canonical_public_key
from ..core.verifier import (
    ChainNode,
    Decision,
    RootKey,
    TokenRejected,
    identity_scope,
    load_token,
    verify,
    verify_identity,
)
from ..errors import ConfigurationError, TokenFormatError
from ..tokens.capability import mint_capability
from ..tokens.identity import mint_identity
from ..tokens.inspect import TokenInfo, inspect_token
from ..tokens.mint import TokenTime, mint_authorization, sign_off
from .keys import KeyStore, key_id
from .policy import Client, Grant, Policy, Resource, find_grant

__all__ = ["DEFAULT_IDENTITY_TTL", "DEFAULT_TOKEN_TTL", "Caller", "Issuer", "Refusal", "Settings"]

#: An authorization token is for one request: Hessra's are 5 minutes or less.
DEFAULT_TOKEN_TTL = 300
DEFAULT_IDENTITY_TTL = 3600


class Refusal(Exception):
    """A request the authority answers with `status` and ``{"response_msg":
    message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who is asking: its identity (the subject of what it gets), the client
    it acts as, and the rights it has."""

    identity: str
    client: Client
    grants: tuple[Grant, ...]
    #: "certificate", "identity token" or "domain identity"
    via: str
    #: for domain members: the realm's domain and the member's role
    domain: str | None = None
    role: str | None = None

    def describe(self) -> str:
        """For the log: who, and how."""
        extra = f", role {self.role}" if self.role else ""
        return f"{self.identity} ({self.via}{extra})"


@dataclass(frozen=True)
class Settings:
    token_ttl: int = DEFAULT_TOKEN_TTL
    identity_ttl: int = DEFAULT_IDENTITY_TTL
    #: component -> key pair this authority signs multi-party sign-offs with
    signoff_keys: Mapping[str, biscuit_auth.KeyPair] = field(default_factory=dict)
    #: root public keys (alg/hex) of other authorities whose tokens /sign_token accepts
    trusted_roots: tuple[str, ...] = ()
    #: HOST:PORT for pending_signoffs whose node names no authorization_service
    address: str | None = None


def _identity_info(token: str) -> TokenInfo:
    try:
        info = inspect_token(token)
    except (TokenFormatError, ValueError):
        raise Refusal(401, "the identity token is not a valid token") from None
    if info.kind != "identity" or not info.subject:
        raise Refusal(401, "the bearer token is not an identity token")
    return info


def _covers(ancestor: str, identity: str) -> bool:
    return identity == ancestor or identity.startswith(ancestor + ":")


class Issuer:
    """Decisions and tokens, with the keys of `keys` and the given settings.
    The policy is passed to each call: the server hands the one in force
    when the request came in."""

    def __init__(self, keys: KeyStore, settings: Settings) -> None:
        self.keys = keys
        self.settings = settings

    # -- who is asking ---------------------------------------------------

    def caller_from_certificate(self, policy: Policy, sans: Iterable[tuple[str, str]]) -> Caller:
        """The caller a verified client certificate names (its SANs)."""
        found = policy.match_certificate(sans)
        if found is None:
            raise Refusal(403, "no client in the policy matches this certificate")
        client, identity = found
        return Caller(identity, client, client.grants, "certificate")

    def caller_from_identity_token(self, policy: Policy, token: str, *, now: float | None = None) -> Caller:
        """The caller an identity token (Authorization: Bearer) proves: a
        domain member with its role's rights, or the client that names the
        identity (or its nearest ancestor), if identity_token_enabled."""
        now = time.time() if now is None else now
        info = _identity_info(token)
        keys = self.keys.verification_keys(now)
        if info.domain is not None:
            return self._domain_caller(policy, token, info, keys, now)
        identity = identity_scope(token, keys, now=now).identity
        if identity is None:
            decision = verify_identity(token, keys, now=now, identity=None)
            raise Refusal(401, f"identity token rejected: {decision.reason if not decision.valid else 'denied'}")
        client = policy.client_for_identity(identity)
        if client is None:
            raise Refusal(403, f"no client in the policy for identity {identity}")
        if not client.identity_tokens:
            raise Refusal(403, f"client {client.name!r} does not use identity tokens (identity_token_enabled)")
        return Caller(identity, client, client.grants, "identity token")

    def _domain_caller(self, policy: Policy, token: str, info: TokenInfo, keys: list[RootKey],
                       now: float) -> Caller:
        assert info.domain is not None and info.subject is not None
        identity, domain = info.subject, info.domain
        decision = verify_identity(token, keys, now=now, identity=identity, domain=domain,
                                   ensure_subject_in_domain=True)
        if not decision.valid:
            raise Refusal(401, f"identity token rejected: {decision.reason}")
        realm = policy.realm(domain)
        if realm is None or realm.domain is None or not realm.identity_tokens:
            raise Refusal(403, f"domain {domain} is not a realm in the policy")
        if not realm.domain.is_member(identity):
            raise Refusal(403, f"{identity} is not a member of domain {domain}")
        role = realm.domain.role_for(identity)
        if role is None:
            raise Refusal(403, f"{identity} has no role in domain {domain} (no assignment, no default_role)")
        return Caller(identity, realm, role.grants, "domain identity", domain=domain, role=role.name)

    # -- authorization tokens --------------------------------------------

    def request_token(self, policy: Policy, caller: Caller, resource: str, operation: str) -> dict[str, Any]:
        """POST /request_token: TokenResponse {response_msg, token,
        pending_signoffs?}."""
        grant = find_grant(caller.grants, policy.resources, resource, operation)
        if grant is None:
            raise Refusal(403, f"{caller.identity} may not {operation} {resource}")
        known = policy.resources.get(resource) or Resource(resource)
        signer, kid = self.keys.signing_key()
        lifetime = TokenTime(duration=self.settings.token_ttl)
        if known.capability:
            token = mint_capability(signer, caller.identity, resource, operation,
                                    designations=grant.designations, anchor=known.anchor, time_config=lifetime,
                                    root_key_id=kid)
            return {"response_msg": "capability token issued", "token": token}
        token = mint_authorization(signer, caller.identity, resource, operation, time_config=lifetime,
                                   service_chain=known.chain, root_key_id=kid,
                                   multi_party=[ChainNode(p.component, p.public_key) for p in known.parties])
        if not known.parties:
            return {"response_msg": "token issued", "token": token}
        pending = [{"component": party.component,
                    "authorization_service": party.authorization_service or self.settings.address or "",
                    "public_key": party.public_key} for party in known.parties]
        return {"response_msg": f"token issued; it needs {len(pending)} sign-off(s)", "token": token,
                "pending_signoffs": pending}

    # -- identity tokens -------------------------------------------------

    def _identity_response(self, message: str, identity: str, *, duration: int,
                           domain: str | None = None) -> dict[str, Any]:
        signer, kid = self.keys.signing_key()
        token = mint_identity(signer, identity, time_config=TokenTime(duration=duration),
                              delegatable=domain is None, domain=domain, root_key_id=kid)
        return {"response_msg": message, "token": token, "expires_in": duration, "identity": identity}

    def request_identity_token(self, policy: Policy, caller: Caller, identifier: str | None) -> dict[str, Any]:
        """POST /request_identity_token (mTLS): a delegatable identity token
        for the certificate's identity (or, with `identifier`, a descendant
        of it). IdentityTokenResponse."""
        if caller.via != "certificate":
            raise Refusal(401, "identity tokens are issued to client certificates (mTLS)")
        if not caller.client.identity_tokens:
            raise Refusal(403, f"client {caller.client.name!r} does not use identity tokens (identity_token_enabled)")
        identity = identifier or caller.identity
        if not _covers(caller.identity, identity):
            raise Refusal(403, f"the certificate is {caller.identity}; it can't have an identity token for {identity}")
        return self._identity_response("identity token issued", identity, duration=self.settings.identity_ttl)

    def refresh_identity_token(self, policy: Policy, caller: Caller | None, current_token: str,
                               identifier: str | None, *, now: float | None = None) -> dict[str, Any]:
        """POST /refresh_identity_token: the current token proves the
        identity (mTLS optional); a fresh token for it if the policy still
        allows identity tokens for it. IdentityTokenResponse."""
        now = time.time() if now is None else now
        info = _identity_info(current_token)
        keys = self.keys.verification_keys(now)
        if info.domain is not None:
            member = self._domain_caller(policy, current_token, info, keys, now)
            if identifier is not None and identifier != member.identity:
                raise Refusal(403, f"the token is {member.identity}'s, not {identifier}'s")
            identity, domain = member.identity, member.domain
        else:
            identity = identifier or identity_scope(current_token, keys, now=now).identity
            decision = verify_identity(current_token, keys, now=now, identity=identity) if identity else None
            if identity is None or decision is None or not decision.valid:
                reason = decision.reason if decision is not None else "it proves no identity"
                raise Refusal(401, f"identity token rejected: {reason}")
            client = policy.client_for_identity(identity)
            if client is None or not client.identity_tokens:
                raise Refusal(403, f"the policy gives {identity} no identity tokens")
            domain = None
        if caller is not None and not _covers(caller.identity, identity):
            raise Refusal(403, f"the certificate is {caller.identity}; it can't refresh {identity}'s token")
        return self._identity_response("identity token refreshed", identity, duration=self.settings.identity_ttl,
                                       domain=domain)

    def mint_identity_token(self, policy: Policy, caller: Caller, subject: str,
                            duration: int | None) -> dict[str, Any]:
        """POST /mint_identity_token (mTLS, a realm): a non-delegatable
        identity token for `subject` in the realm's domain, valid for
        `duration` seconds (at most --identity-ttl).
        MintIdentityTokenResponse."""
        if caller.via != "certificate":
            raise Refusal(401, "domain identities are minted by a realm's client certificate (mTLS)")
        realm = caller.client.domain
        if realm is None or not caller.client.identity_tokens:
            raise Refusal(403, f"client {caller.client.name!r} is not a realm (no [clients.domain] "
                               "with identity_token_enabled)")
        if not realm.is_member(subject):
            raise Refusal(403, f"{subject} is not in domain {realm.realm} (members are {realm.realm}:NAME)")
        lifetime = self.settings.identity_ttl if duration is None else min(duration, self.settings.identity_ttl)
        return self._identity_response("domain identity token issued", subject, duration=lifetime,
                                       domain=realm.realm)

    # -- multi-party sign-offs and verification ----------------------------

    def _roots(self, now: float, *, others: bool) -> list[RootKey]:
        keys = self.keys.verification_keys(now)
        if others:
            # Under the key id such a key gets here: another hessra-pg authority's
            # tokens name it; tokens naming no key id are tried with every key.
            keys += [RootKey(key_id(key), key) for key in self.settings.trusted_roots]
        return keys

    def sign_token(self, policy: Policy, caller: Caller, token: str, resource: str, operation: str,
                   *, now: float | None = None) -> dict[str, Any]:
        """POST /sign_token: sign off the caller's token for the first
        pending multi-party node whose key this authority holds
        (--signoff-key). SignTokenResponse {response_msg, signed_token}."""
        now = time.time() if now is None else now
        if not self.settings.signoff_keys:
            raise Refusal(403, "this authority signs off for no component (start it with --signoff-key)")
        if find_grant(caller.grants, policy.resources, resource, operation) is None:
            raise Refusal(403, f"{caller.identity} may not {operation} {resource}")
        try:
            verified = load_token(token, self._roots(now, others=True), now)
        except TokenRejected as rejected:
            raise Refusal(403, f"token rejected: {rejected.reason}") from None
        if verified.expires_at is not None and verified.expires_at <= now:
            raise Refusal(403, "token rejected: expired")
        root = verified.key.public_key
        info = inspect_token(token, root)
        if (info.subject, info.resource, info.operation) != (caller.identity, resource, operation):
            raise Refusal(403, f"the token is not {caller.identity}'s token to {operation} {resource}")
        for party in info.multi_party:
            pair = self.settings.signoff_keys.get(party["component"])
            if party["signed"] or pair is None or str(pair.public_key) != canonical_public_key(party["public_key"]):
                continue
            signed = sign_off(token, root, party["component"], pair)
            return {"response_msg": f"signed off as {party['component']}", "signed_token": signed}
        raise Refusal(409, "the token needs no sign-off this authority makes")

    def verify_token(self, token: str, subject: str, resource: str, operation: str,
                     *, now: float | None = None) -> dict[str, Any]:
        """POST /verify_token: 200 {response_msg} if valid, else 403."""
        now = time.time() if now is None else now
        return _verdict(verify(token, self._roots(now, others=False), now=now, subject=subject,
                               resource=resource, operation=operation))

    def verify_service_chain_token(self, policy: Policy, token: str, subject: str, resource: str,
                                   component: str | None, *, now: float | None = None) -> dict[str, Any]:
        """POST /verify_service_chain_token: verify with the resource's
        service chain (up to `component`, or every node)."""
        now = time.time() if now is None else now
        known = policy.resources.get(resource)
        if known is None or not known.chain:
            raise Refusal(404, f"resource {resource} has no service chain in the policy")
        try:
            operation = inspect_token(token).operation
        except (TokenFormatError, ValueError):
            operation = None
        try:
            decision = verify(token, self._roots(now, others=False), now=now, subject=subject, resource=resource,
                              operation=operation, chain=known.chain, component=component)
        except ConfigurationError as error:
            raise Refusal(400, str(error)) from None
        return _verdict(decision)


def _verdict(decision: Decision) -> dict[str, Any]:
    if decision.valid:
        return {"response_msg": "token verified"}
    raise Refusal(403, f"token denied: {decision.reason}")

