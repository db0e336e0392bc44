"""Hessra capability tokens (the hessra-cap model): mint them, amend them,
and describe them (spec hessra-capability-tokens.md §1, §2, §4.2, §6.1).

A capability grants a right to whoever holds it: its authority block has
`right(subject, resource, operation)` and a check that the verifier asks
for that right, without checking who presents the token. Designation checks
narrow it (`check if designation("tenant", "acme")`); the verifier supplies
the facts that satisfy them. The blocks written here are exactly those of
hessra-cap-token 2.x:

- mint_capability: the authority block of §1.1 (the anchor is
  `designation("anchor", a)`; a latent token waits for an activation signed
  by its activator);
- designate: a keyless first-party amendment (§2.2), constraints only, that
  any holder can append to narrow the token;
- attest, activate, complete_facet: third-party blocks signed by an
  attester or the activator (§2.3, §2.4), the facts they vouch for first,
  then their constraints.

Every value goes to biscuit as a parameter, never into Datalog text.
capability_info reads the token's structure from its protobuf blocks
(hessra_pg.core.datalog), never from printed Datalog, which does not escape
quotes in strings. Verification under the database's policy is
hessra_pg.core.capability.verify_capability.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence
from typing import Any, Union

import biscuit_auth

from ..core.datalog import (
    Binary,
    BinaryKind,
    Block,
    Check,
    CheckKind,
    Token,
    Value,
    Variable,
    check_source,
    decode,
)
from ..core.biscuit import unverified_revocation_ids
from ..core.encoding import decode_token, encode_token
from ..core.keys import parse_public_key
from ..core.verifier import BISCUIT_ERRORS
from ..errors import ArgumentError, KeyFormatError, TokenFormatError
from .mint import DEFAULT_DURATION, TokenTime

__all__ = [
    "ANCHOR_LABEL",
    "FACET_LABEL",
    "Attestation",
    "CapabilityInfo",
    "DesignationCheck",
    "OtherCheck",
    "activate",
    "attest",
    "capability_info",
    "complete_facet",
    "describe_capability",
    "designate",
    "is_capability",
    "mint_capability",
]

#: `anchor(a)` is `designation("anchor", a)` (hessra-cap-token mint.rs).
ANCHOR_LABEL = "anchor"
#: hessra-cap's single-use facets: `designation("facet", <id>)`.
FACET_LABEL = "facet"

#: A public key: biscuit's PublicKey, or text (`ed25519/<hex>`, `secp256r1/<hex>`, PEM).
KeyLike = Union[biscuit_auth.PublicKey, str]
#: (label, value)
Designation = tuple[str, str]
#: (attester's public key, label, value): `designation_trusting(pk, l, v)`.
TrustingDesignation = tuple[KeyLike, str, str]

_NOT_VERIFIED = "token does not verify with the root public key (or is not a Biscuit)"


# -- inputs ------------------------------------------------------------------

def _text(value: object, what: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ArgumentError(f"{what} must be a string")
    if not empty and not value:
        raise ArgumentError(f"{what} must not be empty")
    return value


def _designations(pairs: Iterable[Sequence[str]], what: str) -> list[Designation]:
    result = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ArgumentError(f"each {what} must be a (label, value) pair")
        label, value = pair
        result.append((_text(label, f"a {what} label", empty=False), _text(value, f"a {what} value")))
    return result


def _public_key(value: KeyLike, what: str) -> biscuit_auth.PublicKey:
    if isinstance(value, biscuit_auth.PublicKey):
        return value
    try:
        return parse_public_key(value)
    except KeyFormatError as error:
        raise KeyFormatError(f"{what}: {error}") from None


def _trusting(triples: Iterable[Sequence[Any]], what: str) -> list[tuple[biscuit_auth.PublicKey, str, str]]:
    result = []
    for triple in triples:
        if isinstance(triple, (str, bytes)) or not isinstance(triple, Sequence) or len(triple) != 3:
            raise ArgumentError(f"each {what} must be a (public key, label, value) triple")
        key, label, value = triple
        result.append((_public_key(key, f"{what} key"), _text(label, f"a {what} label", empty=False),
                       _text(value, f"a {what} value")))
    return result


def _seconds(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ArgumentError(f"{what} must be a positive number of seconds")
    return value


def _now(now: int | None) -> int:
    if now is None:
        return int(time.time())
    if type(now) is not int or now < 0:
        raise ArgumentError("now must be a Unix time (a non-negative integer)")
    return now


def _load(token: str, root_key: KeyLike) -> biscuit_auth.Biscuit:
    """The token parsed with its signatures checked (TokenFormatError if not)."""
    data = decode_token(token)
    key = _public_key(root_key, "root key")
    try:
        return biscuit_auth.Biscuit.from_bytes(data, key)
    except BISCUIT_ERRORS:
        raise TokenFormatError(_NOT_VERIFIED) from None


class _Source:
    """Datalog statements whose every value is a named parameter."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.params: dict[str, Any] = {}
        self.scope: dict[str, biscuit_auth.PublicKey] = {}

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "{" + name + "}"

    def key(self, value: biscuit_auth.PublicKey) -> str:
        name = f"k{len(self.scope)}"
        self.scope[name] = value
        return "{" + name + "}"

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)

    def constraints(self, designations: Sequence[Designation],
                    trusting: Sequence[tuple[biscuit_auth.PublicKey, str, str]], expiration: int | None) -> None:
        """The constraint body of §2.1, in its order."""
        for label, value in designations:
            self.add(f"check if designation({self.param(label)}, {self.param(value)});")
        for key, label, value in trusting:
            self.add(f"check if designation({self.param(label)}, {self.param(value)}) trusting {self.key(key)};")
        if expiration is not None:
            self.add(f"check if time($t), $t < {self.param(expiration)};")

    def block(self) -> biscuit_auth.BlockBuilder:
        return biscuit_auth.BlockBuilder(self.text(), self.params, self.scope)


