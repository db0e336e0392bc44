"""Freshness and per-call cost of hessra_authz on a hot standby (docs/replicas.md).

    .venv/bin/python benchmarks/bench_standby.py [--rounds 30]

A primary and a streaming standby on loopback (hessra_pg.dev.testing.standby_pair).

  freshness  a token is revoked on the primary; the time until the standby has
             replayed the commit (polled every 1 ms) and the time of the first
             statement of an already-connected standby backend under it (which
             must deny); medians and maxima over --rounds;
  per call   verify_token of one cached token in a statement, on the standby,
             with the primary idle vs with a transaction open there (the
             standby's snapshot then names no visibility: each call reads the
             configuration version, hessra_authz._sync), as a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.testing import standby_pair
from hessra_pg.tokens.mint import mint_authorization


def freshness(pair, root, rounds: int) -> None:
    replay, first = [], []
    with pair.standby.connect(autocommit=True) as conn:
        for _ in range(rounds):
            token = mint_authorization(root, "alice", "orders", "read")
            query = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"
            assert conn.execute(query, (token,)).fetchone()[0]
            with pair.primary.connect(autocommit=True) as admin:
                admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
            replay.append(pair.wait_for_replay())
            started = time.monotonic()
            assert not conn.execute(query, (token,)).fetchone()[0]
            first.append(time.monotonic() - started)
    for name, values in (("replay", replay), ("first statement", first)):
        print(f"freshness {name:<16} median {statistics.median(values) * 1000:6.1f} ms   "
              f"max {max(values) * 1000:6.1f} ms   ({rounds} rounds)")


def per_call(pair, root, calls: int = 2000) -> None:
    token = mint_authorization(root, "alice", "orders", "read")
    query = ("SELECT count(*) FILTER (WHERE hessra_authz.verify_token(%s, 'alice', 'orders', 'read')) "
             f"FROM generate_series(1, {calls})")

    def run(conn) -> float:
        times = []
        for _ in range(7):
            started = time.perf_counter()
            assert conn.execute(query, (token,)).fetchone()[0] == calls
            times.append(time.perf_counter() - started)
        return statistics.median(times) / calls

    with pair.standby.connect(autocommit=True) as conn:
        run(conn)  # warm
        idle = run(conn)
        with pair.primary.connect() as open_tx:
            open_tx.execute("SELECT pg_catalog.pg_current_xact_id()")
            with pair.primary.connect(autocommit=True) as writer:
                writer.execute("CREATE TABLE IF NOT EXISTS public.ticks (n int)")
                writer.execute("INSERT INTO public.ticks VALUES (1)")
            pair.wait_for_replay()
            snapshot = conn.execute("SELECT pg_catalog.pg_current_snapshot()::text").fetchone()[0]
            busy = run(conn)
            open_tx.rollback()
    print(f"per call   primary idle {idle * 1e6:6.1f} us   transaction open on the primary "
          f"(standby snapshot {snapshot}) {busy * 1e6:6.1f} us   ratio {busy / idle:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with standby_pair("bench_standby") as pair:
        root = generate_keypair()
        with pair.primary.connect(autocommit=True) as admin:
            admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
        pair.wait_for_replay()
        freshness(pair, root, args.rounds)
        per_call(pair, root)


if __name__ == "__main__":
    main()
