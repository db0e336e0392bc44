"""Run a policy test file against a database, leaving nothing behind.

The whole run is one transaction that is always rolled back: the test key
is registered in it (``hessra_authz.add_key``), the ``[run] setup``
statements run in it, and each case runs in a savepoint of it as its role
(``SET LOCAL ROLE``) with its token and subject set transaction-locally,
rolled back before the next case. A statement that would end the
transaction is refused before it is sent (the key would be committed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hessra_pg.errors import PolicyTestRunError

from .cases import GARBAGE, GARBAGE_TOKEN, NO_TOKEN, Case, CaseFile
from .compare import compare_rows
from .session import TestKey, acting_as, register_test_key, session_control
from .tokens import mint_test_token

if TYPE_CHECKING:
    import psycopg

__all__ = ["CaseResult", "RunReport", "run_cases"]

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"


@dataclass(frozen=True)
class CaseResult:
    """How one case went: PASS, FAIL (an expectation not met) or ERROR
    (the case could not run: a role that doesn't exist...)."""

    name: str
    status: str
    details: tuple[str, ...] = ()
    """What differed, one line each (never a token)."""

    @property
    def passed(self) -> bool:
        return self.status == PASS


@dataclass(frozen=True)
class RunReport:
    """Every case's result, in file order."""

    source: str
    results: tuple[CaseResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(result.passed for result in self.results)

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    def summary(self) -> str:
        total = len(self.results)
        parts = [f"{self.count(PASS)} passed", f"{self.count(FAIL)} failed"]
        if self.count(ERROR):
            parts.append(f"{self.count(ERROR)} could not run")
        return f"{total} case{'' if total == 1 else 's'}: " + ", ".join(parts)


def run_cases(conn: psycopg.Connection[Any], cases: CaseFile, *, statement_timeout: int | None = 60,
              on_result: Callable[[CaseResult], None] | None = None) -> RunReport:
    """Run every case on ``conn`` (idle, not in a transaction; it is left in
    autocommit mode, the run's BEGIN and ROLLBACK being explicit; its role
    registers the test key, so it must be a member of ``hessra_admin``, and
    must be able to SET ROLE to each case's role). ``statement_timeout``:
    seconds any one statement may take (None: the server's setting).
    ``on_result`` is called after each case (to print as it goes).
    Raises PolicyTestRunError when the run can't start or go on."""
    import psycopg
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise PolicyTestRunError("the connection is already in a transaction: the run needs its own, "
                                 "rolled back at the end")
    conn.autocommit = True  # the run's BEGIN and ROLLBACK are explicit
    results: list[CaseResult] = []
    conn.execute("BEGIN")
    try:
        if statement_timeout is not None:
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)",
                         (f"{int(statement_timeout)}s",))
        key = _register_key(conn)
        _setup(conn, cases.setup)
        for case in cases.cases:
            result = _run_case(conn, case, key)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # the connection broke: the server rolls the transaction back
    return RunReport(source=cases.source, results=tuple(results))


def _register_key(conn: psycopg.Connection[Any]) -> TestKey:
    import psycopg

    try:
        with conn.transaction():
            return register_test_key(conn)
    except psycopg.Error as error:
        raise PolicyTestRunError(
            f"can't register the run's test key with hessra_authz.add_key: {_message(error)}",
            hint="run as a role that is a member of hessra_admin (and of each case's role), "
                 "in a database with hessra_authz",
        ) from None


def _setup(conn: psycopg.Connection[Any], statements: Sequence[str]) -> None:
    import psycopg

    for index, statement in enumerate(statements):
        try:
            _execute(conn, statement)
        except psycopg.Error as error:
            raise PolicyTestRunError(f"[run] setup[{index}] failed: {_message(error)}") from None


def _token_for(case: Case, key: TestKey) -> tuple[str | None, str | None]:
    """The token text and hessra.subject of a case."""
    if case.token == NO_TOKEN:
        return None, case.subject
    if case.token == GARBAGE:
        return GARBAGE_TOKEN, case.subject
    assert not isinstance(case.token, str)
    minted = mint_test_token(case.token, key.pair, key.kid)
    return minted.token, minted.subject if case.subject is None else case.subject


