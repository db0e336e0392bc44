"""The policy_tester pytest fixture and the hessra_test SQL helpers (what a
pgTAP file would call), against the multi-tenant schema of the runner tests."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from hessra_pg.dev.sqlhelpers import drop_test_helpers, helpers_sql, install_test_helpers
from hessra_pg.errors import SqlHelpersError, TokenSpecError
from hessra_pg.policytest.tester import PolicyTester, policy_tester_for
from tests.integration.policytest_schema import create_shop, data_snapshot, keys_snapshot


@pytest.fixture
def shop(admin: psycopg.Connection, app_role: str) -> str:
    create_shop(admin, app_role)
    return app_role


# -- the pytest fixture -------------------------------------------------------------------


def test_fixture_runs_as_a_role_with_minted_tokens(policy_tester: PolicyTester, shop, admin):
    data = data_snapshot(admin)
    acme = policy_tester.token("capability", resource="orders", operation="read", designations={"tenant_id": "acme"})
    assert acme.token not in repr(acme)
    assert policy_tester.rows(shop, acme, "SELECT id FROM shop.orders ORDER BY id") == [(1,), (2,)]
    with policy_tester.as_role(shop, acme) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (shop,)
        assert conn.execute("SELECT count(*) FROM shop.orders WHERE tenant_id = 'globex'").fetchone() == (0,)
    # Outside: the superuser again, no token.
    assert policy_tester.conn.execute("SELECT current_user, current_setting('hessra.token', true)").fetchone() \
        in (("postgres", ""), ("postgres", None))

    writer = policy_tester.token("capability", resource="orders", operation="write", designations={"tenant_id": "acme"})
    with policy_tester.as_role(shop, writer) as conn:
        conn.execute("INSERT INTO shop.orders VALUES (50, 'acme', 'glue')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            with conn.transaction():
                conn.execute("INSERT INTO shop.orders VALUES (51, 'globex', 'glue')")
    assert data_snapshot(admin) == data  # rolled back

    alice = policy_tester.token(subject="alice", resource="invoices/2", operation="read")
    assert policy_tester.rows(shop, alice, "SELECT id FROM shop.invoices") == [(2,)]
    assert policy_tester.rows(shop, alice, "SELECT id FROM shop.invoices", subject="mallory") == []
    expired = policy_tester.token(subject="alice", resource="invoices/2", operation="read", expired=True)
    assert policy_tester.rows(shop, expired, "SELECT id FROM shop.invoices") == []
    forged = policy_tester.token(subject="alice", resource="invoices/2", operation="read", key="unregistered")
    assert policy_tester.rows(shop, forged, "SELECT id FROM shop.invoices") == []
    identity = policy_tester.token("identity", subject="urn:hessra:bob")
    assert policy_tester.rows(shop, identity, "SELECT body FROM shop.documents") == [("bob 1",)]
    assert policy_tester.rows(shop, None, "SELECT count(*) FROM shop.orders") == [(0,)]


def test_fixture_tokens_work_on_the_applications_own_connections(policy_tester: PolicyTester, shop, hessra_db):
    token = policy_tester.token(subject="alice", resource="announcements", operation="read")
    with hessra_db.connect(shop) as conn:
        conn.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', 'alice', true)",
                     (token.token,))
        assert conn.execute("SELECT count(*) FROM shop.announcements").fetchone() == (2,)


def test_fixture_key_is_removed_and_bad_descriptions_refused(hessra_db, admin, shop):
    before = keys_snapshot(admin)
    with policy_tester_for(hessra_db.dsn) as tester:
        assert [row[0] for row in keys_snapshot(admin)] == [row[0] for row in before] + [tester.kid]
        with pytest.raises(TokenSpecError, match="resource: required for a capability token"):
            tester.token("capability", operation="read")
        with pytest.raises(TokenSpecError, match="designations: only capability tokens carry it"):
            tester.token(subject="a", resource="r", operation="o", designations={"tenant_id": "acme"})
        with pytest.raises(TokenSpecError, match="kind: must be one of"):
            tester.token("bearer", subject="a")
    assert keys_snapshot(admin) == before


# -- the SQL helpers -----------------------------------------------------------------------

# What a pgTAP file does, with plain assertions: mint, act, check, clear; all
# inside one transaction that is rolled back.
SQL_CHECKS = """
BEGIN;
SELECT hessra_test.authenticate_as(
    hessra_test.capability_token('orders', 'read', '{{"tenant_id": "acme"}}'), NULL, {role});
