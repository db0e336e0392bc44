"""doctor's reading of policy expressions (hessra_pg.admin.doctor): PostgreSQL's
own parser (pglast) finds the hessra_authz calls that run once per row, where
the regular-expression reader it replaced was fooled by literals, comments,
quoting and subqueries it could not see. No server needed."""

from __future__ import annotations

import sys

import pytest

from hessra_pg.admin.doctor import (
    PGLAST_MISSING,
    DoctorRequirementError,
    PolicyExpressionError,
    per_row_calls,
    require_parser,
    verifying_calls,
)
from hessra_pg.cli import main

ROW = "hessra_authz.authorized() (its subquery refers to the row)"
PER_ROW = "hessra_authz.authorized()"


@pytest.mark.parametrize(("expression", "expected"), [
    # -- literals: text that only looks like a call --------------------------
    ("(note = 'hessra_authz.authorized(''x'', ''y'')')", []),
    # dollar quoting (the old reader knew only '...' and "..."): nothing here is a call
    ("(note = $$ hessra_authz.authorized('a', 'b') $$)", []),
    # ... and a quote inside dollar quotes hid the real per-row call from it
    ("(($q$it's$q$ = note) AND hessra_authz.authorized('a'::text, 'b'::text))", [PER_ROW]),
    ("(note = E'\\' hessra_authz.authorized(''a'', ''b'')')", []),
    ("(note = U&'hessra_authz.authorized(\\0028')", []),
    # -- comments ------------------------------------------------------------
    ("(/* ( SELECT */ hessra_authz.authorized('a'::text, 'b'::text) /* ) */)", [PER_ROW]),
    ("(true -- hessra_authz.authorized('a', 'b')\n)", []),
    ("(/* nested /* comment */ hessra_authz.authorized('a', 'b') */ true)", []),
    # -- quoted identifiers and case -----------------------------------------
    ("\"hessra_authz\".\"authorized\"('a'::text, 'b'::text)", [PER_ROW]),
    ("HESSRA_AUTHZ.Authorized('a'::text, 'b'::text)", [PER_ROW]),
    ("( SELECT \"hessra_authz\".authorized('a'::text, 'b'::text) AS authorized)", []),
    ("(\"hessra_authz.authorized(\" = 'x'::text)", []),  # a column, not a call
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a WHERE (\"orders\".\"id\" > 0))", [ROW]),
    # -- casts ---------------------------------------------------------------
    ("(hessra_authz.authorized('a'::text, 'b'::text))::integer = 1", [PER_ROW]),
    ("CAST(hessra_authz.authorized('a'::text, 'b'::text) AS boolean)", [PER_ROW]),
    ("(('items/'::text || id) = ANY ((( SELECT hessra_authz.authorized_resources('read'::text) AS r))::text[]))",
     []),
    # a type modifier looks like a call to a pattern
    ("(('x'::text)::hessra_authz.label(3) IS NOT NULL)", []),
    # -- CASE, COALESCE ------------------------------------------------------
    ("CASE WHEN (id > 0) THEN ( SELECT hessra_authz.authorized('a'::text, 'r'::text) AS a) "
     "ELSE hessra_authz.authorized('b'::text, 'r'::text) END", [PER_ROW]),
    ("CASE hessra_authz.current_subject() WHEN 'x'::text THEN ( SELECT hessra_authz.verify_bearer("
     "hessra_authz.current_token()) AS v) ELSE false END", []),
    ("COALESCE(( SELECT hessra_authz.authorized('a'::text, 'r'::text) AS a), false)", []),
    ("COALESCE(hessra_authz.authorized('a'::text, 'r'::text), false)", [PER_ROW]),
    # -- subqueries that don't start with SELECT -----------------------------
    ("(VALUES (hessra_authz.authorized('a'::text, 'r'::text)))", []),
    ("(EXISTS ( WITH t AS ( SELECT hessra_authz.authorized('a'::text, 'r'::text) AS ok) SELECT 1 FROM t "
     "WHERE t.ok))", []),
    ("(ARRAY( SELECT hessra_authz.authorized_resources('read'::text) AS r) IS NOT NULL)", []),
    ("(( SELECT hessra_authz.authorized('a'::text, 'r'::text) UNION ALL SELECT (orders.id > 0)) IS NOT NULL)",
     [ROW]),
    # the tested value of IN / = ANY is evaluated with the row, outside the subquery
    ("(hessra_authz.authorized('a'::text, 'r'::text) IN ( SELECT true))", [PER_ROW]),
    # -- nested subqueries ---------------------------------------------------
    ("( SELECT ( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a WHERE (orders.id > 0)) AS b)", [ROW]),
    ("( SELECT ( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a) AS b WHERE (orders.id > 0))", []),
    # correlated with the outer subquery's rows only: that one runs once per statement
    ("(EXISTS ( SELECT 1 FROM unnest(ARRAY['a'::text, 'b'::text]) r(res) WHERE ( SELECT "
     "hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(), r.res, "
     "'read'::text) AS v)))", []),
    # -- lateral references --------------------------------------------------
    # LATERAL (SELECT ...) is part of the EXISTS subquery, which reads the row
    ("(EXISTS ( SELECT 1 FROM unnest(( SELECT hessra_authz.authorized_resources('read'::text) AS a)) r(res), "
     "LATERAL ( SELECT hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(), "
     "r.res, 'read'::text) AS ok) v WHERE (v.ok AND (r.res = ('orders/'::text || orders.id)))))",
     ["hessra_authz.verify_token() (its subquery refers to the row)"]),
    ("(EXISTS ( SELECT 1 FROM LATERAL ( SELECT hessra_authz.authorized(('orders/'::text || orders.id), "
     "'read'::text) AS ok) v WHERE v.ok))", [ROW]),
    ("(EXISTS ( SELECT 1 FROM unnest(ARRAY['a'::text]) r(res), LATERAL ( SELECT hessra_authz.authorized(r.res, "
     "'read'::text) AS ok) v WHERE v.ok))", []),
    # -- which names are the row's -------------------------------------------
    # an unqualified column where no FROM item could hold it is the row's
    ("( SELECT hessra_authz.authorized((id)::text, 'read'::text) AS a)", [ROW]),
    ("( SELECT hessra_authz.authorized(r.id, 'read'::text) AS a FROM unnest(ARRAY['x'::text]) r(id))", []),
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a FROM unnest(ARRAY[1]) WHERE unnest > 0)", []),
    # a FROM item named like the table hides it
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a FROM hessra_authz.keys orders "
     "WHERE (orders.kid = 1))", []),
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a WHERE (orders.* IS NOT NULL))", [ROW]),
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a WHERE (public.orders.id > 0))", [ROW]),
    ("( SELECT hessra_authz.authorized('o'::text, 'r'::text) AS a FROM hessra_authz.keys k "
     "WHERE (k.kid = orders_archive.id))", []),
    # -- several calls, in text order ----------------------------------------
    ("(hessra_authz.verify_bearer(hessra_authz.current_token()) OR hessra_authz.authorized('a'::text, "
     "'r'::text) OR ( SELECT hessra_authz.verify_identity(hessra_authz.current_token(), 'x'::text) AS v))",
     ["hessra_authz.verify_bearer()", PER_ROW]),
    # -- designation policies: the per-row verifier behind its guard -----------
    ("((orders.t >= ( SELECT CASE WHEN hessra_authz.designation_fallback('o'::text, 'r'::text, '{t}'::text[], "
     "'{}'::jsonb) THEN ''::text ELSE NULL::text END AS f)) AND hessra_authz.designation_row('o'::text, 'r'::text, "
     "jsonb_build_object('t'::text, orders.t), '{}'::jsonb))", []),
    ("((orders.t IS NULL) AND ( SELECT hessra_authz.designation_fallback('o'::text, 'r'::text, '{t}'::text[], "
     "'{}'::jsonb) AS f) AND hessra_authz.designation_row('o'::text, 'r'::text, '{}'::jsonb, '{}'::jsonb))", []),
    # no guard, a guard after it, ORed instead of ANDed, a guard that refers to the row, another function behind it
    ("hessra_authz.designation_row('o'::text, 'r'::text, jsonb_build_object('t'::text, orders.t), '{}'::jsonb)",
     ["hessra_authz.designation_row()"]),
    ("(hessra_authz.designation_row('o'::text, 'r'::text, '{}'::jsonb, '{}'::jsonb) AND ( SELECT "
     "hessra_authz.designation_fallback('o'::text, 'r'::text, '{t}'::text[], '{}'::jsonb) AS f))",
     ["hessra_authz.designation_row()"]),
    ("(( SELECT hessra_authz.designation_fallback('o'::text, 'r'::text, '{t}'::text[], '{}'::jsonb) AS f) "
     "OR hessra_authz.designation_row('o'::text, 'r'::text, '{}'::jsonb, '{}'::jsonb))",
     ["hessra_authz.designation_row()"]),
    ("(( SELECT hessra_authz.designation_fallback('o'::text, 'r'::text, ARRAY[orders.t], '{}'::jsonb) AS f) "
     "AND hessra_authz.designation_row('o'::text, 'r'::text, '{}'::jsonb, '{}'::jsonb))",
     ["hessra_authz.designation_fallback() (its subquery refers to the row)", "hessra_authz.designation_row()"]),
    ("(( SELECT hessra_authz.designation_fallback('o'::text, 'r'::text, '{t}'::text[], '{}'::jsonb) AS f) "
     "AND hessra_authz.authorized('a'::text, 'b'::text))", [PER_ROW]),
])
def test_per_row_calls(expression: str, expected: list[str]) -> None:
    assert per_row_calls(expression, "orders") == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("(customer = hessra_authz.current_subject())", []),
    ("(hessra_authz.current_token() <> ''::text)", []),
    ("(note = 'hessra_authz.authorized(x)'::text)", []),
    ("(note = $x$hessra_authz.verify_bearer($x$)", []),
    ("(/* hessra_authz.authorized( */ true)", []),
    ("(( SELECT hessra_authz.authorized('a'::text, 'b'::text) AS a) AND hessra_authz.verify_bearer("
     "hessra_authz.current_token()))", ["authorized", "verify_bearer"]),
    ("\"hessra_authz\".\"Mixed Case\"(1)", ["Mixed Case"]),
])
def test_verifying_calls(expression: str, expected: list[str]) -> None:
    assert verifying_calls(expression) == expected


