"""Every kind of revocation through every verification path, from the
backend's caches and from the shared decision table (issue 11, hole 4:
0.2.0's verify_capability ignored revoke_identity)."""

import biscuit_auth
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import attest_service, mint_authorization
from hessra_pg.core.verifier import ChainNode
from tests.integration.conftest import scalar

AUTHZ_PATHS = {
    "verify_token": "SELECT hessra_authz.verify_token(%(t)s, %(s)s, 'orders', 'read')",
    "verify_capability": "SELECT hessra_authz.verify_capability(%(t)s, 'orders', 'read')",
    "verify_service_chain": "SELECT hessra_authz.verify_service_chain(%(t)s, %(s)s, 'orders', 'read', %(nodes)s)",
    "token_resources": "SELECT hessra_authz.token_resources(%(t)s, %(s)s, 'read') = '{orders}'",
    "explain": "SELECT (hessra_authz.explain(%(t)s, %(s)s, 'orders', 'read')->>'valid')::boolean",
    "authorized": "SELECT hessra_authz.authorized('orders', 'read')",
    "authorized_resources": "SELECT hessra_authz.authorized_resources('read') = '{orders}'",
    "policy": "SELECT count(*) = 3 FROM public.orders",
}
IDENTITY_PATHS = {
    "verify_identity": "SELECT hessra_authz.verify_identity(%(t)s, %(s)s)",
    "verify_bearer": "SELECT hessra_authz.verify_bearer(%(t)s)",
    "token_identity": "SELECT hessra_authz.token_identity(%(t)s) IS NOT DISTINCT FROM %(s)s",
    "current_identity": "SELECT hessra_authz.current_identity() IS NOT DISTINCT FROM %(s)s",
    "current_identity_scope": "SELECT hessra_authz.current_identity_scope()->>'identity' IS NOT DISTINCT FROM %(s)s",
}


@pytest.fixture
def world(admin, app_role):
    root, node = generate_keypair("ed25519"), generate_keypair("ed25519")
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (str(root.public_key),))
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY);
        INSERT INTO public.orders SELECT generate_series(1, 3);
        ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
        CREATE POLICY orders_read ON public.orders FOR SELECT USING ((SELECT hessra_authz.authorized('orders', 'read')));
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    chain = (ChainNode("gateway", str(node.public_key)),)
    base = attest_service(mint_authorization(root, "alice:bot", "orders", "read", service_chain=chain),
                          str(root.public_key), "orders", node)
    attenuated = biscuit_auth.Biscuit.from_base64(base, root.public_key).append(
        biscuit_auth.BlockBuilder('check if operation("read");')).to_base64()
    identity = mint_identity(root, "alice:bot")
    delegated = delegate_identity(identity, str(root.public_key), "alice:bot:worker")
    return {
        "nodes": Jsonb([{"component": n.component, "public_key": n.public_key} for n in chain]),
        "authz": {"base": base, "attenuated": attenuated},
        "identity": {"root": (identity, "alice:bot"), "delegated": (delegated, "alice:bot:worker")},
        #: authority, attestation, attenuation
        "ids": {"base": biscuit_auth.Biscuit.from_base64(attenuated, root.public_key).revocation_ids},
    }


def probe(conn, world) -> dict:
    out = {}
    for name, token in world["authz"].items():
        params = {"t": token, "s": "alice:bot", "nodes": world["nodes"]}
        for path, query in AUTHZ_PATHS.items():
            with conn.transaction():
                conn.execute("SELECT FROM set_config('hessra.token', %s, true) AS t, "
                             "set_config('hessra.subject', 'alice:bot', true) AS s", (token,))
                out[(name, path)] = scalar(conn, query, params)
    for name, (token, identity) in world["identity"].items():
        for path, query in IDENTITY_PATHS.items():
            if path == "verify_bearer" and name == "delegated":
                continue  # a delegated token is never a bearer token
            with conn.transaction():
                conn.execute("SELECT FROM set_config('hessra.token', %s, true) AS t", (token,))
                out[(name, path)] = scalar(conn, query, {"t": token, "s": identity})
    return out


REVOCATIONS = {
    # kind: (SQL, which tokens die)
    "revoke_token": ("SELECT hessra_authz.revoke_token(%(base)s)", {"base", "attenuated"}),
    "revoke_appended_block": ("SELECT hessra_authz.revoke(%(block)s)", {"attenuated"}),
    "revoke_identity": ("SELECT hessra_authz.revoke_identity('alice:bot')", {"base", "attenuated", "root", "delegated"}),
    "revoke_ancestor": ("SELECT hessra_authz.revoke_identity('alice')", {"base", "attenuated", "root", "delegated"}),
    "revoke_delegate": ("SELECT hessra_authz.revoke_identity('alice:bot:worker')", {"delegated"}),
}


@pytest.mark.parametrize("kind", sorted(REVOCATIONS))
def test_every_revocation_kind_through_every_path(hessra_db, admin, app_role, world, kind):
    statement, dead = REVOCATIONS[kind]
    with hessra_db.connect(app_role, autocommit=True) as warm, hessra_db.connect(app_role, autocommit=True) as peer:
        before = probe(warm, world)
        assert all(before.values()), [key for key, value in before.items() if not value]
        assert probe(peer, world) == before  # from the shared decision table and the caches
        assert scalar(peer, "SELECT hessra_authz.cache_stats()")["shared_decisions"]["hits"] > 0
        admin.execute(statement, {"base": world["authz"]["base"], "block": world["ids"]["base"][2]})
        with hessra_db.connect(app_role, autocommit=True) as cold:
            for conn in (warm, peer, cold):
                after = probe(conn, world)
                expected = {key: key[0] not in dead for key in after}
                assert after == expected, sorted(key for key in after if after[key] != expected[key])
        explained = scalar(admin, "SELECT hessra_authz.explain(%s, 'alice:bot', 'orders', 'read')",
                           (world["authz"]["attenuated"],))
        assert explained["reason"] == ("revoked" if "attenuated" in dead else "ok")


def test_capability_of_a_revoked_identity(hessra_db, admin, app_role, world):
    """The reviewed case on its own: a capability check doesn't name a
    subject, but the identities the right is granted to are revoked."""
    token = world["authz"]["base"]
    with hessra_db.connect(app_role, autocommit=True) as app:
        assert scalar(app, "SELECT hessra_authz.verify_capability(%s, 'orders', 'read')", (token,)) is True
        admin.execute("SELECT hessra_authz.revoke_identity('alice')")
        assert scalar(app, "SELECT hessra_authz.verify_capability(%s, 'orders', 'read')", (token,)) is False
