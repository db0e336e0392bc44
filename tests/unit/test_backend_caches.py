"""Per-backend caches of the in-database runtime (hessra_pg.plpython.runtime):
bounded by bytes, keyed by configuration version, never serving a decision
past the token's expiry or its key's end. (The SQL-level freshness tests
are in tests/integration.)"""

import sys
import time

import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.lru import ByteBoundedLRU
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from hessra_pg.plpython import runtime as rt
from hessra_pg.core.verifier import NO_REVOCATIONS, RootKey, verify


def runtime_with(keys, version="1/1", revocations=NO_REVOCATIONS):
    runtime = rt.Runtime()
    runtime.load_config(version, tuple(keys), {}, revocations)
    return runtime


def decide(runtime, token, now):
    call = runtime.statement(int(now * 1_000_000), "100:100:", None, runtime.config.version)
    call.now = now  # a fixed time, not the clock
    return call.decide(token, subject="alice", resource="orders", operation="read")


def test_caches_stay_within_their_byte_bounds():
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    runtime.tokens = ByteBoundedLRU(200_000)
    runtime.decisions = ByteBoundedLRU(50_000)
    now = time.time()
    for i in range(400):
        token = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(duration=600 + i))
        assert decide(runtime, token, now).valid
    assert 0 < runtime.tokens.bytes <= 200_000 and len(runtime.tokens) < 400
    assert 0 < runtime.decisions.bytes <= 50_000 and len(runtime.decisions) < 400


def test_an_entry_heavier_than_an_eighth_of_the_bound_is_not_kept():
    cache = ByteBoundedLRU(8000)
    assert cache.put("small", 1, 100)
    assert not cache.put("huge", 2, 1000)
    assert cache.get("huge") is None and cache.get("small") == 1
    assert cache.bytes == 100 + 256


def test_huge_arguments_are_not_kept():
    """A caller-supplied subject of megabytes is verified, never cached."""
    from hessra_pg.core import verifier

    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    token = mint_authorization(root, "alice", "orders", "read")
    verifier._builders.clear()
    for i in range(3):
        call = runtime.statement(None, "100:100:", None, runtime.config.version)
        assert not call.decide(token, subject=str(i) * 2_000_000, resource="orders", operation="read").valid
    assert verifier._builders.bytes == 0 and runtime.decisions.bytes == 0


def test_a_malformed_token_is_remembered_as_a_reason_and_raised_fresh():
    """Re-raising one cached exception grows its traceback on every raise
    (0.2.0 leaked ~5 KB per call that way)."""
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    reasons = set()
    for _ in range(200):
        call = runtime.statement(None, "100:100:", None, runtime.config.version)
        reasons.add(call.decide("garbage!", subject="alice", resource="orders", operation="read").reason)
    assert reasons == {"bad_token"}
    (cached,) = [value for value, _ in runtime.tokens._items.values()]
    assert isinstance(cached, rt._Rejection)
    assert sys.getsizeof(cached) < 200


def test_cached_decision_ends_at_expiry_and_key_end():
    root = generate_keypair()
    now = time.time()
    token = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(start=int(now), duration=10))
    spare = RootKey(2, str(generate_keypair().public_key))
    runtime = runtime_with([RootKey(1, str(root.public_key), not_after=now + 5), spare])
    assert decide(runtime, token, now).valid
    assert len(runtime.decisions) == 1
    assert decide(runtime, token, now + 4).valid
    later = decide(runtime, token, now + 6)  # the key ended at now + 5
    assert later.reason == "bad_signature"
    runtime.load_config("2/1", (RootKey(1, str(root.public_key)),), {}, NO_REVOCATIONS)
    assert decide(runtime, token, now + 9).valid
    assert not decide(runtime, token, now + 10).valid  # expired


def test_denials_and_unrecognised_time_checks_are_not_cached():
    import biscuit_auth

    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    now = time.time()
    token = mint_authorization(root, "bob", "orders", "read")
    assert not decide(runtime, token, now).valid
    odd = biscuit_auth.BiscuitBuilder(
        'right("alice", "orders", "read"); check if time($t), $t <= {limit};', {"limit": int(now) + 100}
    ).build(root.private_key).to_base64()
    assert decide(runtime, odd, now).valid
    assert not len(runtime.decisions)
    assert not decide(runtime, odd, now + 200).valid


def test_the_clock_bounds_the_statement_time_from_above():
    """A long statement (a DO block) keeps one statement_timestamp(); the
    verification time still moves with the clock."""
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    long_ago = int((time.time() - 3600) * 1_000_000)
    call = runtime.statement(long_ago, "100:100:", None, runtime.config.version)
    assert abs(call.now - time.time()) < 5
    future = int((time.time() + 3600) * 1_000_000)
    assert runtime.statement(future, "100:100:", None, None).now == future / 1_000_000


