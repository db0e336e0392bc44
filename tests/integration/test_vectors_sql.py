"""Every interop vector through the SQL functions (spec §10.1, §10.2)."""

import json

import pytest
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import load_private_key
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.core.verifier import ChainNode
from tests import vectors
from tests.integration.conftest import scalar


@pytest.mark.parametrize("vector_set", vectors.SETS)
def test_singleton_vectors(admin, vector_key, vector_set):
    """As Hessra's verifier decides them while this database knows no chain
    for their resource; once it does, a chain token that skipped it is denied
    by verify_token too (docs/sql-reference.md "Service chains")."""
    tokens = vectors.singleton_tokens(vector_set)
    for token in tokens:
        meta = token["metadata"]
        args = (token["token"], meta["subject"], meta["resource"], "read")
        as_singleton = scalar(admin, "SELECT hessra_authz.verify_token(%s, %s, %s, %s)", args)
        assert as_singleton is (True if meta["type"] == "service_chain" else meta["expected_result"]), token["name"]
    admin.execute("SELECT hessra_authz.set_service_chain('order_service', %s)", (Jsonb(vectors.order_service_chain()),))
    for token in tokens:
        meta = token["metadata"]
        args = (token["token"], meta["subject"], meta["resource"], "read")
        as_singleton = scalar(admin, "SELECT hessra_authz.verify_token(%s, %s, %s, %s)", args)
        if meta["resource"] == "order_service":
            # No token of these sets carries the chain's attestations.
            assert as_singleton is False, token["name"]
            assert scalar(admin, "SELECT hessra_authz.explain(%s, %s, %s, %s)->>'reason'", args) in \
                ("missing_attestation:auth_service", "subject_mismatch", "denied"), token["name"]
        else:
            assert as_singleton is meta["expected_result"], token["name"]
        if meta["type"] == "service_chain":
            as_chain = scalar(admin, "SELECT hessra_authz.verify_service_chain(%s, %s, %s, %s, 'order_service')", args)
            assert as_chain is meta["expected_result"] is False


@pytest.mark.parametrize("vector_set", vectors.SETS)
def test_chain_matrix_by_name_and_by_nodes(admin, vector_key, vector_set):
    chain = vectors.order_service_chain()
    admin.execute("SELECT hessra_authz.set_service_chain('order_service', %s)", (Jsonb(chain),))
    for token in vectors.chain_tokens(vector_set):
        meta = token["metadata"]
        args = (token["token"], meta["subject"], meta["resource"], "read")
        own = scalar(admin, "SELECT hessra_authz.verify_service_chain(%s, %s, %s, %s, %s::jsonb)",
                     args + (json.dumps(meta["service_nodes"]),))
        by_name = [scalar(admin, "SELECT hessra_authz.verify_service_chain(%s, %s, %s, %s, 'order_service', %s)",
                          args + (component,)) for component in vectors.CHAIN_COMPONENTS]
        by_nodes = [scalar(admin, "SELECT hessra_authz.verify_service_chain(%s, %s, %s, %s, %s, %s)",
                           args + (Jsonb(chain), component)) for component in vectors.CHAIN_COMPONENTS]
        expected = vectors.CHAIN_MATRIX[token["name"]]
        assert (own, *by_name) == expected, token["name"]
        assert (own, *by_nodes) == expected, token["name"]


def test_fresh_attestations_on_a_vector_token(admin, vector_key):
    """The authority vector token, attested now with the node keys of
    service_nodes.toml, passes the full chain."""
    admin.execute("SELECT hessra_authz.set_service_chain('order_service', %s)", (Jsonb(vectors.order_service_chain()),))
    authority = next(t for t in vectors.chain_tokens("hessra-sdk") if t["name"] == "order_service_authority_token")
    meta, token = authority["metadata"], authority["token"]
    nodes = vectors.service_nodes()
    root_pem = vectors.root_key_pem()
    full = "SELECT hessra_authz.verify_service_chain(%s, %s, %s, 'read', 'order_service')"
    for component in ("auth_service", "payment_service"):
        token = attest_service(token, root_pem, meta["resource"], load_private_key(nodes[component]["pem_keypair"]))
        assert scalar(admin, full, (token, meta["subject"], meta["resource"])) is False
    token = attest_service(token, root_pem, meta["resource"], load_private_key(nodes["order_service"]["pem_keypair"]))
    assert scalar(admin, full, (token, meta["subject"], meta["resource"])) is True


def test_new_chain_with_service_node_keys(admin, root):
    """A chain the vectors don't have: api_gateway -> payment_service -> notification_service."""
    nodes = vectors.service_nodes()
    names = ("api_gateway", "payment_service", "notification_service")
    chain = [ChainNode(name, nodes[name]["public_key"]) for name in names]
    admin.execute("SELECT hessra_authz.set_service_chain('notify', %s)",
                  (Jsonb([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    token = mint_authorization(root, "svc:checkout", "notifications", "write", service_chain=chain)
    query = "SELECT hessra_authz.verify_service_chain(%s, 'svc:checkout', 'notifications', 'write', 'notify', %s)"
    results = []
    for name in names:
        results.append([scalar(admin, query, (token, component)) for component in (*names, None)])
        token = attest_service(token, str(root.public_key), "notifications", load_private_key(nodes[name]["pem_keypair"]))
    results.append([scalar(admin, query, (token, component)) for component in (*names, None)])
    assert results == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
