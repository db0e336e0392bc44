"""Answers of per-row calls, so that a policy evaluated once per row costs
about one PL/Python call per row (issue 15 item 3).

A policy Citus accepts (or the bare form `USING (hessra_authz.authorized(...))`)
calls the verifier for every row with the same arguments. The first call
goes the whole way: the SECURITY DEFINER wrapper computes the statement's
context itself, the runtime checks freshness and verifies (or finds the
decision in its caches), and the trusted entry point records the answer
here. The next rows ask `answer()` first, through a function every role may
call with any arguments: it only reads what a trusted call recorded and
answers None for anything else, and the caller then goes the whole way. So a
forged argument can at most miss; it can never make an answer.

When a recorded answer still holds (the same rules as the runtime's fast
path, hessra_pg.plpython.runtime):

- the configuration: answers are recorded only by calls whose snapshot the
  runtime confirmed its configuration with, outside a transaction that
  changed it, and are kept under that snapshot's text
  (`pg_current_snapshot()`). A snapshot shows the same configuration for
  ever; the runtime clears these answers when it loads another
  configuration or this backend changes it (and records none until that
  transaction ends), so the transaction id adds nothing here. Like the fast
  path, an answer is not used once a newer generation has been published
  by another backend (REPEATABLE READ, imported snapshots).
- time: a yes holds until the token's expiry or its key's end (what the
  decision caches keep it for), checked against the clock (never going
  back within this backend); a no for NO_SECONDS (a key's not_before may
  pass: fail closed for at most that long).

Memory: at most ROW_ANSWERS_BYTES (estimated), tokens and arguments up to
8 KiB only; when full, everything is dropped and recording starts again.
Everything is dropped when the snapshot changes.
"""

from __future__ import annotations

import time

from ..core.lru import text_size

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time: imported by every backend's first verification
    from typing import Any, Callable

#: Ceiling of the recorded answers (tokens and arguments, estimated).
ROW_ANSWERS_BYTES = 2 * 1024 * 1024
#: Estimated overhead of an entry beyond its texts (dict slot, tuple, float).
_ENTRY_BYTES = 200
#: Longer tokens (and arguments) are not recorded: Hessra's tokens are a few
#: KiB at most, and keeping copies of huge ones pins the allocator's heap.
_LONGEST_TEXT = 8 * 1024


#: Never equal to a snapshot text: marks a kind's latest answer as gone.
_GONE = object()
#: How long a no is kept (seconds): time can turn a no into a yes (a key's
#: not_before), and a denied per-row scan re-verifies this often.
NO_SECONDS = 0.1