DO $$ BEGIN
    ASSERT current_user = {role}, 'acting as the app role';
    ASSERT (SELECT array_agg(id ORDER BY id) FROM shop.orders) = ARRAY[1, 2], 'acme sees its orders';
END $$;
SELECT hessra_test.clear_authentication();
DO $$ BEGIN
    ASSERT current_user = session_user, 'back to the session role';
    ASSERT current_setting('hessra.token') = '', 'no token';
END $$;
SELECT hessra_test.authenticate_as(hessra_test.authorization_token('alice', 'invoices/3', 'read'), 'alice', {role});
DO $$ BEGIN
    ASSERT (SELECT array_agg(id) FROM shop.invoices) = ARRAY[3], 'alice sees invoice 3';
END $$;
SELECT hessra_test.clear_authentication();
SELECT hessra_test.authenticate_as(hessra_test.authorization_token('alice', 'invoices/3', 'read'), 'mallory', {role});
DO $$ BEGIN
    ASSERT (SELECT count(*) FROM shop.invoices) = 0, 'not for another subject';
END $$;
SELECT hessra_test.clear_authentication();
SELECT hessra_test.authenticate_as(hessra_test.identity_token('urn:hessra:alice'), NULL, {role});
DO $$ BEGIN
    ASSERT (SELECT count(*) FROM shop.documents) = 2, 'alice owns two documents';
END $$;
SELECT hessra_test.clear_authentication();
SELECT hessra_test.authenticate_as(
    hessra_test.capability_token('orders', 'read', '{{"tenant_id": "acme"}}', expired => true), NULL, {role});
DO $$ BEGIN
    ASSERT (SELECT count(*) FROM shop.orders) = 0, 'an expired token sees nothing';
END $$;
SELECT hessra_test.clear_authentication();
SELECT hessra_test.authenticate_as(
    hessra_test.capability_token('orders', 'write', '{{"tenant_id": "globex"}}'), NULL, {role});
INSERT INTO shop.orders VALUES (60, 'globex', 'written under the helpers');
ROLLBACK;
"""


@pytest.fixture
def helpers(admin: psycopg.Connection, shop) -> int:
    kid = install_test_helpers(admin, test_database=True)
    return kid


def test_sql_helpers_act_as_a_role_with_tokens_minted_in_the_database(admin, shop, helpers):
    data = data_snapshot(admin)
    admin.execute(SQL_CHECKS.format(role=sql.Literal(shop).as_string(admin)).encode())
    assert data_snapshot(admin) == data
    # authenticate_as is transaction-local: after the ROLLBACK nothing is left.
    assert admin.execute("SELECT current_user = session_user, "
                         "coalesce(current_setting('hessra.token', true), '')").fetchone() == (True, "")
    # The server has only hessra_pg's verifier core: minting ran the modules stored at install.
    admin.execute("CREATE FUNCTION pg_temp.minted_by() RETURNS text LANGUAGE plpython3u AS "
                  "$$import sys; return sys.modules['hessra_pg.policytest.tokens'].__file__$$")
    assert admin.execute("SELECT pg_temp.minted_by()").fetchone() == (
        "hessra_test.token_code:hessra_pg.policytest.tokens",)
    # A token minted in SQL verifies like any other, under the test key's kid.
    token = admin.execute("SELECT hessra_test.capability_token('orders', 'read', '{\"tenant_id\": \"acme\"}')"
                          ).fetchone()[0]
    assert admin.execute("SELECT hessra_authz.verify_capability(%s, 'orders', 'read', '{\"tenant_id\": \"acme\"}'), "
                         "hessra_authz.verify_capability(%s, 'orders', 'read', '{\"tenant_id\": \"globex\"}')",
                         (token, token)).fetchone() == (True, False)


def test_sql_assertions_fail_when_the_policy_does_not_hold(admin, shop, helpers):
    # The same kind of assertion as above, on a row acme can't see: it must fail.
    with pytest.raises(psycopg.errors.AssertFailure, match="acme sees globex"):
        admin.execute(f"""
BEGIN;
SELECT hessra_test.authenticate_as(
    hessra_test.capability_token('orders', 'read', '{{"tenant_id": "acme"}}'), NULL, {sql.Literal(shop).as_string(admin)});
