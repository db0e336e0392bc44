"""Backends of one database share positive decisions (hessra_pg.plpython.shared_decisions):
a token verified by one backend is not verified again by the others, and
nothing a backend shares outlives a configuration change or the token."""

import os
import stat
from pathlib import Path

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"


def shared_stats(conn):
    return scalar(conn, "SELECT hessra_authz.cache_stats()")["shared_decisions"]


def test_a_decision_made_by_one_backend_serves_another(hessra_db, root, app_role):
    token = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as first, \
            hessra_db.connect(app_role, autocommit=True) as second:
        assert scalar(first, VERIFY, (token,)) is True
        assert shared_stats(first) == {"hits": 0, "misses": 1}
        assert scalar(second, VERIFY, (token,)) is True
        assert shared_stats(second) == {"hits": 1, "misses": 0}
        stats = scalar(second, "SELECT hessra_authz.cache_stats()")
        assert stats["tokens"]["size"] == 0  # the second backend never parsed the token
        # explain reports the whole decision, never the shared yes (the kid
        # only to key administrators).
        explained = scalar(second, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')", (token,))
        assert explained["valid"] is True and explained["kid"] is None and explained["expires_at"]
    with hessra_db.connect(autocommit=True) as admin:
        explained = scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')", (token,))
        assert explained["valid"] is True and explained["kid"] == 100


def test_authorized_takes_a_shared_decision_without_parsing_the_token(hessra_db, root, app_role):
    """authorized() first tells capability tokens from the others (0.4.0):
    from the unverified token, so an authorization token's decision still
    comes from another backend without a signature check here."""
    token = mint_authorization(root, "alice", "orders", "read")
    authorized = "SELECT hessra_authz.authorized('orders', 'read')"
    with hessra_db.connect(app_role, autocommit=True) as first, \
            hessra_db.connect(app_role, autocommit=True) as second:
        for conn in (first, second):
            conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                         (token,))
        assert scalar(first, authorized) is True
        assert scalar(second, authorized) is True
        assert shared_stats(second) == {"hits": 1, "misses": 0}
        assert scalar(second, "SELECT hessra_authz.cache_stats()")["tokens"]["size"] == 0


def test_denials_are_not_shared(hessra_db, root, app_role):
    token = mint_authorization(root, "bob", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as first, \
            hessra_db.connect(app_role, autocommit=True) as second:
        assert scalar(first, VERIFY, (token,)) is False
        assert scalar(second, VERIFY, (token,)) is False
        assert shared_stats(second) == {"hits": 0, "misses": 1}


def test_a_configuration_change_ends_sharing(hessra_db, admin, root, app_role):
    token = mint_authorization(root, "alice", "orders", "read")
    other = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=900))
    with hessra_db.connect(app_role, autocommit=True) as first, \
            hessra_db.connect(app_role, autocommit=True) as second:
        assert scalar(first, VERIFY, (token,)) is True
        assert scalar(first, VERIFY, (other,)) is True
        admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        assert scalar(second, VERIFY, (token,)) is False
        assert scalar(second, VERIFY, (other,)) is True
        assert shared_stats(second)["hits"] == 0  # the entries were made under the old configuration
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
        admin.execute("SELECT hessra_authz.retire_key(100)")
        assert scalar(first, VERIFY, (other,)) is False


