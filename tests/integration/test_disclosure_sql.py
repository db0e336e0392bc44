"""What an application role can learn, and who administers keys (issue 11:
docs/security.md "What an application role can learn" and "Administrators")."""

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.dev.testing import scratch_database
from tests.integration.conftest import scalar

EXPLAIN = "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')"


def test_explain_tells_an_app_role_the_reason_only(hessra_db, admin, root, app_role):
    unknown = mint_authorization(generate_keypair(), "alice", "orders", "read", root_key_id=77)
    retired_key = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 5, now() - interval '1 day', now() - interval '1 hour')",
                  (str(retired_key.public_key),))
    inactive = mint_authorization(retired_key, "alice", "orders", "read", root_key_id=5)
    good = mint_authorization(root, "alice", "orders", "read")
    assert scalar(admin, EXPLAIN, (unknown,))["reason"] == "unknown_key"
    assert scalar(admin, EXPLAIN, (inactive,))["reason"] == "key_inactive"
    assert scalar(admin, EXPLAIN, (good,))["kid"] == 100
    with hessra_db.connect(app_role, autocommit=True) as app:
        for token in (unknown, inactive):
            explained = scalar(app, EXPLAIN, (token,))
            assert (explained["valid"], explained["reason"], explained["kid"]) == (False, "bad_signature", None)
            assert "77" not in explained["detail"] and "5" not in explained["detail"]
        explained = scalar(app, EXPLAIN, (good,))
        assert (explained["valid"], explained["reason"], explained["kid"]) == (True, "ok", None)
        assert explained["expires_at"] and explained["revocation_ids"]  # the token's own data
        assert scalar(app, "SELECT hessra_authz.cache_stats()")["configuration_version"] is None


def test_chain_components_are_in_the_detail_for_admins_only(hessra_db, admin, root, app_role):
    nodes = [{"component": name, "public_key": str(generate_keypair().public_key)}
             for name in ("secret_gateway", "secret_ledger")]
    admin.execute("SELECT hessra_authz.set_service_chain('flow', %s)", (Jsonb(nodes),))
    token = mint_authorization(root, "alice", "orders", "read")
    query = "SELECT hessra_authz.verify_service_chain(%s, 'alice', 'orders', 'read', 'flow', 'nope')"
    with hessra_db.connect(app_role, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
            app.execute(query, (token,))
        assert "secret" not in str(raised.value) and not raised.value.diag.message_detail
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        admin.execute(query, (token,))
    assert raised.value.diag.message_detail == "components: secret_gateway, secret_ledger"


def test_admin_rights_per_database(hessra_postgres, hessra_db, admin):
    """hessra_admin is cluster-wide; grant_admin/revoke_admin make key
    control a per-database right."""
    suffix = uuid.uuid4().hex[:8]
    cluster_admin, shop_admin = f"ops_{suffix}", f"shop_{suffix}"
    key = str(generate_keypair().public_key)
    with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as server:
        server.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE hessra_admin").format(sql.Identifier(cluster_admin)))
        server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(shop_admin)))
    try:
        with scratch_database(hessra_postgres, "hessra_other") as other:
            with other.connect(autocommit=True) as conn:
                conn.execute("CREATE EXTENSION hessra_authz CASCADE")
            admin.execute("SELECT hessra_authz.revoke_admin('hessra_admin')")
            admin.execute("SELECT hessra_authz.grant_admin(%s)", (shop_admin,))
            with hessra_db.connect(cluster_admin, autocommit=True) as ops:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    ops.execute("SELECT hessra_authz.add_key(%s)", (key,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    ops.execute("SELECT * FROM hessra_authz.keys")
            with other.connect(cluster_admin, autocommit=True) as ops:
                assert scalar(ops, "SELECT hessra_authz.add_key(%s)", (key,)) == 1  # still admin there
            with hessra_db.connect(shop_admin, autocommit=True) as shop:
                assert scalar(shop, "SELECT hessra_authz.add_key(%s)", (key,)) == 1
                shop.execute("SELECT hessra_authz.revoke_identity('mallory')")
                assert scalar(shop, "SELECT count(*) FROM hessra_authz.revocations") == 1
                with pytest.raises(psycopg.errors.InsufficientPrivilege):  # superuser only
                    shop.execute("SELECT hessra_authz.grant_admin(current_user)")
                # An administrator sees the detail of explain.
                assert scalar(shop, EXPLAIN, (mint_authorization(generate_keypair(), "a", "b", "c",
                                                                 root_key_id=9),))["reason"] == "unknown_key"
            with other.connect(shop_admin, autocommit=True) as shop:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    shop.execute("SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
            with pytest.raises(psycopg.errors.UndefinedObject):
                admin.execute("SELECT hessra_authz.grant_admin('no_such_role')")
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}, {}").format(sql.Identifier(cluster_admin), sql.Identifier(shop_admin)))
        with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as server:
            server.execute(sql.SQL("DROP ROLE {}, {}").format(sql.Identifier(cluster_admin), sql.Identifier(shop_admin)))
