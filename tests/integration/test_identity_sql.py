"""Identity tokens through SQL: the table of spec §6.4 is the oracle."""

import time

import pytest

from hessra_pg.tokens.identity import delegate_identity, jit_identity, mint_identity
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from tests.integration.conftest import scalar

IDENTITY = "SELECT hessra_authz.verify_identity(%s, %s)"
BEARER = "SELECT hessra_authz.verify_bearer(%s)"


def check_identities(conn, token, expected: dict[str, bool]) -> None:
    got = {identity: scalar(conn, IDENTITY, (token, identity)) for identity in expected}
    assert got == expected


def test_delegatable_root_and_colon_boundary(admin, root):
    token = mint_identity(root, "urn:hessra:alice")
    check_identities(admin, token, {
        "urn:hessra:alice": True, "urn:hessra:alice:laptop": True, "urn:hessra:alice:laptop:x": True,
        "urn:hessra:alice2": False, "urn:hessra:bob": False, "urn:hessra:ali": False, "": False,
    })
    assert scalar(admin, BEARER, (token,)) is True
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (token,)) == "urn:hessra:alice"


def test_non_delegatable_root(admin, root):
    token = mint_identity(root, "urn:hessra:alice", delegatable=False)
    check_identities(admin, token, {"urn:hessra:alice": True, "urn:hessra:alice:agent": False})
    assert scalar(admin, BEARER, (token,)) is True


def test_delegated_chain(admin, root):
    pk = str(root.public_key)
    laptop = delegate_identity(mint_identity(root, "urn:hessra:alice"), pk, "urn:hessra:alice:laptop")
    check_identities(admin, laptop, {
        "urn:hessra:alice:laptop": True, "urn:hessra:alice:laptop:x": True,
        "urn:hessra:alice": False, "urn:hessra:alice:phone": False,
    })
    assert scalar(admin, BEARER, (laptop,)) is False  # delegated tokens are not bearer keys
    chrome = delegate_identity(laptop, pk, "urn:hessra:alice:laptop:chrome")
    check_identities(admin, chrome, {"urn:hessra:alice:laptop:chrome": True, "urn:hessra:alice:laptop": False})
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (chrome,)) == "urn:hessra:alice:laptop:chrome"


def test_domain_restricted(admin, root):
    token = mint_identity(root, "urn:hessra:alice", delegatable=False, domain="example.com")
    q = "SELECT hessra_authz.verify_identity(%s, 'urn:hessra:alice', %s, %s)"
    assert scalar(admin, q, (token, None, False)) is False
    assert scalar(admin, q, (token, "example.com", False)) is True
    assert scalar(admin, q, (token, "other.com", False)) is False
    assert scalar(admin, q, (token, "example.com", True)) is True
    assert scalar(admin, "SELECT hessra_authz.verify_bearer(%s, 'example.com')", (token,)) is True
    assert scalar(admin, "SELECT hessra_authz.verify_bearer(%s)", (token,)) is False
    plain = mint_identity(root, "urn:hessra:alice")
    assert scalar(admin, q, (plain, "example.com", True)) is False  # ensure mode needs the domain rule
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s, 'example.com')", (token,)) == "urn:hessra:alice"
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (token,)) is None


def test_expiry_jit_and_invalid_tokens(admin, root):
    pk = str(root.public_key)
    token = mint_identity(root, "urn:hessra:alice")
    assert scalar(admin, BEARER, (jit_identity(token, pk),)) is True
    assert scalar(admin, BEARER, (jit_identity(token, pk, start=int(time.time()) - 10),)) is False
    expired = mint_identity(root, "urn:hessra:alice", time_config=TokenTime(start=int(time.time()) - 600))
    for bad in (expired, None, "", "garbage", mint_authorization(root, "urn:hessra:alice", "orders", "read")):
        assert scalar(admin, IDENTITY, (bad, "urn:hessra:alice")) is False
        assert scalar(admin, BEARER, (bad,)) is False
        assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (bad,)) is None
    assert scalar(admin, IDENTITY, (token, None)) is False


def test_current_identity(admin, root):
    token = delegate_identity(mint_identity(root, "urn:hessra:alice"), str(root.public_key), "urn:hessra:alice:ci")
    with admin.transaction():
        admin.execute("SELECT set_config('hessra.token', %s, true)", (token,))
        assert scalar(admin, "SELECT hessra_authz.current_identity()") == "urn:hessra:alice:ci"
    assert scalar(admin, "SELECT hessra_authz.current_identity()") is None


@pytest.mark.parametrize("identity", ['urn:hessra:"quoted"', "urn:hessra:line\nbreak", "urn:hessra:ünï:cödé"])
def test_unusual_identity_strings(admin, root, identity):
    token = delegate_identity(mint_identity(root, identity), str(root.public_key), identity + ":child")
    assert scalar(admin, IDENTITY, (token, identity + ":child")) is True
    assert scalar(admin, IDENTITY, (token, identity)) is False
    assert scalar(admin, "SELECT hessra_authz.token_identity(%s)", (token,)) == identity + ":child"
