"""Answers of the designation-policy helpers, so that a statement under a
designation policy pays about one PL/Python call per helper, with no
SECURITY DEFINER wrapper and no search_path pin (issue 13 item 6: the
one-row lookup).

`designation_values/_floor/_nulls/_fallback()` are SQL functions that
PostgreSQL inlines into the policy's InitPlans. Each asks a reader below
first (`hessra_authz._designation_values_fast` / `_designation_flag_fast`),
a function every role may call with any arguments: it answers only from
what a trusted call of this backend recorded, else None, and the query then
calls the SECURITY DEFINER way (`hessra_authz._designation_slow`), which
computes the statement's context itself, verifies (or finds the sets in the
runtime's caches) and records here the answers of **every** label of the
policy at once (the sets are one per-statement computation over all the
row labels, spec §4.4). So a forged argument can at most miss; it can never
make an answer.

When a recorded answer is used (the rules of hessra_pg.plpython.row_answers):

- the configuration: recorded only by calls whose snapshot the runtime
  confirmed its configuration with, outside a transaction that changed it,
  and kept under that snapshot text and transaction id; cleared when the
  runtime loads another configuration or this backend changes it, and not
  used once another backend has published a newer generation.
- time: answers that can show rows (verdict filter) hold until the token's
  expiry or its key's end (what the runtime keeps the sets for), checked
  against the clock (never going back within this backend); answers that
  show no row through the sets (verdict none, or fallback: the policy then
  verifies each row with designation_row(), exactly) hold as long, or for
  NO_SECONDS when the runtime keeps no bound (a key's not_before may pass:
  fail closed for at most that long).

Memory: at most DESIGNATION_ANSWERS_BYTES (estimated); tokens and arguments
up to 8 KiB only; everything is dropped when the snapshot changes or the
bound is reached.
"""

from __future__ import annotations

import time

from ..core.lru import text_size
# Longer tokens and arguments are not recorded, and an answer that shows no
# row is kept for NO_SECONDS without a bound from the runtime: the per-row
# answers' rules.
from .row_answers import _LONGEST_TEXT, NO_SECONDS

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time
    from typing import Any, Callable

#: Ceiling of the recorded answers (keys and values, estimated).
DESIGNATION_ANSWERS_BYTES = 2 * 1024 * 1024
_ENTRY_BYTES = 300


def label_answer(sets: Any, label: str) -> tuple[list[str], bool, bool]:
    """What the helpers answer for `label` from a token's RowSets (one
    place for the trusted path and the recorded answers): its accepted
    values (none unless the verdict is filter and the set finite), whether
    every non-NULL value passes (floor), whether NULL does (nulls)."""
    entry = sets.sets.get(label)
    kind = entry.kind if sets.verdict == "filter" and entry is not None else None
    return (sorted(entry.values) if kind == "set" else [], kind in ("all", "nonnull"), kind == "all")


def fallback_flag(sets: Any, per_row: bool) -> bool:
    """Whether rows go to the per-row verifier (`per_row`: the fallback setting is per_row)."""
    return sets.verdict == "fallback" and per_row


