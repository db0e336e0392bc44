"""What this backend's verifier did (hessra_authz.stats(), issue 16 item 2).

Counted per backend, like every cache here: a PL/Python interpreter lives
in one backend and shares nothing with the others except the shared
decision table's file. The counters cost one dictionary update per decision
the verifier *computes* (a cache miss, a verification) and one integer
increment per cache lookup; answers served from a cache are counted by that
cache's hits, not again as decisions.

- decisions: computed ones by kind (authorization, capability, identity,
  bearer, authorized_resources, identity_scope, capability rows), outcome
  (allowed, denied, fallback) and reason (the verifier's reason code, its
  part before ':' so a component or label name never becomes a label);
- verification time of each computed decision in a histogram of 26 powers
  of two in microseconds (bounded memory: fixed buckets, never samples), from
  which p50/p90/p99 are read as the upper bound of their bucket;
- caches: hits and misses of the token, decision and result caches and of
  the shared decision table (this backend's lookups in it).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, TypeVar

    R = TypeVar("R")

#: Seconds between two snapshots of one backend's counters for
#: database_stats() (at most; hessra_pg.plpython.db_stats writes them).
SNAPSHOT_INTERVAL = 1.0

#: Bucket i counts durations below 2**i microseconds; the last one the rest.
BUCKETS = 26
#: Reasons whose names tell which keys exist: roles that don't administer
#: the keys see them as bad_signature (as explain() shows them).
_KEY_REASONS = ("unknown_key", "key_inactive")


def outcome_of(kind: str, result: Any) -> tuple[str, str]:
    """(outcome, reason) of a decision's result, whatever its kind returns."""
    valid = getattr(result, "valid", None)
    if valid is not None:  # a Decision
        return ("allowed" if valid else "denied"), result.reason.split(":", 1)[0]
    verdict = getattr(result, "verdict", None)
    if verdict is not None:  # the RowSets of a designation policy
        outcome = {"filter": "allowed", "none": "denied"}.get(verdict, "fallback")
        return outcome, str(result.reason).split(":", 1)[0]
    if kind == "identity_scope":  # ["ok", identity or None, flag, ...]
        granted = len(result) > 1 and result[1] is not None
        return ("allowed", "ok") if granted else ("denied", "no_identity")
    granted = isinstance(result, list) and len(result) > 1  # ["ok", resource...]
    return ("allowed", "ok") if granted else ("denied", "no_resources")


class Counters:
    """Decisions computed and their verification times, in one backend."""

    __slots__ = ("decisions", "buckets", "total_us", "max_us", "since")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        #: (kind, outcome, reason) -> count
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.buckets = [0] * BUCKETS
        self.total_us = 0
        self.max_us = 0
        self.since = time.time()

    def computed(self, args: tuple[Any, ...], compute: Callable[[], R]) -> R:
        """compute(), timed and counted (the verifier's miss path)."""
        started = time.perf_counter_ns()
        result = compute()
        elapsed_us = (time.perf_counter_ns() - started) // 1000
        kind = args[0] if args else "unknown"
        key = (kind, *outcome_of(kind, result))
        self.decisions[key] = self.decisions.get(key, 0) + 1
        self.buckets[min(elapsed_us.bit_length(), BUCKETS - 1)] += 1
        self.total_us += elapsed_us
        if elapsed_us > self.max_us:
            self.max_us = elapsed_us
        return result

    def percentile(self, fraction: float) -> int | None:
        """The upper bound (microseconds) of the bucket holding `fraction`
        of the computed decisions; None before any."""
        index = bucket_index(self.buckets, fraction)
        if index is None:
            return None
        return min(1 << index, self.max_us) if index < BUCKETS - 1 else self.max_us

    def report(self, admin: bool) -> dict[str, Any]:
        count = sum(self.buckets)
        return {
            "decisions": decision_rows(self.decisions.items(), admin),
            "verification_us": {
                "count": count, "sum": self.total_us, "max": self.max_us if count else None,
                "p50": self.percentile(0.5), "p90": self.percentile(0.9), "p99": self.percentile(0.99),
                "buckets": bucket_rows(self.buckets),
            },
        }


def bucket_index(buckets: list[int], fraction: float) -> int | None:
    """The index of the bucket holding `fraction` of the counted durations (None: none counted)."""
    count = sum(buckets)
    if count == 0:
        return None
    seen = 0
    for index, number in enumerate(buckets):
        seen += number
        if seen >= fraction * count:
            return index
    return len(buckets) - 1


def bucket_rows(buckets: list[int]) -> list[dict[str, Any]]:
    """The non-empty buckets as {"le": upper bound in microseconds (None: the last), "count"}."""
    return [{"le": 1 << index if index < BUCKETS - 1 else None, "count": number}
            for index, number in enumerate(buckets) if number]


def decision_rows(items: Iterable[tuple[tuple[str, str, str], int]], admin: bool) -> list[dict[str, Any]]:
    """Decision counts by (kind, outcome, reason), sorted; for roles that
    don't administer the keys, the key reasons folded into bad_signature."""
    rows: dict[tuple[str, str, str], int] = {}
    for (kind, outcome, reason), count in items:
        if not admin and reason in _KEY_REASONS:
            reason = "bad_signature"
        rows[(kind, outcome, reason)] = rows.get((kind, outcome, reason), 0) + count
    return [{"kind": kind, "outcome": outcome, "reason": reason, "count": number}
            for (kind, outcome, reason), number in sorted(rows.items())]


def cache_counts(runtime: Any) -> list[dict[str, Any]]:
    """Hits and misses of each cache of `runtime` (hessra_pg.plpython.runtime)."""
    caches = [{"cache": name, "hits": cache.hits, "misses": cache.misses}
              for name, cache in (("tokens", runtime.tokens), ("decisions", runtime.decisions),
                                  ("results", runtime.results))]
    shared = runtime.shared
    caches.append({"cache": "shared_decisions", "hits": 0 if shared is None else shared.hits,
                   "misses": 0 if shared is None else shared.misses})
    return caches


def reset_caches(runtime: Any) -> None:
    for cache in (runtime.tokens, runtime.decisions, runtime.results):
        cache.hits = cache.misses = 0
    if runtime.shared is not None:
        runtime.shared.hits = runtime.shared.misses = 0
