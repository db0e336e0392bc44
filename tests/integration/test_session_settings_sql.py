"""No setting an application role can change for its own session or role
(`SET`, `ALTER ROLE ... SET`) changes what the verifier sees or decides
(issue 11, hole 1; docs/security.md "Session settings" has the audit table).

0.2.0 handed key windows to Python as float epochs inside jsonb, whose text
follows extra_float_digits: with `SET extra_float_digits = -11` a token of a
retired key verified, and its positive decision reached every other backend
through the shared decision table.
"""

import time

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

#: Each user-settable setting that touches a conversion, a literal, name
#: resolution, planning or the snapshot, with hostile values.
HOSTILE = [
    ("extra_float_digits", "-15"),
    ("extra_float_digits", "-11"),
    ("extra_float_digits", "3"),
    ("DateStyle", "SQL, DMY"),
    ("DateStyle", "German, DMY"),
    ("DateStyle", "Postgres, MDY"),
    ("IntervalStyle", "sql_standard"),
    ("IntervalStyle", "iso_8601"),
    ("TimeZone", "Pacific/Kiritimati"),
    ("TimeZone", "America/Adak"),
    ("TimeZone", "UTC+12"),
    ("timezone_abbreviations", "India"),
    ("lc_monetary", "C"),
    ("lc_numeric", "POSIX"),
    ("lc_time", "C"),
    ("bytea_output", "escape"),
    ("search_path", "pg_temp, public"),
    ("standard_conforming_strings", "off"),
    ("backslash_quote", "on"),
    ("escape_string_warning", "off"),
    ("array_nulls", "off"),
    ("transform_null_equals", "on"),
    ("default_transaction_isolation", "repeatable read"),
    ("default_transaction_isolation", "serializable"),
    ("default_transaction_read_only", "on"),
    ("force_parallel_mode", "on"),
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_indexscan", "off"),
    ("jit_above_cost", "0"),
    ("xmloption", "document"),
    ("client_min_messages", "debug5"),
    ("row_security", "on"),
    ("plpgsql.extra_errors", "all"),
    ("plpgsql.extra_warnings", "all"),
    ("plpgsql.check_asserts", "on"),
    ("plpgsql.print_strict_params", "on"),
    ("client_encoding", "LATIN1"),
    ("work_mem", "64kB"),
]


def _window_key_times():
    # A retirement with a fraction of a second, a few seconds in the past:
    # rounded to 4 significant digits (extra_float_digits = -11) it lies
    # days in the future.
    return time.time() - 3.123457


@pytest.fixture
def scene(admin, app_role):
    """Keys (one active, one retired, one not yet active), a chain, a
    revocation, identity tokens, a policy table; tokens to probe with."""
    root, retired, future = generate_keypair("ed25519"), generate_keypair("ed25519"), generate_keypair("ed25519")
    node = generate_keypair("ed25519")
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(root.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2, now() - interval '1 day')", (str(retired.public_key),))
    admin.execute("SELECT hessra_authz.retire_key(2, to_timestamp(%s))", (_window_key_times(),))
    admin.execute("SELECT hessra_authz.add_key(%s, 3, now() + interval '1 hour' + interval '0.000123 s')",
                  (str(future.public_key),))
    chain = [{"component": "gateway", "public_key": str(node.public_key)}]
    admin.execute("SELECT hessra_authz.set_service_chain('flow', %s)", (Jsonb(chain),))
    revoked = mint_authorization(root, "alice", "orders", "read")
    admin.execute("SELECT hessra_authz.revoke_token(%s)", (revoked,))
    admin.execute("SELECT hessra_authz.revoke_identity('alice:lost')")
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY);
        INSERT INTO public.orders SELECT generate_series(1, 20);
        ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
        CREATE POLICY orders_read ON public.orders FOR SELECT
            USING ((SELECT hessra_authz.authorized('orders', 'read')));
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    chained = mint_authorization(root, "alice", "orders", "read",
                                 service_chain=(ChainNode("gateway", str(node.public_key)),))
    identity = mint_identity(root, "alice")
    return {
        "good": mint_authorization(root, "alice", "orders", "read"),
        "retired": mint_authorization(retired, "alice", "orders", "read"),
        "future": mint_authorization(future, "alice", "orders", "read"),
        "revoked": revoked,
        "chained": attest_service(chained, str(root.public_key), "orders", node),
        "unattested": chained,
        "identity": identity,
        "delegated": delegate_identity(identity, str(root.public_key), "alice:laptop"),
        "lost": delegate_identity(identity, str(root.public_key), "alice:lost"),
        "_nodes": Jsonb(chain),
    }


