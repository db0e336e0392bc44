"""Biscuit's failures as stable reason codes (explain(), the CLI).

biscuit-python raises exceptions whose only structure is their English
text (`Check n°0 in block n°1: check if ...`, `no matching policy`, `reached
execution limits`): this is the one module that reads that text. It runs
only when a denial is explained; yes/no answers never get here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Sequence

    from .datalog import Check, Token

_FAILED_CHECK = r"Check n°(\d+) in (?:block n°(\d+)|authorizer): "


class Failure:
    """What a Biscuit authorization error says."""

    __slots__ = ("limits", "no_policy", "checks")

    def __init__(self, message: str) -> None:
        #: Datalog evaluation stopped at the run limits.
        self.limits = "execution limits" in message or "timeout" in message.lower()
        self.no_policy = "no matching policy" in message
        #: (block, or None for the authorizer; check index; the check's Datalog)
        self.checks = failed_checks(message)


def failed_checks(message: str) -> list[tuple[int | None, int, str]]:
    """(block or None for the authorizer, check index, Datalog) per failure."""
    import re

    matches = list(re.finditer(_FAILED_CHECK, message))
    result = []
    for position, match in enumerate(matches):
        end = matches[position + 1].start() if position + 1 < len(matches) else len(message)
        text = message[match.end():end].rstrip(", ")
        block = int(match.group(2)) if match.group(2) is not None else None
        result.append((block, int(match.group(1)), text))
    return result


def _expired(now: int, expires_at: int | None) -> tuple[str, str] | None:
    if expires_at is not None and now >= expires_at:
        return "expired", f"token expired at {expires_at}"
    return None


def authorization_reason(
    failure: Failure,
    *,
    now: int,
    expires_at: int | None,
    rights: Callable[[], list[tuple[object, ...]]],
    subject: str | None,
    resource: str,
    operation: str,
    required_components: Sequence[str],
    capability: bool,
) -> tuple[str, str]:
    """Reason code and detail of a denied authorization. `rights` gives the
    (subject, resource, operation) facts the authority block grants;
    `required_components` the chain nodes whose attestation checks the
    authorizer added, in order."""
    if failure.limits:
        return "limits", "Datalog evaluation reached the run limits"
    expired = _expired(now, expires_at)
    if expired:
        return expired
    granted = rights()
    if not capability and not any(right[0] == subject for right in granted):
        return "subject_mismatch", "the token grants nothing to this subject"
    if not any(right[1:] == (resource, operation) and (capability or right[0] == subject) for right in granted):
        return "denied", "the token grants no right for this resource and operation"
    for block, index, text in failure.checks:
        if block is None and index < len(required_components):
            return f"missing_attestation:{required_components[index]}", text
    for _, _, text in failure.checks:
        if "domain(" in text:
            return "domain_mismatch", text
        if "prefix" in text:
            return "prefix_mismatch", text
        if "namespace(" in text:
            return "missing_signoff", text
    if failure.checks:
        return "check_failed", failure.checks[0][2]
    return "denied", "no policy matched"


def identity_reason(failure: Failure, *, now: int, expires_at: int | None,
                    ensure_subject_in_domain: bool) -> tuple[str, str]:
    """Reason code and detail of a denied identity verification."""
    if failure.limits:
        return "limits", "Datalog evaluation reached the run limits"
    expired = _expired(now, expires_at)
    if expired:
        return expired
    for _, _, text in failure.checks:
        if "actor(" in text:
            return "identity_mismatch", text
    for _, _, text in failure.checks:
        if "domain(" in text:
            return "domain_mismatch", text
    if failure.checks:
        return "check_failed", failure.checks[0][2]
    if failure.no_policy and not ensure_subject_in_domain:
        return "not_identity", "the token has no subject: it is not an identity token"
    return ("domain_mismatch" if ensure_subject_in_domain else "denied"), "no policy matched"


#: Capability reasons, most telling first: when several checks fail, the
#: first in this order is reported (spec hessra-capability-tokens.md §3.4).
CAPABILITY_REASONS = ("expired", "not_activated", "wrong_resource_or_operation", "anchor_mismatch",
                      "designation_mismatch", "designation_rejected", "namespace_mismatch", "subject_mismatch",
                      "missing_attestation", "check_failed", "no_matching_right")


def capability_reason(failure: Failure, structure: Token, *, authorizer_checks: Sequence[str]) -> str:
    """The reason code of a denied capability verification: each failed
    check is looked up in the token's structure (never its printed text);
    labels are named, values never. `authorizer_checks`: the reason each of
    the authorizer's own checks stands for, in order."""
    if failure.limits:
        return "limits"
    reasons = []
    for block, index, _ in failure.checks:
        if block is None:
            reasons.append(authorizer_checks[index] if index < len(authorizer_checks) else "check_failed")
        elif block < len(structure.blocks) and index < len(structure.blocks[block].checks):
            reasons.append(_check_reason(structure.blocks[block].checks[index]))
        else:
            reasons.append("check_failed")
    if failure.no_policy:
        reasons.append("no_matching_right")
    if not reasons:
        return "check_failed"
    return min(reasons, key=lambda reason: CAPABILITY_REASONS.index(reason.split(":", 1)[0]))


def _check_reason(check: Check) -> str:
    from .datalog import CheckKind

    names = [predicate.name for query in check.queries for predicate in query.body]
    if any(query.expressions and [p.name for p in query.body] == ["time"] for query in check.queries):
        return "expired"
    if "activation" in names:
        return "not_activated"
    if "right" in names and "resource" in names:
        return "wrong_resource_or_operation"
    labels = [predicate.terms[0] for query in check.queries for predicate in query.body
              if predicate.name == "designation" and predicate.terms and isinstance(predicate.terms[0], str)]
    if check.kind == CheckKind.REJECT:
        return f"designation_rejected:{labels[0]}" if labels else "check_failed"
    if "anchor" in labels:
        return "anchor_mismatch"
    if labels:
        return f"designation_mismatch:{labels[0]}"
    if "namespace" in names:
        return "namespace_mismatch"
    return "check_failed"