# -- minting -----------------------------------------------------------------

def mint_capability(
    signer: biscuit_auth.KeyPair,
    subject: str,
    resource: str,
    operation: str,
    *,
    designations: Iterable[Designation] = (),
    trusting: Iterable[TrustingDesignation] = (),
    anchor: str | None = None,
    latent: KeyLike | None = None,
    time_config: TokenTime = TokenTime(),
    valid_for: int | None = None,
    root_key_id: int | None = None,
) -> str:
    """A capability token: the authority block of spec §1.1, in its order.

        right({subject}, {resource}, {operation});
        check if resource($res), operation($op), right($sub, $res, $op);
        check if time($time), $time < {expiration};
        check if designation({label}, {value});                // the anchor, then each designation
        check if designation({label}, {value}) trusting {pk};  // each trusting designation
        check if activation($a) trusting {activator};          // only if latent

    `anchor` is `designation("anchor", anchor)`, written first, as
    hessra-cap's mint_inert and mint_birthright call `.anchor()` before any
    designation. `trusting` holds (attester key, label, value): the check is
    satisfied by that key's attestation (attest). `latent` is the
    activator's public key: the token is inert until a block signed by that
    key carries an activation (activate). The expiration is
    (time_config.start or now) + (valid_for or time_config.duration).
    Returns URL-safe base64 with padding.
    """
    _text(subject, "the subject", empty=False)
    _text(resource, "the resource", empty=False)
    _text(operation, "the operation", empty=False)
    plain = _designations(designations, "designation")
    if anchor is not None:
        plain.insert(0, (ANCHOR_LABEL, _text(anchor, "the anchor", empty=False)))
    attested = _trusting(trusting, "trusting designation")
    activator = None if latent is None else _public_key(latent, "latent activator key")
    duration = time_config.duration if valid_for is None else _seconds(valid_for, "valid_for")
    expiration = TokenTime(time_config.start, duration).expiration()

    source = _Source()
    source.add(f"right({source.param(subject)}, {source.param(resource)}, {source.param(operation)});")
    source.add("check if resource($res), operation($op), right($sub, $res, $op);")
    source.add(f"check if time($time), $time < {source.param(expiration)};")
    source.constraints(plain, attested, None)
    if activator is not None:
        source.add(f"check if activation($a) trusting {source.key(activator)};")
    builder = biscuit_auth.BiscuitBuilder(source.text(), source.params, source.scope)
    if root_key_id is not None:
        if type(root_key_id) is not int or root_key_id < 0:
            raise ArgumentError("root_key_id must be a non-negative integer")
        builder.set_root_key_id(root_key_id)
    return builder.build(signer.private_key).to_base64()


