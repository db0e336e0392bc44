"""``hessra-pg keys sync`` against a stub Hessra authority over real TLS on
loopback (certificates made on the fly with hessra_pg.dev.certs) and a real
Postgres: keys registered and retired through hessra_authz, tokens of the
old and the new key checked through SQL, every failure leaving the keys
table as it was."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import biscuit_auth
import psycopg
import pytest

from hessra_pg.admin.keysync import (
    DEFAULT_GRACE,
    Authority,
    AuthorityError,
    KeySync,
    KeySyncConflict,
    fetch_authority_key,
    sync_keys,
)
from hessra_pg.cli import main
from hessra_pg.core.keys import generate_keypair, parse_public_key, public_key_pem
from hessra_pg.dev.certs import IssuedCertificate, make_ca
from hessra_pg.dev.testing import HessraDatabase
from hessra_pg.tokens.mint import TokenTime, mint_authorization

REPO = Path(__file__).resolve().parents[2]


# -- a stub authority ----------------------------------------------------------

class StubAuthority:
    """GET /public_key over HTTPS as Hessra's authority answers it, with a
    key that can be switched and failures that can be planted."""

    def __init__(self, cert: IssuedCertificate, *, client_ca: Path | None = None) -> None:
        self.key: biscuit_auth.KeyPair = generate_keypair("secp256r1")
        self.public_key = self.key.public_key  # what GET /public_key serves
        self.extra: dict[str, Any] = {}
        self.status = 200
        self.body: bytes | None = None  # sent instead of the JSON when set
        self.fail_next = 0  # answer this many requests with HTTP 503 first
        self.requests = 0
        self.client_certs: list[Any] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                stub.requests += 1
                stub.client_certs.append(self.connection.getpeercert())
                if self.path != "/public_key":
                    self._send(404, b'{"response_msg": "not found"}')
                elif stub.fail_next:
                    stub.fail_next -= 1
                    self._send(503, b'{"response_msg": "try later"}')
                elif stub.body is not None:
                    self._send(stub.status, stub.body)
                else:
                    document = {"response_msg": "Public key retrieved",
                                "public_key": public_key_pem(stub.public_key), **stub.extra}
                    self._send(stub.status, json.dumps(document).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert.cert, cert.key)
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rotate(self) -> biscuit_auth.KeyPair:
        self.key = generate_keypair("secp256r1")
        self.public_key = self.key.public_key
        return self.key

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory / "ca")
    other = make_ca(directory / "other", name="other-ca")
    return {
        "ca": ca,
        "server": ca.issue("authority", dns=["localhost"], ips=["127.0.0.1"], server=True),
        "elsewhere": ca.issue("elsewhere", dns=["authority.example"], server=True),
        "other_ca": other,
        "client": ca.issue("dbsync", uris=["urn:hessra:db-sync"]),
    }


@pytest.fixture
def stub(pki: dict[str, Any]) -> Iterator[StubAuthority]:
    server = StubAuthority(pki["server"])
    yield server
    server.close()


@pytest.fixture
def authority(stub: StubAuthority, pki: dict[str, Any]) -> Authority:
    return Authority(f"127.0.0.1:{stub.port}", str(pki["ca"].cert))


def keys_table(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT kid, public_key, not_before, not_after, comment FROM hessra_authz.keys "
                        "ORDER BY kid").fetchall()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["keys", "sync", *args])
    out, err = capsys.readouterr()
    return code, out, err


def sync_args(db: HessraDatabase, stub: StubAuthority, pki: dict[str, Any], *extra: str) -> list[str]:
    return ["--authority", f"127.0.0.1:{stub.port}", "--ca", str(pki["ca"].cert), "--dsn", db.dsn, *extra]


def verifies(conn: psycopg.Connection, token: str) -> tuple[bool, str]:
    """verify_token and explain's reason, as the database decides now."""
    return conn.execute(
        "SELECT hessra_authz.verify_token(%(t)s, 'alice', 'orders', 'read'), "
        "hessra_authz.explain(%(t)s, 'alice', 'orders', 'read') ->> 'reason'", {"t": token}).fetchone()


