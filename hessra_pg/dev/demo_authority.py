"""`hessra-pg demo --authority` (`make demo-authority`): the flow of Hessra's
docs and seeds, end to end on this machine.

1. a throwaway Postgres with the extension and an `orders` table under RLS;
2. a local Hessra authority (hessra_pg.authority, in a child process on
   loopback) with a fresh CA, server certificate, signing key, and a policy
   directory in the seeds' layout: a billing service, known by the SAN URI of
   its client certificate, may read orders; a stranger is not listed;
3. `hessra-pg keys sync` registers the authority's public key in the database;
4. the billing service asks the authority for a token over mTLS with Hessra's
   own client, hessra_py (plain HTTPS requests if it is not installed);
5. the application hands the token to Postgres through the SQLAlchemy hook
   (the psycopg hook without SQLAlchemy) and RLS shows the rows;
6. the stranger, and billing asking for more than its grant, are refused by
   the authority;
7. identity tokens: billing gets one over mTLS, then asks with it alone;
8. the authority rotates its key: a token of the new key is denied until
   `keys sync` runs again, then old and new tokens both pass.

Every count, reason and status it prints is checked: a wrong one stops it
with DemoError (exit status 1; 2 when it cannot run at all). Every process
and server it starts (the cluster, the authority) is stopped before it
exits, also on an error, on Ctrl-C or SIGTERM (exit status 130). Like
`make demo`, it installs the extension into the local Postgres first, so it
needs write access there. Run it with `hessra-pg demo --authority` or
`python -m hessra_pg.dev.demo --authority`.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from ..admin.install import install
from ..authority.sandbox import LocalAuthority, local_authority
from ..core.encoding import decode_token
from ..core.shape import read_shape
from ..errors import HessraError
from .cluster import LocalCluster
from .demo import SETUP_SQL, DemoError
from .demo_client import AuthorityRefusal, ServiceClient, hessra_py_available, service_client
from .demo_database import AppDatabase, Seen, app_database

if TYPE_CHECKING:
    import psycopg

__all__ = ["CLIENTS_TOML", "RESOURCES_TOML", "main"]

DATABASE = "hessra_demo"
APP_ROLE = "demo_app"  # created by demo.SETUP_SQL, with SELECT on orders
ORDERS = 3  # rows demo.SETUP_SQL inserts
BILLING = "urn:example:billing"
STRANGER = "urn:example:stranger"
_T = TypeVar("_T")
EXIT_CANNOT_RUN = 2  # as the CLI's one-line errors
EXIT_INTERRUPTED = 130

# The seeds' layout (docs/authority.md, "The policy directory").
RESOURCES_TOML = """\
[resources.orders]
operations = ["read", "write"]
"""
CLIENTS_TOML = f"""\
# The billing service: the SAN URI of its client certificate.
[[clients]]
identifier = {{ type = "san_uri", value = "{BILLING}" }}
identity_token_enabled = true
resources = [{{ name = "orders", operations = ["read"] }}]
"""


@dataclass
class _Demo:
    """What the steps share."""

    cluster: LocalCluster
    authority: LocalAuthority
    admin: psycopg.Connection[Any]
    app: AppDatabase


def _expect(case: str, what: str, got: object, expected: object) -> None:
    if got != expected:
        raise DemoError(f"demo case {case!r}: expected {what} {expected!r}, got {got!r}")


def _step(number: int, text: str) -> None:
    print(f"\n[{number}] {text}")


def _show(label: str, seen: Seen, *, rows: int, reason: str) -> None:
    print(f"-- {label}: {len(seen.rows)} row(s) visible (explain: {seen.reason})")
    for row in seen.rows:
        print(f"   {row[0]}  {row[1]:<8} {row[2]}")
    _expect(label, "rows", len(seen.rows), rows)
    _expect(label, "reason", seen.reason, reason)


def _granted(case: str, request: Callable[..., _T], *args: Any) -> _T:
    """A request the policy allows: a refusal is the demo failing."""
    try:
        return request(*args)
    except AuthorityRefusal as refusal:
        raise DemoError(f"demo case {case!r}: expected the authority to answer, it refused: {refusal}") from None


def _refused(case: str, request: Callable[..., object], *args: Any, status: int) -> AuthorityRefusal:
    """A request the policy refuses: an answer is the demo failing."""
    try:
        request(*args)
    except AuthorityRefusal as refusal:
        _expect(case, "HTTP status", refusal.status, status)
        return refusal
    raise DemoError(f"demo case {case!r}: expected the authority to refuse (HTTP {status}), it issued a token")


# -- the steps -------------------------------------------------------------------------------------

def _keys_sync(demo: _Demo) -> list[str]:
    """`hessra-pg keys sync`, the command an operator runs (a timer, cron, --watch)."""
    authority = demo.authority
    arguments = ["keys", "sync", "--authority", f"{authority.host}:{authority.port}", "--ca", str(authority.ca.cert),
                 "--dsn", demo.cluster.dsn(DATABASE)]
    print(f"$ hessra-pg {shlex.join(arguments[:-1])} {_quoted(arguments[-1])}")
    done = subprocess.run([sys.executable, "-m", "hessra_pg", *arguments], capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    for line in lines:
        print(f"  {line}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DemoError(f"keys sync exited with status {done.returncode}: {last}")
    return lines


def _quoted(conninfo: str) -> str:
    """A conninfo for the shell, readable: shlex.quote's '"'"' dance only when needed."""
    if any(char in conninfo for char in '"$`\\!'):
        return shlex.quote(conninfo)
    return f'"{conninfo}"'