# -- amendments ----------------------------------------------------------------

def designate(
    token: str,
    root_key: KeyLike,
    designations: Iterable[Designation] = (),
    *,
    trusting: Iterable[TrustingDesignation] = (),
    valid_for: int | None = None,
    now: int | None = None,
) -> str:
    """Narrow a capability with a keyless first-party block (spec §2.2,
    Hessra's `amend(..).designation(l, v).attenuate()`): any holder can do
    it, and the block holds only constraints:

        check if designation({label}, {value});                // each designation
        check if designation({label}, {value}) trusting {pk};  // each trusting designation
        check if time($t), $t < {now + valid_for};             // only with valid_for

    Only the root public key is needed, to check the token first."""
    plain = _designations(designations, "designation")
    attested = _trusting(trusting, "trusting designation")
    expiration = None if valid_for is None else _now(now) + _seconds(valid_for, "valid_for")
    if not plain and not attested and expiration is None:
        raise ArgumentError("nothing to designate: give a designation, a trusting designation or valid_for")
    biscuit = _load(token, root_key)
    source = _Source()
    source.constraints(plain, attested, expiration)
    return encode_token(biscuit.append(source.block()).to_bytes())


def _append_signed(token: str, root_key: KeyLike, signer: biscuit_auth.KeyPair, source: _Source) -> str:
    biscuit = _load(token, root_key)
    block = biscuit.third_party_request().create_block(signer.private_key, source.block())
    return encode_token(biscuit.append_third_party(signer.public_key, block).to_bytes())


def attest(
    token: str,
    root_key: KeyLike,
    signer: biscuit_auth.KeyPair,
    *,
    designations: Iterable[Designation] = (),
    constraints: Iterable[Designation] = (),
    trusting: Iterable[TrustingDesignation] = (),
    valid_for: int | None = None,
    now: int | None = None,
) -> str:
    """Vouch for designations with a third-party block signed by `signer`
    (spec §2.3, Hessra's `amend(..).with_designation(l, v).attest(&kp)`):

        designation({label}, {value});                         // each of designations: the facts
        check if designation({label}, {value});                // each of constraints
        check if designation({label}, {value}) trusting {pk};  // each of trusting
        check if time($t), $t < {now + valid_for};             // only with valid_for

    The facts satisfy the token's `designation_trusting` checks that name
    `signer`'s public key (mint_capability's `trusting`), and nothing else."""
    facts = _designations(designations, "designation")
    plain = _designations(constraints, "constraint")
    attested = _trusting(trusting, "trusting designation")
    expiration = None if valid_for is None else _now(now) + _seconds(valid_for, "valid_for")
    if not facts and not plain and not attested and expiration is None:
        raise ArgumentError("nothing to attest: give a designation, a constraint or valid_for")
    source = _Source()
    for label, value in facts:
        source.add(f"designation({source.param(label)}, {source.param(value)});")
    source.constraints(plain, attested, expiration)
    return _append_signed(token, root_key, signer, source)


def activate(
    token: str,
    root_key: KeyLike,
    activator: biscuit_auth.KeyPair,
    *,
    valid_for: int | None = DEFAULT_DURATION,
    facet: str | None = None,
    now: int | None = None,
) -> str:
    """Activate a latent capability (hessra-cap `mechanism::activate`,
    spec §2.4): a third-party block signed by the activator,

        activation({now});
        check if designation("facet", {facet}) trusting {activator};  // only with a facet
        check if time($t), $t < {now + valid_for};                    // unless valid_for is None

    The activation satisfies the authority's `check if activation($a)
    trusting {activator}` only if `activator` is the key named at mint time
    (latent). With a facet, the activated token stays unusable until the
    activator completes the facet (complete_facet). `valid_for` is the
    activation window (None: no window)."""
    at = _now(now)
    expiration = None if valid_for is None else at + _seconds(valid_for, "valid_for")
    pin = [] if facet is None else [(activator.public_key, FACET_LABEL, _text(facet, "the facet", empty=False))]
    source = _Source()
    source.add(f"activation({source.param(at)});")
    source.constraints((), pin, expiration)
    return _append_signed(token, root_key, activator, source)


