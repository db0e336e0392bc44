"""What the verifier reads and answers, without the verifier: root keys,
service chain nodes, revocations, decisions, verified tokens, rejections,
and the reason codes.

A database backend holds these from its first call (its configuration, the
decisions of its caches and of the shared decision table); it imports
hessra_pg.core.verifier, and with it biscuit-python, only when a token must
actually be checked. hessra_pg.core.verifier re-exports every name here.
"""

from __future__ import annotations

from ..errors import ChainFormatError, KeyFormatError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Any

    import biscuit_auth

#: Stable reason codes reported by explain() and the CLI.
REASONS = (
    "ok",
    "no_token",
    "bad_token",
    "too_complex",
    "unknown_key",
    "key_inactive",
    "bad_signature",
    "expired",
    "revoked",
    "subject_mismatch",
    "identity_mismatch",
    "not_identity",
    "denied",
    "domain_mismatch",
    "prefix_mismatch",
    "missing_signoff",
    "missing_attestation",
    "check_failed",
    "limits",
)

#: The detail explain() gives roles without admin rights.
REDACTED_DETAIL = "details are shown to hessra_authz administrators only"


class RootKey(Record):
    """A root (authority) public key with its validity window (epoch seconds)."""

    __slots__ = ("kid", "public_key", "not_before", "not_after")

    def __init__(self, kid: int, public_key: str, not_before: float | None = None,
                 not_after: float | None = None) -> None:
        self.kid = kid
        self.public_key = public_key
        self.not_before = not_before
        self.not_after = not_after

    def active_at(self, now: int) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now < self.not_after


class ChainNode(Record):
    """One node of a service chain (spec §3), public key in canonical form."""

    __slots__ = ("component", "public_key")

    def __init__(self, component: str, public_key: str) -> None:
        self.component = component
        self.public_key = public_key


class Revocations(Record):
    """Revoked block revocation ids (lowercase hex) and revoked identities.

    A token is revoked if any of its blocks' ids is listed (revoking the
    authority block's id kills every token derived from it). An identity is
    revoked if it, or an ancestor in the `:` hierarchy, is listed.
    """

    __slots__ = ("ids", "identities")

    def __init__(self, ids: frozenset[str] = frozenset(), identities: frozenset[str] = frozenset()) -> None:
        self.ids = ids
        self.identities = identities

    def covers_identity(self, identity: str) -> bool:
        if not self.identities:
            return False
        parts = identity.split(":")
        return any(":".join(parts[:end]) in self.identities for end in range(1, len(parts) + 1))

    def revoked_block(self, verified: "VerifiedToken") -> str | None:
        for index, revocation_id in enumerate(verified.revocation_ids):
            if revocation_id in self.ids:
                return f"block {index} of the token is revoked"
        return None


NO_REVOCATIONS = Revocations()


#: Reasons whose ":<label>" suffix names a designation label of the token
#: itself (hessra-capability-tokens.md §3.4), not the database's configuration.
_LABEL_REASONS = frozenset({"designation_mismatch", "designation_rejected", "trusting_designation_on_supplied_label"})


