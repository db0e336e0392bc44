"""The pure verifier against Hessra's own vectors (spec §10.1, §10.2)."""

import time

import pytest

from hessra_pg.core.keys import canonical_public_key
from hessra_pg.core.verifier import RootKey, parse_chain, verify
from tests import vectors

NOW = int(time.time())


@pytest.fixture(scope="module")
def root() -> RootKey:
    return RootKey(1, canonical_public_key(vectors.root_key_pem()))


@pytest.mark.parametrize("vector_set", vectors.SETS)
def test_singleton_vectors_match_compat_column(root, vector_set):
    chain = parse_chain(vectors.order_service_chain())
    for token in vectors.singleton_tokens(vector_set):
        meta = token["metadata"]
        as_singleton = verify(token["token"], [root], now=NOW, subject=meta["subject"],
                              resource=meta["resource"], operation="read")
        if meta["type"] == "service_chain":
            # §10.1 footnote: true as a singleton, the expected false as a chain.
            assert as_singleton.valid, token["name"]
            as_chain = verify(token["token"], [root], now=NOW, subject=meta["subject"],
                              resource=meta["resource"], operation="read", chain=chain)
            assert as_chain.valid is meta["expected_result"] is False
            assert as_chain.reason == "missing_attestation:auth_service"
        else:
            assert as_singleton.valid is meta["expected_result"], token["name"]
            assert as_singleton.reason == ("ok" if meta["expected_result"] else "subject_mismatch")


@pytest.mark.parametrize("vector_set", vectors.SETS)
def test_chain_vectors_match_matrix(root, vector_set):
    full = parse_chain(vectors.order_service_chain())
    for token in vectors.chain_tokens(vector_set):
        meta = token["metadata"]
        args = dict(now=NOW, subject=meta["subject"], resource=meta["resource"], operation="read")
        own = verify(token["token"], [root], chain=parse_chain(meta["service_nodes"]), **args).valid
        row = [own] + [verify(token["token"], [root], chain=full, component=c, **args).valid
                       for c in vectors.CHAIN_COMPONENTS]
        assert tuple(row) == vectors.CHAIN_MATRIX[token["name"]], token["name"]
        assert verify(token["token"], [root], **args).valid  # all verify as singletons


def test_g1_tokens_accept_only_their_subject_resource_and_read_or_write(root):
    token = vectors.singleton_tokens("hessra-postgres")[1]
    meta = token["metadata"]
    for operation in ("read", "write"):
        assert verify(token["token"], [root], now=NOW, subject=meta["subject"],
                      resource=meta["resource"], operation=operation).valid
    for subject, resource, operation in [
        ("uri:urn:test:argo-cli0", meta["resource"], "read"),
        (meta["subject"], "resource9", "read"),
        (meta["subject"], meta["resource"], "delete"),
    ]:
        decision = verify(token["token"], [root], now=NOW, subject=subject, resource=resource, operation=operation)
        assert not decision.valid
        assert decision.reason in ("subject_mismatch", "denied")


def test_vectors_expire_in_2125(root):
    token = vectors.singleton_tokens("hessra-sdk")[1]
    meta = token["metadata"]
    decision = verify(token["token"], [root], now=5_000_000_000, subject=meta["subject"],
                      resource=meta["resource"], operation="read")
    assert (decision.valid, decision.reason) == (False, "expired")
