"""Pure verifier behaviour: decoding, key selection, windows, reasons."""

import base64
import time

import biscuit_auth
import pytest

from hessra_pg.core.encoding import MAX_TOKEN_CHARS, decode_token, encode_token
from hessra_pg.errors import ConfigurationError, KeyFormatError, TokenFormatError
from hessra_pg.core.keys import canonical_public_key, generate_keypair, parse_public_key
from hessra_pg.tokens.mint import TokenTime, attest_service, mint_authorization, restrict_prefix, sign_off
from hessra_pg.core.verifier import ChainNode, RootKey, parse_chain, verify
from tests import vectors

NOW = int(time.time())


@pytest.fixture(scope="module")
def root():
    return generate_keypair("secp256r1")


def key_of(pair, kid=1, **window) -> RootKey:
    return RootKey(kid, str(pair.public_key), **window)


def check(token, keys, subject="alice", resource="orders", operation="read", now=NOW, **kw):
    return verify(token, keys, now=now, subject=subject, resource=resource, operation=operation, **kw)


def test_both_base64_alphabets_with_or_without_padding():
    raw = bytes(range(256)) * 3
    urlsafe = encode_token(raw)
    assert "+" not in urlsafe and "/" not in urlsafe and urlsafe.endswith("=") is (len(raw) % 3 != 0)
    for text in (urlsafe, urlsafe.rstrip("="), base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("=")):
        assert decode_token(text) == raw


@pytest.mark.parametrize("text", ["", "   ", "not base64!", "abcde", "a" * (MAX_TOKEN_CHARS + 1), "ab=cd"])
def test_decode_rejects_bad_text(text):
    with pytest.raises(TokenFormatError):
        decode_token(text)


def test_key_forms_are_canonicalised():
    pem = vectors.root_key_pem()
    assert canonical_public_key(pem) == "secp256r1/031805334536362d5451f32ccefb8e57c9b61be2c4257d6ce96a705a24af3a7397"
    pair = generate_keypair()
    assert canonical_public_key(str(pair.public_key).upper().replace("ED25519", "ed25519")) == str(pair.public_key)