def answers(conn, tokens) -> dict:
    """Every public function's answer for every probe token, plus what the
    policy shows."""
    nodes = tokens["_nodes"]
    tokens = {name: token for name, token in tokens.items() if not name.startswith("_")}
    out = {}
    for name, token in tokens.items():
        row = conn.execute("""
            SELECT hessra_authz.verify_token(%(t)s, 'alice', 'orders', 'read'),
                   hessra_authz.verify_capability(%(t)s, 'orders', 'read'),
                   hessra_authz.verify_service_chain(%(t)s, 'alice', 'orders', 'read', 'flow'),
                   hessra_authz.verify_service_chain(%(t)s, 'alice', 'orders', 'read', %(nodes)s),
                   hessra_authz.explain(%(t)s, 'alice', 'orders', 'read'),
                   hessra_authz.token_resources(%(t)s, 'alice', 'read'),
                   hessra_authz.verify_identity(%(t)s, 'alice:laptop'),
                   hessra_authz.verify_bearer(%(t)s),
                   hessra_authz.token_identity(%(t)s)""", {"t": token, "nodes": nodes}).fetchone()
        with conn.transaction():
            conn.execute("SELECT FROM set_config('hessra.token', %s, true) AS t, set_config('hessra.subject', 'alice', true) AS s",
                         (token,))
            context = conn.execute("""
                SELECT hessra_authz.authorized('orders', 'read'), hessra_authz.authorized_resources('read'),
                       hessra_authz.current_identity(), hessra_authz.current_identity_scope(),
                       hessra_authz.current_identity_subtree_start(), hessra_authz.current_identity_subtree_end(),
                       hessra_authz.current_identity_revoked_below(), hessra_authz.current_token() IS NOT NULL,
                       hessra_authz.current_subject(), (SELECT count(*) FROM public.orders)""").fetchone()
        out[name] = (*row, *context)
    return out


def connect_app(hessra_db, app_role) -> psycopg.Connection:
    return hessra_db.connect(app_role, autocommit=True)


def test_no_session_setting_changes_a_decision(hessra_db, scene, app_role, admin):
    with connect_app(hessra_db, app_role) as app:
        baseline = answers(app, scene)
    assert baseline["good"][0] is True and baseline["retired"][0] is False and baseline["future"][0] is False
    assert baseline["revoked"][0] is False and baseline["chained"][2] is True
    assert baseline["delegated"][6] is True and baseline["lost"][8] is None
    assert baseline["chained"][3] is True and baseline["unattested"][3] is False
    for name, value in HOSTILE:
        # A new backend each time: it reads the configuration under the setting.
        with connect_app(hessra_db, app_role) as app:
            app.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            assert answers(app, scene) == baseline, f"{name} = {value}"
    # Nothing a hostile backend did reached the shared decision table.
    with connect_app(hessra_db, app_role) as app:
        assert answers(app, scene) == baseline
    with hessra_db.connect(autocommit=True) as superuser:
        assert scalar(superuser, "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')",
                      (scene["retired"],)) is False


@pytest.mark.parametrize("name, value", [("extra_float_digits", "-11"), ("TimeZone", "Pacific/Kiritimati"),
                                         ("DateStyle", "SQL, DMY"), ("search_path", "pg_temp, public")])
def test_role_defaults_the_app_sets_for_itself_change_nothing(hessra_db, scene, app_role, admin, name, value):
    with connect_app(hessra_db, app_role) as app:
        baseline = answers(app, scene)
        app.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(
            sql.Identifier(app_role), sql.Identifier(name), sql.Literal(value)))
    try:
        with connect_app(hessra_db, app_role) as app:
            assert scalar(app, sql.SQL("SELECT current_setting({})").format(sql.Literal(name))) != ""
            assert answers(app, scene) == baseline
    finally:
        admin.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(app_role)))


def test_retired_key_under_extra_float_digits(hessra_db, scene, app_role):
    """The reviewed attack, step by step: it denies, and explain tells the
    app role nothing about keys."""
    with connect_app(hessra_db, app_role) as app:
        app.execute("SET extra_float_digits = -11")
        assert scalar(app, "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')",
                      (scene["retired"],)) is False
        explained = scalar(app, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')", (scene["retired"],))
        assert (explained["reason"], explained["kid"]) == ("bad_signature", None)
    with connect_app(hessra_db, app_role) as other:
        assert scalar(other, "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')",
                      (scene["retired"],)) is False
        assert scalar(other, "SELECT hessra_authz.cache_stats()")["shared_decisions"]["hits"] == 0
