"""Property tests (hypothesis) of mint -> verify.

For arbitrary subjects, resources and operations (any Unicode, quotes,
colons, Datalog-looking text) and chains of 0-4 nodes:

- a minted, fully attested token verifies, as a chain and as a singleton;
- changing the subject, resource, operation, root key or time flips the
  decision to false with the expected reason;
- a chain component is satisfied exactly when every node before it attested,
  whatever the order of the attestations (spec §3.3);
- mutated, truncated or random input never verifies and never raises:
  verify() always returns a Decision.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hessra_pg.core.encoding import decode_token, encode_token
from hessra_pg.errors import ConfigurationError, TokenFormatError
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import TokenTime, attest_service, mint_authorization
from hessra_pg.core.verifier import ChainNode, Decision, RootKey, load_token, verify, verify_identity

NOW = int(time.time())
DURATION = 300
ROOTS = {"ed25519": generate_keypair("ed25519"), "secp256r1": generate_keypair("secp256r1")}
KEYS = {alg: [RootKey(1, str(pair.public_key))] for alg, pair in ROOTS.items()}
STRANGER = [RootKey(1, str(generate_keypair().public_key))]
NODE_KEYS = [generate_keypair() for _ in range(4)]

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

#: Strings that look like Datalog, Biscuit error text or the verifier's own
#: parsing targets: they must stay plain data.
TRICKY = [
    "", ":", "alice:", ":alice", "urn:hessra:alice", '"', "'", "\\", '\\"', "\x00", "\n", "é", "𝄞", "✓",
    '") or true; //', 'right("alice", "orders", "read")', "check if time($time)", "$time < 0",
    "Check n°0 in authorizer: ", "Check n°0 in block n°0: ", "domain(", "prefix", "namespace(", "$sub",
    "allow if true", "{subject}", "trusting authority",
]
#: Known limit: expires_at is read from Biscuit's printed Datalog, one whole
#: line per check, and Biscuit prints strings unescaped; a string holding a
#: newline and then a complete time-check line could still change the
#: reported expiry and reason (never validity). Such strings are left out.
_SPOOFS_EXPIRY = re.compile(r"(^|\n)check if time\(\$(\w+)\), \$\2 < -?\d+;($|\n)")
FIELD = st.one_of(
    st.text(max_size=63),
    st.text(alphabet="\"':\\ \n\t{}()$,;/.-_\x00é𝄞", max_size=24),
    st.sampled_from(TRICKY),
).filter(lambda text: not _SPOOFS_EXPIRY.search(text))
COMPONENTS = st.lists(FIELD.filter(bool), max_size=4, unique=True)
ALGORITHM = st.sampled_from(sorted(ROOTS))


def mint(alg: str, subject: str, resource: str, operation: str, nodes=(), start: int = NOW,
         duration: int = DURATION) -> str:
    return mint_authorization(ROOTS[alg], subject, resource, operation, service_chain=nodes,
                              time_config=TokenTime(start=start, duration=duration))


def chain_of(components) -> list[ChainNode]:
    return [ChainNode(component, str(NODE_KEYS[index].public_key)) for index, component in enumerate(components)]


def attest(alg: str, token: str, resource: str, indexes) -> str:
    for index in indexes:
        token = attest_service(token, str(ROOTS[alg].public_key), resource, NODE_KEYS[index])
    return token


def check(token, keys, subject, resource, operation, now=NOW, **context) -> Decision:
    decision = verify(token, keys, now=now, subject=subject, resource=resource, operation=operation, **context)
    assert isinstance(decision, Decision)
    return decision


@FAST
@given(alg=ALGORITHM, subject=FIELD, resource=FIELD, operation=FIELD, components=COMPONENTS)
def test_minted_and_attested_tokens_verify(alg, subject, resource, operation, components):
    nodes = chain_of(components)
    token = attest(alg, mint(alg, subject, resource, operation, nodes), resource, range(len(nodes)))
    keys = KEYS[alg]
    decision = check(token, keys, subject, resource, operation, chain=nodes)
    assert (decision.valid, decision.reason) == (True, "ok")
    assert decision.expires_at == NOW + DURATION
    assert len(decision.revocation_ids) == 1 + len(nodes)
    assert check(token, keys, subject, resource, operation).valid  # as a singleton
    assert check(token, keys, None, resource, operation, capability=True).valid


@FAST
@given(alg=ALGORITHM, subject=FIELD, resource=FIELD, operation=FIELD, other=FIELD, components=COMPONENTS,
       which=st.sampled_from(["subject", "resource", "operation"]))
def test_another_subject_resource_or_operation_is_refused(alg, subject, resource, operation, other, components,
                                                          which):
    request = {"subject": subject, "resource": resource, "operation": operation}
    assume(request[which] != other)
    nodes = chain_of(components)
    token = attest(alg, mint(alg, subject, resource, operation, nodes), resource, range(len(nodes)))
    request[which] = other
    expected = "subject_mismatch" if which == "subject" else "denied"
    for context in ({}, {"chain": nodes}):
        decision = check(token, KEYS[alg], **request, **context)
        assert (decision.valid, decision.reason) == (False, expected)
    # Capability mode ignores the subject and nothing else.
    capability = check(token, KEYS[alg], None, request["resource"], request["operation"], capability=True)
    assert capability.valid is (which == "subject")


@FAST
@given(alg=ALGORITHM, subject=FIELD, resource=FIELD, operation=FIELD,
       duration=st.integers(1, 10**6), late=st.integers(0, 10**6))
def test_expiry_is_strict_and_the_root_key_matters(alg, subject, resource, operation, duration, late):
    token = mint(alg, subject, resource, operation, duration=duration)
    keys = KEYS[alg]
    assert check(token, keys, subject, resource, operation, now=NOW + duration - 1).valid
    expired = check(token, keys, subject, resource, operation, now=NOW + duration + late)
    assert (expired.valid, expired.reason, expired.expires_at) == (False, "expired", NOW + duration)
    for wrong in (STRANGER, KEYS["secp256r1" if alg == "ed25519" else "ed25519"]):
        decision = check(token, wrong, subject, resource, operation)
        assert (decision.valid, decision.reason) == (False, "bad_signature")


@FAST
@given(alg=ALGORITHM, resource=FIELD, components=st.lists(FIELD.filter(bool), min_size=1, max_size=4, unique=True),
       data=st.data())
def test_a_component_needs_exactly_the_nodes_before_it(alg, resource, components, data):
    """Attestations from any subset of the nodes, in any order: component c
    verifies iff every node before c attested; None iff all did."""
    nodes = chain_of(components)
    order = data.draw(st.permutations(range(len(nodes))))
    attested = order[: data.draw(st.integers(0, len(nodes)))]
    token = attest(alg, mint(alg, "alice", resource, "read", nodes), resource, attested)
    for position, component in [(len(nodes), None), *enumerate(components)]:
        missing = [node for index, node in enumerate(nodes[:position]) if index not in attested]
        decision = check(token, KEYS[alg], "alice", resource, "read", chain=nodes, component=component)
        if missing:
            assert (decision.valid, decision.reason) == (False, f"missing_attestation:{missing[0].component}")
        else:
            assert (decision.valid, decision.reason) == (True, "ok")
    unknown = data.draw(FIELD.filter(lambda text: text not in components))
    with pytest.raises(ConfigurationError):
        check(token, KEYS[alg], "alice", resource, "read", chain=nodes, component=unknown)


# -- hostile input ----------------------------------------------------------

SAMPLE_CHAIN = chain_of(["a", "b"])
SAMPLES = {
    alg: attest(alg, mint(alg, "alice", "orders", "read", SAMPLE_CHAIN, duration=10**6), "orders", [0, 1])
    for alg in ROOTS
}
SAMPLE_CONTENT = {alg: load_token(token, KEYS[alg], NOW) for alg, token in SAMPLES.items()}


def says_the_same(alg: str, token: str) -> bool:
    """Same blocks and same signatures as the sample. Biscuit's protobuf is
    malleable in ways that change nothing: e.g. turning the tag of a block's
    `next_key.algorithm` field (Ed25519 = 0, the default) into an unknown
    field leaves an identical, identically signed token."""
    verified, sample = load_token(token, KEYS[alg], NOW), SAMPLE_CONTENT[alg]
    return (verified.block_sources, verified.revocation_ids) == (sample.block_sources, sample.revocation_ids)


def _mutations(raw: bytes):
    size = len(raw)
    flip = st.tuples(st.integers(0, size - 1), st.integers(1, 255)).map(
        lambda args: raw[: args[0]] + bytes([raw[args[0]] ^ args[1]]) + raw[args[0] + 1:])
    truncate = st.integers(0, size - 1).map(lambda length: raw[:length])
    insert = st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=8)).map(
        lambda args: raw[: args[0]] + args[1] + raw[args[0]:])
    delete = st.tuples(st.integers(0, size - 1), st.integers(1, 16)).map(
        lambda args: raw[: args[0]] + raw[args[0] + args[1]:])
    several = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=2, max_size=6).map(
        lambda edits: _apply(raw, edits))
    return st.one_of(flip, truncate, insert, delete, several)


def _apply(raw: bytes, edits) -> bytes:
    data = bytearray(raw)
    for index, value in edits:
        data[index] = value
    return bytes(data)


@MANY
@given(alg=ALGORITHM, data=st.data())
def test_mutated_or_truncated_tokens_never_verify_as_anything_new(alg, data):
    raw = decode_token(SAMPLES[alg])
    mutated = data.draw(_mutations(raw))
    assume(mutated != raw)
    token = encode_token(mutated)
    for context in ({}, {"chain": SAMPLE_CHAIN}):
        decision = check(token, KEYS[alg], "alice", "orders", "read", **context)
        assert not decision.valid or says_the_same(alg, token)
    identity = verify_identity(token, KEYS[alg], now=NOW, identity="alice")
    assert isinstance(identity, Decision) and not identity.valid


@MANY
@given(alg=ALGORITHM, index=st.integers(0, 10**4), replacement=st.text(min_size=0, max_size=3))
def test_edited_token_text_verifies_only_if_it_says_the_same(alg, index, replacement):
    """Text edits can be harmless (other alphabet, padding, unused low bits
    of the last character): then the bytes, and the token, are the same."""
    original = SAMPLES[alg]
    index %= len(original)
    edited = original[:index] + replacement + original[index + 1:]
    decision = check(edited, KEYS[alg], "alice", "orders", "read", chain=SAMPLE_CHAIN)
    try:
        same_bytes = decode_token(edited) == decode_token(original)
    except TokenFormatError:
        same_bytes = False
    if same_bytes:
        assert decision.valid
    elif decision.valid:
        assert says_the_same(alg, edited)


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="


@MANY
@given(text=st.one_of(st.text(max_size=300), st.text(alphabet=B64, max_size=400),
                      st.binary(max_size=400).map(encode_token)),
       subject=st.one_of(st.none(), FIELD), resource=st.one_of(st.none(), FIELD))
def test_random_text_is_a_decision_never_an_exception(text, subject, resource):
    for keys in (KEYS["ed25519"], KEYS["secp256r1"]):
        decision = check(text, keys, subject, resource, "read")
        assert not decision.valid
        assert decision.reason in ("no_token", "bad_token", "too_complex", "unknown_key", "bad_signature")
        identity = verify_identity(text, keys, now=NOW, identity=subject)
        assert isinstance(identity, Decision) and not identity.valid


def test_a_length_delimited_field_retagged_as_a_varint_is_a_bad_token():
    """Found by the mutation property: read_shape used to raise TypeError
    (in SQL, an ERROR with a traceback instead of false)."""
    raw = bytearray(decode_token(SAMPLES["ed25519"]))
    raw[0] ^= 2  # authority (field 2, length-delimited) becomes field 2, varint
    decision = verify(encode_token(bytes(raw)), KEYS["ed25519"], now=NOW, subject="alice", resource="orders",
                      operation="read")
    assert (decision.valid, decision.reason) == (False, "bad_token")


# -- found by the properties above: Datalog-looking strings -----------------

def test_datalog_text_in_a_string_does_not_set_the_expiry():
    token = mint("ed25519", "alice", "orders", "check if time($time), $time < 0")
    assert check(token, KEYS["ed25519"], "alice", "orders", "check if time($time), $time < 0").valid
    decision = check(token, KEYS["ed25519"], "bob", "orders", "check if time($time), $time < 0")
    assert (decision.valid, decision.reason, decision.expires_at) == (False, "subject_mismatch", NOW + DURATION)