def test_the_table_is_a_private_file_in_the_data_directory(hessra_db, admin, root, app_role):
    with hessra_db.connect(app_role, autocommit=True) as app:
        scalar(app, VERIFY, (mint_authorization(root, "alice", "orders", "read"),))
    data = Path(scalar(admin, "SHOW data_directory"))
    oid = scalar(admin, "SELECT oid FROM pg_database WHERE datname = current_database()")
    table = data / "hessra_authz_cache" / str(oid)
    assert stat.S_IMODE(os.stat(table.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o600


def test_concurrent_backends_share_without_wrong_answers(hessra_db, root, app_role):
    """Four backends verify overlapping tokens at once (writers never lock):
    every answer stays right, denials included, and later backends hit."""
    import threading

    good = [mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=600 + i))
            for i in range(60)]
    bad = [mint_authorization(root, "bob", "orders", "read", time_config=TokenTime(duration=600 + i))
           for i in range(20)]
    tokens = good + bad
    expected = [True] * len(good) + [False] * len(bad)
    query = ("SELECT array_agg(hessra_authz.verify_token(t, 'alice', 'orders', 'read') ORDER BY n) "
             "FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n)")
    failures: list[str] = []

    def worker(offset: int) -> None:
        try:
            with hessra_db.connect(app_role, autocommit=True) as conn:
                order = tokens[offset:] + tokens[:offset]
                wanted = expected[offset:] + expected[:offset]
                for _ in range(3):
                    if scalar(conn, query, (order,)) != wanted:
                        failures.append(f"worker {offset}: wrong answers")
        except Exception as error:  # reported below, with the thread's name
            failures.append(f"worker {offset}: {error!r}")

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in (0, 20, 40, 60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    with hessra_db.connect(app_role, autocommit=True) as late:
        assert scalar(late, query, (tokens,)) == expected
        stats = shared_stats(late)
        assert stats["hits"] == len(good) and stats["misses"] == len(bad)


# -- what a new backend loads for a decision another backend made (issue 12) ------------------------

HEAVY = ("biscuit_auth", "hessra_pg.core.verifier", "hessra_pg.core.datalog", "hessra_pg.core.capability", "datetime")


def _loaded_heavy_modules(conn) -> list[str]:
    return [name for name in HEAVY if name in scalar(conn, "SELECT public.hessra_test_loaded_modules()")]


def test_a_new_backend_takes_a_shared_decision_without_loading_the_verifier(hessra_db, root, app_role):
    """A pool's new connection mostly sees tokens other backends verified:
    its first decision then loads neither biscuit-python nor the verifier
    (a connection's first verification costs their imports, ~2-5 ms), for
    verify_token(), authorized() and a capability token alike. A token no
    backend has verified loads them and is verified."""
    from hessra_pg.tokens.capability import mint_capability

    with hessra_db.connect(autocommit=True) as admin:
        admin.execute("CREATE FUNCTION public.hessra_test_loaded_modules() RETURNS text[] LANGUAGE plpython3u AS "
                      "$$\nimport sys\nreturn sorted(sys.modules)\n$$")
        admin.execute(f"GRANT EXECUTE ON FUNCTION public.hessra_test_loaded_modules() TO {app_role}")
    try:
        def token() -> str:  # one per check: none of them verified before
            return mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=3600 + next(n)))

        def capability() -> str:
            return mint_capability(root, "alice", "orders", "read", valid_for=3600 + next(n))

        n = iter(range(100))
        checks = (
            (None, VERIFY, (token(),)),
            (token(), "SELECT hessra_authz.authorized('orders', 'read')", ()),
            (capability(), "SELECT hessra_authz.authorized('orders', 'read')", ()),
            (None, "SELECT hessra_authz.verify_capability(%s, 'orders', 'read')", (capability(),)),
        )
        for setting, query, params in checks:
            for fresh in (True, False):  # the first backend verifies; the next one takes its decision
                with hessra_db.connect(app_role, autocommit=True) as conn:
                    if setting is not None:
                        conn.execute("SELECT set_config('hessra.token', %s, false), "
                                     "set_config('hessra.subject', 'alice', false)", (setting,))
                    assert scalar(conn, query, params) is True, query
                    if fresh:
                        assert "biscuit_auth" in _loaded_heavy_modules(conn), query
                    else:
                        assert _loaded_heavy_modules(conn) == [], query
        # A denied token shares nothing, not even its kind: a role can't
        # fill the table with tokens that merely parse (or with garbage).
        forged = mint_authorization(generate_keypair(), "alice", "orders", "read")
        for _ in range(2):
            with hessra_db.connect(app_role, autocommit=True) as conn:
                conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                             (forged,))
                assert scalar(conn, "SELECT hessra_authz.authorized('orders', 'read')") is False
                assert "hessra_pg.core.datalog" in _loaded_heavy_modules(conn)  # it read the kind itself
    finally:
        with hessra_db.connect(autocommit=True) as admin:
            admin.execute("DROP FUNCTION public.hessra_test_loaded_modules()")