DO $$ BEGIN ASSERT (SELECT count(*) FROM shop.orders WHERE id = 3) = 1, 'acme sees globex'; END $$;
""".encode())
    admin.execute("ROLLBACK")


def test_sql_helpers_minting_is_for_the_owner_only(hessra_db, admin, shop, helpers):
    with hessra_db.connect(shop, autocommit=True) as app:
        for query in ("SELECT hessra_test.capability_token('orders', 'read')",
                      "SELECT hessra_test.mint('{\"kind\": \"identity\", \"subject\": \"x\"}')",
                      "SELECT * FROM hessra_test.signing_key", "SELECT * FROM hessra_test.token_code"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(query)
        # authenticate_as grants nothing SET ROLE would not: the app role can't become the superuser.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied to set role"):
            with app.transaction():
                app.execute("SELECT hessra_test.authenticate_as('x', NULL, 'postgres')")
        with app.transaction():
            app.execute("SELECT hessra_test.authenticate_as('x', 'someone')")
            assert app.execute("SELECT current_setting('hessra.subject')").fetchone() == ("someone",)


def test_sql_helpers_refuse_bad_descriptions_cleanly(admin, helpers):
    cases = {
        '{"kind": "capability", "operation": "read"}': "token description: resource: required for a capability token",
        '{"kind": "identity", "subject": "a", "designations": {"t": "x"}}':
            "token description: designations: not a field of an identity token",
        '{"kind": "identity", "subject": "a", "expires_in": "soon"}':
            "token description: expires_in: must be a positive number of seconds",
        '[1]': "a token description is a JSON object",
    }
    for description, message in cases.items():
        with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
            admin.execute("SELECT hessra_test.mint(%s)", (description,))
        assert caught.value.diag.message_primary.startswith(message), caught.value.diag.message_primary
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="subject: required for an authorization token"):
        admin.execute("SELECT hessra_test.authorization_token(NULL, 'r', 'o')")


def test_sql_helpers_need_the_explicit_flag(admin, shop):
    before = keys_snapshot(admin)
    with pytest.raises(SqlHelpersError, match="never in production"):
        install_test_helpers(admin)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="for test databases only"):
        admin.execute(helpers_sql().encode())  # the script run by hand, without the confirmation
    assert admin.execute("SELECT to_regnamespace('hessra_test')").fetchone() == (None,)
    assert keys_snapshot(admin) == before


def test_sql_helpers_drop_leaves_nothing(admin, shop):
    before = keys_snapshot(admin)
    kid = install_test_helpers(admin, test_database=True)
    assert [row[0] for row in keys_snapshot(admin)] == [row[0] for row in before] + [kid]
    with pytest.raises(SqlHelpersError, match="already exists"):
        install_test_helpers(admin, test_database=True)
    assert drop_test_helpers(admin) == (True, kid)
    assert keys_snapshot(admin) == before
    assert admin.execute("SELECT to_regnamespace('hessra_test')").fetchone() == (None,)
    assert drop_test_helpers(admin) == (False, None)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hessra_pg", "policy", "test-helpers", *args],
                          capture_output=True, text=True, timeout=120)


def test_sql_helpers_cli(hessra_db, admin, shop):
    before = keys_snapshot(admin)
    refused = _cli("--dsn", hessra_db.dsn)
    assert refused.returncode == 2 and "without --test-database" in refused.stderr and "never in production" in refused.stderr
    assert admin.execute("SELECT to_regnamespace('hessra_test')").fetchone() == (None,)
    done = _cli("--dsn", hessra_db.dsn, "--test-database")
    assert done.returncode == 0, done.stderr
    kid = admin.execute("SELECT kid FROM hessra_test.signing_key").fetchone()[0]
    assert done.stdout == f"{hessra_db.name}: installed hessra_test (TEST ONLY), test key kid {kid}; remove with --drop\n"
    again = _cli("--dsn", hessra_db.dsn, "--test-database")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    app = _cli("--dsn", hessra_db.dsn_for(shop), "--drop")
    assert app.returncode == 2 and app.stderr.startswith("hessra-pg: error: can't drop hessra_test: permission denied")
    dropped = _cli("--dsn", hessra_db.dsn, "--drop")
    assert dropped.returncode == 0 and dropped.stdout == f"{hessra_db.name}: dropped hessra_test and test key kid {kid}\n"
    assert keys_snapshot(admin) == before