def complete_facet(token: str, root_key: KeyLike, activator: biscuit_auth.KeyPair, facet: str) -> str:
    """Complete a facet pinned by activate (hessra-cap
    `mechanism::complete_facet`): `designation("facet", {facet});` signed by
    the activator."""
    return attest(token, root_key, activator, designations=[(FACET_LABEL, _text(facet, "the facet", empty=False))])


# -- reading the structure ---------------------------------------------------------

@dataclass(frozen=True)
class DesignationCheck:
    """One `check if designation(label, value) [trusting key]` of the token."""

    label: str
    value: str
    #: the block holding the check (0 is the authority block)
    block: int
    #: "authority", "amendment" (a first-party block: any holder's narrowing)
    #: or "attestation" (a constraint inside a third-party block)
    where: str
    #: a `designation_trusting` check: the key whose attestation satisfies it
    trusting: str | None = None
    #: trusting checks only: whether a block signed by that key carries
    #: `designation(label, value)`; None when the signatures were not checked
    attested: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "block": self.block, "where": self.where,
                "trusting": self.trusting, "attested": self.attested}


@dataclass(frozen=True)
class Attestation:
    """A third-party block: who signed it and what it vouches for."""

    block: int
    #: the external key that signed the block (as the block claims it, if
    #: the signatures were not checked)
    key: str
    #: the `designation(label, value)` facts it carries
    designations: tuple[Designation, ...] = ()
    #: whether it carries an `activation(N)` fact
    activates: bool = False
    #: N of that fact (the time of activation; None if not an integer)
    activation: int | None = None
    #: the expiry of the block's own time check (an activation window)
    expires_at: int | None = None
    #: whether the token names this key (as its activator or in a trusting
    #: check): the facts of a key the token does not name satisfy nothing
    named: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.block, "key": self.key,
                "designations": [{"label": label, "value": value} for label, value in self.designations],
                "activates": self.activates, "activation": self.activation, "expires_at": self.expires_at,
                "named": self.named}


@dataclass(frozen=True)
class OtherCheck:
    """A check that is none of Hessra's shapes (a holder's own Datalog):
    printed for display only (strings are not escaped)."""

    block: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.block, "source": self.source}


@dataclass(frozen=True)
class CapabilityInfo:
    """What a capability token requires and carries, read from its structure."""

    #: the authority block has the capability check of spec §6.1
    capability: bool
    #: the signatures were checked with a root key
    verified: bool
    subject: str | None = None
    resource: str | None = None
    operation: str | None = None
    #: the authority block's `check if designation("anchor", a)`
    anchor: str | None = None
    #: hessra-cap-token 1.0 `namespace_restricted(ns)`: `check if namespace(ns)`
    namespace: str | None = None
    #: every other designation check, in block order
    designations: tuple[DesignationCheck, ...] = ()
    #: the activator's key of a latent token (`check if activation($a) trusting key`)
    latent: str | None = None
    #: latent tokens: whether a block signed by the activator carries an
    #: activation (None: not latent, or the signatures were not checked)
    activated: bool | None = None
    #: the activation's time and block, if activated
    activated_at: int | None = None
    activation_block: int | None = None
    attestations: tuple[Attestation, ...] = ()
    other_checks: tuple[OtherCheck, ...] = ()
    #: the earliest time check of any block (Unix time)
    expires_at: int | None = None
    revocation_ids: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "capability": self.capability, "verified": self.verified, "subject": self.subject,
            "resource": self.resource, "operation": self.operation, "anchor": self.anchor,
            "namespace": self.namespace, "designations": [d.as_dict() for d in self.designations],
            "latent": self.latent, "activated": self.activated, "activated_at": self.activated_at,
            "activation_block": self.activation_block,
            "attestations": [a.as_dict() for a in self.attestations],
            "other_checks": [c.as_dict() for c in self.other_checks],
            "expires_at": self.expires_at, "revocation_ids": list(self.revocation_ids),
        }


