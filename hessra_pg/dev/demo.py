"""`make demo`: a throwaway Postgres, the extension, tokens, and RLS in action.

Two parts, both run as an ordinary application role:

1. authorization tokens on one table, through `authorized()` in a policy;
2. capability tokens on a multi-tenant table guarded by a designation policy
   (PolicySpec mode designation) with this database's anchor set: a
   capability designated to a tenant sees that tenant's rows, an
   undesignated one sees every row, one anchored to another database sees
   none, and any holder can narrow a token further with `designate`.

The demo checks every count and reason it prints: a wrong one stops it with
DemoError (exit status 1).

Run with `python -m hessra_pg.dev.demo` (make demo bootstraps first);
`--authority` runs hessra_pg.dev.demo_authority instead. It installs
the extension and the server-side Python packages into the local Postgres
(as `hessra-pg install` does), so it needs write access there (root).
Every server it starts is stopped before it exits.
"""

from __future__ import annotations

import json
import sys
import time

from .cluster import LocalCluster
from ..admin.install import install
from ..core.keys import generate_keypair
from ..rls.policies import PolicySpec, generate_sql
from ..tokens.capability import designate, mint_capability
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

# Part 2: invoices of three tenants, in two regions.
ANCHOR = "db:demo"
INVOICES = [
    (1, "acme", "eu", "120.00"),
    (2, "acme", "us", "80.00"),
    (3, "acme", "eu", "42.50"),
    (4, "globex", "us", "300.00"),
    (5, "globex", "eu", "15.00"),
    (6, "initech", "us", "9.99"),
    (7, "initech", "eu", "64.00"),
]
INVOICES_SQL = """
CREATE TABLE public.invoices (id int PRIMARY KEY, tenant_id text NOT NULL, region text NOT NULL, amount numeric);
GRANT SELECT ON public.invoices TO demo_app;
"""
# Both columns are row labels: a token may be designated on either, or both.
INVOICES_POLICY = PolicySpec("invoices", mode="designation",
                             designations={"tenant_id": "tenant_id", "region": "region"}, commands=("SELECT",))
# explain_capability's designations for the wrong-anchor case: every row
# label declared, with no value (the anchor fails before any label matters).
DECLARED_NULL = json.dumps({label: None for label in INVOICES_POLICY.designations or {}})


class DemoError(AssertionError):
    """The demo saw something other than what it says: it is broken."""


def _expect(case: str, what: str, got: object, expected: object) -> None:
    if got != expected:
        raise DemoError(f"demo case {case!r}: expected {what} {expected!r}, got {got!r}")


def _set_token(conn, token: str | None, subject: str | None) -> None:
    # Transaction-local settings (is_local = true): nothing leaks to the
    # next transaction on this connection.
    conn.execute(
        "SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', %s, true)",
        (token or "", subject or ""),
    )


def _show(conn, label: str, token: str | None, subject: str | None, *, rows: int, reason: str) -> None:
    with conn.transaction():
        _set_token(conn, token, subject)
        seen = conn.execute("SELECT id, customer, total FROM public.orders ORDER BY id").fetchall()
        why = conn.execute(
            "SELECT hessra_authz.explain(hessra_authz.current_token(), hessra_authz.current_subject(),"
            " 'orders', 'read')->>'reason'"
        ).fetchone()[0]
    print(f"\n-- {label}: {len(seen)} row(s) visible (explain: {why})")
    for row in seen:
        print(f"   {row[0]}  {row[1]:<8} {row[2]}")
    _expect(label, "rows", len(seen), rows)
    _expect(label, "reason", why, reason)


def _sets(verdict: dict) -> str:
    """capability_rows' answer in one line: what the policy lets through."""
    statement = verdict["statement"]
    if statement["verdict"] != "filter":
        return f"{statement['verdict']}, {statement.get('reason')}"
    parts = []
    for label in INVOICES_POLICY.designations or {}:  # the policy's order (jsonb sorts keys)
        entry = verdict["sets"][label]
        kind = entry["kind"]
        parts.append(f"{label} in {{{', '.join(entry['values'])}}}" if kind == "set"
                     else f"{label} any" if kind == "all" else f"{label} {kind}")
    return "filter, " + "; ".join(parts)


def _show_invoices(conn, label: str, token: str | None, *, ids: list[int], sets: str,
                   reason: str | None = None) -> None:
    labels = list(INVOICES_POLICY.designations or {})
    with conn.transaction():
        _set_token(conn, token, None)
        seen = conn.execute("SELECT id, tenant_id, region, amount FROM public.invoices ORDER BY id").fetchall()
        # What the policy computes once per statement (capability_rows is
        # the computation behind its designation_* helpers).
        verdict = conn.execute("SELECT hessra_authz.capability_rows('invoices', 'read', %s)",
                               (labels,)).fetchone()[0]
        why = None
        if reason is not None:
            why = conn.execute(
                "SELECT hessra_authz.explain_capability(hessra_authz.current_token(), 'invoices', 'read',"
                " %s)->>'reason'", (DECLARED_NULL,)).fetchone()[0]
    line = _sets(verdict)
    print(f"\n-- {label}: {len(seen)} row(s) visible (policy: {line})")
    if why is not None:
        print(f"   explain_capability: {why}")
    for row in seen:
        print(f"   {row[0]}  {row[1]:<8} {row[2]}  {row[3]}")
    _expect(label, "rows", [row[0] for row in seen], ids)
    _expect(label, "policy", line, sets)
    _expect(label, "reason", why, reason)


