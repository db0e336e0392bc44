"""Policies evaluated once per row (issue 15 item 3: Citus mode, and the
bare form): authorized() and verify_token() are inlined SQL functions whose
per-row call answers from what a trusted call of the same snapshot recorded
(hessra_pg.plpython.row_answers). The answers must be those of a verification
on every row: tokens switched within a statement, revocations committed
between two queries of one function, changes made by the transaction itself,
and forged arguments to the fast path."""

import threading
import time

import psycopg
import pytest
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.capability import mint_capability
from hessra_pg.tokens.mint import mint_authorization
from tests.integration.conftest import scalar

ROWS = 1000
POLICIES = {
    "by_authorized": "hessra_authz.authorized('orders', 'read')",
    "by_verify": "hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(), "
                 "'orders', 'read')",
}


@pytest.fixture
def tables(admin, app_role):
    for table, using in POLICIES.items():
        admin.execute(sql.SQL("""
            CREATE TABLE public.{t} (id int PRIMARY KEY);
            INSERT INTO public.{t} SELECT generate_series(1, {rows});
            ALTER TABLE public.{t} ENABLE ROW LEVEL SECURITY;
            ALTER TABLE public.{t} FORCE ROW LEVEL SECURITY;
            CREATE POLICY per_row ON public.{t} FOR SELECT USING ({using});
            GRANT SELECT ON public.{t} TO {role};
        """).format(t=sql.Identifier(table), rows=sql.Literal(ROWS), using=sql.SQL(using),
                    role=sql.Identifier(app_role)))
    return tuple(POLICIES)


def use(conn, token, subject="alice"):
    conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', %s, false)",
                 (token, subject))


def trusted_calls(conn) -> int:
    """Calls that went the whole way (SECURITY DEFINER wrapper, verifier)."""
    return scalar(conn, "SELECT hessra_authz.cache_stats()")["row_answers"]["trusted_calls"]


def test_a_per_row_policy_verifies_once_per_scan(hessra_db, root, tables, app_role):
    """Every row gets the verifier's answer; a scan goes the whole way at
    most once (its first row; none when this snapshot's answer is known):
    the other rows come from the fast path."""
    good = mint_authorization(root, "alice", "orders", "read")
    other = mint_authorization(root, "alice", "invoices", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        first = trusted_calls(app)
        for table in tables:
            for token, subject, expected in ((good, "alice", ROWS), (other, "alice", 0), (good, "bob", 0),
                                             (None, None, 0), ("not a token", "alice", 0)):
                use(app, token, subject)
                before = trusted_calls(app)
                assert scalar(app, f"SELECT count(*) FROM public.{table}") == expected, (table, subject, expected)
                assert trusted_calls(app) - before <= 1, (table, subject, expected)
            use(app, good)
            before = trusted_calls(app)
            assert scalar(app, f"SELECT count(*) FROM public.{table} AS a JOIN public.{table} AS b USING (id)") \
                == ROWS
            assert trusted_calls(app) - before <= 1  # 2,000 per-row calls
        assert trusted_calls(app) - first >= 5  # the way in is the trusted call
        plan = "\n".join(row[0] for row in app.execute(f"EXPLAIN SELECT count(*) FROM public.{tables[0]}"))
        assert "_authorized_fast" in plan and "_authorized_slow" in plan, plan  # inlined


def test_a_capability_token_through_a_per_row_policy(hessra_db, root, tables, app_role):
    capability = mint_capability(root, "alice", "orders", "read", valid_for=600)
    with hessra_db.connect(app_role, autocommit=True) as app:
        use(app, capability, None)
        assert scalar(app, "SELECT count(*) FROM public.by_authorized") == ROWS
        use(app, mint_capability(root, "alice", "invoices", "read", valid_for=600), None)
        assert scalar(app, "SELECT count(*) FROM public.by_authorized") == 0


def test_tokens_switched_within_one_statement(hessra_db, admin, root, tables, app_role):
    """One statement (one statement start, one snapshot) that changes the
    token between its queries: each query sees its own token's answer,
    denials included."""
    good = mint_authorization(root, "alice", "orders", "read")
    other = mint_authorization(root, "alice", "invoices", "read")
    admin.execute("""
        CREATE FUNCTION public.counts(tokens text[], tbl regclass) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            result text[] := '{}';
            n bigint;
            token text;
        BEGIN
            FOREACH token IN ARRAY tokens LOOP
                PERFORM set_config('hessra.token', coalesce(token, ''), true);
                EXECUTE format('SELECT count(*) FROM %s', tbl) INTO n;
                result := result || n::text;
            END LOOP;
            RETURN array_to_string(result, ',');
        END $$""")
    admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.counts(text[], regclass) TO {}").format(
        sql.Identifier(app_role)))
    sequence = [good, other, None, good, "garbage", other, good]
    with hessra_db.connect(app_role, autocommit=True) as app:
        use(app, None)
        for table in tables:
            assert scalar(app, "SELECT public.counts(%s, %s)", (sequence, f"public.{table}")) == \
                ",".join(str(ROWS if token is good else 0) for token in sequence)


