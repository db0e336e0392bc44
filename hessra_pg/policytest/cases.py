"""Policy test files (``CASES.toml``): read and check them.

::

    [run]                       # optional
    role = "app"                # default role of every case
    setup = ["INSERT INTO ..."] # run first, as the connecting role (rolled back with the rest)

    [tokens.acme_reader]        # named token descriptions, used by cases
    kind = "capability"         # authorization (default) | identity | capability
    resource = "orders"
    operation = "read"
    designations = { tenant_id = "acme" }

    [[cases]]
    name = "acme's reader sees acme's orders"
    token = "acme_reader"       # a [tokens] name, an inline table, "none" or "garbage"
    sql = "SELECT id FROM orders"
    rows = [[1], [2]]           # and/or count = 2; allowed = false (+ sqlstate)

Every problem is reported at once, each naming its case and field
(:class:`~hessra_pg.errors.PolicyTestFileError`).
"""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from hessra_pg.errors import PolicyTestFileError, TokenSpecError

from .session import session_control
from .tokens import TokenSpec

__all__ = ["GARBAGE", "NO_TOKEN", "Case", "CaseFile", "Expectation", "TokenRef", "load_cases", "parse_cases"]

#: ``token = "none"``: no token set; ``token = "garbage"``: a string that is no token.
NO_TOKEN = "none"
GARBAGE = "garbage"
#: What ``token = "garbage"`` sends: base64 of nothing a Biscuit could be.
GARBAGE_TOKEN = "bm90LWEtdG9rZW4tYXQtYWxs"

#: A case's token: a spec, NO_TOKEN or GARBAGE.
TokenRef = Union[TokenSpec, str]

_TOP = {"run", "tokens", "cases"}
_RUN = {"role", "setup"}
_CASE = {"name", "role", "token", "subject", "sql", "rows", "count", "ordered", "allowed", "sqlstate"}
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
#: Values a TOML file can hold in a row cell (arrays and tables nest).
_CELL_TYPES = (str, int, float, bool, datetime.date, datetime.time, list, dict)


@dataclass(frozen=True)
class Expectation:
    """What a case expects of its statements (the last one's result)."""

    rows: tuple[tuple[Any, ...], ...] | None = None
    count: int | None = None
    ordered: bool = False
    allowed: bool = True
    sqlstate: str | None = None


@dataclass(frozen=True)
class Case:
    """One case: run ``statements`` as ``role`` with ``token`` and ``subject``."""

    name: str
    role: str
    token: TokenRef
    subject: str | None
    """hessra.subject; None: the token's default (see TokenSpec.default_subject)."""
    statements: tuple[str, ...]
    expect: Expectation


@dataclass(frozen=True)
class CaseFile:
    """A checked policy test file."""

    source: str
    cases: tuple[Case, ...]
    setup: tuple[str, ...] = ()
    tokens: Mapping[str, TokenSpec] = field(default_factory=dict)