def _capabilities(root, app) -> None:
    """Part 2, on a connection of the application role."""
    def ids(*tenants: str, region: str | None = None) -> list[int]:
        return [i for i, tenant, reg, _ in INVOICES if tenant in tenants and region in (None, reg)]

    def mint(*designations: tuple[str, str], anchor: str = ANCHOR) -> str:
        return mint_capability(root, "billing-service", "invoices", "read", designations=list(designations),
                               anchor=anchor, valid_for=600)

    everyone = [i for i, *_ in INVOICES]
    acme = mint(("tenant_id", "acme"))
    globex = mint(("tenant_id", "globex"))
    undesignated = mint()
    other_db = mint(anchor="db:other")
    # Any holder narrows a token with designate(): an appended block, no private key needed.
    to_initech = designate(undesignated, root.public_key, [("tenant_id", "initech")])
    acme_eu = designate(acme, root.public_key, [("region", "eu")])
    acme_as_globex = designate(acme, root.public_key, [("tenant_id", "globex")])

    _show_invoices(app, "capability designated to tenant acme", acme,
                   ids=ids("acme"), sets="filter, tenant_id in {acme}; region any")
    _show_invoices(app, "capability designated to tenant globex", globex,
                   ids=ids("globex"), sets="filter, tenant_id in {globex}; region any")
    _show_invoices(app, "undesignated capability (anchored to db:demo only)", undesignated,
                   ids=everyone, sets="filter, tenant_id any; region any")
    _show_invoices(app, "capability anchored to another database (db:other)", other_db,
                   ids=[], sets="none, anchor_mismatch", reason="anchor_mismatch")
    _show_invoices(app, "undesignated capability, narrowed by its holder: designate tenant_id=initech", to_initech,
                   ids=ids("initech"), sets="filter, tenant_id in {initech}; region any")
    _show_invoices(app, "acme's capability, narrowed by its holder: designate region=eu", acme_eu,
                   ids=ids("acme", region="eu"), sets="filter, tenant_id in {acme}; region in {eu}")
    _show_invoices(app, "acme's capability, 'narrowed' to tenant globex (narrowing never widens)", acme_as_globex,
                   ids=[], sets="none, empty_accepted_set")


def main() -> int:
    try:
        return _main()
    except DemoError as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        return 1


def _main() -> int:
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
            admin.execute(INVOICES_SQL)
            admin.cursor().executemany("INSERT INTO public.invoices VALUES (%s, %s, %s, %s)", INVOICES)
            admin.execute(generate_sql(INVOICES_POLICY))
            admin.execute("SELECT hessra_authz.set_anchor(%s)", (ANCHOR,))

        valid = mint_authorization(root, "alice", "orders", "read")
        expired = mint_authorization(root, "alice", "orders", "read",
                                     time_config=TokenTime(start=int(time.time()) - 600))
        write_only = mint_authorization(root, "alice", "orders", "write")

        with psycopg.connect(cluster.dsn("hessra_demo", "demo_app"), autocommit=True) as app:
            _show(app, "valid token for alice, subject alice", valid, "alice", rows=3, reason="ok")
            _show(app, "no token", None, None, rows=0, reason="no_token")
            _show(app, "alice's token presented by bob", valid, "bob", rows=0, reason="subject_mismatch")
            _show(app, "expired token", expired, "alice", rows=0, reason="expired")
            _show(app, "token for another operation (write)", write_only, "alice", rows=0, reason="denied")
            _show(app, "garbage token", "not-a-token", "alice", rows=0, reason="bad_token")

            tenants = sorted({tenant for _, tenant, *_ in INVOICES})
            print(f"\n== Capability tokens: one table, {len(tenants)} tenants ({', '.join(tenants)}), "
                  f"{len(INVOICES)} invoices ==")
            print(f"Anchor: SELECT hessra_authz.set_anchor('{ANCHOR}');  (admin only; tokens anchored "
                  "elsewhere fail here)")
            print("Policy: generate_sql(PolicySpec('invoices', mode='designation', "
                  "designations={'tenant_id': 'tenant_id', 'region': 'region'}, commands=('SELECT',)))")
            print("        (CLI: hessra-pg policy generate --table invoices --mode designation --label tenant_id "
                  "--column tenant_id --label region --column region --commands SELECT)")
            print("        -> a designation check in the token becomes `tenant_id = ANY(<its values>)`, "
                  "computed once per statement")
            _capabilities(root, app)
    print("\nDone: every count was as expected; the demo server is stopped.")
    return 0


def run(argv: list[str]) -> int:
    """`python -m hessra_pg.dev.demo [--authority]`: the same as `hessra-pg demo [--authority]`."""
    from ..cli import main as cli

    return cli(["demo", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