def test_a_revocation_between_two_queries_of_one_function(hessra_db, admin, root, tables, app_role):
    """Both queries share the statement's start; the second one's snapshot
    sees the revocation committed meanwhile by another backend, and so
    does its per-row policy."""
    admin.execute("""
        CREATE FUNCTION public.before_after(tbl regclass) RETURNS text LANGUAGE plpgsql AS $$
        DECLARE
            before bigint;
            after bigint;
        BEGIN
            EXECUTE format('SELECT count(*) FROM %s', tbl) INTO before;
            PERFORM pg_sleep(1.5);
            EXECUTE format('SELECT count(*) FROM %s', tbl) INTO after;
            RETURN before::text || '/' || after::text;
        END $$""")
    admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.before_after(regclass) TO {}").format(
        sql.Identifier(app_role)))
    for table in tables:
        fresh = mint_authorization(root, "alice", "orders", "read")
        with hessra_db.connect(app_role, autocommit=True) as app, hessra_db.connect(autocommit=True) as other:
            use(app, fresh)
            assert scalar(app, f"SELECT count(*) FROM public.{table}") == ROWS
            revoker = threading.Timer(0.5, lambda t=fresh: other.execute("SELECT hessra_authz.revoke_token(%s)", (t,)))
            revoker.start()
            try:
                assert scalar(app, "SELECT public.before_after(%s)", (f"public.{table}",)) == f"{ROWS}/0"
            finally:
                revoker.join()
            assert scalar(app, f"SELECT count(*) FROM public.{table}") == 0


def test_the_changing_transaction_sees_its_change_and_its_rollback(hessra_db, admin, root, tables, app_role):
    """A transaction that changes the configuration sees its own change at
    once (every row of a scan), and after its rollback the configuration
    without it. (An ordinary role in hessra_admin: superusers bypass RLS.)"""
    token = mint_authorization(root, "alice", "orders", "read")
    admin.execute(sql.SQL("GRANT hessra_admin TO {}").format(sql.Identifier(app_role)))
    try:
        with hessra_db.connect(app_role, autocommit=False) as changer:
            use(changer, token)
            for table in tables:
                assert scalar(changer, f"SELECT count(*) FROM public.{table}") == ROWS
            changer.commit()
            changer.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
            before = trusted_calls(changer)
            for table in tables:
                assert scalar(changer, f"SELECT count(*) FROM public.{table}") == 0
            assert trusted_calls(changer) - before == 2 * ROWS  # nothing kept while it changes
            changer.rollback()
            for table in tables:
                assert scalar(changer, f"SELECT count(*) FROM public.{table}") == ROWS
            changer.execute("SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
            for table in tables:
                assert scalar(changer, f"SELECT count(*) FROM public.{table}") == ROWS
            changer.rollback()
    finally:
        admin.execute(sql.SQL("REVOKE hessra_admin FROM {}").format(sql.Identifier(app_role)))


def test_a_token_expiring_during_a_per_row_scan_is_denied_from_then_on(hessra_db, root, tables, app_role):
    from hessra_pg.tokens.mint import TokenTime

    short = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=2))
    with hessra_db.connect(app_role, autocommit=True) as app:
        use(app, short)
        # The table, a sleep past the token's expiry, the table again: one statement.
        row = app.execute("""
            SELECT count(*) FILTER (WHERE pass = 1), count(*) FILTER (WHERE pass = 2)
              FROM (SELECT 1 AS pass FROM public.by_authorized
                    UNION ALL SELECT 0 FROM pg_sleep(3.2)
                    UNION ALL SELECT 2 FROM public.by_authorized) AS s""").fetchone()
        assert row == (ROWS, 0)


