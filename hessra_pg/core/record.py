"""Small value objects without `dataclasses`.

The core is imported by every database backend on its first verification,
and `dataclasses` alone imports inspect, re and enum: ~13 ms there, most of
the first call. A Record names its fields in `__slots__` and writes its own
`__init__`; equality, hashing and repr come from here.
"""

from __future__ import annotations


class Record:
    """Equality, hash and repr over the fields named in `__slots__`."""

    __slots__: tuple[str, ...] = ()
    #: Fields left out of repr (large or binary values).
    _hidden: frozenset[str] = frozenset()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name not in self._hidden)
        return f"{type(self).__name__}({fields})"
