"""Policy test files: every problem named with its case and field; the row
comparison and its diff; the statements a run refuses; test token minting."""

from __future__ import annotations

import datetime
import decimal
import time
import uuid

import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.core.shape import read_shape
from hessra_pg.core.encoding import decode_token
from hessra_pg.core.verifier import RootKey, verify_identity
from hessra_pg.errors import PolicyTestFileError, TokenSpecError
from hessra_pg.policytest import TokenSpec, mint_test_token, parse_cases
from hessra_pg.policytest.cases import GARBAGE, NO_TOKEN, load_cases
from hessra_pg.policytest.compare import compare_rows, show_row
from hessra_pg.policytest.session import session_control
from hessra_pg.tokens.capability import capability_info

GOOD = """
[run]
role = "app"
setup = "INSERT INTO t VALUES (1)"

[tokens.reader]
kind = "capability"
resource = "orders"
operation = "read"
designations = { tenant_id = "acme" }

[[cases]]
name = "named token"
token = "reader"
sql = "SELECT 1"
rows = [[1]]

[[cases]]
name = "inline, own role, subject, several statements"
role = "other"
token = { subject = "alice", resource = "invoices/1", operation = "read", expires_in = 60 }
subject = ""
sql = ["SELECT 1", "SELECT 2"]
count = 1

[[cases]]
name = "denied"
token = "garbage"
sql = "INSERT INTO t VALUES (2)"
sqlstate = "42501"

[[cases]]
name = "none"
token = "none"
sql = "SELECT 1"
allowed = true
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyTestFileError) as caught:
        parse_cases(text, source="c.toml")
    lines = str(caught.value).splitlines()
    return lines[1:] if lines[0].endswith("problems:") else lines


def test_a_good_file():
    cases = parse_cases(GOOD, source="c.toml")
    assert cases.setup == ("INSERT INTO t VALUES (1)",)
    named, inline, denied, none = cases.cases
    assert named.role == "app" and named.token == cases.tokens["reader"]
    assert named.token.designations == {"tenant_id": "acme"} and named.expect.rows == ((1,),)
    assert inline.role == "other" and inline.subject == "" and inline.statements == ("SELECT 1", "SELECT 2")
    assert inline.token.kind == "authorization" and inline.token.expires_in == 60 and inline.expect.count == 1
    assert denied.token == GARBAGE and not denied.expect.allowed and denied.expect.sqlstate == "42501"
    assert none.token == NO_TOKEN and none.expect.allowed and none.expect.rows is None


def test_every_problem_names_its_case_and_field():
    text = """
[run]
role = 3
extra = 1

[tokens.none]
kind = "identity"
subject = "x"

[tokens.bad]
kind = "identity"
subject = "x"
resource = "r"

[[cases]]
name = "one"
role = "app"
token = "missing"
sql = ["SELECT 1", "COMMIT"]
rows = [1, 2]
ordered = "yes"

[[cases]]
name = "one"
role = "app"
token = { kind = "capability", operation = "read" }
sql = "select 1"
allowed = false
count = 0
sqlstate = "nope"