def _single_query(check: Check, block: Block) -> tuple[Any, tuple[str, ...]] | None:
    """The only query of a `check if` and its effective scope, or None."""
    if check.kind is not CheckKind.IF or len(check.queries) != 1:
        return None
    query = check.queries[0]
    return query, query.scopes or block.scopes


def is_capability(structure: Token) -> bool:
    """Spec §6.1: the authority block has one `right/3` fact and the check
    `check if resource($res), operation($op), right($sub, $res, $op)`: one
    query of exactly these three predicates (any variable names), no
    expression, no scope, `$sub` bound nowhere else."""
    authority = structure.blocks[0]
    rights = [fact for fact in authority.facts if fact.name == "right" and len(fact.terms) == 3]
    if len(rights) != 1:
        return False
    return any(_is_capability_check(check, authority) for check in authority.checks)


def _is_capability_check(check: Check, block: Block) -> bool:
    found = _single_query(check, block)
    if found is None:
        return False
    query, scopes = found
    if scopes or query.expressions or len(query.body) != 3:
        return False
    by_name = {predicate.name: predicate.terms for predicate in query.body}
    resource, operation, right = by_name.get("resource"), by_name.get("operation"), by_name.get("right")
    if resource is None or operation is None or right is None:
        return False
    if len(resource) != 1 or len(operation) != 1 or len(right) != 3:
        return False
    terms = (*resource, *operation, *right)
    if not all(type(term) is Variable for term in terms):
        return False
    res, op, (sub, right_res, right_op) = resource[0], operation[0], right
    return right_res == res and right_op == op and len({sub, res, op}) == 3


def _time_limit(check: Check, block: Block) -> int | None:
    """N of `check if time($v), $v < N` (Hessra's expiry checks), else None."""
    found = _single_query(check, block)
    if found is None:
        return None
    query, scopes = found
    if scopes or len(query.body) != 1 or len(query.expressions) != 1:
        return None
    predicate = query.body[0]
    if predicate.name != "time" or len(predicate.terms) != 1 or type(predicate.terms[0]) is not Variable:
        return None
    ops = query.expressions[0]
    if (len(ops) == 3 and ops[0] == Value(predicate.terms[0]) and type(ops[1]) is Value
            and type(ops[1].term) is int and ops[2] == Binary(BinaryKind.LESS_THAN)):
        return ops[1].term
    return None


def _plain_pair(check: Check, block: Block, name: str) -> tuple[tuple[str, ...], str | None] | None:
    """The string terms of `check if name("a", ...)` and its one trusting
    key (or None), for a check of exactly that shape; None otherwise."""
    found = _single_query(check, block)
    if found is None:
        return None
    query, scopes = found
    if query.expressions or len(query.body) != 1 or query.body[0].name != name:
        return None
    terms = query.body[0].terms
    if not all(type(term) is str for term in terms):
        return None
    if not scopes:
        return terms, None
    if len(scopes) == 1 and scopes[0] not in ("authority", "previous"):
        return terms, scopes[0]
    return None


def _latent_key(check: Check, block: Block) -> str | None:
    """The key of `check if activation($a) trusting key`, else None."""
    found = _single_query(check, block)
    if found is None:
        return None
    query, scopes = found
    if query.expressions or len(query.body) != 1 or len(scopes) != 1 or scopes[0] in ("authority", "previous"):
        return None
    predicate = query.body[0]
    if predicate.name != "activation" or len(predicate.terms) != 1 or type(predicate.terms[0]) is not Variable:
        return None
    return scopes[0]


