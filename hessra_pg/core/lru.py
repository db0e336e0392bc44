"""A least-recently-used cache bounded by bytes, not entries.

The verifier's caches live as long as a database backend, and what they hold
comes from callers: tokens up to 32 KiB, subjects and resources of any
length. A bound on entries is no bound on memory (1,100 tokens of 31 KiB
took a backend from 42 MB to 317 MB), so every cache here is charged an
estimated weight per entry and evicts until the total is within its bound.
An entry heavier than an eighth of the bound is not kept at all: one call
must not flush the whole cache.
"""

from __future__ import annotations

try:  # collections re-exports it, at ~2 ms of imports in a new backend
    from _collections import OrderedDict
except ImportError:  # pragma: no cover (other Pythons)
    from collections import OrderedDict

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Any, Hashable

#: What any entry costs beyond its payload (dict slot, tuples, the value object).
ENTRY_OVERHEAD = 256


class ByteBoundedLRU:
    """LRU mapping whose summed entry weights stay within `bound` bytes."""

    __slots__ = ("bound", "bytes", "_items", "hits", "misses")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        #: Lookups that found an entry / none (hessra_authz.stats()).
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def peek(self, key: Hashable) -> Any:
        """The value under `key` without counting a lookup or refreshing it."""
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any, weight: int) -> bool:
        """Keep `value` under `key`, charged `weight` bytes; False if it is too
        heavy to keep."""
        weight += ENTRY_OVERHEAD
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if weight > self.bound // 8:
            return False
        self._items[key] = (value, weight)
        self.bytes += weight
        while self.bytes > self.bound:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
        return True

    def pop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def stats(self) -> dict[str, int]:
        return {"size": len(self._items), "bytes": self.bytes, "bound_bytes": self.bound}


def text_size(value: Any) -> int:
    """Bytes of the text and bytes inside nested tuples/lists (an estimate
    of what an entry keyed or valued by them holds)."""
    stack = [value]
    total = 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += (len(item) if item.isascii() else 4 * len(item)) + 50
        elif isinstance(item, bytes):
            total += len(item) + 34
        elif isinstance(item, (tuple, list, frozenset)):
            total += 56 + 8 * len(item)
            stack.extend(item)
        else:
            total += 32
    return total