def _run_case(conn: psycopg.Connection[Any], case: Case, key: TestKey) -> CaseResult:
    import psycopg

    token, subject = _token_for(case, key)

    def clean(text: str) -> str:
        # A case's own SQL may echo the token (current_setting); never print it.
        return text.replace(token, "<token>") if token else text

    problem = _role_problem(conn, case.role)
    if problem:
        return CaseResult(case.name, ERROR, (problem,))
    got: list[tuple[Any, ...]] | int | None = None
    error: psycopg.Error | None = None
    acting = False
    try:
        with acting_as(conn, case.role, token, subject or None):
            acting = True
            for statement in case.statements:
                got = _execute(conn, statement)
    except PolicyTestRunError:
        raise
    except psycopg.Error as failure:
        if not acting:  # an error of the runner's own SET ROLE, not of the case's statements
            return CaseResult(case.name, ERROR, (f"can't act as role {case.role!r}: {_message(failure)}",))
        error = failure
    _check_open(conn, case)
    details = _judge(case, got, error)
    return CaseResult(case.name, PASS if not details else FAIL, tuple(clean(line) for line in details))


def _role_problem(conn: psycopg.Connection[Any], role: str) -> str | None:
    """Why the run can't SET ROLE to ``role``, or None. Checked first, so that
    a denied case can't pass on the runner's own failure to switch roles."""
    row = conn.execute(
        "SELECT r.oid IS NOT NULL, r.oid IS NOT NULL AND pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER') "
        "FROM (SELECT) AS one LEFT JOIN pg_catalog.pg_roles AS r ON r.rolname = %s", (role,)).fetchone()
    assert row is not None
    if not row[0]:
        return f"role {role!r} does not exist"
    if not row[1]:
        return f"the connecting role can't SET ROLE to {role!r} (not a member of it)"
    return None


def _execute(conn: psycopg.Connection[Any], statement: str) -> list[tuple[Any, ...]] | int:
    """Run one statement with the extended protocol (one statement only);
    its rows, or the number of rows it changed."""
    control = session_control(statement)
    if control:
        raise PolicyTestRunError(f"{control} is not allowed in a policy test")
    with conn.pipeline():  # PQsendQueryParams: the server refuses "SELECT 1; COMMIT"
        cur = conn.execute(statement)
    if cur.description is None:
        return max(cur.rowcount, 0)
    return [tuple(row) for row in cur.fetchall()]


def _check_open(conn: psycopg.Connection[Any], case: Case) -> None:
    """The run's transaction must still be open, or the test key was committed."""
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        raise PolicyTestRunError(f"case {case.name!r} ended the run's transaction: stopping "
                                 "(retire the test key if it was committed: see hessra_authz.keys)")


def _judge(case: Case, got: list[tuple[Any, ...]] | int | None, error: Any) -> list[str]:
    expect = case.expect
    if error is not None:
        said = f"ERROR {error.sqlstate}: {_message(error)}"
        if expect.allowed:
            return [f"expected the statements to run, got {said}"]
        if expect.sqlstate is not None and error.sqlstate != expect.sqlstate:
            return [f"expected ERROR {expect.sqlstate}, got {said}"]
        return []
    if not expect.allowed:
        return [f"expected an error{f' ({expect.sqlstate})' if expect.sqlstate else ''} (denied), "
                "but the statements ran"]
    lines = []
    if isinstance(got, int):
        if expect.rows is not None:
            lines.append(f"expected rows, but the last statement returned none ({got} rows changed)")
        if expect.count is not None and got != expect.count:
            lines.append(f"expected {expect.count} rows changed, got {got}")
        return lines
    rows = got or []
    if expect.rows is not None:  # count, when also given, equals len(rows) (checked with the file)
        return compare_rows(expect.rows, rows, ordered=expect.ordered)
    if expect.count is not None and len(rows) != expect.count:
        lines.append(f"expected {expect.count} rows, got {len(rows)}")
    return lines


def _message(error: Any) -> str:
    """The server's primary message, one line."""
    diag = getattr(error, "diag", None)
    text = getattr(diag, "message_primary", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())
