"""Where "a change is enforced from the next statement" could be outlived
(issue 11, holes 5 and 6): changes written while triggers don't fire,
frozen statement time, and snapshots older than the configuration in force.
docs/security.md states what holds and what doesn't."""

import psycopg
import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"


@pytest.fixture
def token(admin, root):
    return mint_authorization(root, "alice", "orders", "read")


def authority_id(admin, token) -> str:
    return scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->'revocation_ids'->>0",
                  (token,))


def test_a_revocation_written_as_a_replica_is_seen(hessra_db, admin, app_role, token):
    """Logical replication apply workers (and pg_restore in replica mode)
    run with session_replication_role = replica: origin triggers don't fire."""
    revocation = authority_id(admin, token)
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, VERIFY, (token,)) is True
        with admin.transaction():
            admin.execute("SET LOCAL session_replication_role = replica")
            admin.execute("INSERT INTO hessra_authz.revocations (revocation_id) VALUES (%s)", (revocation,))
        assert scalar(app, VERIFY, (token,)) is False


def test_rows_loaded_with_triggers_disabled_are_seen_when_they_are_enabled(hessra_db, admin, app_role, token):
    """pg_restore --disable-triggers: DISABLE TRIGGER ALL, COPY, ENABLE TRIGGER ALL."""
    revocation = authority_id(admin, token)
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, VERIFY, (token,)) is True
        admin.execute("ALTER TABLE hessra_authz.revocations DISABLE TRIGGER ALL")
        admin.execute("INSERT INTO hessra_authz.revocations (revocation_id) VALUES (%s)", (revocation,))
        admin.execute("ALTER TABLE hessra_authz.revocations ENABLE TRIGGER ALL")
        assert scalar(app, VERIFY, (token,)) is False
    # A plain ENABLE would make the trigger origin-only again: it is ALWAYS.
    assert scalar(admin, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'bump_generation' "
                         "AND tgrelid = 'hessra_authz.revocations'::regclass") == "A"


def test_time_moves_inside_a_long_statement(hessra_db, admin, root, app_role):
    """A DO block keeps one statement_timestamp(); the token still expires
    at its time, not at the end of the block."""
    short = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=2))
    with hessra_db.connect(app_role, autocommit=True) as app:
        app.execute("""
            CREATE FUNCTION pg_temp.check_expiry(token text) RETURNS text LANGUAGE plpgsql AS $$
            DECLARE before boolean := hessra_authz.verify_token(token, 'alice', 'orders', 'read');
            BEGIN
                PERFORM pg_sleep(3.2);
                RETURN before::text || '/' || hessra_authz.verify_token(token, 'alice', 'orders', 'read')::text;
            END $$""")
        assert scalar(app, "SELECT pg_temp.check_expiry(%s)", (short,)) == "true/false"


def test_an_imported_snapshot_older_than_a_revocation_is_refused(hessra_db, admin, app_role, token):
    """SET TRANSACTION SNAPSHOT can't bring back keys or revocations older
    than ones a backend of the database already enforces: SQLSTATE 40001."""
    with hessra_db.connect(app_role) as old, hessra_db.connect(app_role) as importer, \
            hessra_db.connect(app_role, autocommit=True) as other:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert scalar(old, VERIFY, (token,)) is True
        snapshot = scalar(old, "SELECT pg_export_snapshot()")
        admin.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        assert scalar(other, VERIFY, (token,)) is False  # a backend enforces the revocation
        importer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        importer.execute("SET TRANSACTION SNAPSHOT %s" % psycopg.sql.quote(snapshot))
        with pytest.raises(psycopg.errors.SerializationFailure, match="snapshot predates"):
            importer.execute(VERIFY, (token,))
        importer.rollback()
        # The exporting transaction itself: same answer.
        with pytest.raises(psycopg.errors.SerializationFailure):
            old.execute(VERIFY, (token,))
        old.rollback()
        assert scalar(old, VERIFY, (token,)) is False  # a new transaction sees it
        old.rollback()


def test_a_repeatable_read_transaction_sees_a_key_retired_by_another_backend(hessra_db, admin, root, app_role):
    token = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role) as app, hessra_db.connect(app_role, autocommit=True) as other:
        app.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert scalar(app, VERIFY, (token,)) is True
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(generate_keypair().public_key),))
        admin.execute("SELECT hessra_authz.retire_key(100)")
        assert scalar(other, VERIFY, (token,)) is False
        with pytest.raises(psycopg.errors.SerializationFailure):
            app.execute(VERIFY, (token,))
        app.rollback()


def test_the_changing_transaction_and_its_rollback_publish_nothing(hessra_db, admin, root, app_role):
    """Only committed generations are published: a rolled-back change must
    not make every other backend refuse its snapshot."""
    token = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(autocommit=False) as changer, hessra_db.connect(app_role, autocommit=True) as app:
        changer.execute("SELECT hessra_authz.revoke_token(%s)", (token,))
        assert scalar(changer, VERIFY, (token,)) is False
        changer.rollback()
        assert scalar(app, VERIFY, (token,)) is True
        assert scalar(changer, VERIFY, (token,)) is True


def test_concurrent_changes_are_all_kept(hessra_db, admin, root, app_role):
    """Two administrators revoke at the same time: both revocations reach the
    verifier (the configuration kept in config_state is recomputed under a
    lock, with a snapshot that sees the other's commit)."""
    first, second = (mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=600 + i))
                     for i in range(2))
    with hessra_db.connect() as one, hessra_db.connect() as two, \
            hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, VERIFY, (first,)) is True and scalar(app, VERIFY, (second,)) is True
        one.execute("SELECT hessra_authz.revoke_token(%s)", (first,))  # holds config_state's row
        import threading

        done = threading.Event()

        def revoke_second():
            two.execute("SELECT hessra_authz.revoke_token(%s)", (second,))  # waits for one's commit
            two.commit()
            done.set()

        worker = threading.Thread(target=revoke_second)
        worker.start()
        assert not done.wait(0.5)  # really waiting on the first
        one.commit()
        worker.join(10)
        assert done.is_set()
        assert scalar(app, VERIFY, (first,)) is False
        assert scalar(app, VERIFY, (second,)) is False