def _registered(demo: _Demo) -> list[str]:
    """The keys that verify now, newest first."""
    return [row[0] for row in demo.admin.execute(
        "SELECT public_key FROM hessra_authz.keys WHERE not_before <= now() AND (not_after IS NULL OR "
        "not_after > now()) ORDER BY not_before DESC, kid DESC")]


def _setup_database(cluster: LocalCluster) -> None:
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as admin:
        admin.execute(SETUP_SQL)


def _authority_step(demo: _Demo) -> None:
    authority = demo.authority
    _step(2, f"A local Hessra authority: {authority.url} (pid {authority.process.pid}), hessra-pg authority serve")
    print(f"    fresh CA, server certificate (DNS localhost, IP 127.0.0.1) and Ed25519 signing key in "
          f"{authority.directory}")
    print(f"    {authority.policy_dir}/resources.toml:")
    for line in RESOURCES_TOML.splitlines():
        print(f"      {line}")
    print(f"    {authority.policy_dir}/clients.toml:")
    for line in CLIENTS_TOML.splitlines():
        print(f"      {line}")
    print(f"    client certificates from its CA: billing (SAN URI {BILLING}), "
          f"stranger (SAN URI {STRANGER}, not in clients.toml)")


def _sync_step(demo: _Demo) -> None:
    key = demo.authority.public_key
    _step(3, "keys sync registers the authority's public key (GET /public_key over verified TLS) in the database")
    lines = _keys_sync(demo)
    _expect("keys sync", "changes", [line.split()[0] for line in lines], ["added"])
    _expect("keys sync", "key added", key in lines[0], True)
    _expect("keys sync", "active keys", _registered(demo), [key])
    print("run again (as a timer would):")
    lines = _keys_sync(demo)
    _expect("keys sync again", "output", [line.split(":")[0] for line in lines], ["nothing changed"])


def _token_step(demo: _Demo, billing: ServiceClient) -> str:
    _step(4, f"The billing service asks the authority for orders/read over mTLS, with {billing.via}")
    if not hessra_py_available():
        print("    hessra_py is not installed: plain HTTPS requests instead (pip install 'hessra-pg[test]' "
              "for Hessra's client)")
    token = _granted("billing asks for orders/read", billing.request_token, "orders", "read")
    print(f"    got a token for subject {BILLING} ({len(token)} characters; tokens are never printed)")
    return token


def _rls_step(demo: _Demo, token: str) -> None:
    _step(5, f"The application passes it to Postgres as role {APP_ROLE}: {demo.app.via}")
    print("    policy: CREATE POLICY orders_read ON orders FOR SELECT USING "
          "((SELECT hessra_authz.authorized('orders', 'read')));")
    _show(f"billing's token, subject {BILLING}", demo.app.read_orders(token, BILLING), rows=ORDERS, reason="ok")
    _show("no token", demo.app.read_orders(None, None), rows=0, reason="no_token")
    _show(f"billing's token presented by {STRANGER}", demo.app.read_orders(token, STRANGER),
          rows=0, reason="subject_mismatch")


def _refusal_step(demo: _Demo, billing: ServiceClient, stranger: ServiceClient) -> None:
    _step(6, "The authority refuses what the policy does not grant")
    refusal = _refused("the stranger asks for orders/read", stranger.request_token, "orders", "read", status=403)
    print(f"-- the stranger asks for orders/read: refused, HTTP {refusal.status} ({refusal.message})")
    refusal = _refused("billing asks for orders/write", billing.request_token, "orders", "write", status=403)
    print(f"-- billing asks for orders/write: refused, HTTP {refusal.status} ({refusal.message})")


def _identity_step(demo: _Demo, billing: ServiceClient) -> None:
    _step(7, "Identity tokens: billing gets one over mTLS, then asks with `Authorization: Bearer` and no "
             "certificate")
    identity = _granted("billing asks for an identity token", billing.request_identity_token)
    print(f"    identity token for {identity.identity}, expires in {identity.expires_in} s")
    _expect("identity token", "identity", identity.identity, BILLING)
    verified = demo.admin.execute("SELECT hessra_authz.verify_identity(%s, %s)",
                                  (identity.token, BILLING)).fetchone()[0]
    print(f"    the database agrees: hessra_authz.verify_identity(<identity token>, '{BILLING}') = {verified}")
    _expect("verify_identity", "answer", verified, True)
    token = _granted("billing asks with its identity token", billing.request_token_with_identity,
                     "orders", "read", identity.token)
    _show("token obtained with the identity token", demo.app.read_orders(token, BILLING), rows=ORDERS, reason="ok")


