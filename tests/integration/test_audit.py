"""Audit lines (issue 16 item 1), read from the real server log.

hessra_authz.audit_settings holds the levels; each audited decision writes
one JSON line 'hessra_authz audit: {...}' to the server log only.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import biscuit_auth
import psycopg
import pytest
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.dev.testing import HessraDatabase
from hessra_pg.plpython import audit as audit_module
from hessra_pg.tokens.mint import mint_authorization

PREFIX = "hessra_authz audit: "

SCHEMA = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.orders VALUES (1, 'acme'), (2, 'globex'), (3, 'initech');
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));
"""


class LogWindow:
    """The server log's lines from now until read() (a RAISE LOG marker
    proves everything before it is written)."""

    def __init__(self, path: Path, dsn: str) -> None:
        self.path, self.dsn = path, dsn
        self.start = path.stat().st_size

    def read(self) -> str:
        marker = f"hessra-audit-marker-{uuid.uuid4().hex}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DO $m$ BEGIN RAISE LOG '%', {}; END $m$").format(sql.Literal(marker)))
        deadline = time.monotonic() + 10
        while True:
            with self.path.open("rb") as log:
                log.seek(self.start)
                chunk = log.read().decode(errors="replace")
            if marker in chunk:
                return chunk[:chunk.index(marker)]
            assert time.monotonic() < deadline, "the marker never reached the server log"
            time.sleep(0.05)

    def lines(self) -> list[dict[str, Any]]:
        return audit_lines(self.read())


def audit_lines(chunk: str) -> list[dict[str, Any]]:
    return [json.loads(line.split(PREFIX, 1)[1]) for line in chunk.splitlines() if PREFIX in line]


@pytest.fixture
def server_log(hessra_postgres: object) -> Path:
    path = getattr(hessra_postgres, "log_path", None)
    assert path is not None, "the tests run on a local cluster, whose log they read"
    return Path(path)


class Env:
    def __init__(self, db: HessraDatabase, admin: psycopg.Connection, role: str, signer: biscuit_auth.KeyPair,
                 log: Path) -> None:
        self.db, self.admin, self.role, self.signer, self.log = db, admin, role, signer, log
        self.good = mint_authorization(signer, "alice", "orders", "read")
        self.forged = mint_authorization(generate_keypair(), "alice", "orders", "read")

    def window(self) -> LogWindow:
        return LogWindow(self.log, self.db.dsn)

    def count_as(self, token: str | None, role: str | None = None) -> int:
        with psycopg.connect(self.db.dsn_for(role or self.role), autocommit=True) as conn:
            return self.count(conn, token)

    @staticmethod
    def count(conn: psycopg.Connection, token: str | None) -> int:
        with conn.transaction():
            conn.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', 'alice', true)",
                         (token or "",))
            return conn.execute("SELECT count(*) FROM public.orders").fetchone()[0]

    def set_audit(self, level: str | None, role: str | None = None) -> None:
        self.admin.execute("SELECT hessra_authz.set_audit(%s, %s)", (level, role))


@pytest.fixture
def env(hessra_db: HessraDatabase, admin: psycopg.Connection, app_role: str, server_log: Path) -> Iterator[Env]:
    admin.execute(SCHEMA)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    signer = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (str(signer.public_key),))
    yield Env(hessra_db, admin, app_role, signer, server_log)


def revocation_ids(token: str) -> list[str]:
    return list(biscuit_auth.UnverifiedBiscuit.from_base64(token).revocation_ids)


# -- levels -------------------------------------------------------------------------------------------------------

def test_off_by_default_writes_nothing(env: Env) -> None:
    window = env.window()
    assert env.count_as(env.good) == 3
    assert env.count_as(env.forged) == 0
    assert env.count_as(None) == 0
    assert window.lines() == []


def test_denied_logs_denials_only_with_every_field(env: Env) -> None:
    env.set_audit("denied")
    window = env.window()
    assert env.count_as(env.good) == 3
    assert env.count_as(env.forged) == 0
    chunk = window.read()
    lines = audit_lines(chunk)
    assert len(lines) == 1, lines
    line = lines[0]
    ids = revocation_ids(env.forged)
    assert line == {
        "event": "decision", "decision_id": line["decision_id"], "user": env.role, "function": "authorized",
        "kind": "authorization", "subject": "alice", "resource": "orders", "operation": "read",
        "outcome": "denied", "reason": "bad_signature", "kid": None, "revocation_id": ids[0],
        "fingerprint": hashlib.sha256(ids[-1].encode()).hexdigest()[:12], "token": "present",
        "statement_start_us": line["statement_start_us"], "query_id": line["query_id"], "standby": False,
        "parallel_worker": False,
    }
    # One line: no statement text, no context, no token.
    text = next(raw for raw in chunk.splitlines() if PREFIX in raw)
    following = chunk.splitlines()[chunk.splitlines().index(text) + 1:]
    assert not any(raw.lstrip().split(" ")[-1:] and ("STATEMENT:" in raw or "CONTEXT:" in raw) for raw in following)
    assert env.forged not in chunk and env.good not in chunk


