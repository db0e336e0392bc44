"""Tokens made by hessra_py 0.2.1 (Hessra's Rust SDK) through the SQL
functions of hessra_authz, with hessra_py's own verdict as the oracle where it
has one (it has no bearer mode).

The root key is the `root` fixture (P-256, registered as kid 100); hessra_py
signs identity roots with it as its personal key pair.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.core.verifier import ChainNode
from tests import vectors
from tests.integration.conftest import scalar
from tests.interop.conftest import hp

pytestmark = pytest.mark.integration

ALICE = "urn:hessra:alice"
LAPTOP = ALICE + ":laptop"
CHROME = LAPTOP + ":chrome"
PHONE = ALICE + ":phone"
BOB = "urn:hessra:bob"
CHAIN = ("auth_service", "payment_service", "order_service")


@pytest.fixture
def app(hessra_db, app_role):
    """An ordinary role's connection: the verify functions are for everyone."""
    with hessra_db.connect(app_role, autocommit=True) as conn:
        yield conn


def test_hessra_py_identity_tokens_through_sql(app, root, hessra_client):
    client = hessra_client(root, root)
    root_token = client.create_identity_token_local(ALICE, 600)
    laptop = client.attenuate_identity_token(root_token, LAPTOP, 600)
    chrome = client.attenuate_identity_token(laptop, CHROME, 300)
    lateral = client.attenuate_identity_token(laptop, PHONE, 600)  # hessra_py 0.2.1 makes it; nobody can use it
    cases = {
        "root": (root_token, [(ALICE, True), (LAPTOP, True), (LAPTOP + ":x", True), ("urn:hessra:alice2", False),
                              (BOB, False), (None, True)]),
        "laptop": (laptop, [(LAPTOP, True), (LAPTOP + ":x", True), (ALICE, False), (PHONE, False), (None, False)]),
        "chrome": (chrome, [(CHROME, True), (CHROME + ":x", True), (LAPTOP, False), (ALICE, False), (None, False)]),
        "lateral": (lateral, [(ALICE, False), (LAPTOP, False), (PHONE, False), (PHONE + ":x", False),
                              (None, False)]),
    }
    for name, (token, expectations) in cases.items():
        for identity, expected in expectations:
            if identity is None:
                got = scalar(app, "SELECT hessra_authz.verify_bearer(%s)", (token,))
            else:
                got = scalar(app, "SELECT hessra_authz.verify_identity(%s, %s)", (token, identity))
                assert hp(client.verify_identity_token_local, token, identity) is expected, (name, identity)
            assert got is expected, (name, identity or "bearer")


def test_hessra_py_identity_signed_by_an_unregistered_key_is_false(app, root, hessra_client):
    stranger = generate_keypair("secp256r1")
    token = hessra_client(stranger, stranger).create_identity_token_local(ALICE, 600)
    assert scalar(app, "SELECT hessra_authz.verify_identity(%s, %s)", (token, ALICE)) is False
    assert scalar(app, "SELECT hessra_authz.verify_bearer(%s)", (token,)) is False


def _chain() -> list[ChainNode]:
    nodes = vectors.service_nodes()
    return [ChainNode(name, nodes[name]["public_key"]) for name in CHAIN]


def test_hessra_py_attestations_through_a_named_chain(admin, app, root, hessra_client):
    nodes = _chain()
    as_json = [{"component": node.component, "public_key": node.public_key} for node in nodes]
    admin.execute("SELECT hessra_authz.set_service_chain('orders_chain', %s)", (Jsonb(as_json),))
    verifier = hessra_client(root)
    tokens = [mint_authorization(root, "alice", "orders", "read", service_chain=nodes)]
    for name in CHAIN:
        attester = hessra_client(root, vectors.service_nodes()[name]["pem_keypair"])
        tokens.append(attester.attest_service_chain_token(tokens[-1], "orders"))

    by_name = "SELECT hessra_authz.verify_service_chain(%s, %s, 'orders', 'read', 'orders_chain', %s::text)"
    by_nodes = "SELECT hessra_authz.verify_service_chain(%s, %s, 'orders', 'read', %s::jsonb, %s::text)"
    for attested, token in enumerate(tokens):
        for component in (None, *CHAIN):
            expected = attested == len(CHAIN) if component is None else attested >= CHAIN.index(component)
            assert scalar(app, by_name, (token, "alice", component)) is expected, (attested, component)
            assert scalar(app, by_nodes, (token, "alice", Jsonb(as_json), component)) is expected
            assert hp(verifier.verify_service_chain_token_local, token, "alice", "orders", "read",
                      json.dumps(as_json), component) is expected
        assert scalar(app, by_name, (token, "bob", None)) is False
    # A node outside the chain (edge_function) attesting in payment's place.
    impostor = hessra_client(root, vectors.service_nodes()["edge_function"]["pem_keypair"])
    forged = impostor.attest_service_chain_token(tokens[1], "orders")
    assert scalar(app, by_name, (forged, "alice", "order_service")) is False
    # An unknown component is a configuration error in SQL, as in hessra_py.
    with pytest.raises(psycopg.Error, match="shipping_service"):
        scalar(app, by_name, (tokens[-1], "alice", "shipping_service"))