def test_table_names_as_quote_ident_writes_them() -> None:
    expression = "( SELECT hessra_authz.authorized(\"Order Items\".name, 'r'::text) AS a)"
    assert per_row_calls(expression, '"Order Items"') == [ROW]
    assert per_row_calls(expression, "orders") == []
    assert per_row_calls("( SELECT hessra_authz.authorized(\"a\"\"b\".name, 'r'::text) AS a)", '"a""b"') == [ROW]


@pytest.mark.parametrize("expression", [
    "1) OR (true",
    "true; DROP TABLE orders",
    "1 FROM orders",
    "true AS ok",
    "",
])
def test_text_that_is_not_one_expression(expression: str) -> None:
    with pytest.raises(PolicyExpressionError):
        per_row_calls(expression, "orders")


def test_without_pglast(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One line, exit status 2 (like the CLI's other configuration errors),
    before any connection is tried."""
    monkeypatch.setitem(sys.modules, "pglast", None)  # import pglast raises ImportError
    with pytest.raises(DoctorRequirementError) as raised:
        require_parser()
    assert str(raised.value) == PGLAST_MISSING == "hessra-pg doctor needs pglast: pip install 'hessra-pg[doctor]'"
    assert isinstance(raised.value, ImportError) and raised.value.name == "pglast"
    assert raised.value.extra == "doctor"
    with pytest.raises(DoctorRequirementError):
        per_row_calls("true", "orders")
    capsys.readouterr()
    assert main(["doctor", "--dsn", "host=/nonexistent dbname=x"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"hessra-pg: error: {PGLAST_MISSING}\n"


class _Rows:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    def execute(self, *_: object) -> _Rows:
        return self

    def fetchall(self) -> list[tuple[object, ...]]:
        return self.rows


def _policy(name: str, qual: str | None, with_check: str | None = None, *, oid: int = 1,
            permissive: bool = True, comment: str | None = None) -> tuple[object, ...]:
    return (oid, f"public.t{oid}", f"t{oid}", True, True, "postgres", False, name, "r", permissive, qual,
            with_check, True, name, comment)


def test_policy_checks_from_parsed_expressions() -> None:
    """The table check on catalog rows: an expression the parser can't read is
    a warning (not checked), never silently fine; a table whose policies only
    mention hessra_authz in literals is no token table."""
    from hessra_pg.admin.doctor import Report, _check_tables

    report = Report("db", "app", "15")
    tables = _check_tables(_Rows([  # type: ignore[arg-type]
        _policy("good", "( SELECT hessra_authz.authorized('t1'::text, 'read'::text) AS authorized)"),
        _policy("odd", "(SELECT hessra_authz.authorized('a', 'b') FROM", None),
        _policy("slow", "true", "hessra_authz.verify_bearer(hessra_authz.current_token())", permissive=False),
        _policy("literal", "(note <> 'hessra_authz.authorized('::text)", oid=2),
    ]), report)
    assert [table.qualified for table in tables] == ["public.t1"]
    checks = {check.name: (check.status, check.message) for check in report.checks}
    assert checks == {
        "table public.t1": ("ok", "row level security enabled and forced"),
        "policy odd on public.t1": ("warn", "not checked: its USING expression can't be read (PostgreSQL's parser "
                                            "rejects it: syntax error at end of input)"),
        "policy slow on public.t1": ("fail", "evaluated once per row: hessra_authz.verify_bearer() in WITH CHECK"),
    }


def test_per_row_calls_are_intended_only_with_the_no_subquery_comment() -> None:
    from hessra_pg.admin.doctor import Report, _check_tables
    from hessra_pg.rls.policies import NO_SUBQUERY_COMMENT

    report = Report("db", "app", "15")
    bare = "hessra_authz.authorized('t1'::text, 'read'::text)"
    _check_tables(_Rows([  # type: ignore[arg-type]
        _policy("marked", bare, comment=NO_SUBQUERY_COMMENT),
        _policy("recorded", None, bare, comment='hessra-pg spec: {"no_subquery": true, "table": "t1"}'),
        _policy("unmarked", bare, oid=2, comment="per row, trust me"),
    ]), report)
    checks = {check.name: (check.status, check.message) for check in report.checks}
    assert checks["policies on public.t1"] == (
        "ok", "2 token policies, 2 without subqueries by design (--no-subquery, for Citus: hessra_authz calls "
              "once per row)")
    assert checks["policy unmarked on public.t2"] == ("fail", "evaluated once per row: hessra_authz.authorized() "
                                                              "in USING")