def token_of(pair: biscuit_auth.KeyPair, kid: int | None = None, ttl: int = 300) -> str:
    return mint_authorization(pair, "alice", "orders", "read", time_config=TokenTime(duration=ttl),
                              root_key_id=kid)


# -- the first sync, the second, a rotation ----------------------------------------

def test_first_sync_adds_the_key_and_a_second_changes_nothing(
        hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority, pki: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    token = token_of(stub.key)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):  # no active key yet
        verifies(admin, token)

    code, out, err = run(capsys, *sync_args(hessra_db, stub, pki))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"added        kid 1: {stub.key.public_key} from 127.0.0.1:{stub.port}, "
                               "verifies from ")
    [(kid, public_key, _, not_after, comment)] = keys_table(admin)
    assert (kid, public_key, not_after) == (1, str(stub.key.public_key), None)
    assert comment.startswith(f"hessra-pg keys sync from 127.0.0.1:{stub.port} at ")
    assert verifies(admin, token) == (True, "ok")

    before = keys_table(admin)
    code, out, err = run(capsys, *sync_args(hessra_db, stub, pki))
    assert (code, err) == (0, "")
    assert out == f"nothing changed: the authority's key (127.0.0.1:{stub.port}) is registered and active\n"
    assert keys_table(admin) == before


def test_a_key_registered_by_hand_is_recognised_in_any_form(
        hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority, authority: Authority) -> None:
    """The authority serves PEM; the database holds alg/hex (registered from
    PEM or alg/hex): compared canonically, nothing to do."""
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (public_key_pem(stub.key.public_key),))
    with hessra_db.connect(autocommit=True) as conn:
        assert sync_keys(conn, authority.fetch()) == []
    assert [row[0] for row in keys_table(admin)] == [7]


def test_rotation_retires_the_previous_key_after_the_grace(
        hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority, pki: dict[str, Any],
        app_role: str, capsys: pytest.CaptureFixture[str]) -> None:
    old = stub.key
    assert run(capsys, *sync_args(hessra_db, stub, pki))[0] == 0
    # The longest-lived token the old key signs, just before the rotation (24 h).
    old_token = token_of(old, kid=1, ttl=24 * 3600)
    old_expires = admin.execute("SELECT now() + interval '24 hours'").fetchone()[0]

    new = stub.rotate()
    new_token = token_of(new, kid=2)
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert verifies(app, new_token) == (False, "bad_signature")  # unknown_key, as an application sees it
    assert verifies(admin, new_token) == (False, "unknown_key")

    started = admin.execute("SELECT clock_timestamp()").fetchone()[0]
    code, out, err = run(capsys, *sync_args(hessra_db, stub, pki))
    finished = admin.execute("SELECT clock_timestamp()").fetchone()[0]
    assert (code, err) == (0, "")
    added, retiring = out.splitlines()
    assert added.startswith(f"added        kid 2: {new.public_key} from 127.0.0.1:{stub.port}")
    assert retiring.startswith("retiring     kid 1: stops verifying at ")
    assert retiring.endswith(" UTC (now + 24h5m grace)")

    rows = {row[0]: row for row in keys_table(admin)}
    assert rows[2][1] == str(new.public_key) and rows[2][3] is None
    ends = rows[1][3]
    assert started + DEFAULT_GRACE <= ends <= finished + DEFAULT_GRACE
    assert ends > old_expires + timedelta(minutes=4)  # the grace outlasts the token, with skew to spare

    with hessra_db.connect(app_role, autocommit=True) as app:
        assert verifies(app, old_token) == (True, "ok")  # before the end: both keys verify
        assert verifies(app, new_token) == (True, "ok")
    assert verifies(admin, old_token) == (True, "ok")

    # The grace has passed: move the old key's window back by the grace.
    admin.execute("UPDATE hessra_authz.keys SET not_before = not_before - %(g)s - interval '1 hour', "
                  "not_after = not_after - %(g)s - interval '1 second' WHERE kid = 1", {"g": DEFAULT_GRACE})
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert verifies(app, old_token) == (False, "bad_signature")
        assert verifies(app, new_token) == (True, "ok")
    assert verifies(admin, old_token) == (False, "key_inactive")

    # And still nothing to do.
    assert run(capsys, *sync_args(hessra_db, stub, pki))[1].startswith("nothing changed")


