"""Security model (design §4): an ordinary role is filtered by RLS, can't
touch keys or chains, can't shadow hessra_authz, can't run admin functions."""

import re

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from tests.integration.conftest import scalar

SET_CONTEXT = "SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', %s, true)"


@pytest.fixture
def orders(admin, app_role):
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY, item text);
        INSERT INTO public.orders SELECT g, 'item ' || g FROM generate_series(1, 5) g;
        ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
        CREATE POLICY orders_read ON public.orders FOR SELECT
            USING ((SELECT hessra_authz.authorized('orders', 'read')));
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    return "public.orders"


def visible(conn, token, subject) -> int:
    with conn.transaction():
        conn.execute(SET_CONTEXT, (token, subject))
        return scalar(conn, "SELECT count(*) FROM public.orders")


def test_rls_filters_rows_for_an_ordinary_role(hessra_db, root, orders, app_role):
    good = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user") is False
        assert visible(app, good, "alice") == 5
        assert visible(app, None, None) == 0
        assert visible(app, "", "") == 0
        assert visible(app, good, "bob") == 0
        assert visible(app, mint_authorization(root, "alice", "orders", "write"), "alice") == 0
        assert visible(app, mint_authorization(root, "alice", "orders", "read",
                                               time_config=TokenTime(start=0, duration=60)), "alice") == 0
        # set_config(..., true) is transaction-local: nothing leaks to the next transaction.
        assert scalar(app, "SELECT count(*) FROM public.orders") == 0


