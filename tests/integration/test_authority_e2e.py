"""The seeds' whole flow on loopback, with Hessra's own client (hessra_py
0.2.1): a service asks the local authority (``hessra-pg authority serve``,
in a child process) for a token over mTLS or with an identity token, hands
it to the database through the SQLAlchemy hook, and Row-Level Security
shows the rows the token allows; ``hessra-pg keys sync`` keeps the
database's keys in line with the authority's, through a rotation.

One sandbox authority for the module (certificates made on the fly), a
fresh database per test, an application role that owns nothing and is not
superuser, tables with FORCE ROW LEVEL SECURITY. The reasons of denials are
read as a key administrator (the superuser) sees them through
``hessra_authz.explain``, and as the application role sees them (key
reasons folded into ``bad_signature``)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hessra_py
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import sessionmaker

from hessra_pg.admin.keysync import Authority, KeySync
from hessra_pg.authority.sandbox import LocalAuthority, local_authority
from hessra_pg.core.keys import canonical_public_key
from hessra_pg.dev.testing import HessraDatabase
from hessra_pg.sqlalchemy import install_hessra, set_hessra_context
from hessra_pg.tokens.inspect import inspect_token
from tests.app_helpers import sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]
BILLING = "urn:example:billing"

RESOURCES = """\
[resources.orders]
operations = ["read", "write"]

[resources.payroll]
operations = ["read"]
"""

CLIENTS = f"""\
[[clients]]
identifier = {{ type = "san_uri", value = "{BILLING}" }}
identity_token_enabled = true
resources = [{{ name = "orders", operations = ["read"] }}]
"""

# orders: readable with orders/read, changed with orders/write; payroll: a
# resource billing has no right to. Rows are what the app role may see.
SCHEMA = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
INSERT INTO public.orders VALUES (1, 'acme'), (2, 'globex'), (3, 'initech');
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));
CREATE POLICY orders_write ON public.orders FOR UPDATE
    USING ((SELECT hessra_authz.authorized('orders', 'write')));

CREATE TABLE public.payroll (id int PRIMARY KEY, amount int NOT NULL);
INSERT INTO public.payroll VALUES (1, 100), (2, 200);
ALTER TABLE public.payroll ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.payroll FORCE ROW LEVEL SECURITY;
CREATE POLICY payroll_read ON public.payroll FOR SELECT
    USING ((SELECT hessra_authz.authorized('payroll', 'read')));
"""

#: Long enough that a token issued before the rotation is still within its
#: own expiry when the rehearsal's grace has ended.
TOKEN_TTL = 600
#: A real grace, waited for: the old key stops verifying this long after sync.
GRACE = timedelta(seconds=4)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAuthority]:
    with local_authority(tmp_path_factory.mktemp("authority"), clients_toml=CLIENTS, resources_toml=RESOURCES,
                         token_ttl=TOKEN_TTL, identity_ttl=TOKEN_TTL) as running:
        running.issued = []  # type: ignore[attr-defined]
        first_key = running.key_file.read_text()
        yield running
        # The authority never logged a token (nor a piece of one) or a private key.
        logs = "\n".join(running.logs)
        assert "PRIVATE KEY" not in logs
        for key in (first_key, running.key_file.read_text()):        # before and after the rehearsal's rotation
            assert key.splitlines()[1] not in logs
        for token in running.issued:  # type: ignore[attr-defined]
            assert token[:24] not in logs and token[-24:] not in logs


def issued(sandbox: LocalAuthority, token: str) -> str:
    """Remember a token the authority gave (checked against its log at the end)."""
    sandbox.issued.append(token)  # type: ignore[attr-defined]
    return token


@pytest.fixture
def schema(admin: psycopg.Connection, app_role: str) -> None:
    admin.execute(SCHEMA)
    for table, rights in (("orders", "SELECT, UPDATE"), ("payroll", "SELECT")):
        admin.execute(sql.SQL("GRANT {} ON public.{} TO {}").format(sql.SQL(rights), sql.Identifier(table),
                                                                     sql.Identifier(app_role)))


@pytest.fixture
def sessions(hessra_db: HessraDatabase, app_role: str, schema: None) -> Iterator[sessionmaker]:
    """SQLAlchemy sessions of the app role, with the Hessra hook installed."""
    engine: Engine = create_engine(sqlalchemy_url(hessra_db.dsn_for(app_role)), pool_size=1, max_overflow=0)
    yield install_hessra(sessionmaker(engine))
    engine.dispose()


