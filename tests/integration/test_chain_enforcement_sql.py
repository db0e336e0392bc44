"""A service chain registered under a resource's name is enforced by every
check of that resource (issue 11, hole 9): a token minted for the chain
can't skip its attestations through verify_token or authorized()."""

from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

CHECKS = {
    "verify_token": "SELECT hessra_authz.verify_token(%(t)s, 'alice', 'orders', 'read')",
    "verify_capability": "SELECT hessra_authz.verify_capability(%(t)s, 'orders', 'read')",
    "token_resources": "SELECT 'orders' = ANY (hessra_authz.token_resources(%(t)s, 'alice', 'read'))",
    "authorized": "SELECT hessra_authz.authorized('orders', 'read')",
    "authorized_resources": "SELECT 'orders' = ANY (hessra_authz.authorized_resources('read'))",
    "policy": "SELECT count(*) = 2 FROM public.orders",
}


def checks(conn, token) -> dict:
    out = {}
    for name, query in CHECKS.items():
        with conn.transaction():
            conn.execute("SELECT FROM set_config('hessra.token', %s, true) AS t, "
                         "set_config('hessra.subject', 'alice', true) AS s", (token,))
            out[name] = scalar(conn, query, {"t": token})
    return out


def test_a_chain_named_like_the_resource_is_enforced(hessra_db, admin, root, app_role):
    gateway, ledger = generate_keypair("ed25519"), generate_keypair("ed25519")
    chain = (ChainNode("gateway", str(gateway.public_key)), ChainNode("ledger", str(ledger.public_key)))
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY);
        INSERT INTO public.orders VALUES (1), (2);
        ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
        CREATE POLICY orders_read ON public.orders FOR SELECT USING ((SELECT hessra_authz.authorized('orders', 'read')));
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    token = mint_authorization(root, "alice", "orders", "read", service_chain=chain)
    half = attest_service(token, str(root.public_key), "orders", gateway)
    full = attest_service(half, str(root.public_key), "orders", ledger)
    plain = mint_authorization(root, "alice", "orders", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        # No chain known for "orders": Hessra's own answer.
        assert all(checks(app, token).values())
        assert all(checks(app, plain).values())
        admin.execute("SELECT hessra_authz.set_service_chain('orders', %s)",
                      (Jsonb([{"component": n.component, "public_key": n.public_key} for n in chain]),))
        for denied in (token, half, plain):
            assert not any(checks(app, denied).values())
        assert all(checks(app, full).values())
        assert scalar(app, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'",
                      (half,)) == "missing_attestation"
        # A chain under another name changes nothing for "orders".
        admin.execute("SELECT hessra_authz.drop_service_chain('orders')")
        admin.execute("SELECT hessra_authz.set_service_chain('flow', %s)",
                      (Jsonb([{"component": n.component, "public_key": n.public_key} for n in chain]),))
        assert all(checks(app, token).values())
    assert scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'",
                  (half,)) == "ok"
    admin.execute("SELECT hessra_authz.set_service_chain('orders', %s)",
                  (Jsonb([{"component": n.component, "public_key": n.public_key} for n in chain]),))
    assert scalar(admin, "SELECT hessra_authz.explain(%s, 'alice', 'orders', 'read')->>'reason'",
                  (half,)) == "missing_attestation:ledger"
