"""Benchmarks for hessra_authz: ratios against baselines measured in the same run.

    make bench            # or: .venv/bin/python benchmarks/bench_verify.py [--quick]

Starts a throwaway cluster (after installing this checkout's extension), and
prints:
  (a) verification inside Postgres vs the same verification in plain Python,
      per token, for a P-256 and an Ed25519 one-block token. Each call sees a
      token it has not seen before (no cache hit on either side). Measured as
      CPU time (the backend's from /proc/<pid>/schedstat, the client thread's
      from CLOCK_THREAD_CPUTIME_ID) so other load on this shared 2-core
      machine doesn't land on one side;
  (b) SELECT count(*) over 200,000 rows as a non-owner role under the policy
      `(SELECT hessra_authz.authorized('orders', 'read'))` vs the same table
      under `owner = (SELECT current_setting('app.user_id'))`.
Timings alternate between the measured case and its baseline and take
medians, because this machine is shared and noisy. Only ratios are claims.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from hessra_pg.dev.cluster import LocalCluster  # noqa: E402
from hessra_pg.admin.install import install  # noqa: E402
from hessra_pg.core.keys import generate_keypair  # noqa: E402
from hessra_pg.tokens.mint import mint_authorization  # noqa: E402
from hessra_pg.core.verifier import RootKey, verify  # noqa: E402

ROWS = 200_000


def _median_pair(run_case, run_base, rounds: int) -> tuple[float, float]:
    cases, bases = [], []
    for _ in range(rounds):
        cases.append(run_case())
        bases.append(run_base())
    return statistics.median(cases), statistics.median(bases)


def _backend_cpu_ns(pid: int) -> int:
    """On-CPU time of a process so far (updated when it is descheduled; the
    backend is idle, waiting for the client, whenever we read it)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def bench_verify(conn: psycopg.Connection, algorithm: str, per_round: int, rounds: int) -> tuple[float, float]:
    root = generate_keypair(algorithm)
    conn.execute("DELETE FROM hessra_authz.keys")
    conn.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
    keys = [RootKey(1, str(root.public_key))]
    batches = [[mint_authorization(root, "alice", "orders", "read", time_config=_nonce(i, j))
                for j in range(per_round)] for i in range(2 * rounds + 1)]
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    query = ("SELECT count(*) FILTER (WHERE hessra_authz.verify_token(t, 'alice', 'orders', 'read'))"
             " FROM unnest(%s::text[]) AS t")
    conn.execute(query, (batches[-1],))  # warm: interpreter, imports, plans
    feed = iter(batches)

    def in_postgres() -> float:
        tokens = next(feed)
        before = _backend_cpu_ns(backend)
        ok = conn.execute(query, (tokens,)).fetchone()[0]
        elapsed = _backend_cpu_ns(backend) - before
        assert ok == len(tokens)
        return elapsed / 1e9 / len(tokens)

    def in_python() -> float:
        tokens = next(feed)
        before = time.thread_time_ns()
        now = int(time.time())
        ok = sum(verify(t, keys, now=now, subject="alice", resource="orders", operation="read").valid for t in tokens)
        elapsed = time.thread_time_ns() - before
        assert ok == len(tokens)
        return elapsed / 1e9 / len(tokens)

    return _median_pair(in_postgres, in_python, rounds)


def _nonce(i: int, j: int):
    from hessra_pg.tokens.mint import TokenTime

    # Distinct expirations make distinct tokens of the same shape.
    return TokenTime(duration=3600 + i * 10_000 + j)


def bench_rls(cluster: LocalCluster, dbname: str, rounds: int) -> tuple[float, float]:
    root = generate_keypair("secp256r1")
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as admin:
        admin.execute("DELETE FROM hessra_authz.keys")
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
        admin.execute(f"""
            DROP TABLE IF EXISTS hessra_orders, plain_orders;
            CREATE TABLE hessra_orders (id int PRIMARY KEY, owner text, total numeric);
            CREATE TABLE plain_orders (id int PRIMARY KEY, owner text, total numeric);
            INSERT INTO hessra_orders SELECT g, 'alice', g FROM generate_series(1, {ROWS}) g;
            INSERT INTO plain_orders SELECT * FROM hessra_orders;
            ALTER TABLE hessra_orders ENABLE ROW LEVEL SECURITY;
            ALTER TABLE hessra_orders FORCE ROW LEVEL SECURITY;
            ALTER TABLE plain_orders ENABLE ROW LEVEL SECURITY;
            ALTER TABLE plain_orders FORCE ROW LEVEL SECURITY;
            CREATE POLICY p ON hessra_orders FOR SELECT USING ((SELECT hessra_authz.authorized('orders', 'read')));
            CREATE POLICY p ON plain_orders FOR SELECT USING (owner = (SELECT current_setting('app.user_id')));
            DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN
                    CREATE ROLE bench_app LOGIN;
                END IF;
            END $$;
            GRANT SELECT ON hessra_orders, plain_orders TO bench_app;
        """)
        admin.execute("VACUUM ANALYZE hessra_orders")
        admin.execute("VACUUM ANALYZE plain_orders")
    token = mint_authorization(root, "alice", "orders", "read", time_config=_nonce(0, 0))
    with psycopg.connect(cluster.dsn(dbname, "bench_app"), autocommit=True) as app:
        app.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false),"
                    " set_config('app.user_id', 'alice', false)", (token,))

        def count(table: str) -> float:
            started = time.perf_counter()
            n = app.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            elapsed = time.perf_counter() - started
            assert n == ROWS, (table, n)
            return elapsed

        for _ in range(3):  # warm caches and the interpreter
            count("hessra_orders"), count("plain_orders")
        return _median_pair(lambda: count("hessra_orders"), lambda: count("plain_orders"), rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    per_round, rounds, rls_rounds = (25, 8, 5) if args.quick else (25, 60, 31)

    install()
    rows = []
    with LocalCluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hessra_authz CASCADE")
            for algorithm, label in (("secp256r1", "P-256"), ("ed25519", "Ed25519")):
                pg, py = bench_verify(conn, algorithm, per_round, rounds)
                rows.append((f"(a) verify in Postgres vs plain Python, {label} 1 block",
                             f"{pg * 1e6:.0f} us", f"{py * 1e6:.0f} us", pg / py, 1.15 if label == "P-256" else None))
        hessra, plain = bench_rls(cluster, "bench", rls_rounds)
        rows.append((f"(b) count(*) {ROWS:,} rows: authorized() policy vs plain GUC policy",
                     f"{hessra * 1e3:.1f} ms", f"{plain * 1e3:.1f} ms", hessra / plain, 1.10))

    print(f"\nhessra-pg benchmarks ({platform.machine()}, {platform.python_version()}, "
          f"{'quick' if args.quick else 'full'} run; medians, baseline measured in the same run)\n")
    print(f"| {'measure':<68} | {'case':>9} | {'baseline':>9} | ratio | target |")
    print(f"|{'-' * 70}|{'-' * 11}|{'-' * 11}|-------|--------|")
    for name, case, base, ratio, target in rows:
        verdict = "" if target is None else f"<= {target:.2f}" + (" ok" if ratio <= target else " MISSED")
        print(f"| {name:<68} | {case:>9} | {base:>9} | {ratio:5.2f} | {verdict:<6} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
