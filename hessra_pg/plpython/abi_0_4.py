"""PL/Python entry points that extension version 0.4.0 adds or changes
(capability tokens with designations and the anchor); its other functions
keep calling hessra_pg.plpython.abi_0_3, whose conventions these share
(context and version first; outcomes 't', 'f', JSON, JSON errors, STALE).
"""

from __future__ import annotations

from . import imports_without_gc

with imports_without_gc():
    from ..errors import ArgumentError
    from .abi_0_3 import _bool, _entry, take_config
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


#: Parsed policy literals (fixed designations) by their JSON text: a policy
#: passes the same text on every call. Bounded: cleared when full.
_FIXED: dict[str, tuple[tuple[str, str | None], ...]] = {}
_FIXED_MAX = 256


def _fixed(text: str | None) -> tuple[tuple[str, str | None], ...]:
    if text is None or text == "{}":
        return ()
    parsed = _FIXED.get(text)
    if parsed is None:
        parsed = _designations(text, "fixed designations")
        if len(_FIXED) >= _FIXED_MAX:
            _FIXED.clear()
        _FIXED[text] = parsed
    return parsed


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
    take_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds, node_components,
                node_keys, revoked_ids, revoked_identities, database, database_tag,
                CapabilitySettings(anchor, bool(require_anchor), fallback or "per_row"))
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
    """authorized(): Statement.authorized."""
    return _bool(RUNTIME.call(context, version).authorized(token, subject, resource, operation))


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


def _helper_answer(call: Any, token: str | None, subject: str | None, resource: str | None,
                   operation: str | None, row_labels: list[str | None] | None, fixed: str | None,
                   label: str | None, want: str | None) -> list[str | None]:
    """The answer of one helper of a designation policy (`want`): "sets"
    [the JSON of the verdict and every set]; for `label`, "values" its
    accepted values (none unless the verdict is filter and the set finite),
    "floor" ['t'] when every non-NULL value passes, "nulls" ['t'] when NULL
    does; "fallback" ['t'] when rows need per-row verification. The sets
    are computed once per statement (statement.capability_rows)."""
    labels, sets = _policy_sets(call, token, subject, resource, operation, row_labels, fixed)
    return _answer(call, labels, sets, label, want)


def _policy_sets(call: Any, token: str | None, subject: str | None, resource: str | None, operation: str | None,
                 row_labels: list[str | None] | None, fixed: str | None) -> tuple[tuple[str, ...], Any]:
    """The policy's row labels and the RowSets of the current token."""
    labels = _labels(row_labels)
    return labels, call.capability_rows(token or None, resource, operation, labels, _fixed(fixed), subject or None)


def _answer(call: Any, labels: tuple[str, ...], sets: Any, label: str | None, want: str | None) -> list[str | None]:
    """_helper_answer from the sets (the rules: designation_answers.label_answer, fallback_flag)."""
    from .designation_answers import fallback_flag, label_answer

    if want == "fallback":
        return [_bool(fallback_flag(sets, call.config.capability.fallback == "per_row"))]
    if want == "sets":
        import json

        return [json.dumps(sets.as_dict())]
    if label not in labels:
        raise ArgumentError(f"label {label!r} is not one of the policy's row labels")
    values, floor, nulls = label_answer(sets, label)
    if want == "values":
        return values
    if want == "floor":
        return [_bool(floor)]
    if want == "nulls":
        return [_bool(nulls)]
    raise ArgumentError(f"unknown helper result {want!r}")


def _fast(function: Any) -> Any:
    """A policy helper's fast path: its answer, or NULL for anything else
    (configuration to read, an error, a failure); the SQL wrapper then takes
    the slow path (capability_rows below, through
    hessra_authz._capability_rows_slow), which reads the configuration,
    asks again and raises errors as the other entry points do."""

    def call(*args: Any) -> Any:
        try:
            return function(*args)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException:  # noqa: BLE001 (the slow path reports it)
            return None

    call.__name__ = function.__name__
    call.__doc__ = function.__doc__
    return call


@_fast
def designation_set(context: str, token: str | None, subject: str | None, resource: str | None,
                    operation: str | None, row_labels: list[str | None] | None, fixed: str | None,
                    label: str | None) -> list[str | None]:
    """designation_values(): the accepted values of `label`, or NULL."""
    return _helper_answer(RUNTIME.call(context, None), token, subject, resource, operation, row_labels, fixed, label,
                          "values")


@_fast
def designation_flag(context: str, token: str | None, subject: str | None, resource: str | None,
                     operation: str | None, row_labels: list[str | None] | None, fixed: str | None,
                     label: str | None, want: str | None) -> bool:
    """designation_floor/_nulls/_fallback(): the flag, or NULL."""
    return _helper_answer(RUNTIME.call(context, None), token, subject, resource, operation, row_labels, fixed, label,
                          want)[0] == "t"


@_entry(["error", '{"error": "hessra_authz: internal error", "sqlstate": "XX000"}'])
def capability_rows(context: str, version: str | None, token: str | None, subject: str | None,
                    resource: str | None, operation: str | None, row_labels: list[str | None] | None,
                    fixed: str | None, label: str | None, want: str | None) -> list[str | None]:
    """["ok", answer...] of one helper (_helper_answer), or the outcome
    that stands in its way (STALE, an error): the slow path of the
    helpers, and capability_rows()."""
    call = RUNTIME.call(context, version)
    return ["ok", *_helper_answer(call, token, subject, resource, operation, row_labels, fixed, label, want)]


@_fast
def designation_row_check(context: str, token: str | None, subject: str | None, resource: str | None,
                          operation: str | None, row_values: str | None, fixed: str | None) -> bool:
    """designation_row(): the answer, or NULL."""
    call = RUNTIME.call(context, None)
    designations = (*_fixed(fixed), *_designations(row_values, "row values"))
    return call.capability_row(token or None, resource, operation, designations, subject or None)


@_entry("f")
def designation_row(context: str, version: str | None, token: str | None, subject: str | None,
                    resource: str | None, operation: str | None, row_values: str | None, fixed: str | None) -> str:
    """Per-row verification (a designation policy's fallback): the row's
    label values (NULL: declared, no fact) and the policy's fixed ones. The
    slow path of designation_row()."""
    call = RUNTIME.call(context, version)
    designations = (*_fixed(fixed), *_designations(row_values, "row values"))
    return _bool(call.capability_row(token or None, resource, operation, designations, subject or None))
