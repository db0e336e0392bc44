"""PL/Python entry points of extension 0.5.0's audit and stats section
(issue 16; the rest of 0.5.0 is in abi_0_5). Same conventions as abi_0_3.
"""

from __future__ import annotations

from .abi_0_3 import _entry
from .runtime import RUNTIME
from .stats import cache_counts, reset_caches


@_entry(None)
def load_audit(version: str, level: str | None, role_oids: list[int] | None,
               role_levels: list[str] | None) -> str:
    """Take the audit levels _sync() read with configuration `version`,
    if the runtime took that configuration (it refuses an older one, and
    the statement then fails)."""
    if RUNTIME.config_version() == version:
        RUNTIME.audit.load(version, level, role_oids, role_levels)
    return ""


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
    RUNTIME.counters.reset()
    reset_caches(RUNTIME)
    RUNTIME.audit.reset()
    return ""