def test_grace_option_and_a_key_that_already_ends_sooner(
        hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority, pki: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *sync_args(hessra_db, stub, pki))[0] == 0
    stub.rotate()
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki, "--grace", "90m"))
    assert code == 0 and out.splitlines()[1].endswith("(now + 1h30m grace)")
    ends = admin.execute("SELECT not_after - clock_timestamp() FROM hessra_authz.keys WHERE kid = 1").fetchone()[0]
    assert timedelta(minutes=89) < ends <= timedelta(minutes=90)

    # kid 2 already ends in one hour (set by hand): a rotation never extends it.
    admin.execute("SELECT hessra_authz.retire_key(2, now() + interval '1 hour')")
    before = admin.execute("SELECT not_after FROM hessra_authz.keys WHERE kid = 2").fetchone()[0]
    stub.rotate()
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki))
    assert code == 0 and len(out.splitlines()) == 1 and out.startswith("added        kid 3:")
    assert admin.execute("SELECT not_after FROM hessra_authz.keys WHERE kid = 2").fetchone()[0] == before


def test_only_the_newest_active_key_is_retired(
        hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority, authority: Authority) -> None:
    """Other keys (another issuer's, a future one, retired ones) stay as they are."""
    admin.execute("SELECT hessra_authz.add_key(%s, 10, now() - interval '10 days')",
                  (str(generate_keypair().public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 11, now() - interval '1 day')",
                  (str(generate_keypair().public_key),))
    admin.execute("SELECT hessra_authz.add_key(%s, 12, now() + interval '30 days')",
                  (str(generate_keypair().public_key),))
    before = {row[0]: row for row in keys_table(admin)}
    with hessra_db.connect(autocommit=True) as conn:
        changes = sync_keys(conn, authority.fetch(), grace=timedelta(hours=2))
    assert [(change.action, change.kid) for change in changes] == [("add", 13), ("retire", 11)]
    after = {row[0]: row for row in keys_table(admin)}
    assert after[10] == before[10] and after[12] == before[12]
    assert after[11][3] is not None and after[13][3] is None


def test_dry_run_changes_nothing(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                                 pki: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki, "--dry-run"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"would add    kid 1: {stub.key.public_key}")
    assert lines[-1] == "dry run: rolled back, nothing written"
    assert keys_table(admin) == []

    assert run(capsys, *sync_args(hessra_db, stub, pki))[0] == 0
    stub.rotate()
    before = keys_table(admin)
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki, "--dry-run"))
    assert code == 0
    assert [line.split(" kid ")[0].strip() for line in out.splitlines()] == [
        "would add", "would retire", "dry run: rolled back, nothing written"]
    assert keys_table(admin) == before


# -- failures: one line, the right exit status, nothing changed ----------------------

def _assert_failure(capsys: pytest.CaptureFixture[str], args: list[str], admin: psycopg.Connection,
                    expected: str, code: int = 2) -> str:
    before = keys_table(admin)
    got, out, err = run(capsys, *args)
    assert got == code, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("hessra-pg: error: "), err
    assert "Traceback" not in err and "AAAA" not in err and "secp256r1/" not in err and "xxxx" not in err
    assert expected in err, err
    assert keys_table(admin) == before
    return err


