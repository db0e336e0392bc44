"""`make demo`: a throwaway Postgres, the extension, tokens, and RLS in action.

Run with `python -m hessra_pg.dev.demo` (make demo bootstraps first). It installs
the extension and the server-side Python packages into the local Postgres
(as `hessra-pg install` does), so it needs write access there (root).
Every server it starts is stopped before it exits.
"""

from __future__ import annotations

import sys
import time

from .cluster import LocalCluster
from ..admin.install import install
from ..core.keys import generate_keypair
from ..tokens.mint import TokenTime, mint_authorization

SETUP_SQL = """
CREATE EXTENSION hessra_authz CASCADE;
CREATE TABLE public.orders (id int PRIMARY KEY, customer text, total numeric);
INSERT INTO public.orders VALUES (1, 'acme', 120.00), (2, 'globex', 75.50), (3, 'initech', 9.99);
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
-- (SELECT ...) makes Postgres verify the token once per statement, not per row.
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));
CREATE ROLE demo_app LOGIN;
GRANT SELECT ON public.orders TO demo_app;
"""


def _show(conn, label: str, token: str | None, subject: str | None) -> None:
    with conn.transaction():
        # Transaction-local settings (is_local = true): nothing leaks to the
        # next transaction on this connection.
        conn.execute(
            "SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', %s, true)",
            (token or "", subject or ""),
        )
        rows = conn.execute("SELECT id, customer, total FROM public.orders ORDER BY id").fetchall()
        reason = conn.execute(
            "SELECT hessra_authz.explain(hessra_authz.current_token(), hessra_authz.current_subject(),"
            " 'orders', 'read')->>'reason'"
        ).fetchone()[0]
    print(f"\n-- {label}: {len(rows)} row(s) visible (explain: {reason})")
    for row in rows:
        print(f"   {row[0]}  {row[1]:<8} {row[2]}")


def main() -> int:
    import psycopg

    root = generate_keypair("secp256r1")
    print("hessra-pg demo: Hessra tokens verified inside Postgres, enforced by RLS")
    report = install()
    print(f"Installed the extension into {report.extension_dir}")
    with LocalCluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE hessra_demo")
        with psycopg.connect(cluster.dsn("hessra_demo"), autocommit=True) as admin:
            admin.execute(SETUP_SQL)
            kid = admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),)).fetchone()[0]
            print(f"\nRegistered the authority's public key as kid {kid}: {root.public_key}")
            print("Policy: CREATE POLICY orders_read ON orders FOR SELECT USING "
                  "((SELECT hessra_authz.authorized('orders', 'read')));")

        valid = mint_authorization(root, "alice", "orders", "read")
        expired = mint_authorization(root, "alice", "orders", "read",
                                     time_config=TokenTime(start=int(time.time()) - 600))
        write_only = mint_authorization(root, "alice", "orders", "write")

        with psycopg.connect(cluster.dsn("hessra_demo", "demo_app"), autocommit=True) as app:
            _show(app, "valid token for alice, subject alice", valid, "alice")
            _show(app, "no token", None, None)
            _show(app, "alice's token presented by bob", valid, "bob")
            _show(app, "expired token", expired, "alice")
            _show(app, "token for another operation (write)", write_only, "alice")
            _show(app, "garbage token", "not-a-token", "alice")
    print("\nDone: the demo server is stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