def _dba_reason(demo: _Demo, token: str) -> tuple[str, str, str]:
    """explain() as the DBA (hessra_admin sees key reasons): its reason, the
    reason it should give for a key the database doesn't have, and why."""
    reason = demo.admin.execute("SELECT hessra_authz.explain(%s, %s, 'orders', 'read')->>'reason'",
                                (token, BILLING)).fetchone()[0]
    kid = read_shape(decode_token(token)).root_key_id
    if kid is not None:
        return reason, "unknown_key", f"the token names root key id {kid}, which is not registered"
    return reason, "bad_signature", "the token names no key id, and no registered key verifies it"


def _rotation_step(demo: _Demo, billing: ServiceClient, old_token: str) -> None:
    authority = demo.authority
    _step(8, "The authority rotates its signing key")
    old_key = authority.public_key
    print(f"$ hessra-pg authority rotate-key --key {authority.key_file}")
    new_key = authority.rotate_key()
    print(f"    the authority signs with {new_key} now")
    _expect("rotation", "GET /public_key", authority.public_key, new_key)
    _expect("rotation", "a new key", new_key != old_key, True)
    new_token = _granted("billing asks after the rotation", billing.request_token, "orders", "read")
    _show("a new token (new key), before keys sync", demo.app.read_orders(new_token, BILLING),
          rows=0, reason="bad_signature")
    reason, expected, why = _dba_reason(demo, new_token)
    print(f"   explain as the DBA (the application role sees key reasons as bad_signature): {reason} ({why})")
    _expect("the DBA's explain", "reason", reason, expected)
    _show("the token from before (old key)", demo.app.read_orders(old_token, BILLING), rows=ORDERS, reason="ok")
    print("keys sync registers the new key; the old one keeps verifying for the grace period:")
    lines = _keys_sync(demo)
    _expect("keys sync after the rotation", "changes", sorted(line.split()[0] for line in lines),
            ["added", "retiring"])
    _expect("keys sync after the rotation", "active keys", _registered(demo), [new_key, old_key])
    _show("the new token, after keys sync", demo.app.read_orders(new_token, BILLING), rows=ORDERS, reason="ok")
    _show("the token from before, after keys sync", demo.app.read_orders(old_token, BILLING),
          rows=ORDERS, reason="ok")


def _run(stack: contextlib.ExitStack) -> None:
    import psycopg

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hessra-demo-authority-")))
    cluster = stack.enter_context(LocalCluster())
    _setup_database(cluster)
    _step(1, f"A throwaway Postgres (pid {cluster.pid}): database {DATABASE}, table orders ({ORDERS} rows) "
             "under RLS, no key registered yet")
    authority = stack.enter_context(local_authority(work / "authority", clients_toml=CLIENTS_TOML,
                                                    resources_toml=RESOURCES_TOML))
    admin = stack.enter_context(psycopg.connect(cluster.dsn(DATABASE), autocommit=True))
    app = app_database(cluster.dsn(DATABASE, APP_ROLE))
    stack.callback(app.close)
    demo = _Demo(cluster, authority, admin, app)
    _expect("a fresh database", "active keys", _registered(demo), [])
    # The superuser bypasses RLS: what every allowed read below must see.
    _expect("a fresh database", "orders", admin.execute("SELECT count(*) FROM public.orders").fetchone()[0], ORDERS)
    _authority_step(demo)
    _sync_step(demo)
    billing = service_client(authority, authority.client_certificate("billing", uris=[BILLING]))
    stranger = service_client(authority, authority.client_certificate("stranger", uris=[STRANGER]))
    token = _token_step(demo, billing)
    _rls_step(demo, token)
    _refusal_step(demo, billing, stranger)
    _identity_step(demo, billing)
    _rotation_step(demo, billing, token)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM as Ctrl-C: unwind, so every `with` stops what it started.
    raise KeyboardInterrupt


def main() -> int:
    """Run the demo: 0 when everything was as expected, 1 when not (DemoError),
    2 when it could not run, 130 when interrupted (Ctrl-C, SIGTERM)."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        print("hessra-pg demo --authority: a service gets a token from a Hessra authority over mTLS, "
              "hands it to Postgres, RLS enforces it")
        report = install()
        print(f"Installed the extension into {report.extension_dir}")
        with contextlib.ExitStack() as stack:
            _run(stack)
    except DemoError as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        return 1
    except HessraError as error:  # it could not run: the install, the cluster or the authority failed
        print(f"hessra-pg demo: error: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("\nInterrupted: the authority and the demo server are stopped.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print("\nDone: every count was as expected; the authority and the demo server are stopped.")
    return 0

