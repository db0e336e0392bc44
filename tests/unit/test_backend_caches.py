"""Per-backend caches of hessra_pg.backend: bounded, keyed by configuration
generation, never serving a decision past the token's expiry or its key's
end. (The SQL-level freshness tests are in tests/integration.)"""

import time

import pytest

from hessra_pg import backend
from hessra_pg.keys import generate_keypair
from hessra_pg.mint import TokenTime, mint_authorization
from hessra_pg.verify import NO_REVOCATIONS, RootKey, verify


@pytest.fixture(autouse=True)
def empty_caches():
    backend._tokens.clear()
    backend._decisions.clear()
    yield
    backend._tokens.clear()
    backend._decisions.clear()


def decide(config, token, now):
    return backend._remembered(
        config, token, now, ("authorization", "alice", "orders", "read"),
        lambda: verify(token, config.keys, now=now, subject="alice", resource="orders", operation="read",
                       load=lambda text, at: backend._load(text, config, at), revoked=config.revocations),
    )


def test_caches_stay_within_their_bounds():
    root = generate_keypair()
    config = backend._Config(1, (RootKey(1, str(root.public_key)),), {}, NO_REVOCATIONS)
    now = time.time()
    count = backend.TOKEN_CACHE_SIZE + backend.DECISION_CACHE_SIZE + 10
    for i in range(count):
        token = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=600 + i))
        assert decide(config, token, now).valid
    assert len(backend._tokens) == backend.TOKEN_CACHE_SIZE
    assert len(backend._decisions) <= backend.DECISION_CACHE_SIZE


def test_cached_decision_ends_at_expiry_and_key_end():
    root = generate_keypair()
    now = time.time()
    token = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(start=int(now), duration=10))
    spare = RootKey(2, str(generate_keypair().public_key))
    config = backend._Config(1, (RootKey(1, str(root.public_key), not_after=now + 5), spare), {}, NO_REVOCATIONS)
    assert decide(config, token, now).valid
    assert len(backend._decisions) == 1
    assert decide(config, token, now + 4).valid
    later = decide(config, token, now + 6)  # the key ended at now + 5
    assert later.reason == "bad_signature"
    config = backend._Config(2, (RootKey(1, str(root.public_key)),), {}, NO_REVOCATIONS)
    assert decide(config, token, now + 9).valid
    assert decide(config, token, now + 10).reason == "expired"


def test_denials_and_unrecognised_time_checks_are_not_cached():
    import biscuit_auth

    root = generate_keypair()
    config = backend._Config(1, (RootKey(1, str(root.public_key)),), {}, NO_REVOCATIONS)
    now = time.time()
    token = mint_authorization(root, "bob", "orders", "read")
    assert not decide(config, token, now).valid
    odd = biscuit_auth.BiscuitBuilder(
        'right("alice", "orders", "read"); check if time($t), $t <= {limit};', {"limit": int(now) + 100}
    ).build(root.private_key).to_base64()
    assert decide(config, odd, now).valid
    assert not backend._decisions
    assert not decide(config, odd, now + 200).valid


def test_reused_authorizers_keep_tokens_apart():
    """A parsed authorizer serves every token checked with the same
    parameters; what one token grants must not leak into the next."""
    from hessra_pg import verify as verifier
    from hessra_pg.mint import attest_service
    from hessra_pg.verify import ChainNode

    verifier._builders.clear()
    root = generate_keypair()
    keys = (RootKey(1, str(root.public_key)),)
    now = time.time()
    alice = mint_authorization(root, "alice", "orders", "read")
    bob = mint_authorization(root, "bob", "orders", "read")
    args = dict(now=now, subject="alice", resource="orders", operation="read")
    for _ in range(2):
        assert verify(alice, keys, **args).valid
        assert verify(bob, keys, **args).reason == "subject_mismatch"
    assert len(verifier._builders) == 1
    # Chain checks are keyed by the nodes' keys: another key, another authorizer.
    node, impostor = generate_keypair(), generate_keypair()
    chain = (ChainNode("gateway", str(node.public_key)),)
    token = mint_authorization(root, "alice", "orders", "read", service_chain=chain)
    attested = attest_service(token, str(root.public_key), "orders", node)
    forged = attest_service(token, str(root.public_key), "orders", impostor)
    assert verify(attested, keys, chain=chain, **args).valid
    assert verify(forged, keys, chain=chain, **args).reason == "missing_attestation:gateway"
    assert not verify(attested, keys, chain=(ChainNode("gateway", str(impostor.public_key)),), **args).valid
    for i in range(verifier.AUTHORIZER_CACHE_SIZE + 5):
        verify(alice, keys, now=now, subject=f"user{i}", resource="orders", operation="read")
    assert len(verifier._builders) == verifier.AUTHORIZER_CACHE_SIZE
    assert verify(alice, keys, **args).valid


def test_yes_no_answers_skip_the_diagnosis_that_explain_gives():
    root = generate_keypair()
    keys = (RootKey(1, str(root.public_key)),)
    token = mint_authorization(root, "bob", "orders", "read")
    args = dict(now=time.time(), subject="alice", resource="orders", operation="read")
    assert verify(token, keys, **args).reason == "subject_mismatch"
    quick = verify(token, keys, diagnose=False, **args)
    assert (quick.valid, quick.reason) == (False, "denied")
    good = mint_authorization(root, "alice", "orders", "read")
    assert verify(good, keys, diagnose=False, **args).valid
