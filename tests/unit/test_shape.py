"""Appended blocks that could make Datalog evaluation expensive are refused
before evaluation; the shapes Hessra tokens use are accepted."""

import time

import biscuit_auth
import pytest

from hessra_pg.encoding import decode_token
from hessra_pg.keys import generate_keypair
from hessra_pg.mint import mint_authorization
from hessra_pg.shape import MAX_BLOCKS, check_shape, read_shape
from hessra_pg.verify import RootKey, verify

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