def authority_of(sandbox: LocalAuthority) -> Authority:
    """Where keys sync finds the sandbox: its address, trusting its CA only."""
    return Authority(f"{sandbox.host}:{sandbox.port}", str(sandbox.ca.cert))


def keys_table(admin: psycopg.Connection) -> list[tuple[Any, ...]]:
    return admin.execute("SELECT kid, public_key, not_after FROM hessra_authz.keys ORDER BY not_before, kid"
                         ).fetchall()


def seen(sessions: sessionmaker, token: str | None, subject: str | None = BILLING) -> dict[str, int]:
    """What one transaction of the app role sees under `token` (set through
    the hook): rows of each table, and rows an UPDATE of orders reaches."""
    with sessions() as session:
        set_hessra_context(session, token=token, subject=subject if token else None)
        found = {table: session.execute(text(f"SELECT count(*) FROM public.{table}")).scalar_one()
                 for table in ("orders", "payroll")}
        found["updated"] = session.execute(text("UPDATE public.orders SET customer = customer")).rowcount
        session.rollback()
    return found


READ_ORDERS = {"orders": 3, "payroll": 0, "updated": 0}
NOTHING = {"orders": 0, "payroll": 0, "updated": 0}


def explain(conn: psycopg.Connection, token: str, subject: str = BILLING, resource: str = "orders",
            operation: str = "read") -> dict[str, Any]:
    return conn.execute("SELECT hessra_authz.explain(%s, %s, %s, %s)",
                        (token, subject, resource, operation)).fetchone()[0]


# -- keys sync and get_public_key ----------------------------------------------

def test_keys_sync_registers_the_key_hessra_py_fetches(sandbox: LocalAuthority, hessra_db: HessraDatabase,
                                                       admin: psycopg.Connection) -> None:
    assert keys_table(admin) == []
    command = [sys.executable, "-m", "hessra_pg", "keys", "sync", "--authority", f"{sandbox.host}:{sandbox.port}",
               "--ca", str(sandbox.ca.cert), "--dsn", hessra_db.dsn]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    [(kid, registered, not_after)] = keys_table(admin)
    assert not_after is None
    assert done.stdout.startswith(f"added        kid {kid}: {registered} from {sandbox.host}:{sandbox.port}")
    # Hessra's client, with no client certificate, gets the key the database now holds
    served = sandbox.hessra_py_client(setup=False).get_public_key()
    assert canonical_public_key(served) == registered
    # ... under the kid the authority names and puts in its tokens
    status, body = sandbox.request("GET", "/public_key")
    assert status == 200 and body["root_key_id"] == kid
    # a second sync (the Python API) changes nothing
    assert KeySync(authority_of(sandbox), hessra_db.dsn).run() == []
    assert keys_table(admin) == [(kid, registered, None)]


# -- tokens over mTLS, through the SQLAlchemy hook -------------------------------

def test_a_listed_client_reads_the_rows_its_token_allows(sandbox: LocalAuthority, hessra_db: HessraDatabase,
                                                         sessions: sessionmaker, app_role: str) -> None:
    KeySync(authority_of(sandbox), hessra_db.dsn).run()
    certificate = sandbox.client_certificate("billing", uris=[BILLING])    # made now, for this test
    token = issued(sandbox, sandbox.hessra_py_client(certificate).request_token_simple("orders", "read"))
    assert seen(sessions, token) == READ_ORDERS
    # no token, or the token under another subject: nothing
    assert seen(sessions, None) == NOTHING
    assert seen(sessions, token, subject="urn:example:portal") == NOTHING
    # the app role learns why, without key details
    with psycopg.connect(hessra_db.dsn_for(app_role)) as app:
        assert explain(app, token)["reason"] == "ok"
        assert explain(app, token, operation="write")["reason"] == "denied"
        assert explain(app, token, resource="payroll")["reason"] == "denied"