@pytest.fixture
def synced(hessra_db: HessraDatabase, stub: StubAuthority, pki: dict[str, Any], capsys) -> biscuit_auth.KeyPair:
    """The stub's first key is in the database; the stub has rotated since
    (so a successful sync would change something)."""
    assert run(capsys, *sync_args(hessra_db, stub, pki))[0] == 0
    return stub.rotate()


def test_tls_failures(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                      pki: dict[str, Any], synced, capsys: pytest.CaptureFixture[str]) -> None:
    args = sync_args(hessra_db, stub, pki)
    wrong_ca = [*args[:2], "--ca", str(pki["other_ca"].cert), *args[4:]]
    err = _assert_failure(capsys, wrong_ca, admin, f"TLS: the certificate of the authority at 127.0.0.1:{stub.port} "
                                                    "is not trusted: ")
    assert "certificate verify failed" in err or "issuer" in err

    # The right CA, but the certificate names another host.
    elsewhere = StubAuthority(pki["elsewhere"])
    try:
        elsewhere.public_key = stub.public_key
        err = _assert_failure(capsys, ["--authority", f"127.0.0.1:{elsewhere.port}", *args[2:]], admin,
                              "is not trusted: ")
        assert "127.0.0.1" in err and ("mismatch" in err.lower() or "not valid for" in err)
        err = _assert_failure(capsys, ["--authority", f"localhost:{elsewhere.port}", *args[2:]], admin,
                              "is not trusted: ")
        assert "localhost" in err
    finally:
        elsewhere.close()

    # A plain HTTP server where HTTPS is expected: the handshake fails.
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        _assert_failure(capsys, ["--authority", f"127.0.0.1:{plain.server_address[1]}", *args[2:]], admin,
                        f"TLS with the authority at 127.0.0.1:{plain.server_address[1]} failed: ")
    finally:
        plain.shutdown()
        plain.server_close()

    # Nobody listening.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    _assert_failure(capsys, ["--authority", f"127.0.0.1:{closed}", *args[2:]], admin,
                    f"cannot reach the authority at 127.0.0.1:{closed}: Connection refused")


def test_client_certificates(hessra_db: HessraDatabase, admin: psycopg.Connection, pki: dict[str, Any],
                             capsys: pytest.CaptureFixture[str]) -> None:
    """An authority that wants a client certificate: refused without one,
    served with --mtls-cert/--mtls-key."""
    server = StubAuthority(pki["server"], client_ca=pki["ca"].cert)
    try:
        args = ["--authority", f"localhost:{server.port}", "--ca", str(pki["ca"].cert), "--dsn", hessra_db.dsn]
        err = _assert_failure(capsys, args, admin, "")
        assert ("does it want a client certificate (--mtls-cert, --mtls-key)?" in err
                or "Connection reset by peer" in err), err
        code, out, err = run(capsys, *args, "--mtls-cert", str(pki["client"].cert),
                             "--mtls-key", str(pki["client"].key))
        assert (code, err) == (0, ""), err
        assert out.startswith("added        kid 1:")
        assert server.client_certs[-1]["subject"] == ((("commonName", "dbsync"),),)
        # One without the other is refused before anything happens.
        _assert_failure(capsys, [*args, "--mtls-cert", str(pki["client"].cert)], admin,
                        "--mtls-cert and --mtls-key go together")
    finally:
        server.close()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, None, "answered GET /public_key with HTTP 500 Internal Server Error"),
    (404, b'{"response_msg": "no"}', "answered GET /public_key with HTTP 404 Not Found"),
    (200, b"<html>Welcome to nginx</html>", "answered GET /public_key with something that is not JSON"),
    (200, b'["-----BEGIN PUBLIC KEY-----"]', "answered GET /public_key with JSON that is not an object"),
    (200, b'{"response_msg": "ok"}', "answered GET /public_key with no 'public_key' field"),
    (200, b'{"public_key": "ed25519/' + b"ab" * 32 + b'"}', "with no 'response_msg' field"),
    (200, b'{"response_msg": "ok", "public_key": 7}', "with a non-string 'public_key' field"),
    (200, b'{"response_msg": "ok", "public_key": "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----"}',
     "a 'public_key' that is not a usable public key: PEM public key could not be parsed"),
    (200, b'{"response_msg": "ok", "public_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"}',
     "a 'public_key' that is not a usable public key: PEM key must be a single"),
    (200, b'{"response_msg": "ok", "public_key": "secp256r1/05' + b"11" * 32 + b'"}',
     "not a usable public key: secp256r1 public key bytes are not a valid curve point"),
    (200, b"{" + b'"response_msg": "' + b"x" * 70000 + b'"}', "sent more than 64 KiB"),
])
def test_http_and_format_failures(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                                  pki: dict[str, Any], synced, capsys: pytest.CaptureFixture[str],
                                  status: int, body: bytes | None, expected: str) -> None:
    stub.status = status
    stub.body = body if body is not None else b'{"response_msg": "internal error"}'
    err = _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin, expected)
    assert f"the authority at 127.0.0.1:{stub.port} " in err