def test_ordinary_role_cannot_read_or_write_configuration(hessra_db, root, app_role):
    with hessra_db.connect(app_role, autocommit=True) as app:
        for statement in (
            "SELECT * FROM hessra_authz.keys",
            "SELECT * FROM hessra_authz.service_chains",
            "SELECT * FROM hessra_authz.config_state",
            "INSERT INTO hessra_authz.keys (kid, public_key) VALUES (5, 'ed25519/" + "00" * 32 + "')",
            "UPDATE hessra_authz.keys SET not_after = NULL",
            "DELETE FROM hessra_authz.keys",
            "UPDATE hessra_authz.config_state SET generation = 0",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
        attacker_key = str(generate_keypair().public_key)
        for statement, params in (
            ("SELECT hessra_authz.add_key(%s)", (attacker_key,)),
            ("SELECT hessra_authz.add_key(%s, 1000, '-infinity'::timestamptz)", (attacker_key,)),
            ("SELECT hessra_authz.retire_key(100)", ()),
            ("SELECT hessra_authz.set_service_chain('x', %s)", (Jsonb([]),)),
            ("SELECT hessra_authz.drop_service_chain('x')", ()),
            ("SELECT hessra_authz._verify_token('', NULL, 't', 's', 'r', 'o', NULL, NULL)", ()),
            ("SELECT hessra_authz._config_changed('1')", ()),
            ("SELECT hessra_authz._load_config('1/1', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 1, '',"
             " 'forged', false, 'per_row', 'off', '{}', '{}')", ()),
            ("SELECT hessra_authz.set_anchor('forged')", ()),
            ("SELECT hessra_authz.set_capability_options(false, 'per_row')", ()),
            ("SELECT * FROM hessra_authz.capability_settings", ()),
            ("INSERT INTO hessra_authz.capability_settings (anchor) VALUES ('forged')", ()),
            ("SELECT hessra_authz._verify_capability('', NULL, 't', 'r', 'o', '{}', NULL)", ()),
            ("SELECT hessra_authz._explain_capability('', NULL, true, 't', 'r', 'o', '{}', NULL)", ()),
            ("SELECT hessra_authz._authorized('', NULL, 't', 's', 'r', 'o')", ()),
            ("SELECT hessra_authz._verify_token_pending('0 forged', NULL)", ()),
            ("SELECT hessra_authz._capability_rows('', NULL, 't', 's', 'r', 'o', '{l}', '{}', 'l', 'values')", ()),
            ("SELECT hessra_authz._capability_rows_slow('r', 'o', '{l}', '{}', 'l', 'values')", ()),
            ("SELECT hessra_authz._designation_row_slow('r', 'o', '{}', '{}')", ()),
            ("SELECT hessra_authz._designation_set('', 't', 's', 'r', 'o', '{l}', '{}', 'l')", ()),
            ("SELECT hessra_authz._designation_flag('', 't', 's', 'r', 'o', '{l}', '{}', 'l', 'floor')", ()),
            ("SELECT hessra_authz._designation_row_check('', 't', 's', 'r', 'o', '{}', '{}')", ()),
            ("SELECT hessra_authz._designation_row('', NULL, 't', 's', 'r', 'o', '{}', '{}')", ()),
            ("SELECT hessra_authz._context()", ()),
            ("SELECT hessra_authz._explain('', NULL, true, 't', 's', 'r', 'o', NULL, NULL)", ()),
            ("SELECT hessra_authz._cache_stats(true)", ()),
            ("SELECT hessra_authz.grant_admin(current_user)", ()),
            ("SELECT hessra_authz.revoke_admin('hessra_admin')", ()),
            ("SELECT hessra_authz._sync('')", ()),
            ("SELECT hessra_authz._refresh_config_state()", ()),
            ("SELECT hessra_authz._identity_scope('0 forged', NULL, 't')", ()),
            ("SELECT hessra_authz._authorized_resources('0 forged', NULL, 't', 's', 'o')", ()),
            ("SELECT hessra_authz._verify_identity('0 forged', NULL, 't', 'i', NULL, false)", ()),
            ("SELECT hessra_authz._canonical_key(%s)", (attacker_key,)),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement, params)
    with hessra_db.connect(autocommit=True) as admin:
        assert scalar(admin, "SELECT count(*) FROM hessra_authz.keys") == 1


def test_ordinary_role_cannot_shadow_functions(hessra_db, root, orders, app_role):
    good = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE FUNCTION hessra_authz.authorized(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE FUNCTION hessra_authz.current_token() RETURNS text LANGUAGE sql AS 'SELECT NULL'")
        # Temporary objects that would shadow unqualified names inside the functions.
        app.execute("CREATE FUNCTION pg_temp.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$")
        app.execute("CREATE TEMP TABLE keys (kid int, public_key text)")
        app.execute("CREATE FUNCTION pg_temp.verify_token(text, text, text, text, text, text) RETURNS boolean "
                    "LANGUAGE sql AS 'SELECT true'")
        app.execute("SET search_path = pg_temp, public")
        assert visible(app, None, None) == 0
        assert visible(app, mint_authorization(generate_keypair(), "alice", "orders", "read"), "alice") == 0
        assert visible(app, good, "alice") == 5


def test_hessra_admin_members_manage_keys(hessra_db, admin, app_role):
    admin.execute(sql.SQL("GRANT hessra_admin TO {}").format(sql.Identifier(app_role)))
    try:
        with hessra_db.connect(app_role, autocommit=True) as manager:
            kid = scalar(manager, "SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
            manager.execute("SELECT hessra_authz.retire_key(%s)", (kid,))
            manager.execute("SELECT hessra_authz.set_service_chain('c', %s)", (Jsonb([]),))
            assert scalar(manager, "SELECT count(*) FROM hessra_authz.keys") == 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                manager.execute("DELETE FROM hessra_authz.keys")
    finally:
        admin.execute(sql.SQL("REVOKE hessra_admin FROM {}").format(sql.Identifier(app_role)))


def test_function_attributes(admin):
    rows = admin.execute("""
        SELECT p.proname, p.provolatile, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), ''),
               l.lanname, p.prosrc, p.prosqlbody IS NOT NULL
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
         WHERE n.nspname = 'hessra_authz'""").fetchall()
    by_name = {}
    for name, volatile, secdef, config, language, source, standard_body in rows:
        by_name.setdefault(name, []).append((volatile, secdef, config, language, source, standard_body))
    for name in ("verify_token", "verify_capability", "verify_service_chain", "explain", "authorized",
                 "current_token", "current_subject", "verify_identity", "verify_bearer", "token_identity",
                 "current_identity"):
        for volatile, secdef, config, language, source, standard_body in by_name[name]:
            assert volatile == "s", name  # STABLE, never IMMUTABLE
            # Pinned, or a SQL-standard body (names bound at CREATE time, inlined; 0.5.0).
            assert "search_path=pg_catalog, pg_temp" in config or (standard_body and not secdef), name
    for name in ("verify_capability", "verify_service_chain", "explain", "verify_identity",
                 "verify_bearer", "token_identity", "add_key", "retire_key", "set_service_chain",
                 # The whole way of the inlined verify_token() and authorized() (0.5.0).
                 "_verify_token_slow", "_authorized_slow"):
        assert all(entry[1] for entry in by_name[name]), name
    # verify_token() and authorized() read no table themselves: a recorded
    # answer (any role may ask, it can only miss) or the SECURITY DEFINER way.
    for name, calls in (("verify_token", ("_verify_token_fast", "_verify_token_slow")),
                        ("authorized", ("_authorized_fast", "_authorized_slow"))):
        body = admin.execute("SELECT pg_get_functiondef(p.oid) FROM pg_proc AS p "
                             "WHERE p.oid = %s::regproc", (f"hessra_authz.{name}",)).fetchone()[0]
        assert set(re.findall(r"hessra_authz\.(\w+)\(", body)) == {name, *calls}, body
    for name, entries in by_name.items():
        entries = [entry[2:] for entry in entries]
        for config, language, source, standard_body in entries:
            if language == "plpython3u":
                # PL/Python bodies only call into hessra_pg and run no SQL: no
                # name to resolve, so no pin (it costs a GUC save/restore per call).
                assert not re.search(r"plpy\.(execute|prepare|cursor)", source), name
            elif standard_body:
                # A SQL-standard body binds its names at CREATE time; unpinned,
                # it is inlined into its callers.
                assert config == "", name
            else:
                assert "search_path=pg_catalog, pg_temp" in config, name


def test_policies_work_where_the_planner_would_go_parallel(hessra_db, root, orders, app_role, admin):
    """PL/Python's SPI uses subtransactions, which parallel mode forbids; the
    verifier never runs SQL from PL/Python (plpgsql hands it the
    configuration), so a parallel plan works instead of failing with 'cannot
    start subtransactions during a parallel operation'."""
    admin.execute("INSERT INTO public.orders SELECT g, 'bulk' FROM generate_series(6, 50000) g")
    admin.execute("ANALYZE public.orders")
    good = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        app.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0")
        assert visible(app, good, "alice") == 50000
        assert visible(app, None, None) == 0
        plan = "\n".join(r[0] for r in app.execute("EXPLAIN SELECT count(*) FROM public.orders"))
        assert "Gather" in plan, plan
        for query in ("SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read') FROM public.orders LIMIT 1",
                      "SELECT count(*) FROM public.orders WHERE hessra_authz.verify_capability(%s, 'orders', 'read')"):
            with app.transaction():
                app.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', 'alice', true)",
                            (good,))
                app.execute(query, (good,)).fetchall()
