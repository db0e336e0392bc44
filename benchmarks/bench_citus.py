"""Citus mode: a distributed scan under a no-subquery hessra policy vs the
same scan of an identical table without RLS, measured in the same run
(issue 15 item 4: "the Citus scan ... within 2x of the same scan without RLS
once warm").

    .venv/bin/python benchmarks/bench_citus.py [--quick] [--reps 15]

Starts a coordinator and one worker on loopback (hessra_pg.dev.citus, every
shard on the worker, so every row decision is the worker's), with
hessra_authz in Citus mode (configuration distributed as reference tables).
Tables, each a policy table (PolicySpec(no_subquery=True), table mode,
resource "orders") and an identical table without RLS (the baseline):
  1k/32    1,000 rows in 32 shards  (the issue's target)
  1k/4     1,000 rows in 4 shards   (fewer per-shard queries, same rows)
  0/32     no rows in 32 shards     (per-shard overhead alone)
  100k/32  100,000 rows in 32 shards (per-row cost dominates; not with --quick),
           also with citus.max_adaptive_executor_pool_size = 1 (one worker
           connection: no fresh worker backends opened mid-statement)
Cases: count(*) over the whole table (multi-shard) and, on 1k/32, a router
query (one row by the distribution column). An application role in one warm
coordinator session, each statement in its own transaction through the
set_local transport with a valid token (the baseline statements too, so only
the policy differs); warm-up runs first, then --reps repetitions alternating
policy and baseline; medians of wall time per statement, ratio of medians.
Also the first count(*) over 1k/32 in a fresh coordinator session (new
worker connections: new worker backends pay their first verification),
median of 3 fresh sessions each.

Exits 2 when the local PostgreSQL has no Citus (docs/scale-out.md says how to
install it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from hessra_pg.dev.citus import citus_available  # noqa: E402

APP = "bench_citus_app"
SUBJECT = "alice"


def tables(quick: bool) -> list[tuple[str, int, int]]:
    """(name, rows, shards)."""
    out = [("t1k_32", 1000, 32), ("t1k_4", 1000, 4), ("t0_32", 0, 32)]
    if not quick:
        out.append(("t100k_32", 100_000, 32))
    return out


def setup(conn: psycopg.Connection, layout: list[tuple[str, int, int]]) -> None:
    from hessra_pg.rls.policies import PolicySpec, with_safe_search_path

    conn.execute(f"CREATE ROLE {APP} LOGIN")
    for name, rows, shards in layout:
        for table in (name, name + "_plain"):
            conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, tenant text)")
            conn.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (f"public.{table}", shards))
            conn.execute(f"INSERT INTO public.{table} SELECT g, 't' || (g % 4) FROM generate_series(1, {rows}) g")
            conn.execute(f"GRANT SELECT ON public.{table} TO {APP}")
        spec = PolicySpec(name, schema="public", resource="orders", no_subquery=True)
        for statement in with_safe_search_path(spec.create_statements()):
            if not statement.startswith("--"):  # one statement at a time (Citus forwards some DDL verbatim)
                conn.execute(statement)
        conn.execute(f"ANALYZE public.{name}")
        conn.execute(f"ANALYZE public.{name}_plain")


def timed(conn: psycopg.Connection, token: str, query: str, expect: int) -> float:
    from hessra_pg.psycopg import hessra_transaction

    with hessra_transaction(conn, token=token, subject=SUBJECT, transport="set_local"):
        started = time.perf_counter()
        got = conn.execute(query).fetchone()[0]
        elapsed = time.perf_counter() - started
    if got != expect:
        raise SystemExit(f"{query}: {got} rows, expected {expect} (is the token accepted on the worker?)")
    return elapsed


def warm_pair(conn: psycopg.Connection, token: str, policy_q: str, plain_q: str, expect: int,
              reps: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        timed(conn, token, policy_q, expect)
        timed(conn, token, plain_q, expect)
    policy, plain = [], []
    for i in range(reps):
        order = [(policy_q, policy), (plain_q, plain)]
        for query, into in (order if i % 2 == 0 else order[::-1]):  # alternate which goes first
            into.append(timed(conn, token, query, expect))
    return statistics.median(policy), statistics.median(plain)


def first_scan(dsn: str, token: str, query: str, expect: int) -> float:
    with psycopg.connect(dsn) as conn:
        return timed(conn, token, query, expect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="no 100,000-row table, fewer repetitions")
    parser.add_argument("--reps", type=int, default=15, help="measured repetitions per case (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per case (default 3)")
    args = parser.parse_args(argv)

    available, why = citus_available()
    if not available:
        print(f"bench_citus: Citus is not installed in the local PostgreSQL ({why}); "
              "see docs/scale-out.md, 'Installing Citus'", file=sys.stderr)
        return 2

    from hessra_pg.admin.install import install
    from hessra_pg.core.keys import generate_keypair
    from hessra_pg.dev.citus import citus_cluster
    from hessra_pg.tokens.mint import mint_authorization

    reps = 7 if args.quick and args.reps == 15 else args.reps
    layout = tables(args.quick)
    install()
    root = generate_keypair()
    token = mint_authorization(root, SUBJECT, "orders", "read")
    results: list[tuple[str, float, float]] = []
    started = time.monotonic()
    with citus_cluster(workers=1) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            setup(conn, layout)
            conn.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
            citus = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()[0]
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'").fetchone()[0]
        print(f"coordinator + 1 worker ready in {time.monotonic() - started:.1f} s", flush=True)

        dsn = cluster.dsn(APP)
        # First scan in a fresh coordinator session (before the warm session opens any worker connection).
        firsts: dict[str, list[float]] = {"t1k_32": [], "t1k_32_plain": []}
        for _ in range(3):
            for table in firsts:
                firsts[table].append(first_scan(dsn, token, f"SELECT count(*) FROM public.{table}", 1000))
        first, first_plain = statistics.median(firsts["t1k_32"]), statistics.median(firsts["t1k_32_plain"])
        results.append(("first count(*) 1k/32, fresh session", first, first_plain))
        print(f"  {results[-1][0]}: {first * 1000:.1f} ms vs {first_plain * 1000:.1f} ms", flush=True)

        with psycopg.connect(dsn) as conn:
            cases = []
            for name, rows, shards in layout:
                label = f"{rows // 1000}k" if rows else "0"
                cases.append((f"count(*) {label}/{shards}", f"SELECT count(*) FROM public.{{}}", name, rows))
            cases.insert(1, ("router 1k/32 (id = 7)", "SELECT count(*) FROM public.{} WHERE id = 7", "t1k_32", 1))
            for label, template, name, expect in cases:
                policy, plain = warm_pair(conn, token, template.format(name), template.format(name + "_plain"),
                                          expect, reps, args.warmup)
                results.append((f"warm {label}", policy, plain))
                print(f"  warm {label}: {policy * 1000:.2f} ms vs {plain * 1000:.2f} ms -> {policy / plain:.2f}x",
                      flush=True)
            if not args.quick:
                # A long multi-shard scan makes Citus open more worker connections per statement
                # (slow start); only one stays cached, so the others are fresh backends paying their
                # first verification. One connection per worker shows the per-row cost alone.
                conn.execute("SET citus.max_adaptive_executor_pool_size = 1")
                conn.commit()
                label = "count(*) 100k/32, pool size 1"
                policy, plain = warm_pair(conn, token, "SELECT count(*) FROM public.t100k_32",
                                          "SELECT count(*) FROM public.t100k_32_plain", 100_000, reps, args.warmup)
                results.append((f"warm {label}", policy, plain))
                print(f"  warm {label}: {policy * 1000:.2f} ms vs {plain * 1000:.2f} ms -> {policy / plain:.2f}x",
                      flush=True)

    print(f"\nhessra-pg on Citus (hessra_authz {version}, Citus {citus}, 1 coordinator + 1 worker on loopback, "
          f"{platform.machine()}, {os.cpu_count()} cores; medians of {reps} alternating repetitions after "
          f"{args.warmup} warm-up runs, first scans median of 3 fresh sessions; baseline = same table without RLS, "
          f"same run)\n")
    print(f"| {'case':<38} | {'policy ms':>10} | {'no RLS ms':>10} | {'ratio':>6} | {'policy - no RLS ms':>18} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 20}|")
    for label, policy, plain in results:
        print(f"| {label:<38} | {policy * 1000:>10.2f} | {plain * 1000:>10.2f} | {policy / plain:>5.2f}x "
              f"| {(policy - plain) * 1000:>18.2f} |")
    target = next(policy / plain for label, policy, plain in results if label == "warm count(*) 1k/32")
    print(f"\ntarget (issue 15 item 4): warm count(*) 1k/32 within 2x -> {target:.2f}x "
          f"{'MET' if target <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