def test_argument_and_database_failures(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                                        pki: dict[str, Any], synced, app_role: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = sync_args(hessra_db, stub, pki)
    _assert_failure(capsys, [*args[:2], "--ca", str(tmp_path / "missing.pem"), *args[4:]], admin,
                    "cannot read the CA file")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    _assert_failure(capsys, [*args[:2], "--ca", str(tmp_path / "junk.pem"), *args[4:]], admin,
                    "cannot use the CA file")
    # An application role may not administer keys: refused, nothing changed.
    _assert_failure(capsys, [*args[:4], "--dsn", hessra_db.dsn_for(app_role)], admin,
                    "permission denied for table keys (connect as a member of hessra_admin")
    _assert_failure(capsys, [*args[:4], "--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=2"], admin,
                    "cannot connect to the database")
    # argparse's own usage errors (exit 2).
    for bad in (["--grace", "soon"], ["--grace", "0"], ["--interval", "5m"], ["--watch", "--dry-run"]):
        capsys.readouterr()
        assert main(["keys", "sync", *args, *bad]) == 2
        assert "Traceback" not in capsys.readouterr().err
    capsys.readouterr()
    assert main(["keys", "sync", "--authority", "http://x", "--ca", "c", "--dsn", ""]) == 2
    assert "over https only" in capsys.readouterr().err


# -- kids and conflicts ------------------------------------------------------------

def test_the_authoritys_kid(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                            pki: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    stub.extra = {"root_key_id": 40}
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki))
    assert code == 0 and out.startswith("added        kid 40:")
    assert verifies(admin, token_of(stub.key, kid=40)) == (True, "ok")

    # Without a kid from the authority: the next free one.
    stub.rotate()
    stub.extra = {}
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki))
    assert code == 0 and out.startswith("added        kid 41:") and "retiring     kid 40:" in out

    # 'kid' is read too; when both are given they must agree.
    stub.rotate()
    stub.extra = {"kid": 50, "root_key_id": 51}
    _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin, "'root_key_id' and 'kid' that differ")
    for bad in (0, -1, "7", True, 2**31):
        stub.extra = {"kid": bad}
        _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin, "'kid' that is not a positive 32-bit")
    stub.extra = {"kid": 50}
    code, out, _ = run(capsys, *sync_args(hessra_db, stub, pki))
    assert code == 0 and out.startswith("added        kid 50:")

    # The authority names a kid that is another key's: a conflict (exit 1), nothing changed.
    stub.rotate()
    stub.extra = {"kid": 40}
    _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin,
                    "the authority names its key kid 40, but kid 40 is another key in this database", code=1)
    # The authority's key is registered, under another kid than it names.
    public = admin.execute("SELECT public_key FROM hessra_authz.keys WHERE kid = 50").fetchone()[0]
    stub.public_key = parse_public_key(public)
    stub.extra = {"kid": 51}
    _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin,
                    "the authority's key is registered as kid 50, but the authority names it kid 51", code=1)