@pytest.mark.parametrize("text", ["", "ed25519/zz", "ed25519/" + "ab" * 31, "rsa/00", "secp256r1/" + "00" * 33,
                                  "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                                  "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"])
def test_malformed_keys_are_specific_errors(text):
    with pytest.raises(KeyFormatError):
        parse_public_key(text)


def test_round_trip_and_every_mutation_denied(root):
    token = mint_authorization(root, "alice", "orders", "read")
    assert check(token, [key_of(root)]).reason == "ok"
    assert check(token, [key_of(root)], subject="bob").reason == "subject_mismatch"
    assert check(token, [key_of(root)], resource="invoices").reason == "denied"
    assert check(token, [key_of(root)], operation="write").reason == "denied"
    assert check(token, [key_of(root)], now=int(time.time()) + 301).reason == "expired"
    assert check(token, [key_of(generate_keypair())]).reason == "bad_signature"


def test_expiry_is_strict_and_uses_start_time(root):
    token = mint_authorization(root, "alice", "orders", "read", time_config=TokenTime(start=1_000, duration=5))
    keys = [key_of(root, not_before=0)]
    assert check(token, keys, now=1_004).valid
    assert not check(token, keys, now=1_005).valid
    assert check(token, keys, now=1_004).expires_at == 1_005


def test_capability_mode_ignores_subject(root):
    token = mint_authorization(root, "alice", "orders", "read")
    assert verify(token, [key_of(root)], now=NOW, subject=None, resource="orders", operation="read", capability=True).valid
    assert not verify(token, [key_of(root)], now=NOW, subject=None, resource="orders", operation="write", capability=True).valid


def test_key_selection_by_root_key_id(root):
    other = generate_keypair()
    token = mint_authorization(root, "alice", "orders", "read", root_key_id=7)
    assert check(token, [key_of(other, 1), key_of(root, 7)]).valid
    assert check(token, [key_of(root, 1), key_of(other, 7)]).reason == "bad_signature"
    assert check(token, [key_of(root, 1)]).reason == "unknown_key"
    retired = key_of(root, 7, not_after=NOW - 1)
    assert check(token, [key_of(other, 1), retired]).reason == "key_inactive"


def test_key_windows_and_rotation(root):
    new = generate_keypair()
    old_token = mint_authorization(root, "alice", "orders", "read")
    new_token = mint_authorization(new, "alice", "orders", "read")
    keys = [key_of(root, 1), key_of(new, 2)]
    assert check(old_token, keys).valid and check(new_token, keys).valid
    keys = [key_of(root, 1, not_after=NOW), key_of(new, 2)]
    assert check(old_token, keys).reason == "bad_signature"
    assert check(new_token, keys).valid
    future = [key_of(root, 1, not_before=NOW + 10), key_of(new, 2)]
    assert not check(old_token, future).valid


def test_no_active_key_is_a_configuration_error(root):
    token = mint_authorization(root, "alice", "orders", "read")
    with pytest.raises(ConfigurationError, match="no active key"):
        check(token, [key_of(root, not_after=NOW - 5)])
    assert check(None, []).reason == "no_token"


def test_appended_right_grants_nothing(root):
    token = mint_authorization(root, "alice", "orders", "read")
    biscuit = biscuit_auth.Biscuit.from_base64(token, root.public_key)
    forged = biscuit.append(biscuit_auth.BlockBuilder('right("alice", "payroll", "write"); right("bob", "orders", "read");'))
    forged_token = forged.to_base64()
    assert check(forged_token, [key_of(root)]).valid  # the original right still works
    assert not check(forged_token, [key_of(root)], resource="payroll", operation="write").valid
    assert not check(forged_token, [key_of(root)], subject="bob").valid


def test_service_chain_component_semantics(root):
    nodes = {name: generate_keypair() for name in ("edge", "api", "db")}
    chain = tuple(ChainNode(name, str(pair.public_key)) for name, pair in nodes.items())
    token = mint_authorization(root, "alice", "orders", "read", service_chain=chain)
    keys, pk = [key_of(root)], str(root.public_key)
    assert check(token, keys, chain=chain, component="edge").valid
    assert check(token, keys, chain=chain, component="api").reason == "missing_attestation:edge"
    token = attest_service(token, pk, "orders", nodes["edge"])
    assert check(token, keys, chain=chain, component="api").valid
    assert check(token, keys, chain=chain).reason == "missing_attestation:api"
    wrong_service = attest_service(token, pk, "invoices", nodes["api"])
    assert not check(wrong_service, keys, chain=chain, component="db").valid
    wrong_key = attest_service(token, pk, "orders", nodes["db"])
    assert not check(wrong_key, keys, chain=chain, component="db").valid
    token = attest_service(attest_service(token, pk, "orders", nodes["db"]), pk, "orders", nodes["api"])
    assert check(token, keys, chain=chain).valid  # attestation order is not enforced (§3.3)
    with pytest.raises(ConfigurationError, match="not in the service chain"):
        check(token, keys, chain=chain, component="nope")


def test_multi_party_needs_every_sign_off(root):
    parties = {name: generate_keypair() for name in ("legal", "finance")}
    nodes = tuple(ChainNode(name, str(pair.public_key)) for name, pair in parties.items())
    token = mint_authorization(root, "alice", "orders", "read", multi_party=nodes)
    keys, pk = [key_of(root)], str(root.public_key)
    assert check(token, keys).reason == "missing_signoff"
    half = sign_off(token, pk, "legal", parties["legal"])
    assert not check(half, keys).valid
    assert check(sign_off(half, pk, "finance", parties["finance"]), keys).valid
    assert not check(sign_off(half, pk, "finance", parties["legal"]), keys).valid


def test_domain_and_prefix(root):
    prefix_key = generate_keypair()
    token = mint_authorization(root, "alice", "orders", "read", domain="example.com", prefix_key=str(prefix_key.public_key))
    keys, pk = [key_of(root)], str(root.public_key)
    restricted = restrict_prefix(token, pk, "tenant/1/", prefix_key)
    assert check(restricted, keys, domain="example.com", prefix="tenant/1/").valid
    assert check(restricted, keys, domain="other.com", prefix="tenant/1/").reason == "domain_mismatch"
    assert check(restricted, keys, domain="example.com").reason == "prefix_mismatch"
    assert not check(restricted, keys, domain="example.com", prefix="tenant/2/").valid
    assert not check(token, keys, domain="example.com", prefix="tenant/1/").valid


@pytest.mark.parametrize("nodes, message", [
    ({"a": 1}, "JSON array"),
    ([{"component": "a"}], "public_key"),
    ([{"public_key": "ed25519/" + "00" * 32}], "component"),
    ([{"component": "a", "public_key": "nope"}], "node 1"),
    ([{"component": "a", "public_key": "ed25519/" + "00" * 32}] * 2, "twice"),
    (["a"], "not a JSON object"),
])
def test_chain_validation(nodes, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_chain(nodes)


def test_protobuf_fields_of_the_wrong_wire_type_are_bad_tokens(root):
    # field 2 (authority, a message) sent as a varint: a well-formed protobuf
    # that is not a Biscuit
    assert check(encode_token(bytes([0x10, 0x05])), [key_of(root)]).reason == "bad_token"
    # authority whose block payload (field 1) is a varint
    assert check(encode_token(bytes([0x12, 0x02, 0x08, 0x01])), [key_of(root)]).reason == "bad_token"


def test_delegation_keeps_working_with_a_root_key_id(root):
    from hessra_pg.tokens.identity import delegate_identity, mint_identity
    from hessra_pg.core.verifier import verify_identity

    token = delegate_identity(mint_identity(root, "alice", root_key_id=3), str(root.public_key), "alice:x")
    assert verify_identity(token, [key_of(root, 3)], now=time.time(), identity="alice:x").valid
