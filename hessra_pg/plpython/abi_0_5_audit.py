"""PL/Python entry points of extension 0.5.0's audit and stats section
(issue 16; the rest of 0.5.0 is in abi_0_5). Same conventions as abi_0_3.
"""

from __future__ import annotations

from . import imports_without_gc

with imports_without_gc():
    from .abi_0_3 import _entry
    from .runtime import RUNTIME
    from .stats import cache_counts, reset_caches


@_entry(None)
def stats(admin: bool) -> str:
    """This backend's decisions, verification times, cache hits and misses,
    and audit lines (hessra_authz.stats())."""
    import json
    import time

    report = RUNTIME.counters.report(bool(admin))
    report["caches"] = cache_counts(RUNTIME)
    report["audit"] = RUNTIME.audit.report()
    if not admin:
        report["audit"]["level"] = None  # the levels are the administrators' business
        report["audit"]["role_levels"] = None
    report["since"] = RUNTIME.counters.since
    report["now"] = time.time()
    return json.dumps(report)


@_entry(None)
def reset_stats() -> str:
    from .db_stats import PUBLISHER

    PUBLISHER.absorb(RUNTIME)  # the database's numbers keep what this backend zeroes
    RUNTIME.counters.reset()
    reset_caches(RUNTIME)
    RUNTIME.audit.reset()
    return ""


@_entry(None)
def database_stats(admin: bool, database: int, database_tag: str, pids: list[int] | None,
                   starts: list[int] | None, reset: bool) -> str:
    """The numbers of every backend of this database (hessra_authz.database_stats()):
    the backends pg_stat_activity lists (`pids`, `starts`: backend_start in
    microseconds since 1970) and those that exited; with `reset`, start afresh."""
    import json

    from .db_stats import PUBLISHER, read

    PUBLISHER.publish(RUNTIME)  # this backend's own numbers, now
    live = list(zip(pids or (), starts or ()))
    return json.dumps(read(int(database), str(database_tag), live, bool(admin), bool(reset)))