def test_a_retired_or_future_key_is_not_revived(hessra_db: HessraDatabase, admin: psycopg.Connection,
                                                stub: StubAuthority, pki: dict[str, Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *sync_args(hessra_db, stub, pki))[0] == 0
    admin.execute("SELECT hessra_authz.add_key(%s, 2, now() - interval '1 day')", (str(generate_keypair().public_key),))
    admin.execute("SELECT hessra_authz.retire_key(1, now() - interval '1 hour')")
    _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin,
                    "the authority's key is kid 1, retired at ", code=1)

    future = stub.rotate()
    admin.execute("SELECT hessra_authz.add_key(%s, 3, now() + interval '1 day')", (str(future.public_key),))
    _assert_failure(capsys, sync_args(hessra_db, stub, pki), admin, "the authority's key is kid 3, valid only from ",
                    code=1)


# -- concurrency and the Python API ------------------------------------------------

def test_concurrent_syncs_register_the_key_once(hessra_db: HessraDatabase, admin: psycopg.Connection,
                                                stub: StubAuthority, authority: Authority) -> None:
    key = authority.fetch()
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def one() -> None:
        with hessra_db.connect(autocommit=True) as conn:
            barrier.wait()
            results.append(sync_keys(conn, key))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(changes) for changes in results) == [0, 0, 0, 1]
    assert [row[0] for row in keys_table(admin)] == [1]


def test_a_sync_stuck_behind_a_lock_gives_up(hessra_db: HessraDatabase, admin: psycopg.Connection,
                                             stub: StubAuthority, authority: Authority) -> None:
    """Another sync holds the lock: KeySync waits lock_timeout, then fails
    (one line, nothing changed) instead of hanging a --watch."""
    from hessra_pg.admin.keysync import _LOCK_KEY, KeySyncError

    with hessra_db.connect() as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        sync = KeySync(authority, hessra_db.dsn, lock_timeout=timedelta(seconds=0.3))
        started = time.monotonic()
        with pytest.raises(KeySyncError, match="cannot sync hessra_authz.keys: canceling statement due to lock "
                                               "timeout"):
            sync.run()
        assert time.monotonic() - started < 5
        holder.rollback()
    assert keys_table(admin) == []
    assert [change.action for change in sync.run()] == ["add"]


def test_python_api(hessra_db: HessraDatabase, admin: psycopg.Connection, stub: StubAuthority,
                    pki: dict[str, Any]) -> None:
    key = fetch_authority_key(f"localhost:{stub.port}", str(pki["ca"].cert))
    assert (key.public_key, key.kid, key.source) == (str(stub.key.public_key), None, f"localhost:{stub.port}")
    with pytest.raises(AuthorityError) as failure:
        fetch_authority_key(f"localhost:{stub.port}", str(pki["other_ca"].cert))
    assert failure.value.kind == "tls"

    # In the caller's transaction: a savepoint, the caller commits (or not).
    with hessra_db.connect() as conn:
        conn.execute("SELECT 1")
        changes = sync_keys(conn, key, dry_run=False)
        assert [change.action for change in changes] == ["add"]
        conn.rollback()
    assert keys_table(admin) == []

    sync = KeySync(Authority(f"localhost:{stub.port}", str(pki["ca"].cert)), hessra_db.dsn)
    assert [change.as_dict()["action"] for change in sync.run(dry_run=True)] == ["add"]
    assert keys_table(admin) == []
    assert [change.kid for change in sync.run()] == [1]
    assert sync.run() == []
    admin.execute("SELECT hessra_authz.retire_key(1, now() - interval '1 second')")
    with pytest.raises(KeySyncConflict):
        sync.run()


