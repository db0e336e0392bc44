"""Say what a token is and what it grants, for people (spec §1.5, §6.5).

Reads the printed Datalog of each block (Biscuit's own printer, which is
stable) rather than guessing from bytes. With a root key the signatures are
checked first and `verified` is True; without one the token is only parsed.
Never includes the token itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import biscuit_auth

from ..core.encoding import decode_token
from ..errors import TokenFormatError
from ..core.keys import parse_public_key
from ..core.datalog import decode
from ..core.shape import read_shape
from ..core.verifier import time_check_limits
from .capability import describe_capability, is_capability

_STRING = r'"((?:[^"\\]|\\.)*)"'
_RIGHT = re.compile(rf"^right\({_STRING}, {_STRING}, {_STRING}\);$", re.M)
_SUBJECT = re.compile(rf"^subject\({_STRING}\);$", re.M)
_DOMAIN = re.compile(rf"^check if domain\({_STRING}\);$", re.M)
_ACTOR = re.compile(rf"^check if actor\(\$a\), \$a == {_STRING}( \|\| .*)?;$", re.M)
_NODE = re.compile(rf"^node\(\$s, {_STRING}\) <- service\(\$s\) trusting (\S+);$", re.M)
_SERVICE = re.compile(rf"^service\({_STRING}\);$", re.M)
_PARTY = re.compile(rf"^check if namespace\({_STRING}\) trusting (\S+);$", re.M)
_NAMESPACE = re.compile(rf"^namespace\({_STRING}\);$", re.M)
_PREFIX_KEY = re.compile(r"^check if prefix_added\(true\) trusting (\S+);$", re.M)
_PREFIX = re.compile(rf"^check if prefix\({_STRING}\);$", re.M)
_SUBJECT_CHECK = "check if subject($sub), resource($res), operation($op), right($sub, $res, $op);"
_CAPABILITY_CHECK = "check if resource($res), operation($op), right($sub, $res, $op);"


@dataclass
class BlockInfo:
    index: int
    external_key: str | None
    revocation_id: str
    source: str


@dataclass
class TokenInfo:
    """What `hessra-pg token inspect` / `identity inspect` print."""

    kind: str
    verified: bool
    root_key_id: int | None
    expires_at: int | None
    subject: str | None = None
    resource: str | None = None
    operation: str | None = None
    rights: list[list[str]] = field(default_factory=list)
    identity_chain: list[str] = field(default_factory=list)
    delegatable: bool | None = None
    domain: str | None = None
    service_chain: list[dict[str, Any]] = field(default_factory=list)
    multi_party: list[dict[str, Any]] = field(default_factory=list)
    prefix: str | None = None
    revocation_ids: list[str] = field(default_factory=list)
    blocks: list[BlockInfo] = field(default_factory=list)
    #: capability tokens (kind "capability"): CapabilityInfo.as_dict() of
    #: hessra_pg.tokens.capability, read from the token's structure
    capability: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unescape(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


def inspect_token(token: str, root_key: str | None = None) -> TokenInfo:
    """Describe a token. Raises TokenFormatError if it can't be parsed, or if
    `root_key` is given and the signatures don't verify with it."""
    data = decode_token(token)
    shape = read_shape(data)
    parsed: Any
    try:
        if root_key is not None:
            parsed = biscuit_auth.Biscuit.from_bytes(data, parse_public_key(root_key))
        else:
            parsed = biscuit_auth.UnverifiedBiscuit.from_base64(token.strip().replace("+", "-").replace("/", "_"))
    except Exception:
        if root_key is not None:
            raise TokenFormatError("token signature does not verify with the given root key") from None
        raise TokenFormatError("token is not a valid Biscuit") from None
    count = parsed.block_count()
    sources = [parsed.block_source(i) for i in range(count)]
    revocation_ids = list(parsed.revocation_ids)
    external = [_external_key(parsed, i) for i in range(count)]
    blocks = [BlockInfo(i, external[i], revocation_ids[i] if i < len(revocation_ids) else "", sources[i])
              for i in range(count)]
    times = [limit for source in sources for limit in time_check_limits(source)]
    authority = sources[0]
    info = TokenInfo(
        kind="unknown",
        verified=root_key is not None,
        root_key_id=shape.root_key_id,
        expires_at=min(times) if times else None,
        revocation_ids=revocation_ids,
        blocks=blocks,
    )
    domain = _DOMAIN.search(authority)
    info.domain = _unescape(domain.group(1)) if domain else None
    rights = [[_unescape(g) for g in m.groups()] for m in _RIGHT.finditer(authority)]
    subject = _SUBJECT.search(authority)
    if subject:
        _describe_identity(info, _unescape(subject.group(1)), sources)
    elif rights:
        _describe_authorization(info, rights, authority, sources, external)
    _describe_capability(info, data, revocation_ids)
    return info


