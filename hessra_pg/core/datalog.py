"""Read a Biscuit token's Datalog from its protobuf blocks, and the analysis
the identity-owner row policy needs (`actor_scope`).

Token structure is read from the serialized blocks (schema.proto of biscuit
v3, biscuit-auth 6.0), never from printed Datalog: Biscuit prints strings
without escaping quotes, so a crafted string can make printed text lie.

The decoder is stricter than biscuit's own (prost) reader: where prost would
*merge* or silently *truncate* (a non-repeated field given twice, a uint32
or enum value out of range, a bool other than 0/1, two members of a oneof),
we raise TokenFormatError instead. biscuit-auth never writes such bytes, so
real tokens decode the same way biscuit reads them, and a forged block can
only make us refuse to analyse it, never read it differently from the
engine. Unknown fields are skipped, as prost does.

Every walk is bounded: the input size (MAX_TOKEN_BYTES), and the nesting of
closures and of array/map terms (MAX_NESTING, checked before descending, so
recursion never gets deep). Malformed input raises TokenFormatError (or its
subclass TokenShapeError for the limits) and nothing else.

Cost: ~90 us for a cold 3-block identity token (root, delegation, JIT) on a
busy 2-CPU machine, about twice shape.read_shape; decoded blocks are cached
by their bytes, so a fresh JIT token over known blocks costs ~20 us.
"""

from __future__ import annotations

from ..errors import TokenFormatError, TokenShapeError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time: capability tokens and authorized() import this in a new backend
    from typing import Iterable, Union

#: Largest serialized token decoded (decode_token already caps the base64
#: text at 32 KiB, i.e. 24 KiB of bytes).
MAX_TOKEN_BYTES = 64 * 1024
#: Deepest nesting of closures (ops inside ops) and of arrays/maps inside
#: terms. Hessra's checks nest one closure (lazy `||`); shape.py admits 8.
MAX_NESTING = 8

#: Biscuit v3's default symbol table (biscuit SPECIFICATIONS.md "Symbol
#: table"; biscuit-auth src/datalog/symbol.rs DEFAULT_SYMBOLS). Indices
#: 0..1023 are reserved for it; a token's own symbols start at 1024.
DEFAULT_SYMBOLS: tuple[str, ...] = (
    "read", "write", "resource", "operation", "right", "time", "role", "owner", "tenant", "namespace",
    "user", "team", "service", "admin", "email", "group", "member", "ip_address", "client", "client_ip",
    "domain", "path", "version", "cluster", "node", "hostname", "nonce", "query",
)
_DEFAULT_SET = frozenset(DEFAULT_SYMBOLS)
_SYMBOL_OFFSET = 1024

_U32 = 1 << 32
_U64 = 1 << 64
_I63 = 1 << 63

# Field numbers of schema.proto (biscuit-auth 6.0, src/format/schema.proto).
# Key bytes below are (field << 3 | wire type): 0 = varint, 2 = bytes.
_BISCUIT_ROOT_KEY_ID, _BISCUIT_AUTHORITY, _BISCUIT_BLOCKS = 1, 2, 3
_SIGNED_BLOCK, _SIGNED_EXTERNAL = 1, 4
_EXTERNAL_PUBLIC_KEY = 2
_KEY_ALGORITHM, _KEY_BYTES = 1, 2
_BLOCK_SYMBOLS, _BLOCK_CONTEXT, _BLOCK_VERSION = 1, 2, 3
_BLOCK_FACTS, _BLOCK_RULES, _BLOCK_CHECKS, _BLOCK_SCOPE, _BLOCK_PUBLIC_KEYS = 4, 5, 6, 7, 8
_FACT_PREDICATE = 1
_RULE_HEAD, _RULE_BODY, _RULE_EXPRESSIONS, _RULE_SCOPE = 1, 2, 3, 4
_CHECK_QUERIES, _CHECK_KIND = 1, 2
_PREDICATE_NAME, _PREDICATE_TERMS = 1, 2
_SCOPE_TYPE, _SCOPE_PUBLIC_KEY = 1, 2
_EXPRESSION_OPS = 1
_OP_VALUE, _OP_UNARY, _OP_BINARY, _OP_CLOSURE = 1, 2, 3, 4
_OPERATOR_KIND, _OPERATOR_FFI_NAME = 1, 2
_CLOSURE_PARAMS, _CLOSURE_OPS = 1, 2
_TERM_VARIABLE, _TERM_INTEGER, _TERM_STRING, _TERM_DATE, _TERM_BYTES = 1, 2, 3, 4, 5
_TERM_BOOL, _TERM_SET, _TERM_NULL, _TERM_ARRAY, _TERM_MAP = 6, 7, 8, 9, 10
_COLLECTION_ITEMS = 1  # TermSet.set, Array.array, Map.entries
_MAP_ENTRY_KEY, _MAP_ENTRY_VALUE = 1, 2
_MAP_KEY_INTEGER, _MAP_KEY_STRING = 1, 2

_ALGORITHMS = {0: "ed25519", 1: "secp256r1"}
_UNKNOWN_KEY = "<unknown public key id>"  # what biscuit prints for a dangling scope key index


class _KindType(type):
    """A small IntEnum (the enum module, with typing and dataclasses, cost
    ~20 ms in a new backend): the int attributes of a class body become
    its members, int instances with a name; the class iterates over them,
    and calling it with a value returns that member."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, object]) -> "_KindType":
        values = {key: value for key, value in namespace.items() if type(value) is int and not key.startswith("_")}
        for key in values:
            del namespace[key]
        cls = super().__new__(mcs, name, bases, namespace)
        members = []
        for key, value in values.items():
            member = int.__new__(cls, value)
            member.name = key  # type: ignore[attr-defined]
            type.__setattr__(cls, key, member)
            members.append(member)
        type.__setattr__(cls, "_members", tuple(members))
        type.__setattr__(cls, "_by_value", {int(member): member for member in members})
        return cls

    def __iter__(cls):  # type: ignore[no-untyped-def]
        return iter(cls._members)  # type: ignore[attr-defined]

    def __len__(cls) -> int:
        return len(cls._members)  # type: ignore[attr-defined]

    def __call__(cls, value):  # type: ignore[no-untyped-def]
        try:
            return cls._by_value[value]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None

    def __setattr__(cls, name: str, value: object) -> None:
        raise AttributeError(f"cannot reassign member {name!r}")


class _Kind(int, metaclass=_KindType):
    name: str

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {int(self)}>"

    __str__ = int.__repr__
    __format__ = int.__format__


class UnaryKind(_Kind):
    NEGATE = 0
    PARENS = 1
    LENGTH = 2
    TYPE_OF = 3
    FFI = 4


class BinaryKind(_Kind):
    LESS_THAN = 0
    GREATER_THAN = 1
    LESS_OR_EQUAL = 2
    GREATER_OR_EQUAL = 3
    EQUAL = 4  # strict `===` since Datalog 3.3
    CONTAINS = 5
    PREFIX = 6  # .starts_with()
    SUFFIX = 7
    REGEX = 8
    ADD = 9
    SUB = 10
    MUL = 11
    DIV = 12
    AND = 13  # eager `&&` (printed `&&!`)
    OR = 14  # eager `||` (printed `||!`)
    INTERSECTION = 15
    UNION = 16
    BITWISE_AND = 17
    BITWISE_OR = 18
    BITWISE_XOR = 19
    NOT_EQUAL = 20
    HETEROGENEOUS_EQUAL = 21  # `==` since Datalog 3.3
    HETEROGENEOUS_NOT_EQUAL = 22
    LAZY_AND = 23  # `&&` since Datalog 3.3: right side is a closure
    LAZY_OR = 24
    ALL = 25
    ANY = 26
    GET = 27
    FFI = 28


class CheckKind(_Kind):
    IF = 0  # `check if` (also the meaning of an absent kind)
    ALL = 1  # `check all`
    REJECT = 2  # `reject if`


# -- the structure -----------------------------------------------------------

_set = object.__setattr__


class _Frozen(Record):
    """A Record whose fields are set once, by its __init__ (as a frozen
    dataclass: decoded blocks are cached and shared between tokens).
    Hand-written rather than dataclasses, whose imports and generated
    methods cost ~20 ms in a new backend."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")


