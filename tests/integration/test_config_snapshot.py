"""The verifier's fast path trusts the configuration it holds while the
statement snapshot is the one it last read it with (hessra_pg.plpython.abi_0_2). These
are the cases where a snapshot alone would mislead: changes made by the
backend's own transaction, rolled back whole or to a savepoint, a snapshot
held for a whole REPEATABLE READ transaction, and an extension re-created in
one transaction."""

import psycopg
import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"


@pytest.fixture
def keyed(admin):
    """(token signed by key 1, spare key text); key 2 keeps a key active."""
    pair = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(pair.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2)", (str(generate_keypair().public_key),))
    return mint_authorization(pair, "alice", "orders", "read"), pair


def test_a_change_rolled_back_to_a_savepoint_is_forgotten(hessra_db, keyed):
    token, _ = keyed
    with hessra_db.connect() as conn:
        assert scalar(conn, VERIFY, (token,)) is True
        conn.execute("SAVEPOINT before_retire")
        conn.execute("SELECT hessra_authz.retire_key(1)")
        assert scalar(conn, VERIFY, (token,)) is False
        assert scalar(conn, VERIFY, (token,)) is False
        conn.execute("ROLLBACK TO SAVEPOINT before_retire")
        assert scalar(conn, VERIFY, (token,)) is True
        conn.execute("SAVEPOINT before_add")
        other = generate_keypair()
        conn.execute("SELECT hessra_authz.add_key(%s, 3)", (str(other.public_key),))
        other_token = mint_authorization(other, "alice", "orders", "read")
        assert scalar(conn, VERIFY, (other_token,)) is True
        conn.execute("ROLLBACK TO SAVEPOINT before_add")
        assert scalar(conn, VERIFY, (other_token,)) is False
        conn.rollback()
        assert scalar(conn, VERIFY, (other_token,)) is False
        assert scalar(conn, VERIFY, (token,)) is True


def test_a_rolled_back_transaction_leaves_nothing_behind(hessra_db, keyed):
    """Nothing else runs in between: the snapshot after the rollback may
    read exactly like the ones inside the transaction."""
    token, _ = keyed
    other = generate_keypair()
    other_token = mint_authorization(other, "alice", "orders", "read")
    with hessra_db.connect() as conn:
        for _ in range(3):
            conn.execute("SELECT hessra_authz.add_key(%s, 3)", (str(other.public_key),))
            assert scalar(conn, VERIFY, (other_token,)) is True
            conn.rollback()
            assert scalar(conn, VERIFY, (other_token,)) is False
            conn.rollback()
            conn.execute("SELECT hessra_authz.retire_key(1)")
            assert scalar(conn, VERIFY, (token,)) is False
            conn.rollback()
            assert scalar(conn, VERIFY, (token,)) is True
            conn.rollback()


def test_rollback_with_an_identical_snapshot_before_and_after(hessra_db, keyed):
    """An older transaction stays open (it is xmin) and another commits
    during ours (xmax moves past our xid): the snapshot text after our
    rollback is then exactly the one our verification inside the
    transaction used, and only the record of our own change tells them
    apart."""
    other = generate_keypair()
    other_token = mint_authorization(other, "alice", "orders", "read")
    identical = 0
    with hessra_db.connect() as older, hessra_db.connect() as ours, \
            hessra_db.connect(autocommit=True) as bystander:
        for _ in range(3):  # another backend (autovacuum) may spoil the premise once
            older.execute("SELECT pg_current_xact_id()")  # an open transaction with an xid
            ours.execute("SELECT hessra_authz.add_key(%s, 3)", (str(other.public_key),))
            bystander.execute("SELECT pg_current_xact_id()")  # commits a later xid
            inside = scalar(ours, "SELECT pg_current_snapshot()::text")
            assert scalar(ours, VERIFY, (other_token,)) is True
            ours.rollback()
            after = scalar(ours, "SELECT pg_current_snapshot()::text")
            assert scalar(ours, VERIFY, (other_token,)) is False
            ours.rollback()
            older.rollback()
            identical += inside == after
    assert identical, "the snapshots never read the same: the scenario did not happen"


def test_repeatable_read_sees_the_configuration_of_its_snapshot(hessra_db, admin, keyed):
    token, _ = keyed
    with hessra_db.connect() as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert scalar(conn, VERIFY, (token,)) is True
        admin.execute("SELECT hessra_authz.retire_key(1)")  # commits in another backend
        assert scalar(conn, VERIFY, (token,)) is True  # not in this transaction's snapshot
        conn.commit()
        assert scalar(conn, VERIFY, (token,)) is False


def test_extension_recreated_in_one_transaction_forgets_the_old_keys(hessra_db, keyed):
    token, _ = keyed
    with hessra_db.connect() as conn:
        assert scalar(conn, VERIFY, (token,)) is True
        conn.commit()
        conn.execute("DROP EXTENSION hessra_authz CASCADE")
        conn.execute("CREATE EXTENSION hessra_authz")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no active key"):
            conn.execute(VERIFY, (token,))
        conn.rollback()
        assert scalar(conn, VERIFY, (token,)) is True


def test_revocation_by_another_backend_is_seen_by_the_next_statement(hessra_db, admin, keyed):
    token, _ = keyed
    with hessra_db.connect(autocommit=True) as conn:
        assert scalar(conn, VERIFY, (token,)) is True
        assert scalar(conn, VERIFY, (token,)) is True  # fast path from here on
        admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        assert scalar(conn, VERIFY, (token,)) is False