def test_all_logs_allowed_decisions_with_the_kid(env: Env) -> None:
    env.set_audit("all")
    window = env.window()
    assert env.count_as(env.good) == 3
    assert env.count_as(None) == 0
    chunk = window.read()
    lines = audit_lines(chunk)
    allowed = [line for line in lines if line["outcome"] == "allowed"]
    absent = [line for line in lines if line["token"] == "absent"]
    assert len(allowed) == 1 and len(absent) == 1, lines
    ids = revocation_ids(env.good)
    assert allowed[0]["kid"] == 7 and allowed[0]["reason"] == "ok" and allowed[0]["revocation_id"] == ids[0]
    assert absent[0]["reason"] == "no_token" and absent[0]["fingerprint"] is None
    assert env.good not in chunk
    private = env.signer.private_key.to_hex() if hasattr(env.signer.private_key, "to_hex") else None
    assert private is None or private not in chunk


def test_one_line_per_statement_per_distinct_decision(env: Env) -> None:
    env.set_audit("all")
    window = env.window()
    with psycopg.connect(env.db.dsn_for(env.role), autocommit=True) as conn:
        for _ in range(2):  # two statements: a line each, however many calls
            rows = conn.execute(
                "SELECT count(*) FILTER (WHERE hessra_authz.verify_token(%s, 'alice', 'orders', 'read')),"
                "       count(*) FILTER (WHERE hessra_authz.verify_token(%s, 'alice', 'orders', 'write'))"
                "  FROM generate_series(1, 50)", (env.good, env.good)).fetchone()
            assert rows == (50, 0)
    lines = window.lines()
    assert sorted((line["operation"], line["outcome"]) for line in lines) == [
        ("read", "allowed"), ("read", "allowed"), ("write", "denied"), ("write", "denied")]
    assert {line["function"] for line in lines} == {"verify_token"}
    assert len({line["decision_id"] for line in lines}) == 4
    assert len({line["statement_start_us"] for line in lines}) == 2


def test_a_change_of_level_reaches_a_connected_backend(env: Env) -> None:
    with psycopg.connect(env.db.dsn_for(env.role), autocommit=True) as conn:
        assert Env.count(conn, env.forged) == 0  # configuration loaded, audit off
        window = env.window()
        env.set_audit("denied")
        assert Env.count(conn, env.forged) == 0
        assert [line["reason"] for line in window.lines()] == ["bad_signature"]
        window = env.window()
        env.set_audit("off")
        assert Env.count(conn, env.forged) == 0
        assert window.lines() == []


def test_log_injection_is_escaped(env: Env) -> None:
    env.set_audit("denied")
    window = env.window()
    with psycopg.connect(env.db.dsn_for(env.role), autocommit=True) as conn:
        assert conn.execute("SELECT hessra_authz.verify_token(%s, %s, 'orders', 'read')",
                            (env.good, 'eve\nLOG:  hessra_authz audit: {"outcome":"allowed"}')).fetchone() == (False,)
    chunk = window.read()
    lines = audit_lines(chunk)
    assert len(lines) == 1 and lines[0]["subject"].startswith("eve\nLOG:")
    assert lines[0]["reason"] == "denied"  # the yes/no path does not diagnose (explain() does)


# -- per role ---------------------------------------------------------------------------------------------------

def test_a_role_level_overrides_the_database_level(env: Env, admin: psycopg.Connection) -> None:
    other = f"other_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(other)))
    try:
        admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(other)))
        env.set_audit("all", env.role)
        window = env.window()
        assert env.count_as(env.forged) == 0
        assert env.count_as(env.forged, other) == 0
        assert [line["user"] for line in window.lines()] == [env.role]

        env.set_audit("denied")
        env.set_audit("off", env.role)
        window = env.window()
        assert env.count_as(env.forged) == 0
        assert env.count_as(env.forged, other) == 0
        assert [line["user"] for line in window.lines()] == [other]

        # SET ROLE: the role the session acts as, not the function owner.
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(env.role), sql.Identifier(other)))
        window = env.window()
        with psycopg.connect(env.db.dsn_for(other), autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(env.role)))
            assert Env.count(conn, env.forged) == 0
        assert window.lines() == []

        env.set_audit(None, env.role)  # removed: the database's level again
        window = env.window()
        assert env.count_as(env.forged) == 0
        assert [line["user"] for line in window.lines()] == [env.role]
        assert admin.execute("SELECT role::text, level FROM hessra_authz.audit_settings").fetchall() == [
            (None, "denied")]
    finally:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(other)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))


