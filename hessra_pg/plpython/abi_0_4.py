"""PL/Python entry points that extension version 0.4.0 adds or changes
(capability tokens with designations and the anchor); its other functions
keep calling hessra_pg.plpython.abi_0_3, whose conventions these share
(context and version first; outcomes 't', 'f', JSON, JSON errors, STALE).
"""

from __future__ import annotations

from ..core.verifier import Revocations, RootKey
from ..errors import ArgumentError
from .abi_0_3 import _bool, _entry
from .runtime import RUNTIME, CapabilitySettings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_EXPLAIN_FAILED = ('{"valid": false, "reason": "internal_error", "kid": null, "expires_at": null, '
                   '"revocation_ids": [], "detail": "the verifier failed unexpectedly"}')


def _designations(text: str | None, what: str = "designations") -> tuple[tuple[str, str | None], ...]:
    """A jsonb object {label: value or null} as (label, value) pairs, in key
    order. Rule R (reserved and repeated labels) is the verifier's."""
    if text is None:
        return ()
    import json

    value = json.loads(text)
    if not isinstance(value, dict):
        raise ArgumentError(f"{what} must be a JSON object of label -> text value (or null)",
                            hint='For example \'{"tenant_id": "t-1"}\'::jsonb.')
    for label, item in value.items():
        if item is not None and not isinstance(item, str):
            raise ArgumentError(f"the value of designation {label!r} must be text or null",
                                hint="Compare text: pass col::text for other column types.")
    return tuple(value.items())


def _labels(labels: list[str | None] | None) -> tuple[str, ...]:
    if not labels or any(label is None for label in labels):
        raise ArgumentError("row labels must be a non-empty array of labels without NULLs")
    return tuple(labels)  # type: ignore[arg-type]


# -- configuration --------------------------------------------------------------------

@_entry(None)
def load_config(version: str, kids: list[int] | None, public_keys: list[str] | None,
                not_before_us: list[int | None] | None, not_after_us: list[int | None] | None,
                node_chains: list[str] | None, node_kinds: list[str | None] | None,
                node_components: list[str | None] | None, node_keys: list[str | None] | None,
                revoked_ids: list[str] | None, revoked_identities: list[str] | None, database: int | None,
                database_tag: str | None, anchor: str | None, require_anchor: bool | None,
                fallback: str | None) -> str:
    """abi_0_3.load_config, plus the capability settings."""
    keys = tuple(
        RootKey(kid, key, None if before is None else before / 1_000_000, None if after is None else after / 1_000_000)
        for kid, key, before, after in zip(kids or (), public_keys or (), not_before_us or (), not_after_us or ()))
    chains: dict[str, list[object]] = {}
    for name, kind, component, key in zip(node_chains or (), node_kinds or (), node_components or (),
                                          node_keys or ()):
        nodes = chains.setdefault(name, [])
        if kind is not None:
            nodes.append({"component": component, "public_key": key} if kind == "object" else kind)
    revocations = Revocations(ids=frozenset(revoked_ids or ()), identities=frozenset(revoked_identities or ()))
    settings = CapabilitySettings(anchor, bool(require_anchor), fallback or "per_row")
    RUNTIME.load_config(version, keys, chains, revocations, database, database_tag or "", settings)
    return ""


# -- capability tokens -------------------------------------------------------------------

@_entry("f")
def verify_capability(context: str, version: str | None, token: str | None, resource: str | None,
                      operation: str | None, designations: str | None, subject: str | None) -> str:
    """The designated form: designations from a jsonb object, an optional subject."""
    call = RUNTIME.call(context, version)
    return _bool(call.capability(token, resource, operation, _designations(designations), subject).valid)


@_entry(_EXPLAIN_FAILED)
def explain_capability(context: str, version: str | None, admin: bool, token: str | None, resource: str | None,
                       operation: str | None, designations: str | None, subject: str | None) -> str:
    import json

    call = RUNTIME.call(context, version)
    decision = call.capability(token, resource, operation, _designations(designations), subject, detailed=True)
    return json.dumps((decision if admin else decision.redacted()).as_dict())


@_entry("f")
def authorized(context: str, version: str | None, token: str | None, subject: str | None, resource: str | None,
               operation: str | None) -> str:
    """authorized(): a capability token is verified as a capability (the
    anchor supplied, the subject checked only when set), any other token as
    verify_token does."""
    call = RUNTIME.call(context, version)
    if call.is_capability(token):
        return _bool(call.capability(token, resource, operation, (), subject).valid)
    return _bool(call.decide(token, subject=subject, resource=resource, operation=operation).valid)


@_entry(_EXPLAIN_FAILED)
def explain(context: str, version: str | None, admin: bool, token: str | None, subject: str | None,
            resource: str | None, operation: str | None, domain: str | None, prefix: str | None) -> str:
    """abi_0_3.explain, with a capability token explained as a capability
    (no domain or prefix: capabilities have none)."""
    import json

    call = RUNTIME.call(context, version)
    if domain is None and prefix is None and call.is_capability(token):
        decision = call.capability(token, resource, operation, (), subject, detailed=True)
    else:
        decision = call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                               prefix=prefix, detailed=True)
    return json.dumps((decision if admin else decision.redacted()).as_dict())


@_entry(["error", '{"error": "hessra_authz: internal error", "sqlstate": "XX000"}'])
def capability_rows(context: str, version: str | None, token: str | None, subject: str | None,
                    resource: str | None, operation: str | None, row_labels: list[str | None] | None,
                    fixed: str | None, label: str | None) -> list[str | None]:
    """["ok", verdict, fallback mode, the JSON of every set, then for
    `label` (if given) its kind and accepted values] for a designation
    policy, computed once per statement."""
    import json

    call = RUNTIME.call(context, version)
    sets = call.capability_rows(token, resource, operation, _labels(row_labels),
                                _designations(fixed, "fixed designations"), subject)
    head: list[Any] = ["ok", sets.verdict, call.config.capability.fallback, json.dumps(sets.as_dict())]
    if label is None:
        return head
    entry = sets.sets.get(label)
    if entry is None and label not in (row_labels or ()):
        raise ArgumentError(f"label {label!r} is not one of the policy's row labels")
    if entry is None:
        return [*head, ""]
    return [*head, entry.kind, *sorted(entry.values)]


@_entry("f")
def designation_row(context: str, version: str | None, token: str | None, subject: str | None,
                    resource: str | None, operation: str | None, row_values: str | None, fixed: str | None) -> str:
    """Per-row verification (a designation policy's fallback): the row's
    label values (NULL: declared, no fact) and the policy's fixed ones."""
    call = RUNTIME.call(context, version)
    designations = (*_designations(fixed, "fixed designations"), *_designations(row_values, "row values"))
    return _bool(call.capability(token, resource, operation, designations, subject).valid)
