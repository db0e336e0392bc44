"""Compare the rows a statement returned with the rows a case expects.

Values compare as TOML writes them: a NUMERIC 2 equals ``2`` and ``2.0``,
``true`` is not ``1``, dates and times equal TOML's, arrays are TOML arrays
and JSON objects TOML tables; any other type (uuid, inet, ...) compares as
its text. Rows are a multiset unless the case says ``ordered = true``.
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["compare_rows", "show_row"]

Row = Sequence[Any]


def _key(value: Any) -> Any:
    """A hashable, type-tagged form: equal keys mean equal values."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float, decimal.Decimal)):
        number = decimal.Decimal(str(value)) if isinstance(value, float) else decimal.Decimal(value)
        return ("number", number.normalize() if number.is_finite() else str(number))
    if isinstance(value, str):
        return ("text", value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_key(item) for item in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), _key(v)) for k, v in value.items())))
    return ("text", str(value))


def _row_key(row: Row) -> tuple[Any, ...]:
    return tuple(_key(value) for value in row)


def _show(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_show(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def show_row(row: Row) -> str:
    """A row as a TOML array (so a diff can be pasted into the file); NULL as ``NULL``."""
    return "[" + ", ".join(_show(value) for value in row) + "]"


def compare_rows(expected: Sequence[Row], got: Sequence[Row], *, ordered: bool = False) -> list[str]:
    """The differences as lines (empty when the rows match): the counts,
    then each missing and unexpected row; for ``ordered``, where the order
    differs."""
    want = Counter(_row_key(row) for row in expected)
    have = Counter(_row_key(row) for row in got)
    lines: list[str] = []
    if want != have:
        if sum(want.values()) != sum(have.values()):
            lines.append(f"expected {len(expected)} row{'' if len(expected) == 1 else 's'}, got {len(got)}")
        missing, unexpected = want - have, have - want
        shown_missing: Counter[Any] = Counter()
        for row in expected:
            key = _row_key(row)
            if shown_missing[key] < missing[key]:
                shown_missing[key] += 1
                lines.append(f"missing:    {show_row(row)}")
        shown_unexpected: Counter[Any] = Counter()
        for row in got:
            key = _row_key(row)
            if shown_unexpected[key] < unexpected[key]:
                shown_unexpected[key] += 1
                lines.append(f"unexpected: {show_row(row)}")
        return lines
    if ordered:
        for index, (a, b) in enumerate(zip(expected, got)):
            if _row_key(a) != _row_key(b):
                lines.append(f"same rows in another order: row {index + 1} is {show_row(b)}, "
                             f"expected {show_row(a)}")
                break
    return lines