class Decision(Record):
    """The outcome of one verification. `reason` is one of REASONS (for a
    missing attestation it is `missing_attestation:<component>`)."""

    __slots__ = ("valid", "reason", "kid", "expires_at", "revocation_ids", "detail")

    def __init__(self, valid: bool, reason: str, kid: int | None = None, expires_at: int | None = None,
                 revocation_ids: tuple[str, ...] = (), detail: str | None = None) -> None:
        self.valid = valid
        self.reason = reason
        self.kid = kid
        self.expires_at = expires_at
        self.revocation_ids = revocation_ids
        self.detail = detail

    def redacted(self) -> "Decision":
        """What a role that doesn't administer the keys may learn
        (docs/security.md "What an application role can learn"): the reason code, with the
        key reasons folded into bad_signature (which keys exist or were
        retired is the DBA's business) and no chain component names; no kid
        and no detail (failed Datalog may quote the database's chain keys).
        A capability's designation label stays: it is the token's own
        text, which the caller holds."""
        reason = "bad_signature" if self.reason in ("unknown_key", "key_inactive") else self.reason
        if reason.split(":", 1)[0] not in _LABEL_REASONS:
            reason = reason.split(":", 1)[0]
        return Decision(self.valid, reason, None, self.expires_at, self.revocation_ids, REDACTED_DETAIL)

    def weight(self) -> int:
        """Estimated bytes it holds in a cache."""
        return 300 + sum(len(r) + 50 for r in self.revocation_ids) + len(self.detail or "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; never contains the token."""
        return {
            "valid": self.valid,
            "reason": self.reason,
            "kid": self.kid,
            "expires_at": self.expires_at,
            "revocation_ids": list(self.revocation_ids),
            "detail": self.detail,
        }


class TokenRejected(Exception):
    """Internal: the token can't be used at all (format, key, signature)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class VerifiedToken(Record):
    """A token whose signatures were checked against one root key."""

    __slots__ = ("biscuit", "key", "expires_at", "revocation_ids", "block_sources", "expiry_known", "weight", "data",
                 "structure")
    _hidden = frozenset({"biscuit", "block_sources", "data", "structure"})

    def __init__(self, biscuit: biscuit_auth.Biscuit, key: RootKey, expires_at: int | None,
                 revocation_ids: tuple[str, ...], block_sources: tuple[str, ...] = (), expiry_known: bool = True,
                 weight: int = 0, data: bytes = b"") -> None:
        self.biscuit = biscuit
        self.key = key
        self.expires_at = expires_at
        self.revocation_ids = revocation_ids
        #: Every block printed (Datalog text), as biscuit prints them.
        self.block_sources = block_sources
        #: Every time check is a `check if time($t), $t < N` line, so the token
        #: can't turn invalid before expires_at (decisions may be cached).
        self.expiry_known = expiry_known
        #: Estimated bytes held while it is cached (see estimated_weight).
        self.weight = weight
        #: The serialized token (its structure is read from it, hessra_pg.core.datalog).
        self.data = data
        #: Its decoded Datalog (hessra_pg.core.datalog.Token), read on first need.
        self.structure = None

    def decision(self, valid: bool, reason: str, detail: str | None = None) -> Decision:
        """A Decision about this token (its key id, expiry and revocation ids)."""
        return Decision(valid, reason, self.key.kid, self.expires_at, self.revocation_ids, detail)


# -- configuration ---------------------------------------------------------

def parse_chain(nodes: Any) -> tuple[ChainNode, ...]:
    """Validate a service chain given as the JSON array of spec §3.3
    (`[{"component": ..., "public_key": ...}]`); raise ChainFormatError."""
    from .keys import parse_public_key  # (and biscuit-python: only where a chain is configured)

    if not isinstance(nodes, list):
        raise ChainFormatError(
            'service chain must be a JSON array of {"component": ..., "public_key": ...} objects'
        )
    parsed: list[ChainNode] = []
    seen: set[str] = set()
    for position, node in enumerate(nodes, start=1):
        if not isinstance(node, dict):
            raise ChainFormatError(f"service chain node {position} is not a JSON object")
        component, key = node.get("component"), node.get("public_key")
        if not isinstance(component, str) or not component:
            raise ChainFormatError(f"service chain node {position} needs a non-empty \"component\" string")
        if not isinstance(key, str):
            raise ChainFormatError(f"service chain node {position} ({component}) needs a \"public_key\" string")
        if component in seen:
            raise ChainFormatError(f"service chain component {component!r} appears twice")
        try:
            canonical = str(parse_public_key(key))
        except KeyFormatError as error:
            raise ChainFormatError(f"service chain node {position} ({component}): {error}") from None
        seen.add(component)
        parsed.append(ChainNode(component, canonical))
    return tuple(parsed)