def test_the_fast_path_answers_only_what_was_recorded(hessra_db, root, tables, app_role):
    """Any role may call the per-row helpers with any arguments: they never
    raise and answer only what a trusted call recorded for that snapshot."""
    good = mint_authorization(root, "alice", "orders", "read")
    fast = "SELECT hessra_authz._authorized_fast(pg_current_snapshot(), %s, %s, %s, %s)"
    with hessra_db.connect(app_role, autocommit=True) as app:
        use(app, good)
        assert scalar(app, fast, (good, "alice", "orders", "read")) is None  # nothing recorded yet
        assert scalar(app, "SELECT count(*) FROM public.by_authorized") == ROWS
        for args in ((good, "alice", "orders", "write"), (good, "bob", "orders", "read"),
                     (good + "x", "alice", "orders", "read"), (None, None, None, None)):
            assert scalar(app, fast, args) is None
        forged = "SELECT hessra_authz._authorized_fast(%s::pg_snapshot, %s, 'alice', 'orders', 'read')"
        for snapshot in ("1:1:", None, "10:20:11,12,13"):
            assert scalar(app, forged, (snapshot, good)) is None
        assert scalar(app, "SELECT hessra_authz._verify_token_fast(NULL, NULL, NULL, NULL, NULL, NULL, NULL)") is None
        # The trusted part stays out of reach.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT hessra_authz._authorized('0 1:1:', NULL, %s, 'alice', 'orders', 'read')", (good,))


def test_many_rows_many_tokens_stay_within_the_memory_bound(hessra_db, root, app_role, admin):
    """Per-row tokens from a column: every distinct token recorded once,
    the recorded answers bounded in bytes."""
    tokens = [mint_authorization(root, f"u{i}", "orders", "read") for i in range(300)]
    admin.execute("CREATE TABLE public.grants (n int, subject text, token text)")
    with admin.cursor() as cur:
        cur.executemany("INSERT INTO public.grants VALUES (%s, %s, %s)",
                        [(i, f"u{i}", t) for i, t in enumerate(tokens)])
    admin.execute(sql.SQL("GRANT SELECT ON public.grants TO {}").format(sql.Identifier(app_role)))
    with hessra_db.connect(app_role, autocommit=True) as app:
        query = ("SELECT count(*) FROM public.grants AS g, generate_series(1, 20) AS r "
                 "WHERE hessra_authz.verify_token(g.token, g.subject, 'orders', 'read')")
        started = time.monotonic()
        assert scalar(app, query) == 300 * 20
        assert scalar(app, "SELECT count(*) FROM public.grants AS g "
                           "WHERE hessra_authz.verify_token(g.token, 'someone else', 'orders', 'read')") == 0
        stats = scalar(app, "SELECT hessra_authz.cache_stats()")["row_answers"]
        assert 0 < stats["bytes"] <= stats["limit"]
        assert time.monotonic() - started < 60
