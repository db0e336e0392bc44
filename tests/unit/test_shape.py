"""Appended blocks that could make Datalog evaluation expensive are refused
before evaluation; the shapes Hessra tokens use are accepted."""

import random
import time

import biscuit_auth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessra_pg.core.encoding import decode_token
from hessra_pg.errors import TokenFormatError, TokenShapeError
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.core.shape import MAX_BLOCKS, MAX_CLOSURE_DEPTH, check_shape, read_shape
from hessra_pg.core.verifier import RootKey, verify
from tests.hostile_tokens import append_forged_block, length_delimited, nested_closure_token

NOW = int(time.time())
ROOT = generate_keypair()


def appended(*blocks: str) -> str:
    biscuit = biscuit_auth.Biscuit.from_base64(mint_authorization(ROOT, "alice", "orders", "read"), ROOT.public_key)
    for source in blocks:
        biscuit = biscuit.append(biscuit_auth.BlockBuilder(source))
    return biscuit.to_base64()


def decide(token: str):
    return verify(token, [RootKey(1, str(ROOT.public_key))], now=NOW, subject="alice", resource="orders", operation="read")


FACTS = " ".join(f"f({i});" for i in range(16))
HOSTILE = {
    "rule": 'g($x) <- right($x, $y, $z);',
    "three-way join": "f(1); f(2); check if f($a), f($b), f($c);",
    "join budget": " ".join(["check if f($a), f($b), $a != $b;"] * 16),
    "regex": 'check if resource($r), $r.matches("(a+)+$");',
    "set iteration": "check if [1, 2, 3].any($x -> $x > 2);",
    "many facts": " ".join(f"f({i});" for i in range(17)),
    "long string": 'check if resource("' + "x" * 600 + '");',
    "many ops": "check if time($t), " + " + ".join(["$t"] * 10) + " > 0;",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_shapes_are_refused_quickly(name):
    token = appended(FACTS, HOSTILE[name]) if name == "join budget" else appended(HOSTILE[name])
    started = time.perf_counter()
    decision = decide(token)
    elapsed = time.perf_counter() - started
    assert (decision.valid, decision.reason) == (False, "too_complex")
    assert elapsed < 0.05


def test_hessra_shaped_blocks_are_accepted():
    token = appended("check if time($time), $time < 99999999999;",
                     'check if actor($a), $a == "x" || $a.starts_with("x" + ":");',
                     'check if designation("anchor", "a"); check if prefix("tenant/1/");')
    shape = read_shape(decode_token(token))
    check_shape(shape)
    assert len(shape.blocks) == 4


def test_too_many_blocks():
    token = appended(*["check if true;"] * MAX_BLOCKS)
    assert decide(token).reason == "too_complex"


def test_worst_accepted_block_is_fast():
    """The most expensive block the limits still allow: 16 facts of long
    strings, and a two-way join with string work at the ops limit."""
    big = " ".join(f'f("{i:03d}{"y" * 500}");' for i in range(16))
    check = "check if f($a), f($b), $a.contains($b + $b + $b + $b + $b) || $a.length() == $b.length() + 1;"
    token = appended(big, big + " " + " ".join([check] * 4))
    started = time.perf_counter()
    decision = decide(token)
    elapsed = time.perf_counter() - started
    assert decision.reason in ("check_failed", "too_complex")
    assert elapsed < 0.05


# --- hostile protobuf (security issue 11, hole 7) ---------------------------------------------------
# Hand-built bytes no Datalog parser would produce: the shape reader must
# answer TokenShapeError / TokenFormatError and nothing else, whatever it is
# given, or a yes/no SQL function raises an ERROR and logs a traceback.

def test_thousands_of_nested_closures_are_too_complex_not_a_recursion_error():
    token = nested_closure_token(mint_authorization(ROOT, "alice", "orders", "read"), depth=2_000)
    with pytest.raises(TokenShapeError, match="closures"):
        read_shape(decode_token(token))
    decision = decide(token)
    assert (decision.valid, decision.reason) == (False, "too_complex")


@pytest.mark.parametrize("depth", [1, MAX_CLOSURE_DEPTH])
def test_closures_up_to_the_depth_limit_are_read(depth):
    token = nested_closure_token(mint_authorization(ROOT, "alice", "orders", "read"), depth=depth)
    shape = read_shape(decode_token(token))
    assert shape.blocks[1].queries == [(0, depth + 1, False)]


def test_one_closure_too_deep_is_refused():
    token = nested_closure_token(mint_authorization(ROOT, "alice", "orders", "read"), depth=MAX_CLOSURE_DEPTH + 1)
    with pytest.raises(TokenShapeError):
        read_shape(decode_token(token))


def read_or_refuse(data: bytes) -> None:
    """read_shape and check_shape: success, or one of the two token errors."""
    try:
        check_shape(read_shape(data))
    except TokenFormatError:  # TokenShapeError included
        pass


def nested_messages(depth: int, field: int) -> bytes:
    """`depth` messages each holding the next in length-delimited `field`."""
    data = b""
    for _ in range(depth):
        data = length_delimited(field, data)
    return data


def mutations(rng: random.Random, data: bytes) -> list[bytes]:
    """Truncations, bit flips, byte replacements, splices of `data`, and random bytes."""
    cut = rng.randrange(len(data) + 1)
    flipped = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    replaced = bytearray(data)
    replaced[rng.randrange(len(data))] = rng.randrange(256)
    start = rng.randrange(len(data))
    return [data[:cut], data[cut:], bytes(flipped), bytes(replaced),
            data[:start] + rng.randbytes(rng.randint(1, 16)) + data[start:],
            rng.randbytes(rng.randint(0, 256))]


def fuzz_corpus() -> list[bytes]:
    """Real tokens of every shape the reader descends into, and forged ones."""
    good = mint_authorization(ROOT, "alice", "orders", "read")
    return [decode_token(token) for token in (
        good,
        mint_authorization(ROOT, "alice", "orders", "read", root_key_id=7),
        appended("check if time($time), $time < 99999999999;",
                 'check if actor($a), $a == "x" || $a.starts_with("x" + ":");',
                 'f(1); check if f($a), $a.length() == 1 && [1, 2].contains($a);'),
        nested_closure_token(good, depth=3),
    )]


FUZZ_CORPUS = fuzz_corpus()


def test_seeded_fuzz_only_token_errors_come_out():
    rng = random.Random(11)
    for _ in range(3_000):
        for data in mutations(rng, rng.choice(FUZZ_CORPUS)):
            read_or_refuse(data)


@pytest.mark.parametrize("field", [1, 2, 3, 4, 5, 6])
def test_deeply_nested_protobuf_messages(field):
    for depth in (10, 1_000, 5_000):
        read_or_refuse(nested_messages(depth, field))
    # Nested in each field the reader descends into, below a real authority block.
    good = mint_authorization(ROOT, "alice", "orders", "read")
    for wrap in range(1, 6):
        block = nested_messages(3_000, field)
        for _ in range(wrap):
            block = length_delimited(field, block)
        read_or_refuse(decode_token(append_forged_block(good, block)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_only_token_errors_come_out(data):
    read_or_refuse(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(FUZZ_CORPUS))), st.data())
def test_mutated_tokens_only_token_errors_come_out(index, data):
    token = bytearray(FUZZ_CORPUS[index])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(token) - 1))
        token[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(token)))
    read_or_refuse(bytes(token[:cut]))
    read_or_refuse(bytes(token))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=512), st.text(alphabet="ABCDEFabcdef0123456789+/_-= \n", max_size=512)))
def test_arbitrary_text_decodes_or_is_a_token_error(text):
    try:
        read_or_refuse(decode_token(text))
    except TokenFormatError:
        pass


@pytest.mark.parametrize("value", [None, b"bytes", 12, ["list"], "\ud800", "A" * 40_000])
def test_non_text_and_odd_text_are_token_errors(value):
    with pytest.raises(TokenFormatError):
        decode_token(value)