def _describe_capability(info: TokenInfo, data: bytes, revocation_ids: list[str]) -> None:
    """Spec hessra-capability-tokens.md §6.1: a capability is told apart by
    the structure of its authority block (never by printed text)."""
    try:
        structure = decode(data)
    except TokenFormatError:
        return  # a block our reader refuses (stricter than biscuit): no capability details
    if not is_capability(structure):
        if info.kind == "capability":
            info.kind = "authorization"
        return
    described = describe_capability(structure, verified=info.verified, revocation_ids=revocation_ids)
    info.kind = "capability"
    details = described.as_dict()
    for duplicate in ("capability", "subject", "resource", "operation", "expires_at", "revocation_ids"):
        del details[duplicate]  # already in TokenInfo
    info.capability = details
    if described.subject is not None:
        info.subject, info.resource, info.operation = described.subject, described.resource, described.operation


def _external_key(parsed: Any, index: int) -> str | None:
    getter = getattr(parsed, "block_external_key", None)  # UnverifiedBiscuit has none
    key = getter(index) if getter is not None else None
    return None if key is None else str(key)


def _describe_identity(info: TokenInfo, subject: str, sources: list[str]) -> None:
    info.kind = "identity"
    info.subject = subject
    info.identity_chain = [subject]
    root_actor = _ACTOR.search(sources[0])
    info.delegatable = bool(root_actor and root_actor.group(2))
    for source in sources[1:]:
        actor = _ACTOR.search(source)
        if actor:
            info.identity_chain.append(_unescape(actor.group(1)))


def _describe_authorization(info: TokenInfo, rights: list[list[str]], authority: str, sources: list[str],
                            external: list[str | None]) -> None:
    info.rights = rights
    info.subject, info.resource = rights[0][0], rights[0][1]
    info.operation = ", ".join(right[2] for right in rights)
    nodes = [(_unescape(m.group(1)), m.group(2)) for m in _NODE.finditer(authority)]
    parties = [(_unescape(m.group(1)), m.group(2)) for m in _PARTY.finditer(authority)]
    attested = {(external[i], _unescape(m.group(1))) for i, s in enumerate(sources) for m in _SERVICE.finditer(s)}
    signed = {(external[i], _unescape(m.group(1))) for i, s in enumerate(sources) for m in _NAMESPACE.finditer(s)}
    # External keys are only known once signatures are checked (a root key
    # was given); without them attestation status is unknown (None).
    known = info.verified
    info.service_chain = [
        {"component": component, "public_key": key, "attested": (key, info.resource) in attested if known else None}
        for component, key in nodes
    ]
    info.multi_party = [
        {"component": component, "public_key": key, "signed": (key, component) in signed if known else None}
        for component, key in parties
    ]
    prefixes = [_unescape(m.group(1)) for source in sources[1:] for m in _PREFIX.finditer(source)]
    info.prefix = prefixes[0] if prefixes else ("<pending>" if _PREFIX_KEY.search(authority) else None)
    if parties:
        info.kind = "multi_party"
    elif nodes:
        info.kind = "service_chain"
    elif _CAPABILITY_CHECK in authority and _SUBJECT_CHECK not in authority:
        info.kind = "capability"  # hessra-cap: the subject is not checked (spec §7)
    else:
        info.kind = "authorization"