def test_an_older_generation_than_one_committed_is_refused():
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))], version="7/100")
    runtime.statement(None, "snap-a", None, "7/100")  # confirmed outside a changing transaction
    runtime.load_config("6/90", (), {}, NO_REVOCATIONS)  # an old snapshot's configuration
    assert runtime.config.version == "7/100"  # not taken
    with pytest.raises(rt.StaleSnapshotError):
        runtime.statement(None, "snap-old", None, "6/90")
    # A changing transaction's own (uncommitted) generation is not "committed".
    runtime.config_changed("55")
    runtime.load_config("8/200", (), {}, NO_REVOCATIONS)
    runtime.statement(None, "snap-b", "55", "8/200")
    assert runtime.committed_generation == 7
    runtime.load_config("7/100", (RootKey(1, str(root.public_key)),), {}, NO_REVOCATIONS)  # after its rollback
    assert runtime.statement(None, "snap-c", None, "7/100").config.version == "7/100"


def test_reused_authorizers_keep_tokens_apart():
    """A parsed authorizer serves every token checked with the same
    parameters; what one token grants must not leak into the next."""
    from hessra_pg.core import verifier
    from hessra_pg.tokens.mint import attest_service
    from hessra_pg.core.verifier import ChainNode

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
    for i in range(2000):
        verify(alice, keys, now=now, subject=f"user{i}", resource="orders", operation="read")
    assert verifier._builders.bytes <= verifier.AUTHORIZER_CACHE_BYTES
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


def test_an_unexpected_error_denies_and_is_counted(monkeypatch):
    """No yes/no function raises, whatever goes wrong inside: it denies."""
    from hessra_pg.plpython import abi_0_3

    def broken(*args, **kwargs):
        raise RecursionError("simulated")

    monkeypatch.setattr(rt.RUNTIME, "statement", broken)
    before = rt.RUNTIME.internal_errors.get("RecursionError", 0)
    assert abi_0_3.verify_token("0 s", None, "t", "a", "r", "o", None, None) == "f"
    assert abi_0_3.identity_scope("0 s", None, "t") == ["ok", None, "f"]
    assert abi_0_3.authorized_resources("0 s", None, "t", "a", "o") == ["ok"]
    assert abi_0_3.token_identity("0 s", None, "t", None) == ["ok", None]
    assert '"reason": "internal_error"' in abi_0_3.explain("0 s", None, False, "t", "a", "r", "o", None, None)
    assert rt.RUNTIME.internal_errors["RecursionError"] == before + 5
    from hessra_pg.core import keys

    monkeypatch.setattr(keys, "canonical_public_key", broken)  # (abi_0_3 imports it when called)
    outcome = abi_0_3.canonical_key("ed25519/00")
    assert '"error": "hessra_authz: internal error (RecursionError)"' in outcome  # an admin call: loud


def test_the_context_text_is_read_in_one_place():
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    call = runtime.call(f"{int(time.time() * 1_000_000)} 10:20:15,16 777", runtime.config.version)
    assert abs(call.now - time.time()) < 5
    assert runtime.confirmed_snapshot == "10:20:15,16"
    runtime.config_changed("777")  # the same transaction changes the configuration: never confirmed
    runtime.call(f"{int(time.time() * 1_000_000)} 10:20:15,16 777", runtime.config.version)
    assert runtime.confirmed_snapshot is None
    with pytest.raises(rt._Stale):
        runtime.call("garbage", None)  # no snapshot: the slow path


def test_a_standby_snapshot_text_is_never_confirmed():
    """A hot standby's pg_current_snapshot() lists no transaction in progress:
    '100:105:' may see a commit of 102 the next time with the same text, so
    it never takes the fast path (docs/replicas.md); a primary's list does."""
    root = generate_keypair()
    runtime = runtime_with([RootKey(1, str(root.public_key))])
    runtime.statement(None, "100:105:", None, runtime.config.version)
    assert runtime.confirmed_snapshot is None
    with pytest.raises(rt._Stale):
        runtime.statement(None, "100:105:", None, None)
    runtime.statement(None, "100:105:101,103", None, runtime.config.version)
    assert runtime.statement(None, "100:105:101,103", None, None).config is runtime.config
    # Only the caller's own transaction in progress (a primary): confirmed.
    runtime.statement(None, "100:105:", "100", runtime.config.version)
    assert runtime.confirmed_snapshot == "100:105:"


def test_snapshot_text_rule():
    names = rt.snapshot_names_visibility
    assert names("730:730:", None)  # nothing in progress
    assert names("726:730:726,727", None)  # a primary's list
    assert names("726:730:", "726")  # only the caller's own transaction (a primary)
    assert not names("726:730:", None)  # a standby with transactions in progress
    assert not names("726:730:", "729")
    assert not names(None, None)