class DesignationAnswers:
    """The helpers' answers recorded under one snapshot, by token, subject,
    resource, operation, row labels and fixed designations (the policy's
    call). An entry: (answers by label: (values, floor, nulls), fallback,
    until (seconds))."""

    __slots__ = ("snapshot", "generation", "entries", "size", "recorded", "trusted_calls", "_latest", "_published",
                 "_highest")

    def __init__(self, published: Callable[[], Any]) -> None:
        #: Gives the int64 view of the shared file's published generation (or None).
        self._published = published
        self.recorded = 0
        self.trusted_calls = 0
        #: [snapshot, key, entry]: the latest answer asked, compared without hashing.
        self._latest: list[Any] = [None, None, None]
        #: The clock as this backend last read it here: time never goes back.
        self._highest = 0.0
        self.clear()

    def clear(self) -> None:
        self.snapshot: str | None = None
        self.generation = 0
        self.entries: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.size = 0
        self._latest[:] = [None, None, None]

    def record(self, snapshot: str, generation: int, now: float, key: tuple[Any, ...], sets: Any,
               per_row: bool, until: float | None) -> None:
        """Keep the answers of every label of one policy call (`key`: token,
        subject, resource, operation, row labels tuple, fixed text)
        computed by a trusted call from RowSets `sets` at `now`, valid
        until `until` (None: unknown). `per_row`: the fallback setting is
        per_row."""
        if any(text is not None and len(text) > _LONGEST_TEXT for text in key[:4]) \
                or text_size(key[4:]) > _LONGEST_TEXT:
            return
        answers = {label: label_answer(sets, label) for label in key[4]}
        if until is None:
            if sets.verdict == "filter":
                return  # can't tell how long it holds: asked the whole way each time
            until = now + NO_SECONDS
        value = (answers, fallback_flag(sets, per_row), until)
        if snapshot != self.snapshot or generation != self.generation:
            self.clear()
            self.snapshot, self.generation = snapshot, generation
        cost = text_size(key) + text_size([a[0] for a in answers.values()]) + _ENTRY_BYTES
        if self.size + cost > DESIGNATION_ANSWERS_BYTES:
            self.clear()
            self.snapshot, self.generation = snapshot, generation
        self.entries[key] = value
        self.size += cost
        self.recorded += 1

    def _entry(self, snapshot: str, token: str | None, subject: str | None,
               resource: str | None, operation: str | None, row_labels: list[str] | None,
               fixed: str | None) -> tuple[Any, ...] | None:
        """The entry recorded for this call if it holds now, else None."""
        latest = self._latest
        # Compared, not hashed: the helpers of one statement, and the
        # statements of a snapshot, mostly ask what the previous call did.
        key = latest[1]
        if (snapshot == latest[0] and key is not None and token == key[0] and subject == key[1]
                and resource == key[2] and operation == key[3] and fixed == key[5]
                and row_labels is not None and tuple(row_labels) == key[4]):
            entry = latest[2]
        else:
            if snapshot != self.snapshot or row_labels is None:
                return None
            key = (token, subject, resource, operation, tuple(row_labels), fixed)
            entry = self.entries.get(key)
            if entry is None:
                return None
            latest[:] = [snapshot, key, entry]
        published = self._published()
        if published is not None:
            generation = published[0]
            if generation > self.generation or published[1] != ~generation:
                return None  # a newer configuration is in force (or the value is torn or unset)
        now = time.time()
        if now > self._highest:
            self._highest = now
        return entry if self._highest < entry[2] else None

    def values_reader(self) -> Callable[..., list[str] | None]:
        """`read(snapshot, token, subject, resource, operation, row_labels,
        fixed, label)`: designation_values()'s recorded answer,
        or None. Never raises."""
        entry_of = self._entry

        def read(snapshot: str, token: str | None, subject: str | None, resource: str | None,
                 operation: str | None, row_labels: list[str] | None, fixed: str | None,
                 label: str | None) -> list[str] | None:
            try:
                entry = entry_of(snapshot, token or None, subject or None, resource, operation,
                                 row_labels, fixed)
                if entry is not None:
                    answer = entry[0].get(label)
                    if answer is not None:
                        return answer[0]
            except Exception:  # noqa: BLE001 (never raise: the trusted path answers and reports)
                pass
            return None

        return read

    def flag_reader(self) -> Callable[..., bool | None]:
        """`read(snapshot, token, subject, resource, operation, row_labels,
        fixed, label, want)`: the recorded flag `want` ('floor',
        'nulls' for `label`; 'fallback'), or None. Never raises."""
        entry_of = self._entry

        def read(snapshot: str, token: str | None, subject: str | None, resource: str | None,
                 operation: str | None, row_labels: list[str] | None, fixed: str | None, label: str | None,
                 want: str | None) -> bool | None:
            try:
                entry = entry_of(snapshot, token or None, subject or None, resource, operation,
                                 row_labels, fixed)
                if entry is not None:
                    if want == "fallback":
                        return entry[1]
                    answer = entry[0].get(label)
                    if answer is not None:
                        if want == "floor":
                            return answer[1]
                        if want == "nulls":
                            return answer[2]
            except Exception:  # noqa: BLE001 (never raise: the trusted path answers and reports)
                pass
            return None

        return read

    def stats(self) -> dict[str, int]:
        return {"bytes": self.size, "limit": DESIGNATION_ANSWERS_BYTES, "entries": len(self.entries),
                "recorded": self.recorded, "trusted_calls": self.trusted_calls}
