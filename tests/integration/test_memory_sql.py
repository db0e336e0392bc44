"""Per-backend memory stays bounded whatever arrives (issue 11, hole 2).

0.2.0 cached rejections as exception instances and re-raised them: each
raise grew the traceback, ~5.4 KB per call (a bad token under a per-row
policy over a million rows took a backend into the OOM killer). Its caches
were bounded by entries: 1,100 distinct 31 KB tokens took a backend from
42 MB to 317 MB. Now rejections are cached as reasons and every cache is
bounded by bytes; docs/performance.md "Caches and memory" states the ceiling this test asserts.
"""

from pathlib import Path

import biscuit_auth
import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.plpython import runtime
from hessra_pg.core.verifier import AUTHORIZER_CACHE_BYTES
from tests.hostile_tokens import nested_closure_token
from tests.integration.conftest import scalar

MIB = 1024 * 1024
#: What the README promises: the caches' byte bounds (16 MiB), plus what
#: the estimates can't see (allocator fragmentation after evictions, malloc
#: keeping the memory of calls with megabyte arguments): 40 MiB above a
#: warmed backend. Measured on 2026-11-29: +30 MiB after filling every
#: cache twice, +0.3 MiB after 160,000 calls with bad tokens.
CACHE_CEILING = (runtime.TOKEN_CACHE_BYTES + runtime.DECISION_CACHE_BYTES + runtime.RESULT_CACHE_BYTES
                 + AUTHORIZER_CACHE_BYTES)
ALLOWED_GROWTH = 40 * MIB
assert CACHE_CEILING == 16 * MIB  # the figure docs/performance.md "Caches and memory" gives


def anonymous_rss(conn) -> int:
    """Private (heap) memory of the connection's backend, in bytes."""
    pid = scalar(conn, "SELECT pg_backend_pid()")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.fail("no RssAnon in /proc/<pid>/status")


def load(conn, table: str, tokens: list[str]) -> None:
    """A temporary table (t, token) of the tokens, t counting from 0."""
    conn.execute(f"CREATE TEMP TABLE {table} (t int, token text)")
    with conn.cursor().copy(f"COPY {table} (t, token) FROM STDIN") as copy:
        for number, token in enumerate(tokens):
            copy.write_row((number, token))


def big_token(root, base: str, i: int) -> str:
    """~31 KB of base64 that passes the shape limits (appended fact blocks)."""
    biscuit = biscuit_auth.Biscuit.from_base64(base, root.public_key)
    for block in range(4):
        facts = " ".join(f'f{k}("{"x" * 400}{i}_{block}_{k}");' for k in range(14))
        biscuit = biscuit.append(biscuit_auth.BlockBuilder(facts))
    return biscuit.to_base64()


def test_memory_stays_flat_under_bad_tokens_and_full_caches(hessra_db, admin, app_role):
    root = generate_keypair("ed25519")
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(root.public_key),))
    good = mint_authorization(root, "alice", "orders", "read")
    hostile = nested_closure_token(good, 2000)
    many_rights = []
    for t in range(8):
        rights = " ".join(f'right("alice", "r{t}_{i}", "read");' for i in range(800))
        many_rights.append(biscuit_auth.BiscuitBuilder(rights).build(root.private_key).to_base64())
    bigs = [big_token(root, good, i) for i in range(120)]
    assert all(30_000 < len(token) <= 32 * 1024 for token in bigs)
    with hessra_db.connect(app_role, autocommit=True) as app:
        load(app, "bigs", bigs)
        load(app, "rights", many_rights)
        assert scalar(app, "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')", (good,)) is True
        assert scalar(app, "SELECT hessra_authz.current_identity()") is None
        start = anonymous_rss(app)

        # 1. The same bad inputs, 100,000 times and more.
        assert scalar(app, "SELECT count(*) FROM generate_series(1, 100000) "
                           "WHERE hessra_authz.verify_token('not a token', 'alice', 'orders', 'read')") == 0
        assert scalar(app, "SELECT count(*) FROM generate_series(1, 20000) "
                           "WHERE hessra_authz.verify_capability(%s, 'orders', 'read')", (hostile,)) == 0
        assert scalar(app, "SELECT count(*) FROM generate_series(1, 20000) "
                           "WHERE (hessra_authz.explain('eyJub3Q', 'a', 'b', 'c')->>'valid')::boolean") == 0
        assert scalar(app, "SELECT count(*) FROM generate_series(1, 20000) "
                           "WHERE hessra_authz.verify_identity('AAAA', 'alice')") == 0
        after_bad = anonymous_rss(app)
        print(f"\nbackend RssAnon: warm {start / MIB:.1f} MiB, after 160,000 bad calls "
              f"{(after_bad - start) / MIB:+.1f} MiB")
        assert after_bad - start < 4 * MIB

        # 2. Fill every cache, twice: tokens (big ones), decisions and
        # authorizers (6,400 granted resources), helper results, huge arguments.
        for _ in range(2):
            assert scalar(app, "SELECT count(*) FROM bigs "
                               "WHERE hessra_authz.verify_token(token, 'alice', 'orders', 'read')") == 120
            assert scalar(app, "SELECT count(*) FROM rights, generate_series(0, 799) AS i "
                               "WHERE hessra_authz.verify_token(token, 'alice', 'r' || t || '_' || i, 'read')") == 6400
            assert scalar(app, "SELECT sum(cardinality(hessra_authz.token_resources(token, 'alice', op))) "
                               "FROM rights, unnest(ARRAY['read', 'write', 'x', 'y', 'z']) AS op") == 6400
            assert scalar(app, "SELECT count(*) FROM generate_series(1, 40) AS g "
                               "WHERE hessra_authz.verify_token(%s, repeat(g::text, 1000000), 'orders', 'read')",
                          (good,)) == 0
            print(f"after filling every cache: {(anonymous_rss(app) - start) / MIB:+.1f} MiB")
        cache = scalar(app, "SELECT hessra_authz.cache_stats()")
        full = anonymous_rss(app)
    for name in ("tokens", "decisions", "results", "authorizers"):
        assert 0 < cache[name]["bytes"] <= cache[name]["bound_bytes"], (name, cache[name])
    assert cache["tokens"]["bytes"] > cache["tokens"]["bound_bytes"] * 0.8  # it really was filled
    print(f"ceiling {CACHE_CEILING / MIB:.0f} MiB of caches; growth {(full - start) / MIB:+.1f} MiB")
    assert full - start < ALLOWED_GROWTH