class RowAnswers:
    """The answers recorded under one snapshot, by token and arguments.

    A yes is stored as the time (seconds) until which it holds; a no as
    minus the time until which it holds (NO_SECONDS after it was made). Each
    kind of call (authorized, verify_token) also keeps its latest answer,
    compared without hashing: most rows ask for the same one."""

    __slots__ = ("snapshot", "generation", "tokens", "size", "published", "recorded", "trusted_calls", "pending",
                 "_latest")

    def __init__(self) -> None:
        #: int64 view of the shared file's published generation (and its
        #: complement), or None without a shared file.
        self.published: Any = None
        #: Answers recorded, and calls of the trusted path that could record
        #: one, so far (cache_stats: what the fast path spared).
        self.recorded = 0
        self.trusted_calls = 0
        #: The arguments of the latest miss of a stashing reader, for the
        #: trusted call that follows it in the same row (take_pending()).
        self.pending: tuple[str | None, ...] | None = None
        #: kind -> [snapshot, token, subject, resource, operation, domain, prefix, stored answer]
        self._latest: dict[str, list[Any]] = {}
        self.clear()

    def clear(self) -> None:
        self.snapshot: str | None = None
        self.generation = 0
        self.tokens: dict[str | None, dict[tuple[Any, ...], float]] = {}
        self.size = 0
        for latest in self._latest.values():
            latest[0] = _GONE

    def record(self, snapshot: str, generation: int, now: float, token: str | None, kind: str,
               arguments: tuple[str | None, str | None, str | None, str | None, str | None], valid: bool,
               until: float | None) -> None:
        """Keep a trusted call's answer (a yes only with the time it holds
        until; a no for NO_SECONDS from `now`). `arguments`: subject,
        resource, operation, domain, prefix."""
        if valid and until is None:
            return
        if (token is not None and len(token) > _LONGEST_TEXT) or text_size(arguments) > _LONGEST_TEXT:
            return  # answered the whole way each time
        if snapshot != self.snapshot or generation != self.generation:
            self.clear()
            self.snapshot, self.generation = snapshot, generation
        key = (kind, *arguments)
        answers = self.tokens.get(token)
        cost = text_size(key) + _ENTRY_BYTES + (0 if answers is not None else text_size(token) + _ENTRY_BYTES)
        if self.size + cost > ROW_ANSWERS_BYTES:
            self.clear()
            self.snapshot, self.generation = snapshot, generation
            answers = None
        if answers is None:
            answers = self.tokens[token] = {}
        stored = until if valid else -(now + NO_SECONDS)
        answers[key] = stored  # type: ignore[assignment]
        self.size += cost
        self.recorded += 1
        self._latest.setdefault(kind, [_GONE] * 8)[:] = [snapshot, token, *arguments, stored]

    def take_pending(self) -> tuple[str | None, ...] | None:
        """The arguments a stashing reader kept at its latest miss (once)."""
        pending, self.pending = self.pending, None
        return pending

    def reader(self, kind: str, stash: bool = False, blank_is_none: bool = False) -> Callable[..., bool | None]:
        """The per-row fast path of one kind of call: `read(snapshot, token,
        subject, resource, operation[, domain, prefix])` is the answer
        recorded for this snapshot, or None (ask the trusted path). Never
        raises. `blank_is_none`: '' token or subject means none (the GUCs).
        With `stash`, a miss keeps the arguments for the trusted call that
        comes next in the same row (take_pending), so that the query
        evaluates and converts them once, not twice (a megabyte argument
        would be held twice at once)."""
        # [snapshot, token, subject, resource, operation, domain, prefix, stored answer]
        latest = self._latest.setdefault(kind, [_GONE] * 8)
        clock = time.time
        highest = 0.0  # the clock as this backend last read it: time never goes back here

        def read(snapshot: str, token: str | None, subject: str | None, resource: str | None,
                 operation: str | None, domain: str | None = None, prefix: str | None = None) -> bool | None:
            nonlocal highest
            try:
                if blank_is_none:
                    token = token or None
                    subject = subject or None
                # Compared, not hashed: most rows ask what the previous one did.
                if (snapshot == latest[0] and token == latest[1] and subject == latest[2] and resource == latest[3]
                        and operation == latest[4] and domain == latest[5] and prefix == latest[6]):
                    stored = latest[7]
                else:
                    stored = None
                    if snapshot == self.snapshot:
                        answers = self.tokens.get(token)
                        if answers is not None:
                            stored = answers.get((kind, subject, resource, operation, domain, prefix))
                    if stored is not None:
                        latest[:] = [snapshot, token, subject, resource, operation, domain, prefix, stored]
                if stored is not None:
                    published = self.published
                    generation = 0 if published is None else published[0]
                    # A newer configuration in force (or a torn or unset value):
                    # the trusted path decides, and refuses old snapshots.
                    if published is None or (generation <= self.generation and published[1] == ~generation):
                        now = clock()
                        if now < highest:
                            now = highest
                        else:
                            highest = now
                        if stored < 0.0:
                            if now < -stored:
                                return False
                        elif now < stored:
                            return True
            except Exception:  # noqa: BLE001 (never raise: the trusted path answers and reports)
                pass
            if stash:
                self.pending = (token, subject, resource, operation, domain, prefix)
            return None

        return read

    def stats(self) -> dict[str, int]:
        return {"bytes": self.size, "limit": ROW_ANSWERS_BYTES, "tokens": len(self.tokens),
                "recorded": self.recorded, "trusted_calls": self.trusted_calls}
