"""authorized_resources: the set helper equals per-row verification, is
evaluated once per statement and lets a policy use an index."""

import time

import biscuit_auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from tests import vectors
from tests.integration.conftest import scalar


def test_equals_per_row_verification(admin, root, vector_key):
    tokens = [mint_authorization(root, "alice", f"orders/{i}", op) for i in range(3) for op in ("read", "write")]
    tokens += [t["token"] for t in vectors.singleton_tokens("hessra-postgres")]
    tokens += [mint_authorization(generate_keypair(), "alice", "orders/1", "read"), "garbage", None]
    resources = ["orders/0", "orders/1", "orders/2", "orders/3", "resource1", "resource2", "resource3",
                 "resource4", "order_service"]
    for token in tokens:
        for subject in ("alice", "uri:urn:test:argo-cli1", "uri:urn:test:argo-cli0", None):
            for operation in ("read", "write", "delete"):
                helper = scalar(admin, "SELECT hessra_authz.token_resources(%s, %s, %s)", (token, subject, operation))
                per_row = [r for r in resources if scalar(
                    admin, "SELECT hessra_authz.verify_token(%s, %s, %s, %s)", (token, subject, r, operation))]
                assert sorted(helper) == sorted(per_row), (subject, operation)


def test_row_resource_policy_uses_the_index_once_per_statement(hessra_db, admin, root, app_role):
    admin.execute("""
        CREATE TABLE public.orders (id int PRIMARY KEY, item text);
        INSERT INTO public.orders SELECT g, 'item' FROM generate_series(1, 20000) g;
        CREATE INDEX orders_resource ON public.orders (('orders/' || id));
        ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
        ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
        CREATE POLICY orders_read ON public.orders FOR SELECT
            USING ('orders/' || id = ANY ((SELECT hessra_authz.authorized_resources('read'))::text[]));
        ANALYZE public.orders;
    """)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders TO {}").format(sql.Identifier(app_role)))
    token = mint_authorization(root, "alice", "orders/42", "read")
    with hessra_db.connect(app_role, autocommit=True) as app:
        with app.transaction():
            app.execute("SELECT set_config('hessra.token', %s, true), set_config('hessra.subject', 'alice', true)",
                        (token,))
            assert app.execute("SELECT id FROM public.orders").fetchall() == [(42,)]
            plan = "\n".join(r[0] for r in app.execute("EXPLAIN (COSTS OFF) SELECT * FROM public.orders"))
        assert "orders_resource" in plan and "InitPlan" in plan, plan
        assert scalar(app, "SELECT count(*) FROM public.orders") == 0  # no token in a new transaction


RESOURCE_RESTRICTIONS = [
    'check if resource($r), $r != "{r}";',
    'check if resource($r), $r.starts_with("{r}");',
    'check if resource($r), $r == "{r}" || $r == "orders/9";',
    'check if resource("{r}");',
    'reject if resource($r), $r.ends_with("2");',
    'check if operation("read");',
    'check if subject("alice");',
    'check if resource($r), $r.length() < 9;',
    'right("alice", "{r}", "read");',  # appended rights grant nothing
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(restrictions=st.lists(st.tuples(st.sampled_from(RESOURCE_RESTRICTIONS),
                                       st.sampled_from(["orders/1", "orders/2", "orders/", "orders/12", "x"])),
                             max_size=3))
def test_property_random_appended_restrictions(admin, root, restrictions):
    """The set helper never shows more (or fewer) resources than per-row
    verification, whatever blocks the holder appended (issue 11)."""
    rights = " ".join(f'right("alice", "orders/{i}", "read");' for i in (1, 2, 12, 20))
    token = biscuit_auth.BiscuitBuilder(
        rights + ' check if time($t), $t < {exp};', {"exp": int(time.time()) + 600}).build(root.private_key)
    for template, resource in restrictions:
        token = token.append(biscuit_auth.BlockBuilder(template.replace("{r}", resource)))
    token = token.to_base64()
    candidates = ["orders/1", "orders/2", "orders/12", "orders/20", "orders/9", "orders/", "x"]
    helper = scalar(admin, "SELECT hessra_authz.token_resources(%s, 'alice', 'read')", (token,))
    per_row = [r for r in candidates
               if scalar(admin, "SELECT hessra_authz.verify_token(%s, 'alice', %s, 'read')", (token, r))]
    assert sorted(helper) == sorted(per_row), restrictions
