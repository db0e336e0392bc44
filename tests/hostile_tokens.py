"""Hand-built hostile Biscuit bytes (schema.proto of biscuit v3).

biscuit-python only serializes what its Datalog parser accepts, so tokens
whose protobuf structure no parser would produce are written byte by byte
here. The shape check runs before the signature check, so the forged block
needs no valid signature to reach it.
"""

from __future__ import annotations

from hessra_pg.core.encoding import decode_token, encode_token

# Field numbers (biscuit v3 schema.proto).
BISCUIT_AUTHORITY, BISCUIT_BLOCKS, BISCUIT_PROOF = 2, 3, 4
SIGNED_BLOCK_BLOCK, SIGNED_BLOCK_NEXT_KEY, SIGNED_BLOCK_SIGNATURE = 1, 2, 3
PUBLIC_KEY_ALGORITHM, PUBLIC_KEY_KEY = 1, 2
BLOCK_SYMBOLS, BLOCK_VERSION, BLOCK_CHECKS = 1, 3, 6
CHECK_QUERIES = 1
RULE_HEAD, RULE_EXPRESSIONS = 1, 3
PREDICATE_NAME = 1
EXPRESSION_OPS = 1
OP_VALUE, OP_CLOSURE = 1, 4
TERM_BOOL = 6
CLOSURE_OPS = 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def nested_closures(depth: int) -> bytes:
    """One Op: `depth` closures each holding the next, the innermost `true`.

    Built inside out, iteratively (the point is that nothing recursing
    this deep survives).
    """
    op = length_delimited(OP_VALUE, varint_field(TERM_BOOL, 1))
    for _ in range(depth):
        op = length_delimited(OP_CLOSURE, length_delimited(CLOSURE_OPS, op))
    return op


def check_block(expression: bytes) -> bytes:
    """A Block holding one check `check if <expression>` (a serialized ExpressionV2)."""
    head = varint_field(PREDICATE_NAME, 1024)  # the block's first own symbol, "query"
    rule = length_delimited(RULE_HEAD, head) + length_delimited(RULE_EXPRESSIONS, expression)
    check = length_delimited(CHECK_QUERIES, rule)
    return length_delimited(BLOCK_SYMBOLS, b"query") + varint_field(BLOCK_VERSION, 3) + length_delimited(BLOCK_CHECKS, check)


def append_forged_block(token: str, block: bytes) -> str:
    """`token` (a real, signed token) with `block` appended under a junk signature.

    Keeps the authority block byte for byte, drops the proof and adds a new
    SignedBlock and a proof of the right size, so only the signature check
    could tell.
    """
    fields = _top_level(decode_token(token))
    authority = next(value for number, value in fields if number == BISCUIT_AUTHORITY)
    blocks = [value for number, value in fields if number == BISCUIT_BLOCKS]
    next_key = varint_field(PUBLIC_KEY_ALGORITHM, 0) + length_delimited(PUBLIC_KEY_KEY, bytes(32))
    signed = (length_delimited(SIGNED_BLOCK_BLOCK, block)
              + length_delimited(SIGNED_BLOCK_NEXT_KEY, next_key)
              + length_delimited(SIGNED_BLOCK_SIGNATURE, bytes(64)))
    proof = length_delimited(1, bytes(32))  # Proof.nextSecret
    data = (length_delimited(BISCUIT_AUTHORITY, authority)
            + b"".join(length_delimited(BISCUIT_BLOCKS, b) for b in blocks)
            + length_delimited(BISCUIT_BLOCKS, signed)
            + length_delimited(BISCUIT_PROOF, proof))
    return encode_token(data)


def nested_closure_token(token: str, depth: int = 2_000) -> str:
    """The hole-7 token: an appended check of `depth` nested closures."""
    return append_forged_block(token, check_block(length_delimited(EXPRESSION_OPS, nested_closures(depth))))


def _top_level(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, payload) of the length-delimited top-level fields."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key & 7 == 0:
            _, pos = _read_varint(data, pos)
            fields.append((key >> 3, b""))
            continue
        assert key & 7 == 2, "a Biscuit's top-level fields are varints or length-delimited"
        size, pos = _read_varint(data, pos)
        fields.append((key >> 3, data[pos:pos + size]))
        pos += size
    return fields


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
