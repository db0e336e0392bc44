"""Test tokens from a short description: what kind, for whom, for what, until when.

A :class:`TokenSpec` is what a policy test says about a token (in
``CASES.toml`` or through the pytest fixture); :func:`mint_test_token` makes
it with :mod:`hessra_pg.tokens`, signed by a test key, so tests exercise the
same token formats applications get from Hessra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import biscuit_auth

from hessra_pg.core.keys import generate_keypair
from hessra_pg.errors import TokenSpecError
from hessra_pg.tokens.capability import mint_capability
from hessra_pg.tokens.identity import mint_identity
from hessra_pg.tokens.mint import DEFAULT_DURATION, TokenTime, mint_authorization

__all__ = ["KINDS", "SIGNERS", "MintedToken", "TokenSpec", "mint_test_token"]

KINDS = ("authorization", "identity", "capability")
#: ``test``: the run's registered test key; ``unregistered``: a key the
#: database doesn't know (the token must be refused like a forgery).
SIGNERS = ("test", "unregistered")
#: How long before now an ``expired`` token expired.
EXPIRED_AGO = 60
#: The right's subject of a capability minted without one: capabilities are
#: bearer grants, the subject is only checked when hessra.subject is set.
CAPABILITY_HOLDER = "hessra-pg-test"

_FIELDS = {
    "authorization": {"kind", "subject", "resource", "operation", "expires_in", "expired", "key"},
    "identity": {"kind", "subject", "expires_in", "expired", "key"},
    "capability": {"kind", "subject", "resource", "operation", "designations", "anchor", "expires_in", "expired",
                   "key"},
}
_REQUIRED = {
    "authorization": ("subject", "resource", "operation"),
    "identity": ("subject",),
    "capability": ("resource", "operation"),
}


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


@dataclass(frozen=True)
class TokenSpec:
    """A token to mint for a test. Invalid combinations raise
    :class:`~hessra_pg.errors.TokenSpecError` naming the field."""

    kind: str = "authorization"
    subject: str | None = None
    resource: str | None = None
    operation: str | None = None
    designations: Mapping[str, str] = field(default_factory=dict)
    anchor: str | None = None
    expires_in: int = DEFAULT_DURATION
    """Seconds the token is valid for (from now; with ``expired``, the
    lifetime it had)."""
    expired: bool = False
    key: str = "test"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TokenSpecError(f"kind: must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("subject", "resource", "operation", "anchor"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TokenSpecError(f"{name}: must be a non-empty string")
        for name in _REQUIRED[self.kind]:
            if getattr(self, name) is None:
                raise TokenSpecError(f"{name}: required for {_a(self.kind)} token")
        if not isinstance(self.designations, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.designations.items()):
            raise TokenSpecError("designations: must map labels (non-empty strings) to string values")
        if self.kind != "capability":
            for name in ("designations", "anchor"):
                if getattr(self, name):
                    raise TokenSpecError(f"{name}: only capability tokens carry it, not {self.kind} tokens")
        if self.kind == "identity" and (self.resource is not None or self.operation is not None):
            raise TokenSpecError("resource/operation: an identity token names no resource or operation")
        if type(self.expires_in) is not int or self.expires_in < 1:
            raise TokenSpecError("expires_in: must be a positive number of seconds")
        if type(self.expired) is not bool:
            raise TokenSpecError("expired: must be true or false")
        if self.key not in SIGNERS:
            raise TokenSpecError(f"key: must be one of {', '.join(SIGNERS)}, not {self.key!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TokenSpec:
        """From a TOML table or a dict; unknown fields are refused by name."""
        kind = data.get("kind", "authorization")
        if kind not in KINDS:
            raise TokenSpecError(f"kind: must be one of {', '.join(KINDS)}, not {kind!r}")
        unknown = sorted(set(data) - _FIELDS[kind])
        if unknown:
            raise TokenSpecError(f"{unknown[0]}: not a field of {_a(kind)} token "
                                 f"(fields: {', '.join(sorted(_FIELDS[kind]))})")
        return cls(**dict(data))

    @property
    def default_subject(self) -> str | None:
        """The hessra.subject a test sets unless it says otherwise: the
        subject of an authorization token (it is checked against it); none
        for identity tokens (the token alone proves the identity) and
        capabilities (bearer grants)."""
        return self.subject if self.kind == "authorization" else None


@dataclass(frozen=True)
class MintedToken:
    """A minted test token and the hessra.subject that goes with it."""

    token: str = field(repr=False)  # never in a repr or a failure message
    subject: str | None
    spec: TokenSpec

    def __str__(self) -> str:
        return self.token


def mint_test_token(spec: TokenSpec, signer: biscuit_auth.KeyPair, kid: int | None = None, *,
                    now: int | None = None) -> MintedToken:
    """Mint ``spec`` signed by ``signer`` under root key id ``kid`` (the
    database then checks it against that key only). ``key="unregistered"``
    signs with a fresh key instead, under the same kid: a forgery."""
    start = int(time.time()) if now is None else now
    if spec.expired:
        start -= spec.expires_in + EXPIRED_AGO
    when = TokenTime(start=start, duration=spec.expires_in)
    if spec.key == "unregistered":
        signer = generate_keypair("ed25519")
    if spec.kind == "authorization":
        assert spec.subject and spec.resource and spec.operation  # checked by TokenSpec
        token = mint_authorization(signer, spec.subject, spec.resource, spec.operation, time_config=when,
                                   root_key_id=kid)
    elif spec.kind == "identity":
        assert spec.subject
        token = mint_identity(signer, spec.subject, time_config=when, root_key_id=kid)
    else:
        assert spec.resource and spec.operation
        token = mint_capability(signer, spec.subject or CAPABILITY_HOLDER, spec.resource, spec.operation,
                                designations=list(spec.designations.items()), anchor=spec.anchor,
                                time_config=when, root_key_id=kid)
    return MintedToken(token=token, subject=spec.default_subject, spec=spec)