[[cases]]
token = "none"
sql = "/* x */ SET LOCAL ROLE postgres"
count = -1
color = "blue"
"""
    assert problems(text) == [
        "c.toml: [run] extra: unknown field (expected role, setup)",
        "c.toml: [run] role: must be a non-empty string",
        "c.toml: [tokens.none]: 'none' is reserved (token = 'none' means no token)",
        "c.toml: [tokens.bad]: resource: not a field of an identity token (fields: expired, expires_in, key, kind, "
        "subject)",
        "c.toml: case 'one' token: no token named 'missing' in [tokens]",
        "c.toml: case 'one' sql[1]: COMMIT is not allowed: the run is one transaction, rolled back at the end, and "
        "each case sets its own role",
        "c.toml: case 'one' rows: must be an array of rows, each an array of values (one column: [[1], [2]])",
        "c.toml: case 'one' ordered: must be true or false",
        "c.toml: case 'one': another case has this name",
        "c.toml: case 'one' token: resource: required for a capability token",
        "c.toml: case 'one' sqlstate: must be a 5-character SQLSTATE such as \"42501\"",
        "c.toml: case 'one' allowed: a denied case has no rows or count to compare",
        "c.toml: cases[2] name: required: a non-empty string",
        "c.toml: cases[2] color: unknown field (expected allowed, count, name, ordered, role, rows, sql, sqlstate, "
        "subject, token)",
        "c.toml: cases[2] role: required (or [run] role): the role the statements run as",
        "c.toml: cases[2] sql: SET LOCAL ROLE is not allowed: the run is one transaction, rolled back at the end, "
        "and each case sets its own role",
        "c.toml: cases[2] count: must be a non-negative integer",
    ]


@pytest.mark.parametrize("text, expected", [
    ("", "c.toml: cases: no [[cases]]: the file tests nothing"),
    ("cases = 1", "c.toml: cases: must be an array of tables ([[cases]])"),
    ("[surprise]\n[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql='select 1'\ncount=0",
     "c.toml: surprise: unknown section (expected cases, run, tokens)"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql='select 1'",
     "c.toml: case 'a': expects nothing: give rows, count, allowed or sqlstate"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql=[]\ncount=0", "c.toml: case 'a' sql: needs at least one statement"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\ncount=0", "c.toml: case 'a' sql: required: the statement(s) to run"),
    ("[[cases]]\nname='a'\nrole='r'\nsql='x'\ncount=0",
     "c.toml: case 'a' token: required: a [tokens] name, an inline table, 'none' or 'garbage'"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql='x'\ncount=2\nrows=[[1]]",
     "c.toml: case 'a' count: says 2 rows, rows lists 1"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql='x'\nallowed=true\nsqlstate='42501'",
     "c.toml: case 'a' sqlstate: expects an error: it goes with allowed = false"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken='none'\nsql='x'\ncount=1\nordered=true",
     "c.toml: case 'a' ordered: applies to rows"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken={kind='capability', resource='r', operation='o', designations={t=1}}\n"
     "sql='x'\ncount=1",
     "c.toml: case 'a' token: designations: must map labels (non-empty strings) to string values"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken={resource='r', operation='o'}\nsql='x'\ncount=1",
     "c.toml: case 'a' token: subject: required for an authorization token"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken={kind='identity', subject='s', expires_in=0}\nsql='x'\ncount=1",
     "c.toml: case 'a' token: expires_in: must be a positive number of seconds"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken={kind='identity', subject='s', key='mine'}\nsql='x'\ncount=1",
     "c.toml: case 'a' token: key: must be one of test, unregistered, not 'mine'"),
    ("[[cases]]\nname='a'\nrole='r'\ntoken={kind='bearer'}\nsql='x'\ncount=1",
     "c.toml: case 'a' token: kind: must be one of authorization, identity, capability, not 'bearer'"),
])
def test_single_problems(text, expected):
    assert problems(text) == [expected]


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(PolicyTestFileError, match=r"missing.toml: can't read it: No such file or directory"):
        load_cases(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[cases]\n")
    with pytest.raises(PolicyTestFileError, match=r"bad.toml: not valid TOML: "):
        load_cases(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyTestFileError, match=r"binary.toml: can't read it: UnicodeDecodeError"):
        load_cases(binary)


@pytest.mark.parametrize("statement, control", [
    ("COMMIT", "COMMIT"), ("  commit;", "COMMIT"), ("-- hi\nEND", "END"), ("/* x */ rollback", "ROLLBACK"),
    ("ABORT", "ABORT"), ("BEGIN", "BEGIN"), ("start transaction", "START"), ("SAVEPOINT a", "SAVEPOINT"),
    ("release a", "RELEASE"), ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"), ("set role app", "SET ROLE"),
    ("SET SESSION ROLE app", "SET SESSION ROLE"), ("set session authorization app", "SET SESSION AUTHORIZATION"),
    ("RESET ROLE", "RESET ROLE"), ("reset all", "RESET ALL"), ("DISCARD ALL", "DISCARD"),
    ("SELECT 1", None), ("select * from commits", None), ("INSERT INTO ends VALUES (1)", None),
    ("PREPARE q AS SELECT 1", None), ("SET LOCAL work_mem = '8MB'", None), ("(SELECT 1)", None),
    ("WITH x AS (SELECT 1) SELECT * FROM x", None), ("SET roles.x = 1", None),
])
def test_session_control(statement, control):
    assert session_control(statement) == control


def test_compare_rows():
    assert compare_rows([[1, "a"], [2, "b"]], [(2, "b"), (1, "a")]) == []
    assert compare_rows([[1, "a"], [1, "a"]], [(1, "a")]) == ["expected 2 rows, got 1", 'missing:    [1, "a"]']
    assert compare_rows([[1]], [(1,), (2,)]) == ["expected 1 row, got 2", "unexpected: [2]"]
    assert compare_rows([[1], [3]], [(1,), (2,)]) == ["missing:    [3]", "unexpected: [2]"]
    assert compare_rows([[1], [2]], [(2,), (1,)], ordered=True) == [
        "same rows in another order: row 1 is [2], expected [1]"]
    # Types: NUMERIC equals TOML numbers, booleans are not numbers, NULL is shown as NULL.
    assert compare_rows([[10.5, 2, 2]], [(decimal.Decimal("10.50"), decimal.Decimal(2), 2.0)]) == []
    assert compare_rows([[1]], [(True,)]) == ["missing:    [1]", "unexpected: [true]"]
    assert compare_rows([["x"]], [(None,)]) == ['missing:    ["x"]', "unexpected: [NULL]"]
    assert compare_rows([["1"]], [(1,)]) == ['missing:    ["1"]', "unexpected: [1]"]
    day = datetime.date(2024, 1, 2)
    at = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert compare_rows([[day, at, [1, 2], {"a": 1}]], [(day, at, [1, 2], {"a": 1})]) == []
    u = uuid.uuid4()
    assert compare_rows([[str(u)]], [(u,)]) == []
    assert show_row([None, True, 1.5, "a\"b", day, [1, "x"], {"k": None}]) == (
        '[NULL, true, 1.5, "a\\"b", 2024-01-02, [1, "x"], { "k" = NULL }]')


def test_minted_tokens_follow_their_description():
    pair = generate_keypair("ed25519")
    root = str(pair.public_key)
    now = int(time.time())
    identity = mint_test_token(TokenSpec(kind="identity", subject="urn:hessra:alice"), pair, 7, now=now)
    assert identity.subject is None and read_shape(decode_token(identity.token)).root_key_id == 7
    assert verify_identity(identity.token, [RootKey(7, root)], now=now, identity="urn:hessra:alice").valid
    old = mint_test_token(TokenSpec(kind="identity", subject="urn:hessra:alice", expires_in=30, expired=True),
                          pair, 7, now=now)
    assert not verify_identity(old.token, [RootKey(7, root)], now=now, identity="urn:hessra:alice").valid
    forged = mint_test_token(TokenSpec(kind="identity", subject="urn:hessra:alice", key="unregistered"), pair, 7)
    assert not verify_identity(forged.token, [RootKey(7, root)], now=now, identity="urn:hessra:alice").valid
    cap = mint_test_token(TokenSpec(kind="capability", resource="orders", operation="read",
                                    designations={"tenant_id": "acme"}, anchor="db:test"), pair, 7, now=now)
    info = capability_info(cap.token, root)
    assert cap.subject is None and info.verified
    assert (info.anchor, [(d.label, d.value) for d in info.designations]) == ("db:test", [("tenant_id", "acme")])
    assert (info.subject, info.resource, info.operation) == ("hessra-pg-test", "orders", "read")
    authz = mint_test_token(TokenSpec(subject="alice", resource="r", operation="o"), pair, None, now=now)
    assert authz.subject == "alice" and authz.token not in repr(authz) and str(authz) == authz.token
    with pytest.raises(TokenSpecError, match="resource/operation: an identity token names no resource"):
        TokenSpec(kind="identity", subject="a", operation="x")
