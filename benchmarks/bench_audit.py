"""What the audit hook costs when audit is off (issue 16 item 1).

The verifier's per-call path is Statement.remembered(): a decision answered
from the backend's decision cache (the common case in a warm pool). This
runs it in-process (the same code the server runs) in three forms, in one
run, and prints ratios against the baseline:

- baseline: remembered() with the audit hook's two lines removed (its
  source recompiled without them);
- off: the shipped remembered(), audit off everywhere (one attribute test);
- all: audit level all (the per-statement dedupe turns repeats into a set
  lookup; one line per statement, not written here: the statement start
  stays the same).

Usage: python benchmarks/bench_audit.py [calls]
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import time

from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.verifier import RootKey, Revocations
from hessra_pg.plpython import runtime as runtime_module
from hessra_pg.plpython.runtime import Runtime, Statement
from hessra_pg.tokens.mint import mint_authorization

HOOK = "if self.runtime.audit.active and not self.runtime.audit.busy"


def unhooked_remembered():
    """Statement.remembered without the audit hook (the baseline)."""
    source = textwrap.dedent(inspect.getsource(Statement.remembered))
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if HOOK in line)
    del lines[start:start + 2]
    namespace: dict = {}
    exec(compile("\n".join(lines), "<baseline>", "exec"), vars(runtime_module), namespace)  # noqa: S102
    return namespace["remembered"]


def timed(statement: Statement, token: str, calls: int) -> float:
    decide = statement.decide
    started = time.perf_counter()
    for _ in range(calls):
        decide(token, subject="alice", resource="orders", operation="read")
    return (time.perf_counter() - started) / calls


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    signer = generate_keypair()
    token = mint_authorization(signer, "alice", "orders", "read")
    runtime = Runtime()
    runtime.load_config("1/1", (RootKey(1, str(signer.public_key)),), {}, Revocations())
    statement = Statement(runtime, runtime.config, None)
    assert statement.decide(token, subject="alice", resource="orders", operation="read").valid

    shipped = Statement.remembered
    baseline = unhooked_remembered()
    results: dict[str, list[float]] = {"baseline": [], "off": [], "all": []}
    for _ in range(5):  # interleaved rounds; the best of each
        Statement.remembered = baseline
        results["baseline"].append(timed(statement, token, calls))
        Statement.remembered = shipped
        results["off"].append(timed(statement, token, calls))
        runtime.audit.load("1/1", "all", [], [])
        results["all"].append(timed(statement, token, calls))
        runtime.audit.load("1/1", "off", [], [])
    best = {name: min(values) for name, values in results.items()}
    print(f"cached decision, {calls} calls per round, best of 5 rounds (baseline = no audit hook):")
    for name in ("baseline", "off", "all"):
        print(f"  {name:8s} {best[name] * 1e9:8.0f} ns/call  ratio {best[name] / best['baseline']:.3f}")


if __name__ == "__main__":
    main()
