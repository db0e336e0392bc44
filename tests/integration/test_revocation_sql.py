"""Revocation: by block id, by token (authority block), by identity; seen by
every statement that starts after the revocation commits, in every backend."""

import psycopg
import pytest

from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.tokens.inspect import inspect_token
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

VERIFY = "SELECT hessra_authz.verify_token(%s, 'alice', 'orders', 'read')"
REASON = "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'"


def test_revoke_token_kills_derived_tokens_in_every_backend(hessra_db, admin, root):
    node = generate_keypair()
    original = mint_authorization(root, "alice", "orders", "read", service_chain=[ChainNode("edge", str(node.public_key))])
    derived = attest_service(original, str(root.public_key), "orders", node)
    other = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(autocommit=True) as watcher:
        assert scalar(watcher, VERIFY, (derived,)) is True  # cached by this backend
        with hessra_db.connect() as revoker:
            revocation_id = scalar(revoker, "SELECT hessra_authz.revoke_token(%s, 'lost laptop')", (original,))
            assert scalar(watcher, VERIFY, (derived,)) is True  # not committed yet
            revoker.commit()
        assert revocation_id == inspect_token(original).revocation_ids[0]
        for token in (original, derived):
            assert scalar(watcher, VERIFY, (token,)) is False
            assert scalar(watcher, REASON, (token,)) == "revoked"
        assert scalar(watcher, VERIFY, (other,)) is True
    row = admin.execute("SELECT reason, revoked_by FROM hessra_authz.revocations").fetchone()
    assert row == ("lost laptop", "postgres")


def test_revoke_a_later_block_by_id(admin, root):
    node = generate_keypair()
    original = mint_authorization(root, "alice", "orders", "read", service_chain=[ChainNode("edge", str(node.public_key))])
    attested = attest_service(original, str(root.public_key), "orders", node)
    admin.execute("SELECT hessra_authz.revoke(%s)", (inspect_token(attested).revocation_ids[1].upper(),))
    assert scalar(admin, VERIFY, (attested,)) is False
    assert scalar(admin, VERIFY, (original,)) is True  # only tokens holding that block die


def test_revoke_identity_and_descendants(admin, root):
    pk = str(root.public_key)
    alice = mint_identity(root, "urn:hessra:alice")
    laptop = delegate_identity(alice, pk, "urn:hessra:alice:laptop")
    chrome = delegate_identity(laptop, pk, "urn:hessra:alice:laptop:chrome")
    phone = delegate_identity(alice, pk, "urn:hessra:alice:phone")
    authz = mint_authorization(root, "urn:hessra:alice:laptop", "orders", "read")
    admin.execute("SELECT hessra_authz.revoke_identity('urn:hessra:alice:laptop')")
    q = "SELECT hessra_authz.verify_identity(%s, %s)"
    assert scalar(admin, q, (laptop, "urn:hessra:alice:laptop")) is False
    assert scalar(admin, q, (chrome, "urn:hessra:alice:laptop:chrome")) is False
    assert scalar(admin, q, (alice, "urn:hessra:alice:laptop:x")) is False
    assert scalar(admin, q, (alice, "urn:hessra:alice")) is True
    assert scalar(admin, q, (phone, "urn:hessra:alice:phone")) is True
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (chrome,)) is None
    assert scalar(admin, "SELECT hessra_authz.verify_token(%s, 'urn:hessra:alice:laptop', 'orders', 'read')",
                  (authz,)) is False
    admin.execute("SELECT hessra_authz.revoke_identity('urn:hessra:alice')")
    assert scalar(admin, "SELECT hessra_authz.verify_bearer(%s)", (alice,)) is False
    assert scalar(admin, q, (phone, "urn:hessra:alice:phone")) is False


@pytest.mark.parametrize("statement, params", [
    ("SELECT hessra_authz.revoke(%s)", ("not hex",)),
    ("SELECT hessra_authz.revoke(%s)", (None,)),
    ("SELECT hessra_authz.revoke_token(%s)", ("garbage!",)),
    ("SELECT hessra_authz.revoke_token(%s)", ("",)),
    ("SELECT hessra_authz.revoke_identity(%s)", ("",)),
])
def test_bad_revocations_are_clear_errors(admin, statement, params):
    with pytest.raises(psycopg.Error) as caught:
        admin.execute(statement, params)
    assert caught.value.diag.message_primary.startswith("hessra_authz:")
    assert "Traceback" not in (caught.value.diag.context or "")


def test_only_admins_revoke(hessra_db, root, app_role):
    token = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        for statement, params in (
            ("SELECT hessra_authz.revoke_token(%s)", (token,)),
            ("SELECT hessra_authz.revoke_identity('alice')", ()),
            ("SELECT hessra_authz.revoke(%s)", ("ab" * 32,)),
            ("SELECT * FROM hessra_authz.revocations", ()),
            ("DELETE FROM hessra_authz.revocations", ()),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement, params)