class Variable(_Frozen):
    name: str

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        _set(self, "name", name)


class Date(_Frozen):
    """A Datalog date: seconds since the Unix epoch (Hessra uses integers instead)."""

    seconds: int

    __slots__ = ("seconds",)

    def __init__(self, seconds: int) -> None:
        _set(self, "seconds", seconds)


class SetTerm(_Frozen):
    items: tuple["Term", ...]  # wire order (biscuit itself keeps a sorted set)

    __slots__ = ("items",)

    def __init__(self, items: tuple["Term", ...]) -> None:
        _set(self, "items", items)


class ArrayTerm(_Frozen):
    items: tuple["Term", ...]

    __slots__ = ("items",)

    def __init__(self, items: tuple["Term", ...]) -> None:
        _set(self, "items", items)


class MapTerm(_Frozen):
    entries: tuple[tuple[Union[int, str], "Term"], ...]

    __slots__ = ("entries",)

    def __init__(self, entries: tuple[tuple[Union[int, str], "Term"], ...]) -> None:
        _set(self, "entries", entries)


#: A term: Python `str` (string), `int` (integer), `bool`, `bytes`, None
#: (null), or one of the classes above. Test bools with `type(t) is bool`
#: (bool is an int subclass). (`Term` and `Op` are typing aliases, built on
#: first use by __getattr__ at the end of this module.)
if TYPE_CHECKING:
    Term = Union[Variable, int, str, bool, bytes, None, Date, SetTerm, ArrayTerm, MapTerm]


class Value(_Frozen):
    term: Term

    __slots__ = ("term",)

    def __init__(self, term: Term) -> None:
        _set(self, "term", term)


class Unary(_Frozen):
    kind: UnaryKind
    ffi: str | None

    __slots__ = ("kind", "ffi")

    def __init__(self, kind: UnaryKind, ffi: str | None = None) -> None:
        _set(self, "kind", kind)
        _set(self, "ffi", ffi)


class Binary(_Frozen):
    kind: BinaryKind
    ffi: str | None

    __slots__ = ("kind", "ffi")

    def __init__(self, kind: BinaryKind, ffi: str | None = None) -> None:
        _set(self, "kind", kind)
        _set(self, "ffi", ffi)


class Closure(_Frozen):
    """Right side of a lazy `&&`/`||` (no params) or of `.all`/`.any` (one)."""

    params: tuple[str, ...]
    ops: tuple["Op", ...]

    __slots__ = ("params", "ops")

    def __init__(self, params: tuple[str, ...], ops: tuple["Op", ...]) -> None:
        _set(self, "params", params)
        _set(self, "ops", ops)


#: An expression is a tuple of ops in postfix (stack) order.
if TYPE_CHECKING:
    Op = Union[Value, Unary, Binary, Closure]


class Predicate(_Frozen):
    name: str
    terms: tuple[Term, ...]

    __slots__ = ("name", "terms")

    def __init__(self, name: str, terms: tuple[Term, ...]) -> None:
        _set(self, "name", name)
        _set(self, "terms", terms)


class Rule(_Frozen):
    """A rule, or a check query (whose head carries no meaning)."""

    head: Predicate
    body: tuple[Predicate, ...]
    expressions: tuple[tuple[Op, ...], ...]
    #: "authority", "previous" or a public key "ed25519/<hex>" / "secp256r1/<hex>"
    scopes: tuple[str, ...]

    __slots__ = ("head", "body", "expressions", "scopes")

    def __init__(self, head: Predicate, body: tuple[Predicate, ...], expressions: tuple[tuple[Op, ...], ...],
                 scopes: tuple[str, ...]) -> None:
        _set(self, "head", head)
        _set(self, "body", body)
        _set(self, "expressions", expressions)
        _set(self, "scopes", scopes)


class Check(_Frozen):
    kind: CheckKind
    queries: tuple[Rule, ...]

    __slots__ = ("kind", "queries")

    def __init__(self, kind: CheckKind, queries: tuple[Rule, ...]) -> None:
        _set(self, "kind", kind)
        _set(self, "queries", queries)


class Block(_Frozen):
    #: the block's own `symbols` field (a first-party block resolves against
    #: the token's table, of which these are a part; see decode)
    symbols: tuple[str, ...]
    #: signed by an external key (then `external_key` is that key)
    third_party: bool
    external_key: str | None
    version: int | None
    context: str | None
    facts: tuple[Predicate, ...]
    rules: tuple[Rule, ...]
    checks: tuple[Check, ...]
    scopes: tuple[str, ...]
    public_keys: tuple[str, ...]

    __slots__ = ("symbols", "third_party", "external_key", "version", "context", "facts", "rules", "checks", "scopes",
                 "public_keys")

    def __init__(self, symbols: tuple[str, ...], third_party: bool, external_key: str | None, version: int | None,
                 context: str | None, facts: tuple[Predicate, ...], rules: tuple[Rule, ...], checks: tuple[Check, ...],
                 scopes: tuple[str, ...], public_keys: tuple[str, ...]) -> None:
        _set(self, "symbols", symbols)
        _set(self, "third_party", third_party)
        _set(self, "external_key", external_key)
        _set(self, "version", version)
        _set(self, "context", context)
        _set(self, "facts", facts)
        _set(self, "rules", rules)
        _set(self, "checks", checks)
        _set(self, "scopes", scopes)
        _set(self, "public_keys", public_keys)