def describe_capability(structure: Token, *, verified: bool, revocation_ids: Sequence[str] = ()) -> CapabilityInfo:
    """CapabilityInfo of a decoded token (hessra_pg.core.datalog.decode).
    `verified`: its signatures were checked (external keys are then the
    keys that signed the blocks, not merely what the blocks claim)."""
    authority = structure.blocks[0]
    rights = [fact for fact in authority.facts if fact.name == "right" and len(fact.terms) == 3]
    subject = resource = operation = None
    if len(rights) == 1 and all(type(term) is str for term in rights[0].terms):
        subject, resource, operation = rights[0].terms  # type: ignore[misc]

    anchor = namespace = latent = None
    designations: list[DesignationCheck] = []
    others: list[OtherCheck] = []
    limits: list[int] = []
    block_limits: dict[int, int] = {}
    for index, block in enumerate(structure.blocks):
        where = "authority" if index == 0 else ("attestation" if block.third_party else "amendment")
        for check in block.checks:
            limit = _time_limit(check, block)
            if limit is not None:
                limits.append(limit)
                block_limits[index] = min(limit, block_limits.get(index, limit))
                continue
            if index == 0 and _is_capability_check(check, block):
                continue
            designation = _plain_pair(check, block, "designation")
            if designation is not None and len(designation[0]) == 2:
                (label, value), key = designation
                if index == 0 and key is None and label == ANCHOR_LABEL and anchor is None:
                    anchor = value
                else:
                    designations.append(DesignationCheck(label, value, index, where, key))
                continue
            if index == 0:
                key = _latent_key(check, block)
                if key is not None and latent is None:
                    latent = key
                    continue
                named = _plain_pair(check, block, "namespace")
                if named is not None and len(named[0]) == 1 and named[1] is None and namespace is None:
                    namespace = named[0][0]
                    continue
            others.append(OtherCheck(index, check_source(check)))

    named_keys = {latent} | {check.trusting for check in designations if check.trusting is not None}
    attestations = []
    for index, block in enumerate(structure.blocks):
        if index == 0 or not block.third_party or block.external_key is None:
            continue
        facts = tuple((fact.terms[0], fact.terms[1]) for fact in block.facts
                      if fact.name == "designation" and len(fact.terms) == 2
                      and all(type(term) is str for term in fact.terms))
        activations = [fact.terms[0] for fact in block.facts
                       if fact.name == "activation" and len(fact.terms) == 1]
        activation = activations[0] if activations and type(activations[0]) is int else None
        attestations.append(Attestation(index, block.external_key, facts, bool(activations), activation,
                                        block_limits.get(index), block.external_key in named_keys))

    activated = activated_at = activation_block = None
    if latent is not None and verified:
        activated = False
        for attestation in attestations:
            if attestation.key == latent and attestation.activates:
                activated, activated_at, activation_block = True, attestation.activation, attestation.block
                break
    if verified:
        vouched = {(a.key, label, value) for a in attestations for label, value in a.designations}
        designations = [check if check.trusting is None else
                        DesignationCheck(check.label, check.value, check.block, check.where, check.trusting,
                                         (check.trusting, check.label, check.value) in vouched)
                        for check in designations]
    return CapabilityInfo(
        capability=is_capability(structure),
        verified=verified,
        subject=subject,
        resource=resource,
        operation=operation,
        anchor=anchor,
        namespace=namespace,
        designations=tuple(designations),
        latent=latent,
        activated=activated,
        activated_at=activated_at,
        activation_block=activation_block,
        attestations=tuple(attestations),
        other_checks=tuple(others),
        expires_at=min(limits) if limits else None,
        revocation_ids=tuple(revocation_ids),
    )


def capability_info(token: str, root_key: KeyLike | None = None) -> CapabilityInfo:
    """Describe a capability token from its structure. With `root_key` the
    signatures are checked first (TokenFormatError if they don't verify)
    and attestation and activation status are known; without it the token
    is only parsed, and those are None. A token that is not a capability
    (spec §6.1) gives `capability=False`."""
    data = decode_token(token)
    if root_key is not None:
        revocation_ids = list(_load(token, root_key).revocation_ids)
    else:
        try:
            revocation_ids = list(unverified_revocation_ids(data))
        except BISCUIT_ERRORS:
            raise TokenFormatError("token is not a valid Biscuit") from None
    return describe_capability(decode(data), verified=root_key is not None, revocation_ids=revocation_ids)
