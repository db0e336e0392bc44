"""Bound the work a token can make the Datalog engine do, before running it.

Anyone holding a valid token can append first-party blocks, and Biscuit's own
run limits are only checked between rule iterations: one check joining three
predicates over 100 facts burns a second of CPU whatever `max_time` says
(measured with biscuit-python 0.4.0). So we read the token's protobuf
structure (schema.proto of biscuit v3) and refuse shapes that no Hessra token
has and that could make evaluation expensive. The authority block is signed by
a key we trust and is not limited beyond the token size.

Limits for every block after the authority block:
- no rules (Hessra's appended blocks hold only facts and checks);
- at most MAX_FACTS_PER_BLOCK facts and MAX_CHECKS_PER_BLOCK check queries;
- strings it introduces are at most MAX_SYMBOL_BYTES long;
- each check query: at most MAX_QUERY_PREDICATES body predicates and
  MAX_EXPRESSION_OPS expression operations (closure bodies included, nested
  at most MAX_CLOSURE_DEPTH deep), no regex, no set iteration (.any/.all)
  and no extern functions; the closures of lazy `&&` / `||` (which Hessra's
  identity checks use) are allowed;
- a join budget: sum over queries of (facts in the token + authorizer facts)
  ** (body predicates) stays under MAX_JOIN_WORK.
Together these keep the worst appended block to a few milliseconds
(tests/integration/test_hostile_sql.py measures it).
"""

from __future__ import annotations

from ..errors import TokenFormatError, TokenShapeError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Iterable

MAX_BLOCKS = 32
MAX_FACTS_PER_BLOCK = 16
MAX_CHECKS_PER_BLOCK = 16
MAX_QUERY_PREDICATES = 2
MAX_EXPRESSION_OPS = 16
MAX_SYMBOL_BYTES = 512
#: Closures nested in closures. Hessra's lazy `||` / `&&` use depth 1; the
#: reader walks no deeper than this, whatever the token holds.
MAX_CLOSURE_DEPTH = 8
MAX_JOIN_WORK = 2_000
#: Facts the verifier itself adds (time, subject, resource, operation, domain,
#: prefix, capability rule output) and a margin.
AUTHORIZER_FACTS = 8

# Field numbers from biscuit's schema.proto (format v3).
_BISCUIT_ROOT_KEY_ID, _BISCUIT_AUTHORITY, _BISCUIT_BLOCKS = 1, 2, 3
_SIGNED_BLOCK_BLOCK, _SIGNED_BLOCK_EXTERNAL = 1, 4
_BLOCK_SYMBOLS, _BLOCK_FACTS, _BLOCK_RULES, _BLOCK_CHECKS = 1, 4, 5, 6
_CHECK_QUERIES = 1
_RULE_BODY, _RULE_EXPRESSIONS = 2, 3
_EXPRESSION_OPS = 1
_OP_BINARY, _OP_CLOSURE = 3, 4
_OP_BINARY_KIND = 1
_CLOSURE_OPS = 2
# OpBinary kinds whose cost is not bounded by the op count: regex
# compilation, iteration over a set (nested, it multiplies) and externs.
_BINARY_REGEX, _BINARY_ALL, _BINARY_ANY, _BINARY_FFI = 8, 25, 26, 28
_UNBOUNDED_BINARY = {_BINARY_REGEX, _BINARY_ALL, _BINARY_ANY, _BINARY_FFI}


class BlockShape(Record):
    __slots__ = ("facts", "rules", "queries", "third_party", "longest_symbol")

    def __init__(self, facts: int = 0, rules: int = 0, queries: list[tuple[int, int, bool]] | None = None,
                 third_party: bool = False, longest_symbol: int = 0) -> None:
        self.facts = facts
        self.rules = rules
        #: (body predicates, expression ops, uses an unbounded op) per check query
        self.queries = [] if queries is None else queries
        self.third_party = third_party
        self.longest_symbol = longest_symbol


class TokenShape(Record):
    __slots__ = ("root_key_id", "blocks")

    def __init__(self, root_key_id: int | None, blocks: list[BlockShape]) -> None:
        self.root_key_id = root_key_id
        self.blocks = blocks


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise TokenFormatError("token is truncated or not a Biscuit")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, "bytes | int"]]:
    """(field number, wire type, value) of one protobuf message.

    A tight loop with a one-byte fast path for keys and lengths: this runs
    on every cold verification (a service-chain token has ~100 fields).
    """
    if not isinstance(data, bytes):
        # A field we descend into arrived as a varint or fixed-size value.
        raise TokenFormatError("token is not a Biscuit (unexpected protobuf field type)")
    fields = []
    append = fields.append
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 2:
            if pos < end and data[pos] < 0x80:
                size = data[pos]
                pos += 1
            else:
                size, pos = _varint(data, pos)
            if pos + size > end:
                raise TokenFormatError("token is truncated or not a Biscuit")
            append((key >> 3, 2, data[pos:pos + size]))
            pos += size
        elif wire == 0:
            value, pos = _varint(data, pos)
            append((key >> 3, 0, value))
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise TokenFormatError("token is truncated or not a Biscuit")
            append((key >> 3, wire, data[pos:pos + width]))
            pos += width
        else:
            raise TokenFormatError("token is not a Biscuit (bad protobuf wire type)")
    return fields


