"""PL/Python entry points of extension 0.5.0's designation fast path
(issue 13 item 6; the rest of 0.5.0 is in abi_0_5). Same conventions as
abi_0_4.

`designation_values/_floor/_nulls/_fallback()` are SQL functions that
PostgreSQL inlines into a designation policy's InitPlans. Each first asks
`values_fast`/`flag_fast` (any role, any arguments: they only read what
`capability_rows` below recorded, answer None otherwise and never raise),
and only on a miss calls the SECURITY DEFINER wrapper
`hessra_authz._designation_slow`, whose PL/Python call is `capability_rows`:
abi_0_4's, plus the answers of every label of the policy recorded
(hessra_pg.plpython.designation_answers).
"""

from __future__ import annotations

from . import imports_without_gc

with imports_without_gc():
    from .abi_0_4 import _answer, _policy_sets
    from .abi_0_3 import _entry
    from .runtime import RUNTIME

# -- fast paths (any role may call them; RUNTIME.designations lives as long as the backend) --

#: values_fast(snapshot, token, subject, resource, operation, row_labels, fixed, label)
values_fast = RUNTIME.designations.values_reader()
#: flag_fast(snapshot, token, subject, resource, operation, row_labels, fixed, label, want)
flag_fast = RUNTIME.designations.flag_reader()


# -- trusted entry point (revoked from PUBLIC; its wrappers compute the context) --

@_entry(["error", '{"error": "hessra_authz: internal error", "sqlstate": "XX000"}'])
def capability_rows(context: str, version: str | None, token: str | None, subject: str | None,
                    resource: str | None, operation: str | None, row_labels: list[str | None] | None,
                    fixed: str | None, label: str | None, want: str | None) -> list[str | None]:
    """abi_0_4.capability_rows (["ok", answer...], or the outcome that
    stands in its way), and the answers of every label recorded for the
    next helper calls under this snapshot."""
    call = RUNTIME.call(context, version)
    labels, sets = _policy_sets(call, token, subject, resource, operation, row_labels, fixed)
    answer = ["ok", *_answer(call, labels, sets, label, want)]
    answers = RUNTIME.designations
    answers.trusted_calls += 1
    snapshot = call.row_snapshot
    if snapshot is not None:  # may record (Runtime.statement: confirmed, no audit)
        token, subject = token or None, subject or None
        until = None if token is None else call._valid_until(call.digest(token))
        answers.record(snapshot, call.config.generation, call.now,
                       (token, subject, resource, operation, labels, fixed), sets,
                       call.config.capability.fallback == "per_row", until)
    return answer