def test_a_client_not_in_the_policy_gets_403_and_no_token(sandbox: LocalAuthority, hessra_db: HessraDatabase,
                                                          sessions: sessionmaker) -> None:
    KeySync(authority_of(sandbox), hessra_db.dsn).run()
    stranger = sandbox.client_certificate("stranger", uris=["urn:example:stranger"])
    client = sandbox.hessra_py_client(stranger)
    mark = len(sandbox.logs)
    for ask in (lambda: client.request_token_simple("orders", "read"), lambda: client.request_identity_token(None)):
        with pytest.raises(hessra_py.HessraPyException, match="HTTP error: 403") as raised:
            ask()
        assert "no client in the policy matches this certificate" in str(raised.value)
    # a listed client asking beyond its rights is refused the same way
    billing = sandbox.client_certificate("billing", uris=[BILLING])
    with pytest.raises(hessra_py.HessraPyException, match="HTTP error: 403"):
        sandbox.hessra_py_client(billing).request_token_simple("payroll", "read")
    assert sum(" 403 " in line for line in sandbox.logs[mark:]) >= 3
    assert seen(sessions, None) == NOTHING


# -- identity-token authentication ---------------------------------------------

def test_identity_token_authentication(sandbox: LocalAuthority, hessra_db: HessraDatabase,
                                       sessions: sessionmaker) -> None:
    KeySync(authority_of(sandbox), hessra_db.dsn).run()
    certificate = sandbox.client_certificate("billing", uris=[BILLING])
    identity = sandbox.hessra_py_client(certificate).request_identity_token(None)
    assert identity.identity == BILLING
    issued(sandbox, identity.token)
    anonymous = sandbox.hessra_py_client()                   # no client certificate from here on
    token = issued(sandbox, anonymous.request_token_with_identity("orders", "read", identity.token))
    assert seen(sessions, token) == READ_ORDERS
    with pytest.raises(hessra_py.HessraPyException, match="HTTP error: 403"):
        anonymous.request_token_with_identity("payroll", "read", identity.token)
    # the identity token itself is no authorization token
    assert seen(sessions, identity.token) == NOTHING


# -- the rotation rehearsal ------------------------------------------------------

def test_rotation_rehearsal(sandbox: LocalAuthority, hessra_db: HessraDatabase, admin: psycopg.Connection,
                            sessions: sessionmaker, app_role: str) -> None:
    sync = KeySync(authority_of(sandbox), hessra_db.dsn, grace=GRACE)
    [added] = sync.run()
    old_kid = added.kid
    client = sandbox.hessra_py_client(sandbox.client_certificate("billing", uris=[BILLING]))
    old_token = issued(sandbox, client.request_token_simple("orders", "read"))
    assert seen(sessions, old_token) == READ_ORDERS

    new_key = sandbox.rotate_key()                       # hessra-pg authority rotate-key; the authority follows
    assert canonical_public_key(client.get_public_key()) == new_key
    new_token = issued(sandbox, client.request_token_simple("orders", "read"))

    # before keys sync: the new key's tokens are refused, the old key's pass
    assert seen(sessions, new_token) == NOTHING
    assert seen(sessions, old_token) == READ_ORDERS
    refused = explain(admin, new_token)
    assert (refused["valid"], refused["reason"]) == (False, "unknown_key")
    assert "not registered" in refused["detail"]
    with psycopg.connect(hessra_db.dsn_for(app_role)) as app:     # the app role learns no key detail
        assert explain(app, new_token)["reason"] == "bad_signature"

    # after keys sync: both pass; the old key ends after the grace
    changes = sync.run()
    assert [change.action for change in changes] == ["add", "retire"]
    new_kid = changes[0].kid
    assert changes[1].kid == old_kid and new_kid != old_kid
    assert [row[:2] for row in keys_table(admin)] == [(old_kid, added.public_key), (new_kid, new_key)]
    assert seen(sessions, new_token) == READ_ORDERS
    assert seen(sessions, old_token) == READ_ORDERS
    assert explain(admin, new_token)["kid"] == new_kid and explain(admin, old_token)["kid"] == old_kid
    ends = changes[1].at.timestamp()
    assert time.time() < ends, "the checks above took longer than the grace: raise GRACE on this machine"

    # after the grace: only the new key's tokens pass, though the old token itself has not expired
    time.sleep(max(0.0, ends - time.time()) + 0.2)
    assert inspect_token(old_token).expires_at > time.time() + TOKEN_TTL / 2
    assert seen(sessions, old_token) == NOTHING
    assert seen(sessions, new_token) == READ_ORDERS
    gone = explain(admin, old_token)
    assert (gone["valid"], gone["reason"]) == (False, "key_inactive")
    assert explain(admin, new_token)["valid"]
    # and sync, run again, leaves it so
    assert sync.run() == []
