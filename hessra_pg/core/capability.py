"""Capability tokens (Hessra's hessra-cap model) under this database's policy,
and their designations as row sets (spec hessra-capability-tokens.md §3.4
and §4).

A capability is authorization by possession: the token's own check asks for
a `right` on the resource and operation, and its scope is narrowed by
designation checks (`check if designation("tenant_id", "t-1")`) that the
verifier satisfies with facts it supplies: the database's anchor (from
admin configuration only), and designations whose values come from rows,
policy literals or verified tokens. What this module adds to Hessra's
verifier, and why:

- rule P: the right-matching policy instead of `allow if true` (a context
  token or an old authorization token is not a universal capability);
- rule R: a declared label is never `anchor` or `facet`, never twice;
- rule T: a `trusting` check on a label the database supplies denies (the
  database's facts would satisfy a check meant for a signed attestation);
- rule F: no activation, namespace, service or facet facts are ever added
  (a latent token passes only once its activator has attested it);
- rule X: the token's structure is read from its protobuf blocks
  (hessra_pg.core.datalog), never from printed Datalog.
"""

from __future__ import annotations

from ..errors import ArgumentError, TokenFormatError
from .biscuit import errors as biscuit_errors
from .record import Record
from .verifier import (
    NO_REVOCATIONS,
    Decision,
    Revocations,
    RootKey,
    TokenRejected,
    VerifiedToken,
    _authorizer,
    chain_nodes_required,
    enforced_chain,
    load_token,
    rights_holders,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Any, Callable, Iterable, Mapping, Sequence

    from .datalog import Token

#: Labels only the database supplies (anchor) or that it never supplies
#: (facet: Hessra's single-use ledger, which a database doesn't keep).
RESERVED_LABELS = frozenset({"anchor", "facet"})
_POLICY = "allow if resource($res), operation($op), right($sub, $res, $op);"

# -- rule R --------------------------------------------------------------------


def declared_designations(designations: Mapping[str, str | None] | Sequence[tuple[str, str | None]],
                          row_labels: Iterable[str] = ()) -> tuple[tuple[str, str | None], ...]:
    """The declared (label, value) pairs, checked by rule R: no reserved
    label, no label twice (row labels included); a value NULL declares the
    label without supplying a fact. Raises ArgumentError (a caller error)."""
    items = tuple(designations.items()) if hasattr(designations, "items") else tuple(designations)
    seen: set[str] = set()
    for label, value in (*items, *((label, None) for label in row_labels)):
        if not isinstance(label, str) or not label:
            raise ArgumentError("a designation label must be a non-empty string")
        if label in RESERVED_LABELS:
            raise ArgumentError(
                f"designation label {label!r} is reserved",
                hint="The anchor comes only from hessra_authz.set_anchor(); facets are never supplied.")
        if label in seen:
            raise ArgumentError(f"designation label {label!r} is given twice",
                                hint="Declare each label once: one value per label and statement.")
        if value is not None and not isinstance(value, str):
            raise ArgumentError(f"the value of designation {label!r} must be text")
        seen.add(label)
    return items


# -- the token's structure (rule X) ------------------------------------------------


def structure_of(verified: VerifiedToken) -> Token:
    """The verified token's Datalog read from its protobuf blocks (kept on it)."""
    if verified.structure is None:
        from .datalog import decode

        verified.structure = decode(verified.data)
    return verified.structure


def _non_default(scopes: Sequence[str]) -> bool:
    """A scope that lets other facts than the authority's, the block's own
    and the authorizer's satisfy a query: a public key or `previous`."""
    return any(scope != "authority" for scope in scopes)


def trusting_designation(structure: Token, declared: set[str]) -> str | None:
    """Rule T: the first label (or "*" for a variable label) of a designation
    atom under a non-default scope, in any check or rule of any block, that
    the database supplies; None if there is none."""
    from .datalog import Variable

    for block in structure.blocks:
        queries = [query for check in block.checks for query in check.queries]
        queries.extend(block.rules)
        for query in queries:
            if not _non_default(query.scopes or block.scopes):
                continue
            for predicate in query.body:
                if predicate.name != "designation" or len(predicate.terms) != 2:
                    continue
                label = predicate.terms[0]
                if isinstance(label, Variable):
                    if declared:
                        return "*"
                elif isinstance(label, str) and label in declared:
                    return label
    return None


def is_capability_token(structure: Token) -> bool:
    """Whether the authority block holds Hessra's capability check, `check
    if resource($res), operation($op), right($sub, $res, $op)` (spec §6.1):
    authorization tokens check `subject($sub)` as well, identity tokens
    `actor`."""
    from .datalog import CheckKind, Variable

    authority = structure.blocks[0]
    for check in authority.checks:
        if check.kind != CheckKind.IF or len(check.queries) != 1:
            continue
        query = check.queries[0]
        if query.expressions or sorted(p.name for p in query.body) != ["operation", "resource", "right"]:
            continue
        terms = {p.name: p.terms for p in query.body}
        if len(terms["right"]) == 3 and all(isinstance(term, Variable) for term in terms["right"]) \
                and terms["resource"] == (terms["right"][1],) and terms["operation"] == (terms["right"][2],):
            return True
    return False


def binds_anchor(structure: Token, anchor: str) -> bool:
    """Whether the authority block holds exactly `check if
    designation("anchor", <anchor>)` (the admin setting require_anchor)."""
    from .datalog import CheckKind

    authority = structure.blocks[0]
    for check in authority.checks:
        if check.kind != CheckKind.IF or len(check.queries) != 1:
            continue
        query = check.queries[0]
        if query.expressions or len(query.body) != 1 or _non_default(query.scopes or authority.scopes):
            continue
        predicate = query.body[0]
        if predicate.name == "designation" and predicate.terms == ("anchor", anchor):
            return True
    return False


# -- verification (§3.4) -------------------------------------------------------------


def verify_capability(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    resource: str | None,
    operation: str | None,
    designations: Mapping[str, str | None] | Sequence[tuple[str, str | None]] = (),
    anchor: str | None = None,
    subject: str | None = None,
    row_labels: Iterable[str] = (),
    require_anchor: bool = False,
    chains: Mapping[str, Any] | None = None,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
    diagnose: bool = True,
) -> Decision:
    """Verify a capability token as this database does (spec §3.4).

    `designations`: the declared (label, value) pairs (value None: the label
    is declared, no fact supplied: a NULL row value); `row_labels`: further
    declared labels (a policy's row labels); `anchor`: the database's anchor
    (admin configuration, never a caller's value); `subject`: the optional
    subject check. A token problem is a Decision; rule R violations raise
    ArgumentError. `diagnose=False` skips working out the reason of a denial.
    """
    row_labels = tuple(row_labels)
    supplied = declared_designations(designations, row_labels)
    chain = enforced_chain(chains, resource) if chains and resource is not None else None
    if chain is not None:
        chain_nodes_required(chain, None)
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected as rejected:
        return Decision(False, rejected.reason, detail=rejected.detail)
    if resource is None or operation is None:
        return verified.decision(False, "denied", "resource and operation are required")
    revocation = _revocation(verified, revoked, resource, operation, subject)
    if revocation is not None:
        return verified.decision(False, "revoked", revocation)
    try:
        structure = structure_of(verified)
    except TokenFormatError as error:
        return verified.decision(False, "bad_token", str(error))
    declared = {label for label, _ in supplied} | ({"anchor"} if anchor is not None else set())
    trusting = trusting_designation(structure, declared)
    if trusting is not None:
        return verified.decision(False, f"trusting_designation_on_supplied_label:{trusting}",
                                 "a check trusting an attester names a label this database supplies")
    if require_anchor and (anchor is None or not binds_anchor(structure, anchor)):
        return verified.decision(False, "anchor_required", "the token's authority block is not bound to this anchor")
    return _authorize(verified, structure, now=int(now), resource=resource, operation=operation,
                      facts=[(label, value) for label, value in supplied if value is not None], anchor=anchor,
                      subject=subject, chain=chain, diagnose=diagnose)


def _revocation(verified: VerifiedToken, revoked: Revocations, resource: str, operation: str,
                subject: str | None) -> str | None:
    detail = revoked.revoked_block(verified)
    if detail is None and revoked.identities:
        if subject is not None and revoked.covers_identity(subject):
            detail = "the subject is a revoked identity"
        elif any(revoked.covers_identity(holder) for holder in rights_holders(verified, resource, operation)):
            detail = "the token grants this right to a revoked identity"
    return detail


def _authorize(verified: VerifiedToken, structure: Token, *, now: int, resource: str, operation: str,
               facts: Sequence[tuple[str, str]], anchor: str | None, subject: str | None,
               chain: Sequence[Any] | None, diagnose: bool) -> Decision:
    """The §3.4 authorizer (plus the nodes of a chain registered under the
    resource's name, as every check of that resource requires)."""
    source = ["time({now}); resource({resource}); operation({operation});",
              "subject($sub) <- right($sub, {resource}, {operation});"]
    params: dict[str, Any] = {"now": now, "resource": resource, "operation": operation}
    scope: dict[str, str] = {}
    if anchor is not None:
        source.append('designation("anchor", {anchor});')
        params["anchor"] = anchor
    for index, (label, value) in enumerate(facts):
        source.append(f"designation({{label{index}}}, {{value{index}}});")
        params[f"label{index}"] = label
        params[f"value{index}"] = value
    if subject is not None:
        source.append("check if right({subject}, {resource}, {operation});")
        params["subject"] = subject
    for index, node in enumerate(chain or ()):
        source.append(f"check if node({{resource}}, {{component{index}}}) trusting authority, {{node_key{index}}};")
        params[f"component{index}"] = node.component
        scope[f"node_key{index}"] = node.public_key
    source.append(_POLICY)
    authorizer = _authorizer(source, params, scope).build(verified.biscuit)
    try:
        authorizer.authorize()
        return verified.decision(True, "ok")
    except biscuit_errors() as error:
        message = str(error)
    if not diagnose:
        return verified.decision(False, "denied", "not diagnosed")
    from .diagnosis import Failure, capability_reason

    reason = capability_reason(Failure(message), structure, authorizer_checks=_authorizer_check_kinds(subject, chain))
    return verified.decision(False, reason, _detail(reason))


def _authorizer_check_kinds(subject: str | None, chain: Sequence[Any] | None) -> list[str]:
    """What each of the authorizer's own checks is, in order."""
    kinds = ["subject_mismatch"] if subject is not None else []
    kinds.extend(f"missing_attestation:{node.component}" for node in chain or ())
    return kinds


_DETAILS = {
    "expired": "a time check of the token failed",
    "not_activated": "the token is latent: its activator has not attested it",
    "wrong_resource_or_operation": "the token grants no right for this resource and operation",
    "anchor_mismatch": "the token is bound to another anchor than this database's",
    "designation_mismatch": "a designation the token requires was not supplied with its value",
    "designation_rejected": "the token rejects a supplied designation",
    "namespace_mismatch": "a namespace-restricted token (hessra-cap-token 1.0) never verifies here",
    "subject_mismatch": "the right is not granted to this subject",
    "no_matching_right": "the token grants no right for this resource and operation",
    "limits": "Datalog evaluation reached the run limits",
}


def _detail(reason: str) -> str:
    return _DETAILS.get(reason.split(":", 1)[0], "a check of the token failed")


# -- designations as row sets (§4) -----------------------------------------------------


class LabelSet(Record):
    """The values of one row label the token accepts: kind "all" (NULL rows
    too), "nonnull" (any value), "set" (`values`), or "fallback" (`why`: no
    exact set; rows need per-row verification)."""

    __slots__ = ("kind", "values", "why")

    def __init__(self, kind: str, values: frozenset[str] = frozenset(), why: str | None = None) -> None:
        self.kind = kind
        self.values = values
        self.why = why

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "set":
            return {"kind": "set", "values": sorted(self.values)}
        if self.kind == "fallback":
            return {"kind": "fallback", "why": self.why}
        return {"kind": self.kind}

    def meet(self, other: LabelSet) -> LabelSet:
        """Both accepted: ALL ∩ X = X, NONNULL ∩ X = X for a finite X."""
        if self.kind == "all" or (self.kind == "nonnull" and other.kind != "all"):
            return other
        if other.kind in ("all", "nonnull"):
            return self
        return LabelSet("set", self.values & other.values)

    def witness(self) -> str | None:
        """One accepted value (None for "all": the label gets no fact)."""
        if self.kind == "set":
            return min(self.values)
        return "*" if self.kind == "nonnull" else None


ALL = LabelSet("all")


class RowSets(Record):
    """A statement's verdict for a token and a policy's row labels:
    "filter" (rows pass when every label's value is in its set), "none" (no
    row), or "fallback" (verify each row); `reason` says why."""

    __slots__ = ("verdict", "reason", "sets")

    def __init__(self, verdict: str, reason: str, sets: dict[str, LabelSet] | None = None) -> None:
        self.verdict = verdict
        self.reason = reason
        self.sets = sets or {}

    def as_dict(self) -> dict[str, Any]:
        return {"statement": {"verdict": self.verdict, "reason": self.reason},
                "sets": {label: entry.as_dict() for label, entry in self.sets.items()}}


def accepted_set(structure: Token, label: str) -> LabelSet:
    """The values of `label` the token's checks accept (§4.3, after rule T),
    or a fallback when its checks are not plain disjunctions of literal
    `designation(label, value)` atoms."""
    from .datalog import CheckKind, Variable

    def atoms(predicates: Iterable[Any]) -> list[Any]:
        return [p for p in predicates if p.name == "designation" and len(p.terms) == 2
                and (isinstance(p.terms[0], Variable) or p.terms[0] == label)]

    for block in structure.blocks:
        if atoms(block.facts) or atoms(rule.head for rule in block.rules):
            return LabelSet("fallback", why="token_carries_designation_fact")
        if any(atoms(rule.body) for rule in block.rules):
            return LabelSet("fallback", why="designation_in_rule_body")
    accepted = ALL
    for block in structure.blocks:
        for check in block.checks:
            mentions = [atom for query in check.queries for atom in atoms(query.body)]
            if not mentions:
                continue
            if any(isinstance(atom.terms[0], Variable) for atom in mentions):
                return LabelSet("fallback", why="variable_label")
            if check.kind != CheckKind.IF:
                return LabelSet("fallback", why="check_all" if check.kind == CheckKind.ALL else "reject_if")
            values: set[str] | None = set()
            for query in check.queries:
                if len(query.body) != 1 or query.expressions or not atoms(query.body):
                    return LabelSet("fallback", why="not_a_single_literal_atom")
                value = query.body[0].terms[1]
                if isinstance(value, Variable):
                    values = None  # any supplied value
                elif not isinstance(value, str):
                    return LabelSet("fallback", why="non_string_value")
                elif values is not None:
                    values.add(value)
            accepted = accepted.meet(LabelSet("nonnull") if values is None else LabelSet("set", frozenset(values)))
    return accepted


def row_sets(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    resource: str | None,
    operation: str | None,
    row_labels: Sequence[str],
    fixed: Mapping[str, str | None] | Sequence[tuple[str, str | None]] = (),
    anchor: str | None = None,
    subject: str | None = None,
    require_anchor: bool = False,
    chains: Mapping[str, Any] | None = None,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
) -> RowSets:
    """What a token lets a statement see through a policy's row labels
    (§4.4): per label, the accepted values, and one witness verification
    with a value of each set standing for every row. Equal, row by row, to
    verify_capability with the row's values (tests/ compares them)."""
    row_labels = tuple(row_labels)
    fixed_items = tuple(fixed.items()) if hasattr(fixed, "items") else tuple(fixed)
    declared_designations(fixed_items, row_labels)  # rule R over the fixed and the row labels together
    if not row_labels:
        raise ArgumentError("a designation policy needs at least one row label")
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected as rejected:
        return RowSets("none", rejected.reason)
    try:
        structure = structure_of(verified)
    except TokenFormatError:
        return RowSets("none", "bad_token")
    declared = set(row_labels) | {label for label, _ in fixed_items} | ({"anchor"} if anchor is not None else set())
    trusting = trusting_designation(structure, declared)
    if trusting is not None:
        return RowSets("none", f"trusting_designation_on_supplied_label:{trusting}")
    sets = {label: accepted_set(structure, label) for label in row_labels}
    if any(entry.kind == "fallback" for entry in sets.values()):
        return RowSets("fallback", "per_row_verification_required", sets)
    if any(entry.kind == "set" and not entry.values for entry in sets.values()):
        return RowSets("none", "empty_accepted_set", sets)
    witnesses = [(label, entry.witness()) for label, entry in sets.items()]
    decision = verify_capability(
        token, keys, now=now, resource=resource, operation=operation,
        designations=[*fixed_items, *((label, value) for label, value in witnesses if value is not None)],
        row_labels=[label for label, value in witnesses if value is None], anchor=anchor, subject=subject,
        require_anchor=require_anchor, chains=chains, load=lambda text, at: verified, revoked=revoked)
    return RowSets("filter" if decision.valid else "none", decision.reason, sets)


def row_admits(sets: RowSets, values: Mapping[str, str | None]) -> bool:
    """Whether a row with these label values passes a "filter" verdict."""
    if sets.verdict != "filter":
        return False
    for label, entry in sets.sets.items():
        value = values.get(label)
        if entry.kind == "all":
            continue
        if value is None or (entry.kind == "set" and value not in entry.values):
            return False
    return True