# -- watch -------------------------------------------------------------------------

def test_watch_survives_failures_and_follows_a_rotation(hessra_db: HessraDatabase, admin: psycopg.Connection,
                                                        stub: StubAuthority, authority: Authority) -> None:
    stop = threading.Event()
    changes: list[Any] = []
    errors: list[tuple[str, float]] = []
    unchanged: list[bool] = []
    stub.fail_next = 2  # the authority is down for the first two requests
    sync = KeySync(authority, hessra_db.dsn, grace=timedelta(hours=1))
    thread = threading.Thread(target=sync.watch, kwargs=dict(
        interval=timedelta(seconds=0.1), stop=stop, on_changes=changes.extend,
        on_error=lambda error, wait: errors.append((str(error), wait)), on_unchanged=lambda: unchanged.append(True)))
    thread.start()
    try:
        _wait_for(lambda: len(changes) == 1)
        assert [message for message, _ in errors] == [
            f"the authority at 127.0.0.1:{stub.port} answered GET /public_key with HTTP 503 Service Unavailable"] * 2
        assert errors[1][1] > errors[0][1]  # backing off
        first = stub.key

        # A rotation is picked up.
        new = stub.rotate()
        _wait_for(lambda: len(changes) == 3)
        assert [(change.action, change.kid) for change in changes] == [("add", 1), ("add", 2), ("retire", 1)]
        assert changes[0].public_key == str(first.public_key) and changes[1].public_key == str(new.public_key)

        # A failure in between (bad JSON, then the database refusing) does not end it.
        stub.body = b"garbage"
        _wait_for(lambda: any("not JSON" in message for message, _ in errors))
        stub.body = None
        requests = stub.requests
        _wait_for(lambda: stub.requests > requests + 2)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [row[0] for row in keys_table(admin)] == [1, 2]


def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _watch_process(db: HessraDatabase, stub: StubAuthority, pki: dict[str, Any]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "hessra_pg", "keys", "sync", *sync_args(db, stub, pki),
               "--watch", "--interval", "0.2s"]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    try:
        process.send_signal(signum)
        return process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_watch_command_stops_on_sigterm_and_sigint(hessra_db: HessraDatabase, admin: psycopg.Connection,
                                                   stub: StubAuthority, pki: dict[str, Any]) -> None:
    """The CLI in a subprocess: a transient failure, a rotation, then
    SIGTERM ends it with status 0; then SIGINT, the same."""
    stub.fail_next = 1
    process = _watch_process(hessra_db, stub, pki)
    _wait_for(lambda: len(keys_table(admin)) == 1)
    stub.rotate()
    _wait_for(lambda: len(keys_table(admin)) == 2)
    time.sleep(0.3)
    out, err = _stop(process, signal.SIGTERM)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == (f"hessra-pg: keys sync: following 127.0.0.1:{stub.port} every 0.2s "
                        "(SIGTERM or Ctrl-C stops)")
    assert lines[1].startswith(f"hessra-pg: error: the authority at 127.0.0.1:{stub.port} answered GET "
                               "/public_key with HTTP 503 Service Unavailable (retrying in 0.")
    assert lines[2:] == ["hessra-pg: keys sync: stopped"]
    assert [line.split(" kid ")[0].strip() for line in out.splitlines()] == ["added", "added", "retiring"]

    before = stub.requests
    process = _watch_process(hessra_db, stub, pki)
    _wait_for(lambda: stub.requests >= before + 2)  # the first pass (nothing changed) is over
    stub.rotate()
    _wait_for(lambda: len(keys_table(admin)) == 3)
    time.sleep(0.3)
    out, err = _stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert err.splitlines()[1:] == ["hessra-pg: keys sync: stopped"]
    assert [line.split(" kid ")[0].strip() for line in out.splitlines()] == [
        f"nothing changed: the authority's key (127.0.0.1:{stub.port}) is registered and active", "added", "retiring"]