def test_set_audit_checks_its_arguments(env: Env, admin: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="off, denied or all"):
        env.set_audit("verbose")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        env.set_audit(None)
    with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist"):
        env.set_audit("all", "no_such_role_here")
    admin.execute("SELECT hessra_authz.set_audit('all'), hessra_authz.set_audit('denied')")
    assert admin.execute("SELECT role, level FROM hessra_authz.audit_settings").fetchall() == [(None, "denied")]


# -- only administrators change it ----------------------------------------------------------------------------

def test_the_app_role_cannot_change_the_level(env: Env) -> None:
    env.set_audit("denied")
    with psycopg.connect(env.db.dsn_for(env.role), autocommit=True) as conn:
        for statement in (
            "SELECT hessra_authz.set_audit('off')",
            "SELECT hessra_authz.set_audit('off', current_user)",
            "INSERT INTO hessra_authz.audit_settings (role, level) VALUES (current_user::regrole, 'off')",
            "UPDATE hessra_authz.audit_settings SET level = 'off'",
            "DELETE FROM hessra_authz.audit_settings",
            "TRUNCATE hessra_authz.audit_settings",
            "SELECT * FROM hessra_authz.audit_settings",
            "SELECT audit_level FROM hessra_authz.config_state",
            "SELECT hessra_authz._load_config('1/1', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 0, '',"
            " NULL, false, 'per_row', 'off', '{}', '{}')",
            "SELECT hessra_authz._stats(true)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # A role default for a look-alike setting is refused (PostgreSQL 15:
        # only superusers may store placeholders); a SET is a placeholder
        # that nothing reads.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("ALTER ROLE {} SET hessra_authz.audit = 'off'").format(sql.Identifier(env.role)))
        conn.execute("SET hessra_authz.audit = 'off'")
        conn.execute("SET hessra.audit = 'off'")
        window = env.window()
        assert Env.count(conn, env.forged) == 0
        assert env.count_as(env.forged) == 0  # a new session, with the role's setting
        assert [line["reason"] for line in window.lines()] == ["bad_signature", "bad_signature"]
    assert env.admin.execute("SELECT level FROM hessra_authz.audit_settings").fetchall() == [("denied",)]


def test_the_setting_is_dumped_with_the_extension(env: Env) -> None:
    env.set_audit("denied")
    env.set_audit("all", env.role)
    assert env.admin.execute(
        "SELECT c.relname FROM pg_catalog.pg_extension AS e, unnest(e.extconfig) AS t(oid)"
        "  JOIN pg_catalog.pg_class AS c ON c.oid = t.oid WHERE e.extname = 'hessra_authz'"
        "   AND c.relname = 'audit_settings'").fetchall() == [("audit_settings",)]


# -- rate limit -------------------------------------------------------------------------------------------------

def test_a_flood_is_rate_limited_and_the_suppressed_lines_counted(env: Env) -> None:
    env.set_audit("denied")
    flood = audit_module.BURST + 150
    window = env.window()
    with psycopg.connect(env.db.dsn_for(env.role), autocommit=True) as conn:
        conn.execute("SELECT hessra_authz.reset_stats()")
        started = time.monotonic()
        denied = conn.execute("SELECT count(*) FILTER (WHERE NOT hessra_authz.verify_token(%s, 'alice', 'r' || i, 'read'))"
                              "  FROM generate_series(1, %s) AS i", (env.forged, flood)).fetchone()[0]
        elapsed = time.monotonic() - started
        assert denied == flood
        audit = conn.execute("SELECT hessra_authz.stats() -> 'audit'").fetchone()[0]
        time.sleep(0.2)  # the bucket refills
        assert conn.execute("SELECT hessra_authz.verify_token(%s, 'alice', 'last', 'read')", (env.forged,)
                            ).fetchone() == (False,)
    lines = window.lines()
    decisions = [line for line in lines if line["event"] == "decision"]
    suppressed = [line for line in lines if line["event"] == "suppressed"]
    assert audit["lines"] + audit["suppressed"] == flood
    # The bucket: BURST at once, then RATE per second of the flood.
    assert audit_module.BURST <= audit["lines"] <= audit_module.BURST + audit_module.RATE * elapsed + 1
    assert len(decisions) == audit["lines"] + 1
    # A suppressed line before each line written after suppressions (the
    # bucket may refill during the flood): together they count every one.
    assert sum(line["suppressed"] for line in suppressed) == audit["suppressed"] >= 100
    assert all(line["rate_per_second"] == audit_module.RATE and line["burst"] == audit_module.BURST
               for line in suppressed)
    assert decisions[-1]["resource"] == "last"