class Token(_Frozen):
    root_key_id: int | None
    #: the authority block first, then the appended blocks in order
    blocks: tuple[Block, ...]

    __slots__ = ("root_key_id", "blocks")

    def __init__(self, root_key_id: int | None, blocks: tuple[Block, ...]) -> None:
        _set(self, "root_key_id", root_key_id)
        _set(self, "blocks", blocks)


# -- protobuf reading ---------------------------------------------------------

def _malformed(what: str) -> TokenFormatError:
    return TokenFormatError(f"token is not a well-formed Biscuit ({what})")


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= _U64:
                raise _malformed("varint over 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise _malformed("varint over 10 bytes")
    raise _malformed("truncated varint")


def _scan(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """The fields of the message in buf[pos:end], without copying bytes.

    Each entry is (key, a, b) with key = field << 3 | wire type; a varint
    has its value in a, a length-delimited field its extent buf[a:b]. Fixed
    32/64-bit fields (no Biscuit field uses them) are kept as extents too.
    One-byte keys, lengths and values take a fast path: this loop is most
    of the decoding time.
    """
    fields: list[tuple[int, int, int]] = []
    append = fields.append
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
            if key < 8:
                raise _malformed("field number 0")
        else:
            key, pos = _varint(buf, pos, end)
            if key < 8 or key >= _U32:  # (a padded varint can still spell field 0)
                raise _malformed("field number out of range")
        wire = key & 7
        if wire == 2:
            if pos < end and buf[pos] < 0x80:
                stop = pos + 1 + buf[pos]
                pos += 1
            else:
                size, pos = _varint(buf, pos, end)
                stop = pos + size
            if stop > end:
                raise _malformed("truncated field")
            append((key, pos, stop))
            pos = stop
        elif wire == 0:
            if pos < end and buf[pos] < 0x80:
                append((key, buf[pos], 0))
                pos += 1
            else:
                value, pos = _varint(buf, pos, end)
                append((key, value, 0))
        elif wire == 1 or wire == 5:
            stop = pos + (8 if wire == 1 else 4)
            if stop > end:
                raise _malformed("truncated field")
            append((key, pos, stop))
            pos = stop
        else:
            # Groups (3, 4) are not part of any Biscuit message; 6 and 7 do not exist.
            raise _malformed("unsupported protobuf wire type")
    return fields


def _only_field(buf: bytes, start: int, stop: int, key: int) -> int:
    """Where the payload of a message made of exactly one length-delimited
    field `key` with a one-byte length starts, or -1: the usual shape of a
    FactV2, a one-query CheckV2 or an Op, read without a scan."""
    if 2 <= stop - start < 0x82 and buf[start] == key and buf[start + 1] == stop - start - 2:
        return start + 2
    return -1


def _wrong_wire(key: int) -> TokenFormatError:
    return _malformed(f"field {key >> 3} has the wrong wire type")


def _u32(value: int) -> int:
    if value >= _U32:
        raise _malformed("uint32 out of range")
    return value


def _i64(value: int) -> int:
    return value - _U64 if value >= _I63 else value


def _utf8(buf: bytes, start: int, stop: int) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("string is not UTF-8") from None


class _Table:
    """The symbols and public keys one block's indices resolve against."""

    __slots__ = ("symbols", "public_keys", "ops")

    def __init__(self, symbols: tuple[str, ...], public_keys: tuple[str, ...]) -> None:
        self.symbols = symbols
        self.public_keys = public_keys
        # Decoded leaf ops by their bytes: Hessra's checks repeat a few
        # (`$a`, `"X"`, `":"`) and decoding runs on every cold verification.
        self.ops: dict[bytes, Op] = {}

    def symbol(self, index: int) -> str:
        if index < _SYMBOL_OFFSET:
            if index < len(DEFAULT_SYMBOLS):
                return DEFAULT_SYMBOLS[index]
        elif index - _SYMBOL_OFFSET < len(self.symbols):
            return self.symbols[index - _SYMBOL_OFFSET]
        raise _malformed(f"unknown symbol {index}")

    def public_key(self, index: int) -> str:
        # biscuit neither rejects nor resolves a dangling index (it trusts no block).
        if 0 <= index < len(self.public_keys):
            return self.public_keys[index]
        return _UNKNOWN_KEY


def _public_key(buf: bytes, start: int, stop: int) -> str:
    algorithm: int | None = None
    key: bytes | None = None
    for field, a, b in _scan(buf, start, stop):
        if field == _KEY_ALGORITHM << 3:
            if algorithm is not None:
                raise _malformed("repeated key algorithm")
            algorithm = a
        elif field == _KEY_BYTES << 3 | 2:
            if key is not None:
                raise _malformed("repeated key bytes")
            key = buf[a:b]
        elif field >> 3 in (_KEY_ALGORITHM, _KEY_BYTES):
            raise _wrong_wire(field)
    name = _ALGORITHMS.get(0 if algorithm is None else algorithm)
    if name is None:
        raise _malformed("unknown key algorithm")
    return f"{name}/{(key or b'').hex()}"


# -- terms ---------------------------------------------------------------------

def _term(table: _Table, buf: bytes, start: int, stop: int, depth: int) -> Term:
    # Fast path: a one-byte key and a varint filling the rest (a variable,
    # a symbol, an integer, a date or a bool): the commonest terms.
    key = buf[start] if start < stop else 0
    a = b = 0
    fast = False
    if key in _TERM_VARINT_KEYS:
        a, end = _varint(buf, start + 1, stop)
        fast = end == stop
    if not fast:  # not one varint spanning the message: read it in full
        known = [entry for entry in _scan(buf, start, stop) if 1 <= entry[0] >> 3 <= _TERM_MAP]
        if len(known) != 1:
            raise _malformed("a term must hold exactly one value")
        key, a, b = known[0]
    field, wire = key >> 3, key & 7
    if field <= _TERM_DATE or field == _TERM_BOOL:
        if wire != 0:
            raise _wrong_wire(key)
        if field == _TERM_VARIABLE:
            term: Term = Variable(table.symbol(_u32(a)))
        elif field == _TERM_INTEGER:
            term = _i64(a)
        elif field == _TERM_STRING:
            term = table.symbol(a)
        elif field == _TERM_DATE:
            term = Date(a)
        elif a > 1:
            raise _malformed("bool out of range")
        else:
            term = a == 1
    else:
        if wire != 2:
            raise _wrong_wire(key)
        if field == _TERM_BYTES:
            term = buf[a:b]
        elif field == _TERM_NULL:
            term = None  # an Empty message; its contents (unknown fields) are ignored
        elif field == _TERM_SET:
            term = SetTerm(_set_items(table, buf, a, b, depth))
        elif depth >= MAX_NESTING:
            raise TokenShapeError(f"terms nested more than {MAX_NESTING} deep")
        elif field == _TERM_ARRAY:
            term = ArrayTerm(tuple(_term(table, buf, c, d, depth + 1) for c, d in _items(buf, a, b)))
        else:
            term = MapTerm(tuple(_map_entry(table, buf, c, d, depth + 1) for c, d in _items(buf, a, b)))
    return term


_TERM_VARINT_KEYS = frozenset(field << 3 for field in (_TERM_VARIABLE, _TERM_INTEGER, _TERM_STRING, _TERM_DATE, _TERM_BOOL))


def _items(buf: bytes, start: int, stop: int) -> list[tuple[int, int]]:
    """Extents of the repeated field 1 of a TermSet, Array or Map."""
    items = []
    for key, a, b in _scan(buf, start, stop):
        if key == _COLLECTION_ITEMS << 3 | 2:
            items.append((a, b))
        elif key >> 3 == _COLLECTION_ITEMS:
            raise _wrong_wire(key)
    return items


def _set_items(table: _Table, buf: bytes, start: int, stop: int, depth: int) -> tuple[Term, ...]:
    # biscuit refuses variables and sets in a set, and mixed element types.
    items = tuple(_term(table, buf, a, b, depth + 1) for a, b in _items(buf, start, stop))
    kinds = {type(item) for item in items}
    if Variable in kinds or SetTerm in kinds or len(kinds) > 1:
        raise _malformed("a set holds a variable, a set or mixed types")
    return items


def _map_entry(table: _Table, buf: bytes, start: int, stop: int, depth: int) -> tuple[Union[int, str], Term]:
    key: Union[int, str, None] = None
    value: Term = None
    seen_key = seen_value = False
    for field, a, b in _scan(buf, start, stop):
        if field == _MAP_ENTRY_KEY << 3 | 2:
            if seen_key:
                raise _malformed("repeated map key")
            seen_key = True
            key = _map_key(table, buf, a, b)
        elif field == _MAP_ENTRY_VALUE << 3 | 2:
            if seen_value:
                raise _malformed("repeated map value")
            seen_value = True
            value = _term(table, buf, a, b, depth)
        elif field >> 3 in (_MAP_ENTRY_KEY, _MAP_ENTRY_VALUE):
            raise _wrong_wire(field)
    if key is None or not seen_value:
        raise _malformed("map entry without key or value")
    return key, value


def _map_key(table: _Table, buf: bytes, start: int, stop: int) -> Union[int, str]:
    known = [entry for entry in _scan(buf, start, stop) if entry[0] >> 3 in (_MAP_KEY_INTEGER, _MAP_KEY_STRING)]
    if len(known) != 1 or known[0][0] & 7 != 0:
        raise _malformed("a map key must hold exactly one integer or string")
    field, value, _ = known[0]
    return _i64(value) if field >> 3 == _MAP_KEY_INTEGER else table.symbol(value)


# -- expressions -----------------------------------------------------------------

_UNARY_OPS = {(kind.value, None): Unary(kind) for kind in UnaryKind if kind is not UnaryKind.FFI}
_BINARY_OPS = {(kind.value, None): Binary(kind) for kind in BinaryKind if kind is not BinaryKind.FFI}


def _operator(table: _Table, buf: bytes, start: int, stop: int, binary: bool) -> Op:
    if stop - start == 2 and buf[start] == _OPERATOR_KIND << 3:
        op = (_BINARY_OPS if binary else _UNARY_OPS).get((buf[start + 1], None))
        if op is not None:
            return op  # the usual `08 kind` message
    kind = 0  # a required enum left out reads as its zero value, as in prost
    ffi: int | None = None
    seen_kind = False
    for key, a, _ in _scan(buf, start, stop):
        if key == _OPERATOR_KIND << 3:
            if seen_kind:
                raise _malformed("repeated operator kind")
            seen_kind, kind = True, a
        elif key == _OPERATOR_FFI_NAME << 3:
            if ffi is not None:
                raise _malformed("repeated extern name")
            ffi = a
        elif key >> 3 in (_OPERATOR_KIND, _OPERATOR_FFI_NAME):
            raise _wrong_wire(key)
    ffi_kind = BinaryKind.FFI if binary else UnaryKind.FFI
    if kind == ffi_kind:
        if ffi is None:
            raise _malformed("extern call without a name")
        return Binary(BinaryKind.FFI, table.symbol(ffi)) if binary else Unary(UnaryKind.FFI, table.symbol(ffi))
    op = (_BINARY_OPS if binary else _UNARY_OPS).get((kind, ffi))
    if op is None:
        raise _malformed("unknown operator or extern name on a built-in operator")
    return op


#: Operators by their bytes, shared across tokens (an operator reads the
#: same under every symbol table). Canonical encodings make ~35 entries;
#: the bound only stops odd encodings from growing it.
_STATIC_OPS: dict[bytes, Op] = {}
_STATIC_OPS_MAX = 256


def _op(table: _Table, buf: bytes, start: int, stop: int, depth: int) -> Op:
    raw = buf[start:stop]
    op = _STATIC_OPS.get(raw) or table.ops.get(raw)
    if op is not None:
        return op
    # Fast path: one field whose one-byte length spans the message (every
    # op biscuit writes under 128 bytes); anything else takes the general path.
    if 2 <= stop - start < 0x82 and buf[start + 1] == stop - start - 2 and buf[start] in _OP_KEYS:
        key, a, b = buf[start], start + 2, stop
    else:
        known = [entry for entry in _scan(buf, start, stop) if 1 <= entry[0] >> 3 <= _OP_CLOSURE]
        if len(known) != 1:
            raise _malformed("an operation must hold exactly one of value, unary, binary, closure")
        key, a, b = known[0]
        if key & 7 != 2:
            raise _wrong_wire(key)
    field = key >> 3
    if field == _OP_VALUE:
        term = _term(table, buf, a, b, depth)
        op = Value(term)
        if not isinstance(term, (ArrayTerm, MapTerm, SetTerm)):
            table.ops[raw] = op  # leaves only, as for terms
    elif field == _OP_CLOSURE:
        op = _closure(table, buf, a, b, depth)  # never memoized (see _term)
    else:
        op = _operator(table, buf, a, b, binary=field == _OP_BINARY)
        if op.ffi is None:  # type: ignore[union-attr]
            if len(_STATIC_OPS) < _STATIC_OPS_MAX:
                _STATIC_OPS[raw] = op
        else:
            table.ops[raw] = op
    return op


_OP_KEYS = frozenset(field << 3 | 2 for field in (_OP_VALUE, _OP_UNARY, _OP_BINARY, _OP_CLOSURE))


def _closure(table: _Table, buf: bytes, start: int, stop: int, depth: int) -> Closure:
    if depth >= MAX_NESTING:
        raise TokenShapeError(f"closures nested more than {MAX_NESTING} deep")
    params: list[str] = []
    ops: list[Op] = []
    for key, a, b in _scan(buf, start, stop):
        if key == _CLOSURE_PARAMS << 3:
            params.append(table.symbol(_u32(a)))
        elif key == _CLOSURE_PARAMS << 3 | 2:
            # prost also accepts the packed encoding of a repeated scalar.
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                params.append(table.symbol(_u32(value)))
        elif key == _CLOSURE_OPS << 3 | 2:
            ops.append(_op(table, buf, a, b, depth + 1))
        elif key >> 3 in (_CLOSURE_PARAMS, _CLOSURE_OPS):
            raise _wrong_wire(key)
    return Closure(tuple(params), tuple(ops))


def _expression(table: _Table, buf: bytes, start: int, stop: int) -> tuple[Op, ...]:
    ops = []
    for key, a, b in _scan(buf, start, stop):
        if key == _EXPRESSION_OPS << 3 | 2:
            ops.append(_op(table, buf, a, b, 0))
        elif key >> 3 == _EXPRESSION_OPS:
            raise _wrong_wire(key)
    return tuple(ops)


# -- predicates, rules, checks -----------------------------------------------------

def _predicate(table: _Table, buf: bytes, start: int, stop: int) -> Predicate:
    if stop - start == 2 and buf[start] == _PREDICATE_NAME << 3 and buf[start + 1] < 0x80:
        return Predicate(table.symbol(buf[start + 1]), ())  # a check's `query()` head
    name = 0  # required, read as zero when left out (prost)
    seen_name = False
    terms = []
    for key, a, b in _scan(buf, start, stop):
        if key == _PREDICATE_TERMS << 3 | 2:
            terms.append(_term(table, buf, a, b, 0))
        elif key == _PREDICATE_NAME << 3:
            if seen_name:
                raise _malformed("repeated predicate name")
            seen_name, name = True, a
        elif key >> 3 in (_PREDICATE_NAME, _PREDICATE_TERMS):
            raise _wrong_wire(key)
    return Predicate(table.symbol(name), tuple(terms))


def _fact(table: _Table, buf: bytes, start: int, stop: int) -> Predicate:
    inner = _only_field(buf, start, stop, _FACT_PREDICATE << 3 | 2)
    if inner >= 0:
        return _predicate(table, buf, inner, stop)
    predicate: Predicate | None = None
    for key, a, b in _scan(buf, start, stop):
        if key == _FACT_PREDICATE << 3 | 2:
            if predicate is not None:
                raise _malformed("repeated fact predicate")
            predicate = _predicate(table, buf, a, b)
        elif key >> 3 == _FACT_PREDICATE:
            raise _wrong_wire(key)
    return predicate if predicate is not None else Predicate(table.symbol(0), ())


def _scope(table: _Table, buf: bytes, start: int, stop: int) -> str:
    known = [entry for entry in _scan(buf, start, stop) if entry[0] >> 3 in (_SCOPE_TYPE, _SCOPE_PUBLIC_KEY)]
    if len(known) != 1 or known[0][0] & 7 != 0:
        raise _malformed("a scope must hold exactly one scope type or public key")
    key, value, _ = known[0]
    if key >> 3 == _SCOPE_PUBLIC_KEY:
        return table.public_key(_i64(value))
    if value == 0:
        return "authority"
    if value == 1:
        return "previous"
    raise _malformed("unknown scope type")


def _rule(table: _Table, buf: bytes, start: int, stop: int) -> Rule:
    head: Predicate | None = None
    body = []
    expressions = []
    scopes = []
    for key, a, b in _scan(buf, start, stop):
        if key == _RULE_BODY << 3 | 2:
            body.append(_predicate(table, buf, a, b))
        elif key == _RULE_EXPRESSIONS << 3 | 2:
            expressions.append(_expression(table, buf, a, b))
        elif key == _RULE_HEAD << 3 | 2:
            if head is not None:
                raise _malformed("repeated rule head")
            head = _predicate(table, buf, a, b)
        elif key == _RULE_SCOPE << 3 | 2:
            scopes.append(_scope(table, buf, a, b))
        elif 1 <= key >> 3 <= _RULE_SCOPE:
            raise _wrong_wire(key)
    if head is None:
        head = Predicate(table.symbol(0), ())
    return Rule(head, tuple(body), tuple(expressions), tuple(scopes))


def _check(table: _Table, buf: bytes, start: int, stop: int) -> Check:
    inner = _only_field(buf, start, stop, _CHECK_QUERIES << 3 | 2)
    if inner >= 0:
        return Check(CheckKind.IF, (_rule(table, buf, inner, stop),))
    queries = []
    kind: int | None = None
    for key, a, b in _scan(buf, start, stop):
        if key == _CHECK_QUERIES << 3 | 2:
            queries.append(_rule(table, buf, a, b))
        elif key == _CHECK_KIND << 3:
            if kind is not None:
                raise _malformed("repeated check kind")
            kind = a
        elif key >> 3 in (_CHECK_QUERIES, _CHECK_KIND):
            raise _wrong_wire(key)
    if kind is not None and kind > CheckKind.REJECT:
        raise _malformed("unknown check kind")
    return Check(_CHECK_KINDS[kind or 0], tuple(queries))


_CHECK_KINDS = tuple(CheckKind)


# -- blocks ------------------------------------------------------------------------

class _RawBlock(Record):
    """A SignedBlock read up to its symbol tables; its Datalog is decoded
    once the table it resolves against is known."""

    payload: bytes
    fields: list[tuple[int, int, int]]  # of the payload
    external_key: str | None
    symbols: tuple[str, ...]
    public_keys: tuple[str, ...]
    #: decoded Block by the token table it was resolved against (None: its
    #: own table, for a third-party block)
    decoded: dict[object, Block]

    __slots__ = ("payload", "fields", "external_key", "symbols", "public_keys", "decoded")
    __hash__ = None  # type: ignore[assignment]  (mutable)

    def __init__(self, payload: bytes, fields: list[tuple[int, int, int]], external_key: str | None,
                 symbols: tuple[str, ...], public_keys: tuple[str, ...], decoded: dict[object, Block]) -> None:
        self.payload = payload
        self.fields = fields
        self.external_key = external_key
        self.symbols = symbols
        self.public_keys = public_keys
        self.decoded = decoded


#: Blocks by their SignedBlock bytes, shared across tokens: a JIT or newly
#: delegated token repeats every block of the token it extends, so only its
#: last block is new (a fresh JIT token: ~20 us instead of ~90 us). Decoding
#: is a pure function of the bytes and the table, so a hit is always right.
#: When full (by entries, or by the bytes of the blocks it holds: decoded,
#: a block costs a few times its bytes, and this lives as long as a database
#: backend) it is emptied: one atomic step, safe under client threads.
BLOCK_CACHE_SIZE = 256
BLOCK_CACHE_BYTES = 256 * 1024
_BLOCK_CACHE: dict[bytes, _RawBlock] = {}
_block_cache_bytes = 0
#: Token tables one cached block keeps decodings for (one in practice).
_TABLES_PER_BLOCK = 4


def _raw_block(buf: bytes, start: int, stop: int) -> _RawBlock:
    global _block_cache_bytes
    signed = buf[start:stop]
    raw = _BLOCK_CACHE.get(signed)
    if raw is None:
        raw = _read_raw_block(signed)
        if len(_BLOCK_CACHE) >= BLOCK_CACHE_SIZE or _block_cache_bytes + len(signed) > BLOCK_CACHE_BYTES:
            _BLOCK_CACHE.clear()
            _block_cache_bytes = 0
        if len(signed) <= BLOCK_CACHE_BYTES // 8:
            _BLOCK_CACHE[signed] = raw
            _block_cache_bytes += len(signed)
    return raw


def _read_raw_block(signed: bytes) -> _RawBlock:
    payload: tuple[int, int] | None = None
    external_key: str | None = None
    seen_external = False
    for key, a, b in _scan(signed, 0, len(signed)):
        if key == _SIGNED_BLOCK << 3 | 2:
            if payload is not None:
                raise _malformed("repeated block payload")
            payload = (a, b)
        elif key == _SIGNED_EXTERNAL << 3 | 2:
            if seen_external:
                raise _malformed("repeated external signature")
            seen_external = True
            external_key = _external_key(signed, a, b)
        elif key >> 3 in (_SIGNED_BLOCK, _SIGNED_EXTERNAL):
            raise _wrong_wire(key)
    if payload is None:
        raise _malformed("block without payload")
    block = signed[payload[0]:payload[1]]
    fields = _scan(block, 0, len(block))
    symbols = []
    public_keys = []
    try:
        for key, a, b in fields:
            if key == _BLOCK_SYMBOLS << 3 | 2:
                symbols.append(block[a:b].decode("utf-8"))
            elif key == _BLOCK_PUBLIC_KEYS << 3 | 2:
                public_keys.append(_public_key(block, a, b))
    except UnicodeDecodeError:
        raise _malformed("string is not UTF-8") from None
    if not _DEFAULT_SET.isdisjoint(symbols):
        raise _malformed("a block redefines a default symbol")  # biscuit refuses it too
    return _RawBlock(block, fields, external_key, tuple(symbols), tuple(public_keys), {})


def _external_key(buf: bytes, start: int, stop: int) -> str:
    key: str | None = None
    for field, a, b in _scan(buf, start, stop):
        if field == _EXTERNAL_PUBLIC_KEY << 3 | 2:
            if key is not None:
                raise _malformed("repeated external key")
            key = _public_key(buf, a, b)
        elif field >> 3 == _EXTERNAL_PUBLIC_KEY:
            raise _wrong_wire(field)
    if key is None:
        raise _malformed("external signature without a public key")
    return key


def _block(raw: _RawBlock, table: _Table) -> Block:
    buf = raw.payload
    facts = []
    rules = []
    checks = []
    scopes = []
    version: int | None = None
    context: str | None = None
    for key, a, b in raw.fields:
        if key == _BLOCK_CHECKS << 3 | 2:
            checks.append(_check(table, buf, a, b))
        elif key == _BLOCK_FACTS << 3 | 2:
            facts.append(_fact(table, buf, a, b))
        elif key == _BLOCK_RULES << 3 | 2:
            rules.append(_rule(table, buf, a, b))
        elif key == _BLOCK_VERSION << 3:
            if version is not None:
                raise _malformed("repeated block version")
            version = _u32(a)
        elif key == _BLOCK_SCOPE << 3 | 2:
            scopes.append(_scope(table, buf, a, b))
        elif key == _BLOCK_CONTEXT << 3 | 2:
            if context is not None:
                raise _malformed("repeated block context")
            context = _utf8(buf, a, b)
        elif key == _BLOCK_SYMBOLS << 3 | 2 or key == _BLOCK_PUBLIC_KEYS << 3 | 2:
            pass  # read by _read_raw_block
        elif 1 <= key >> 3 <= _BLOCK_PUBLIC_KEYS:
            raise _wrong_wire(key)
    return Block(raw.symbols, raw.external_key is not None, raw.external_key, version, context,
                 tuple(facts), tuple(rules), tuple(checks), tuple(scopes), raw.public_keys)


def decode(data: bytes) -> Token:
    """The Datalog of a serialized Biscuit v3 token (no signature check).

    Symbol resolution follows biscuit-auth 6.0: the authority block and
    every first-party appended block resolve indices >= 1024 against the
    token's table, the concatenation of their `symbols` in block order (and
    likewise their `publicKeys` for `trusting` scopes); a third-party block
    (one with an external signature) resolves against its own symbols and
    public keys only, and adds nothing to the token's tables.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TokenFormatError("token bytes expected")
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenShapeError(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    data = bytes(data)
    root_key_id: int | None = None
    authority: _RawBlock | None = None
    appended: list[_RawBlock] = []
    for key, a, b in _scan(data, 0, len(data)):
        if key == _BISCUIT_AUTHORITY << 3 | 2:
            if authority is not None:
                raise _malformed("repeated authority block")
            authority = _raw_block(data, a, b)
        elif key == _BISCUIT_BLOCKS << 3 | 2:
            appended.append(_raw_block(data, a, b))
        elif key == _BISCUIT_ROOT_KEY_ID << 3:
            if root_key_id is not None:
                raise _malformed("repeated root key id")
            root_key_id = _u32(a)
        elif key >> 3 in (_BISCUIT_ROOT_KEY_ID, _BISCUIT_AUTHORITY, _BISCUIT_BLOCKS):
            raise _wrong_wire(key)
    if authority is None:
        raise _malformed("no authority block")
    raw_blocks = [authority, *appended]
    # biscuit 6 reads the authority with the token table even if it carries
    # an external signature (builder/authorizer.rs load_and_translate_block:
    # `i == 0 || external_key.is_none()`).
    shared = [index == 0 or raw.external_key is None for index, raw in enumerate(raw_blocks)]
    token_symbols = tuple(s for raw, on in zip(raw_blocks, shared) if on for s in raw.symbols)
    token_keys = tuple(k for raw, on in zip(raw_blocks, shared) if on for k in raw.public_keys)
    if len(set(token_symbols)) != len(token_symbols):
        raise _malformed("two blocks define the same symbol")  # biscuit refuses it too
    table_key = (token_symbols, token_keys)
    token_table: _Table | None = None
    blocks = []
    for raw, on in zip(raw_blocks, shared):
        key = table_key if on else None
        block = raw.decoded.get(key)
        if block is None:
            if on:
                token_table = token_table or _Table(token_symbols, token_keys)
                block = _block(raw, token_table)
            else:
                block = _block(raw, _Table(raw.symbols, raw.public_keys))
            if len(raw.decoded) >= _TABLES_PER_BLOCK:
                raw.decoded.clear()
            raw.decoded[key] = block
        blocks.append(block)
    return Token(root_key_id, tuple(blocks))


# -- printing (for tests, diagnostics and humans; never parse this back) ------

_BINARY_FORMATS = {
    BinaryKind.LESS_THAN: "{} < {}", BinaryKind.GREATER_THAN: "{} > {}",
    BinaryKind.LESS_OR_EQUAL: "{} <= {}", BinaryKind.GREATER_OR_EQUAL: "{} >= {}",
    BinaryKind.EQUAL: "{} === {}", BinaryKind.HETEROGENEOUS_EQUAL: "{} == {}",
    BinaryKind.NOT_EQUAL: "{} !== {}", BinaryKind.HETEROGENEOUS_NOT_EQUAL: "{} != {}",
    BinaryKind.CONTAINS: "{}.contains({})", BinaryKind.PREFIX: "{}.starts_with({})",
    BinaryKind.SUFFIX: "{}.ends_with({})", BinaryKind.REGEX: "{}.matches({})",
    BinaryKind.ADD: "{} + {}", BinaryKind.SUB: "{} - {}", BinaryKind.MUL: "{} * {}", BinaryKind.DIV: "{} / {}",
    BinaryKind.AND: "{} &&! {}", BinaryKind.OR: "{} ||! {}",
    BinaryKind.INTERSECTION: "{}.intersection({})", BinaryKind.UNION: "{}.union({})",
    BinaryKind.BITWISE_AND: "{} & {}", BinaryKind.BITWISE_OR: "{} | {}", BinaryKind.BITWISE_XOR: "{} ^ {}",
    BinaryKind.LAZY_AND: "{} && {}", BinaryKind.LAZY_OR: "{} || {}",
    BinaryKind.ALL: "{}.all({})", BinaryKind.ANY: "{}.any({})", BinaryKind.GET: "{}.get({})",
}
_UNARY_FORMATS = {
    UnaryKind.NEGATE: "!{}", UnaryKind.PARENS: "({})", UnaryKind.LENGTH: "{}.length()", UnaryKind.TYPE_OF: "{}.type()",
}


def term_source(term: Term) -> str:
    """A term as biscuit prints it. Strings are NOT escaped (biscuit's own
    printer does not escape them either): display only."""
    if type(term) is str:
        return f'"{term}"'
    if type(term) is bool:
        return "true" if term else "false"
    if type(term) is int:
        return str(term)
    if term is None:
        return "null"
    if isinstance(term, Variable):
        return f"${term.name}"
    if isinstance(term, bytes):
        return f"hex:{term.hex()}"
    if isinstance(term, Date):
        try:
            from datetime import datetime, timezone  # only when printing a date

            return datetime.fromtimestamp(term.seconds, timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return "<invalid date>"
    if isinstance(term, SetTerm):
        return "{" + ", ".join(term_source(item) for item in term.items) + "}" if term.items else "{,}"
    if isinstance(term, ArrayTerm):
        return "[" + ", ".join(term_source(item) for item in term.items) + "]"
    assert isinstance(term, MapTerm)
    return "{" + ", ".join(f"{term_source(key)}: {term_source(value)}" for key, value in term.entries) + "}"


def expression_source(ops: Iterable[Op]) -> str:
    """Postfix ops back to infix text, as biscuit's Expression::print."""
    stack: list[str] = []
    for op in ops:
        if isinstance(op, Value):
            stack.append(term_source(op.term))
        elif isinstance(op, Unary):
            if not stack:
                return "<invalid expression>"
            value = stack.pop()
            stack.append(f"{value}.extern::{op.ffi}()" if op.kind is UnaryKind.FFI
                         else _UNARY_FORMATS[op.kind].format(value))
        elif isinstance(op, Binary):
            if len(stack) < 2:
                return "<invalid expression>"
            right, left = stack.pop(), stack.pop()
            stack.append(f"{left}.extern::{op.ffi}({right})" if op.kind is BinaryKind.FFI
                         else _BINARY_FORMATS[op.kind].format(left, right))
        else:
            body = expression_source(op.ops)  # depth already bounded by the decoder
            stack.append(f"{', '.join('$' + p for p in op.params)} -> {body}" if op.params else body)
    return stack[0] if len(stack) == 1 else "<invalid expression>"


def predicate_source(predicate: Predicate) -> str:
    return f"{predicate.name}({', '.join(term_source(term) for term in predicate.terms)})"


def _rule_body_source(rule: Rule) -> str:
    parts = [predicate_source(p) for p in rule.body] + [expression_source(e) for e in rule.expressions]
    scopes = f" trusting {', '.join(rule.scopes)}" if rule.scopes else ""
    return ", ".join(parts) + scopes


def rule_source(rule: Rule) -> str:
    return f"{predicate_source(rule.head)} <- {_rule_body_source(rule)}"


def check_source(check: Check) -> str:
    prefix = {CheckKind.IF: "check if", CheckKind.ALL: "check all", CheckKind.REJECT: "reject if"}[check.kind]
    return f"{prefix} {' or '.join(_rule_body_source(query) for query in check.queries)}"


def block_source(block: Block) -> str:
    """The block as Biscuit.block_source(i) prints it: facts, rules, checks
    (block-level `trusting` scopes are not printed, as in biscuit)."""
    lines = [predicate_source(f) for f in block.facts] + [rule_source(r) for r in block.rules]
    lines += [check_source(c) for c in block.checks]
    return "".join(line + ";\n" for line in lines)


# -- the actor analysis (identity-owner row policy) ---------------------------

#: The predicate the verifier supplies: `actor({identity})`.
ACTOR = "actor"


class ActorScope(_Frozen):
    """Which identities `actor({identity})` can be, as far as the token's
    actor checks say.

    - constrained False: no recognized actor check (or the token can supply
      `actor` facts itself): every identity may pass, as far as we know.
    - otherwise the set is empty (identity None), {identity}, or, with
      descendants, {identity} plus every string starting with identity + ":".
    - exact: True iff no check or rule mentions `actor` in a shape we do not
      recognize. When exact, the set is exactly the identities the actor
      checks accept; when not, it is only a superset of them.
    """

    exact: bool
    identity: str | None
    descendants: bool
    constrained: bool

    __slots__ = ("exact", "identity", "descendants", "constrained")

    def __init__(self, exact: bool, identity: str | None, descendants: bool, constrained: bool) -> None:
        _set(self, "exact", exact)
        _set(self, "identity", identity)
        _set(self, "descendants", descendants)
        _set(self, "constrained", constrained)


    def allows(self, identity: str) -> bool:
        """Whether `identity` is in the set (a superset when not exact)."""
        if not self.constrained:
            return True
        if self.identity is None:
            return False
        return identity == self.identity or (self.descendants and identity.startswith(self.identity + ":"))


def actor_scope(data: Union[bytes, Token]) -> ActorScope:
    """The analysis for a serialized token (or an already decoded one).

    Recognized, in a `check if` with one query whose body is exactly
    `actor($v)` with no `trusting`, in a block without block-level scopes,
    and exactly one expression:
      S1  `$v == "X"` (or `===`)                        -> {X}
      S2  `$v == "X" || $v.starts_with("X" + ":")`       -> {X} u X:*
          (also `.starts_with("X:")`; lazy `||` with a closure, as
          biscuit-auth >= 6 writes it, or the eager `||` of older blocks)
    The result intersects the recognized sets. Any other mention of `actor`
    (another expression, `check all`, `reject if`, more predicates or
    queries, a rule body) makes the answer inexact; such checks only remove
    identities, so the set stays a superset. A fact or rule head named
    `actor` anywhere means the token can satisfy actor checks on its own, so
    nothing is known: unconstrained and inexact.

    Checks that do not mention `actor` do not depend on the identity: the
    verifier's `actor({identity})` is then the only actor fact there is.
    """
    token = data if isinstance(data, Token) else decode(data)
    exact = True
    sets: list[tuple[str, bool]] = []
    for block in token.blocks:
        for fact in block.facts:
            if fact.name == ACTOR:
                return _UNKNOWN
        for rule in block.rules:
            if rule.head.name == ACTOR:
                return _UNKNOWN
            if _mentions_actor(rule):
                exact = False
        for check in block.checks:
            for query in check.queries:
                if _mentions_actor(query):
                    break
            else:
                continue  # no query mentions actor
            recognized = None if block.scopes else _recognize(check)
            if recognized is None:
                exact = False
            else:
                sets.append(recognized)
    if not sets:
        return ActorScope(exact=exact, identity=None, descendants=False, constrained=False)
    identity, descendants = _intersection(sets)
    return ActorScope(exact=exact, identity=identity, descendants=descendants, constrained=True)


_UNKNOWN = ActorScope(exact=False, identity=None, descendants=False, constrained=False)


def _mentions_actor(rule: Rule) -> bool:
    for predicate in rule.body:
        if predicate.name == ACTOR:
            return True
    return False


def _intersection(sets: list[tuple[str, bool]]) -> tuple[str | None, bool]:
    """Intersect sets of the form {X} (False) or {X} u X:* (True).

    The result has the same form, or is empty (None): the sets containing
    every identity in both are nested along the `:` hierarchy, so the
    intersection is the deeper set when one identity is the other or
    descends from it (and the shallower set reaches down: X:* is in it),
    and nothing otherwise.
    """
    identity, descendants = sets[0]
    for other, other_descendants in sets[1:]:
        if other == identity:
            descendants = descendants and other_descendants
        elif descendants and other.startswith(identity + ":"):
            identity, descendants = other, other_descendants
        elif other_descendants and identity.startswith(other + ":"):
            pass  # ours is already inside the other set
        else:
            return None, False
    return identity, descendants


def _recognize(check: Check) -> tuple[str, bool] | None:
    """(X, descendants) for S1/S2, None for anything else."""
    if check.kind is not CheckKind.IF or len(check.queries) != 1:
        return None
    query = check.queries[0]
    if query.scopes or len(query.body) != 1 or len(query.expressions) != 1:
        return None
    terms = query.body[0].terms  # named actor: the caller checked
    if len(terms) != 1 or type(terms[0]) is not Variable:
        return None
    name = terms[0].name
    ops = query.expressions[0]
    if len(ops) < 3 or not _is_variable(ops[0], name) or not _is_binary(ops[2], *_EQUALS):
        return None
    identity = _string(ops[1])
    if identity is None:
        return None
    if len(ops) == 3:
        return identity, False
    # S2: the prefix test is a closure under lazy `||`, inline under eager `||`.
    if len(ops) == 5 and _is_binary(ops[4], BinaryKind.LAZY_OR):
        closure = ops[3]
        if type(closure) is not Closure or closure.params:
            return None
        prefix = _prefix(closure.ops, name)
    elif _is_binary(ops[-1], BinaryKind.OR):
        prefix = _prefix(ops[3:-1], name)
    else:
        return None
    return (identity, True) if prefix == identity + ":" else None


#: `===` and `==`: the same on two strings (the actor is always a string).
_EQUALS = (BinaryKind.EQUAL, BinaryKind.HETEROGENEOUS_EQUAL)


def _is_variable(op: Op, name: str) -> bool:
    return type(op) is Value and type(op.term) is Variable and op.term.name == name


def _is_binary(op: Op, *kinds: BinaryKind) -> bool:
    return type(op) is Binary and op.kind in kinds


def _string(op: Op) -> str | None:
    return op.term if type(op) is Value and type(op.term) is str else None


def _prefix(ops: tuple[Op, ...], name: str) -> str | None:
    """P of `$v.starts_with("P")`, or of `$v.starts_with("X" + "Y")` with P = X + Y."""
    if len(ops) not in (3, 5) or not _is_variable(ops[0], name) or not _is_binary(ops[-1], BinaryKind.PREFIX):
        return None
    if len(ops) == 3:
        return _string(ops[1])
    left, right = _string(ops[1]), _string(ops[2])
    if left is None or right is None or not _is_binary(ops[3], BinaryKind.ADD):
        return None
    return left + right


def __getattr__(name: str) -> object:
    """The typing aliases `Term` and `Op`, built on first use (typing is
    not imported by a backend's verification)."""
    if name in ("Term", "Op"):
        from typing import Union

        aliases = {"Term": Union[Variable, int, str, bool, bytes, None, Date, SetTerm, ArrayTerm, MapTerm],
                   "Op": Union[Value, Unary, Binary, Closure]}
        globals().update(aliases)
        return aliases[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