def load_cases(path: str | Path) -> CaseFile:
    """Read and check a CASES.toml file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise PolicyTestFileError(f"{path}: can't read it: {reason}") from None
    return parse_cases(text, source=str(path))


def parse_cases(text: str, source: str = "<cases>") -> CaseFile:
    """Check the TOML ``text``; raises PolicyTestFileError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyTestFileError(f"{source}: not valid TOML: {error}") from None
    return _Checker(source).check(data)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}")

    def check(self, data: dict[str, Any]) -> CaseFile:
        for key in sorted(set(data) - _TOP):
            self.problem(key, f"unknown section (expected {', '.join(sorted(_TOP))})")
        run = self.table(data.get("run", {}), "[run]")
        for key in sorted(set(run) - _RUN):
            self.problem(f"[run] {key}", f"unknown field (expected {', '.join(sorted(_RUN))})")
        default_role = self.text(run.get("role"), "[run] role")
        setup = self.statements(run.get("setup", []), "[run] setup", allow_empty=True)
        tokens = self.tokens(self.table(data.get("tokens", {}), "[tokens]"))
        cases = self.cases(data.get("cases"), default_role, tokens)
        if self.problems:
            count = len(self.problems)
            raise PolicyTestFileError("\n".join(self.problems) if count == 1 else
                                      f"{count} problems:\n" + "\n".join(self.problems))
        return CaseFile(source=self.source, cases=tuple(cases), setup=tuple(setup), tokens=tokens)

    # -- pieces ----------------------------------------------------------------

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.problem(where, "must be a table")
        return {}

    def text(self, value: Any, where: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str) and value:
            return value
        self.problem(where, "must be a non-empty string")
        return None

    def statements(self, value: Any, where: str, *, allow_empty: bool = False) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
            self.problem(where, "must be an SQL statement or an array of them (non-empty strings)")
            return []
        if not items and not allow_empty:
            self.problem(where, "needs at least one statement")
        for index, statement in enumerate(items):
            control = session_control(statement)
            if control:
                at = where if isinstance(value, str) else f"{where}[{index}]"
                self.problem(at, f"{control} is not allowed: the run is one transaction, rolled back at the "
                                 "end, and each case sets its own role")
        return items

    def token_spec(self, value: Any, where: str) -> TokenSpec | None:
        if not isinstance(value, dict):
            self.problem(where, "must be a table describing the token")
            return None
        try:
            return TokenSpec.from_mapping(value)
        except TokenSpecError as error:
            self.problem(where, str(error))
            return None

    def tokens(self, table: dict[str, Any]) -> dict[str, TokenSpec]:
        specs = {}
        for name, value in table.items():
            if name in (NO_TOKEN, GARBAGE):
                self.problem(f"[tokens.{name}]", f"{name!r} is reserved (token = {name!r} means "
                                                 f"{'no token' if name == NO_TOKEN else 'a string that is no token'})")
                continue
            spec = self.token_spec(value, f"[tokens.{name}]")
            if spec is not None:
                specs[name] = spec
        return specs

    def cases(self, value: Any, default_role: str | None, tokens: Mapping[str, TokenSpec]) -> list[Case]:
        if value is None:
            self.problem("cases", "no [[cases]]: the file tests nothing")
            return []
        if not isinstance(value, list) or not value:
            self.problem("cases", "must be an array of tables ([[cases]])")
            return []
        result, seen = [], set()
        for index, item in enumerate(value):
            where = f"cases[{index}]"
            if not isinstance(item, dict):
                self.problem(where, "must be a table")
                continue
            name = item.get("name")
            if isinstance(name, str) and name:
                where = f"case {name!r}"
                if name in seen:
                    self.problem(where, "another case has this name")
                seen.add(name)
            else:
                self.problem(f"{where} name", "required: a non-empty string")
            case = self.case(item, where, default_role, tokens)
            if case is not None and isinstance(name, str) and name:
                result.append(case)
        return result

    def case(self, item: dict[str, Any], where: str, default_role: str | None,
             tokens: Mapping[str, TokenSpec]) -> Case | None:
        before = len(self.problems)
        for key in sorted(set(item) - _CASE):
            self.problem(f"{where} {key}", f"unknown field (expected {', '.join(sorted(_CASE))})")
        role = self.text(item.get("role"), f"{where} role") or default_role
        if role is None and "role" not in item:
            self.problem(f"{where} role", "required (or [run] role): the role the statements run as")
        token = self.case_token(item.get("token"), f"{where} token", tokens)
        subject = item.get("subject")
        if subject is not None and not isinstance(subject, str):
            self.problem(f"{where} subject", "must be a string (\"\" for no subject)")
        statements = self.statements(item.get("sql"), f"{where} sql") if "sql" in item else []
        if "sql" not in item:
            self.problem(f"{where} sql", "required: the statement(s) to run")
        expect = self.expectation(item, where)
        if len(self.problems) > before or role is None or token is None or expect is None:
            return None
        return Case(name=item["name"], role=role, token=token, subject=subject, statements=tuple(statements),
                    expect=expect)

    def case_token(self, value: Any, where: str, tokens: Mapping[str, TokenSpec]) -> TokenRef | None:
        if value is None:
            self.problem(where, f"required: a [tokens] name, an inline table, {NO_TOKEN!r} or {GARBAGE!r}")
            return None
        if isinstance(value, str):
            if value in (NO_TOKEN, GARBAGE):
                return value
            if value in tokens:
                return tokens[value]
            self.problem(where, f"no token named {value!r} in [tokens]"
                                + (f" (named: {', '.join(sorted(tokens))})" if tokens else ""))
            return None
        return self.token_spec(value, where)

    def expectation(self, item: dict[str, Any], where: str) -> Expectation | None:
        before = len(self.problems)
        rows = item.get("rows")
        count = item.get("count")
        ordered = item.get("ordered", False)
        allowed = item.get("allowed")
        sqlstate = item.get("sqlstate")
        if rows is not None:
            if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
                self.problem(f"{where} rows", "must be an array of rows, each an array of values "
                                              "(one column: [[1], [2]])")
            elif not all(isinstance(cell, _CELL_TYPES) for row in rows for cell in row):
                self.problem(f"{where} rows", "holds a value TOML can't compare")
        if count is not None and (type(count) is not int or count < 0):
            self.problem(f"{where} count", "must be a non-negative integer")
        elif count is not None and isinstance(rows, list) and count != len(rows):
            self.problem(f"{where} count", f"says {count} rows, rows lists {len(rows)}")
        if type(ordered) is not bool:
            self.problem(f"{where} ordered", "must be true or false")
        elif ordered and rows is None:
            self.problem(f"{where} ordered", "applies to rows")
        if allowed is not None and type(allowed) is not bool:
            self.problem(f"{where} allowed", "must be true or false")
        if sqlstate is not None:
            if not isinstance(sqlstate, str) or not _SQLSTATE.fullmatch(sqlstate):
                self.problem(f"{where} sqlstate", "must be a 5-character SQLSTATE such as \"42501\"")
            if allowed is True:
                self.problem(f"{where} sqlstate", "expects an error: it goes with allowed = false")
        denied = allowed is False or (allowed is None and sqlstate is not None)
        if denied and (rows is not None or count is not None):
            self.problem(f"{where} allowed", "a denied case has no rows or count to compare")
        if rows is None and count is None and allowed is None and sqlstate is None:
            self.problem(where, "expects nothing: give rows, count, allowed or sqlstate")
        if len(self.problems) > before:
            return None
        return Expectation(
            rows=None if rows is None else tuple(tuple(row) for row in rows),
            count=count, ordered=ordered, allowed=not denied, sqlstate=sqlstate,
        )