def _ops_shape(ops: Iterable[bytes]) -> tuple[int, bool]:
    """Count operations (closure bodies included) and spot unbounded ones.

    An explicit stack, not recursion: a forged block can nest thousands of
    closures (RecursionError, an ERROR and a traceback in the server log).
    The depth limit also bounds the bytes copied, since each level's body
    is a copy of its slice.
    """
    count, unbounded = 0, False
    pending: list[tuple[bytes, int]] = [(op, 0) for op in ops]  # (op, closure depth)
    while pending:
        op, depth = pending.pop()
        count += 1
        for kind, _, value in _fields(op):
            if kind == _OP_CLOSURE:
                if depth >= MAX_CLOSURE_DEPTH:
                    raise TokenShapeError(f"an expression nests closures more than {MAX_CLOSURE_DEPTH} deep")
                pending.extend((body, depth + 1) for number, _, body in _fields(value) if number == _CLOSURE_OPS)
            elif kind == _OP_BINARY:
                unbounded = _is_unbounded_binary(value) or unbounded
    return count, unbounded


def _is_unbounded_binary(binary: bytes) -> bool:
    return any(number == _OP_BINARY_KIND and wire == 0 and kind in _UNBOUNDED_BINARY
               for number, wire, kind in _fields(binary))


def _expression_shape(expression: bytes) -> tuple[int, bool]:
    return _ops_shape(op for number, _, op in _fields(expression) if number == _EXPRESSION_OPS)


def _query_shape(rule: bytes) -> tuple[int, int, bool]:
    predicates = ops = 0
    unsafe = False
    for number, _, value in _fields(rule):
        if number == _RULE_BODY:
            predicates += 1
        elif number == _RULE_EXPRESSIONS:
            expression_ops, expression_unsafe = _expression_shape(value)
            ops += expression_ops
            unsafe = unsafe or expression_unsafe
    return predicates, ops, unsafe


def _block_shape(block: bytes, third_party: bool) -> BlockShape:
    shape = BlockShape(third_party=third_party)
    for number, _, value in _fields(block):
        if number == _BLOCK_SYMBOLS:
            shape.longest_symbol = max(shape.longest_symbol, len(value) if isinstance(value, bytes) else 0)
        elif number == _BLOCK_FACTS:
            shape.facts += 1
        elif number == _BLOCK_RULES:
            shape.rules += 1
        elif number == _BLOCK_CHECKS:
            for query_number, _, query in _fields(value):
                if query_number == _CHECK_QUERIES:
                    shape.queries.append(_query_shape(query))
    return shape


def _signed_block(signed: bytes, authority: bool = False) -> BlockShape:
    payload, third_party = None, False
    for number, _, value in _fields(signed):
        if number == _SIGNED_BLOCK_BLOCK:
            payload = value
        elif number == _SIGNED_BLOCK_EXTERNAL:
            third_party = True
    if payload is None:
        raise TokenFormatError("token is not a Biscuit (block without payload)")
    if authority:
        # Only its facts matter (they count towards the join budget).
        return BlockShape(facts=sum(1 for number, _, _ in _fields(payload) if number == _BLOCK_FACTS))
    return _block_shape(payload, third_party)


def read_shape(data: bytes) -> TokenShape:
    """Parse the structure of a serialized Biscuit (no signature check).

    The authority block is only read when blocks were appended (its facts
    count towards their join budget): a plain token costs one pass over the
    top-level fields.
    """
    root_key_id = None
    authority: bytes | None = None
    appended: list[bytes] = []
    for number, wire, value in _fields(data):
        if number == _BISCUIT_ROOT_KEY_ID and wire == 0:
            root_key_id = value
        elif number == _BISCUIT_AUTHORITY and wire == 2:
            authority = value
        elif number == _BISCUIT_BLOCKS and wire == 2:
            if len(appended) >= MAX_BLOCKS:
                raise TokenShapeError(f"token has more than {MAX_BLOCKS} blocks")
            appended.append(value)
    if authority is None:
        raise TokenFormatError("token is not a Biscuit (no authority block)")
    if not appended:
        if not any(number == _SIGNED_BLOCK_BLOCK and wire == 2 for number, wire, _ in _fields(authority)):
            raise TokenFormatError("token is not a Biscuit (authority block without payload)")
        return TokenShape(root_key_id=root_key_id, blocks=[BlockShape()])
    return TokenShape(root_key_id=root_key_id,
                      blocks=[_signed_block(authority, authority=True), *(_signed_block(b) for b in appended)])


def check_shape(shape: TokenShape) -> None:
    """Raise TokenShapeError if appended blocks could make evaluation costly."""
    if len(shape.blocks) > MAX_BLOCKS:
        raise TokenShapeError(f"token has more than {MAX_BLOCKS} blocks")
    visible_facts = sum(block.facts for block in shape.blocks) + AUTHORIZER_FACTS
    work = 0
    for index, block in enumerate(shape.blocks[1:], start=1):
        if block.rules:
            raise TokenShapeError(f"block {index} contains rules; appended blocks may hold only facts and checks")
        if block.facts > MAX_FACTS_PER_BLOCK:
            raise TokenShapeError(f"block {index} has more than {MAX_FACTS_PER_BLOCK} facts")
        if block.longest_symbol > MAX_SYMBOL_BYTES:
            raise TokenShapeError(f"block {index} has a string longer than {MAX_SYMBOL_BYTES} bytes")
        if len(block.queries) > MAX_CHECKS_PER_BLOCK:
            raise TokenShapeError(f"block {index} has more than {MAX_CHECKS_PER_BLOCK} check queries")
        for predicates, ops, unsafe in block.queries:
            if predicates > MAX_QUERY_PREDICATES:
                raise TokenShapeError(f"a check in block {index} joins more than {MAX_QUERY_PREDICATES} predicates")
            if ops > MAX_EXPRESSION_OPS:
                raise TokenShapeError(f"a check in block {index} has more than {MAX_EXPRESSION_OPS} expression operations")
            if unsafe:
                raise TokenShapeError(f"a check in block {index} uses regular expressions, set iteration or extern functions")
            work += visible_facts ** predicates
    if work > MAX_JOIN_WORK:
        raise TokenShapeError("appended checks could join too many facts")
