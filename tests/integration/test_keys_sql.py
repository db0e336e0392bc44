"""Keys: add_key forms and errors, rotation, retirement seen by every backend."""

import psycopg
import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from tests import vectors
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"


def test_add_key_accepts_pem_and_hex_of_both_algorithms(admin):
    ed = generate_keypair()
    assert scalar(admin, "SELECT hessra_authz.add_key(%s)", (vectors.root_key_pem(),)) == 1
    assert scalar(admin, "SELECT hessra_authz.add_key(%s, 7, comment => 'ed')", (str(ed.public_key),)) == 7
    assert scalar(admin, "SELECT hessra_authz.add_key(%s)", (str(generate_keypair("secp256r1").public_key),)) == 8
    rows = admin.execute("SELECT kid, public_key, comment FROM hessra_authz.keys ORDER BY kid").fetchall()
    assert rows[0] == (1, "secp256r1/031805334536362d5451f32ccefb8e57c9b61be2c4257d6ce96a705a24af3a7397", None)
    assert rows[1] == (7, str(ed.public_key), "ed")


@pytest.mark.parametrize("key, message", [
    ("not a key", "invalid public key"),
    ("ed25519/abcd", "64 hex digits"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "could not be parsed"),
    (None, "must not be NULL"),
])
def test_malformed_key_is_a_clear_error(admin, key, message):
    with pytest.raises(psycopg.Error) as caught:
        admin.execute("SELECT hessra_authz.add_key(%s)", (key,))
    assert message in caught.value.diag.message_primary
    assert "Traceback" not in str(caught.value) and "Traceback" not in (caught.value.diag.context or "")
    assert scalar(admin, "SELECT count(*) FROM hessra_authz.keys") == 0


def test_duplicate_key_kid_and_window_errors(admin):
    pair = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(pair.public_key),))
    with pytest.raises(psycopg.errors.UniqueViolation, match="already registered as kid 3"):
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(pair.public_key),))
    with pytest.raises(psycopg.errors.UniqueViolation, match="kid 3 is already in use"):
        admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(generate_keypair().public_key),))
    with pytest.raises(psycopg.Error, match="must be later than not_before"):
        admin.execute("SELECT hessra_authz.add_key(%s, not_after => now() - interval '1 day')",
                      (str(generate_keypair().public_key),))
    with pytest.raises(psycopg.Error, match="no key with kid 42"):
        admin.execute("SELECT hessra_authz.retire_key(42)")


def test_two_active_keys_then_retirement_seen_by_another_backend(hessra_db, admin):
    old, new = generate_keypair("secp256r1"), generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(old.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2)", (str(new.public_key),))
    old_token = mint_authorization(old, "alice", "orders", "read")
    new_token = mint_authorization(new, "alice", "orders", "read")
    with hessra_db.connect(autocommit=True) as other:
        # The second backend verifies (and caches) both before the retirement.
        assert scalar(other, VERIFY, (old_token,)) and scalar(other, VERIFY, (new_token,))
        with hessra_db.connect() as retiring:
            retiring.execute("SELECT hessra_authz.retire_key(1)")
            assert scalar(other, VERIFY, (old_token,)) is True  # not committed yet
            retiring.commit()
        assert scalar(other, VERIFY, (old_token,)) is False
        assert scalar(other, VERIFY, (new_token,)) is True
        explained = scalar(other, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')", (old_token,))
        assert explained["reason"] == "bad_signature"


def test_root_key_id_selects_the_key(admin):
    first, second = generate_keypair(), generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 10)", (str(first.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 11)", (str(second.public_key),))
    good = mint_authorization(second, "alice", "orders", "read", root_key_id=11)
    mislabelled = mint_authorization(second, "alice", "orders", "read", root_key_id=10)
    unknown = mint_authorization(second, "alice", "orders", "read", root_key_id=99)
    assert scalar(admin, VERIFY, (good,)) is True
    assert scalar(admin, VERIFY, (mislabelled,)) is False
    assert scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'", (unknown,)) == "unknown_key"
    assert scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'kid'", (good,)) == "11"


def test_key_outside_its_window_does_not_verify(admin):
    future, current = generate_keypair(), generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 1, now() + interval '1 hour')", (str(future.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2)", (str(current.public_key),))
    assert scalar(admin, VERIFY, (mint_authorization(future, "alice", "orders", "read"),)) is False
    assert scalar(admin, VERIFY, (mint_authorization(current, "alice", "orders", "read"),)) is True
    admin.execute("SELECT hessra_authz.retire_key(2, now() + interval '1 hour')")
    assert scalar(admin, VERIFY, (mint_authorization(current, "alice", "orders", "read"),)) is True


def test_no_active_key_is_a_loud_configuration_error(admin):
    token = mint_authorization(generate_keypair(), "alice", "orders", "read")
    with pytest.raises(psycopg.Error) as caught:
        admin.execute(VERIFY, (token,))
    assert "no active key" in caught.value.diag.message_primary
    assert "add_key" in caught.value.diag.message_hint
    assert token not in str(caught.value)


def test_retirement_in_the_same_backend_and_message(admin):
    """A key change in this backend is seen by its next statement, even
    inside one multi-statement message."""
    pair, spare = generate_keypair(), generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(pair.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2)", (str(spare.public_key),))
    token = mint_authorization(pair, "alice", "orders", "read")
    many = "SELECT bool_and(hessra_authz.verify_token(%s, 'alice', 'orders', 'read')) FROM generate_series(1, 5)"
    assert scalar(admin, many, (token,)) is True
    admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(generate_keypair().public_key),))
    # One message, one implicit transaction: retiring key 3 first gives the
    # transaction its xid, so the two verifications share snapshot and xid;
    # the configuration version (bumped by this backend's own write) tells
    # them apart.
    verify_literal = f"SELECT hessra_authz.verify_token('{token}', 'alice', 'orders', 'read')"
    cursor = admin.execute(
        f"SELECT hessra_authz.retire_key(3); {verify_literal}; SELECT hessra_authz.retire_key(1); {verify_literal}"
    )
    results = [cursor.fetchone()[0]]
    while cursor.nextset():
        results.append(cursor.fetchone()[0])
    assert results == ["", True, "", False]


def test_a_rolled_back_change_is_not_mistaken_for_a_later_committed_one(hessra_db, admin):
    """Backend A caches the configuration of its own uncommitted change,
    rolls it back, then another backend commits a different change: the
    generation counter has the same value both times, and A must not take
    its cache for the committed state."""
    pair, other = generate_keypair(), generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(pair.public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 2)", (str(other.public_key),))
    token = mint_authorization(pair, "alice", "orders", "read")
    with hessra_db.connect() as backend_a:
        backend_a.execute("SELECT hessra_authz.retire_key(1)")
        assert scalar(backend_a, VERIFY, (token,)) is False  # cached inside the transaction
        backend_a.rollback()
        admin.execute("SELECT hessra_authz.add_key(%s, 3)", (str(generate_keypair().public_key),))
        assert scalar(backend_a, VERIFY, (token,)) is True
