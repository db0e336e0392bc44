"""A database created at 0.1.0 keeps working with the newer server-side
package (hessra_pg.plpython.abi_0_1 keeps 0.1.0's entry points), and `ALTER EXTENSION
hessra_authz UPDATE` brings it to the newest version with its keys, chains,
revocations and policies intact, in place, for connections already open."""

import json

import psycopg
import pytest

import hessra_pg
from hessra_pg.tokens.identity import mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, attest_service, mint_authorization
from hessra_pg.dev.testing import scratch_database
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"
CHAIN = "SELECT hessra_authz.verify_service_chain(%s, 'alice', 'orders', 'read', 'order_flow', 'checkout')"
VISIBLE = "SELECT count(*) FROM orders"


def probe(conn, good, bad, revoked, chained, identity):
    """Every answer that must survive the update."""
    conn.execute("SELECT set_config('hessra.token', %s, false), set_config('hessra.subject', 'alice', false)",
                 (good,))
    visible = scalar(conn, VISIBLE)
    conn.execute("SELECT set_config('hessra.token', %s, false)", (identity,))
    return {
        "good": scalar(conn, VERIFY, (good,)),
        "bad": scalar(conn, VERIFY, (bad,)),
        "revoked": scalar(conn, VERIFY, (revoked,)),
        "chained": scalar(conn, CHAIN, (chained,)),
        "explain": scalar(conn, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'", (revoked,)),
        "identity": scalar(conn, "SELECT hessra_authz.current_identity()"),
        "resources": scalar(conn, "SELECT hessra_authz.token_resources(%s, 'alice', 'read')", (good,)),
        "visible": visible,
    }


def test_update_from_0_1_0_keeps_data_and_answers(bare_db, app_role):
    root, node = generate_keypair(), generate_keypair()
    chain = (ChainNode("gateway", str(node.public_key)), ChainNode("checkout", str(generate_keypair().public_key)))
    good = mint_authorization(root, "alice", "orders", "read")
    bad = mint_authorization(generate_keypair(), "alice", "orders", "read")
    revoked = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=900))
    chained = attest_service(mint_authorization(root, "alice", "orders", "read", service_chain=chain),
                             str(root.public_key), "orders", node)
    identity = mint_identity(root, "alice")
    with psycopg.connect(bare_db.dsn, autocommit=True) as admin:
        try:
            check_update(admin, bare_db, app_role, good, bad, revoked, chained, identity, root, chain)
        finally:
            admin.execute(f"DROP OWNED BY {app_role}")  # its grant here, before the role is dropped


def check_update(admin, bare_db, app_role, good, bad, revoked, chained, identity, root, chain):
    admin.execute("CREATE EXTENSION hessra_authz VERSION '0.1.0' CASCADE")
    admin.execute("SELECT hessra_authz.add_key(%s, 5)", (str(root.public_key),))
    admin.execute("SELECT hessra_authz.set_service_chain('order_flow', %s::jsonb)",
                  (json.dumps([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    admin.execute("SELECT hessra_authz.revoke_token(%s)", (revoked,))
    admin.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    admin.execute("INSERT INTO orders SELECT generate_series(1, 3)")
    admin.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
    admin.execute("CREATE POLICY read_orders ON orders FOR SELECT USING ((SELECT hessra_authz.authorized('orders', 'read')))")
    admin.execute(f"GRANT SELECT ON orders TO {app_role}")
    expected = {"good": True, "bad": False, "revoked": False, "chained": True, "explain": "revoked",
                "identity": "alice", "resources": ["orders"], "visible": 3}
    with psycopg.connect(bare_db.server.dsn(bare_db.name, app_role), autocommit=True) as app:
        assert probe(app, good, bad, revoked, chained, identity) == expected  # 0.1.0 bodies, new package
        admin.execute("ALTER EXTENSION hessra_authz UPDATE")
        assert scalar(admin, "SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'") == \
            hessra_pg.__version__
        assert probe(app, good, bad, revoked, chained, identity) == expected  # same connection, updated
        assert scalar(app, "SELECT hessra_authz.cache_stats()")["configuration_version"] is None  # admins only
        assert scalar(admin, VERIFY, (good,)) is True
        assert scalar(admin, "SELECT hessra_authz.cache_stats()")["configuration_version"]
    with psycopg.connect(bare_db.server.dsn(bare_db.name, app_role), autocommit=True) as fresh:
        assert probe(fresh, good, bad, revoked, chained, identity) == expected
        for internal in ("SELECT hessra_authz._verify_token('', NULL, 't', 's', 'r', 'o', NULL, NULL)",
                         "SELECT hessra_authz._config_changed('1')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                fresh.execute(internal)
    assert scalar(admin, "SELECT count(*) FROM pg_proc WHERE proname = '_decision' "
                         "AND pronamespace = 'hessra_authz'::regnamespace") == 0
    # A change after the update is seen at once (the fast path is on now).
    with psycopg.connect(bare_db.server.dsn(bare_db.name, app_role), autocommit=True) as app:
        assert scalar(app, VERIFY, (good,)) is True
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
        admin.execute("SELECT hessra_authz.retire_key(5)")
        assert scalar(app, VERIFY, (good,)) is False


FUNCTIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prosecdef, p.provolatile,
       p.proparallel, coalesce(array_to_string(p.proconfig, ','), ''), md5(p.prosrc),
       coalesce(obj_description(p.oid, 'pg_proc'), ''), coalesce(array_to_string(p.proacl, ','), '')
  FROM pg_proc AS p WHERE p.pronamespace = 'hessra_authz'::regnamespace ORDER BY 1"""


COLUMNS = """
SELECT c.relname, a.attname, a.atttypid::regtype::text FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'hessra_authz'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY 1, 2"""

TRIGGERS = """
SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'hessra_authz'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT '', e.evtname, e.evtenabled FROM pg_event_trigger AS e ORDER BY 1, 2"""


@pytest.mark.parametrize("older", ["0.4.0", "0.3.0", "0.2.0", "0.1.0"])
def test_downgrade_and_upgrade_scripts_reproduce_each_version(hessra_postgres, older):
    """Every function (body, security, volatility, settings, comment, grants)
    and trigger after a downgrade to an older version is what a fresh install
    of that version has, and after the update back what a fresh default
    install has."""
    with scratch_database(hessra_postgres, "hessra_v") as old, scratch_database(hessra_postgres, "hessra_v") as new:
        with psycopg.connect(old.dsn, autocommit=True) as fresh_old, \
                psycopg.connect(new.dsn, autocommit=True) as moving:
            fresh_old.execute(f"CREATE EXTENSION hessra_authz VERSION '{older}' CASCADE")
            moving.execute("CREATE EXTENSION hessra_authz CASCADE")
            newest = moving.execute(FUNCTIONS).fetchall(), moving.execute(TRIGGERS).fetchall()
            moving.execute(f"ALTER EXTENSION hessra_authz UPDATE TO '{older}'")
            assert moving.execute(FUNCTIONS).fetchall() == fresh_old.execute(FUNCTIONS).fetchall()
            assert moving.execute(TRIGGERS).fetchall() == fresh_old.execute(TRIGGERS).fetchall()
            assert moving.execute(COLUMNS).fetchall() == fresh_old.execute(COLUMNS).fetchall()
            moving.execute("ALTER EXTENSION hessra_authz UPDATE")
            assert (moving.execute(FUNCTIONS).fetchall(), moving.execute(TRIGGERS).fetchall()) == newest
            assert any(row[0] == "cache_stats()" for row in newest[0])
            assert ("", "hessra_authz_config_ddl", "A") in newest[1]
