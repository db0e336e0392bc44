"""The designation helpers' recorded answers (0.5.0, issue 13 item 6):
designation_values/_floor/_nulls/_fallback are inlined SQL functions whose
first call is a PL/Python function any role may call with any arguments
(_designation_values_fast/_designation_flag_fast). Forged arguments must
never widen what a policy shows: they only find what a trusted call of this
backend recorded for the same snapshot, token, subject and policy call, and
a revocation or an expiry is enforced as before."""

from __future__ import annotations

import time

from hessra_pg.tokens.capability import mint_capability
from tests.integration.test_designation_policies import _as_app, items, minted_root  # noqa: F401 (fixtures)

ARGS = "'items', 'read', '{tenant_id,user}', '{}'::jsonb"
VALUES_FAST = f"SELECT hessra_authz._designation_values_fast(%s::pg_snapshot, %s, NULL, {ARGS}, 'tenant_id')"
CURRENT = (f"SELECT hessra_authz._designation_values_fast(pg_current_snapshot(), current_setting('hessra.token'), "
           f"NULL, {ARGS}, 'tenant_id')")


def _stats(app) -> dict:
    return app.execute("SELECT hessra_authz.cache_stats()").fetchone()[0]["designation_answers"]


def test_forged_arguments_find_nothing_not_recorded(hessra_db, items, app_role, minted_root):  # noqa: F811
    acme = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                           valid_for=3600)
    globex = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "globex")],
                             valid_for=3600)
    with _as_app(hessra_db, app_role, acme) as app:
        snapshot = app.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        # Nothing recorded yet: any arguments miss, the snapshot included.
        assert app.execute(CURRENT).fetchone()[0] is None
        assert app.execute(VALUES_FAST, (snapshot, acme)).fetchone()[0] is None
        # A trusted call records every label's answer for this snapshot.
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 4
        assert app.execute(CURRENT).fetchone()[0] == ["acme"]
        # Another token (held by the caller or not), subject, policy call,
        # label or snapshot text: no answer, never acme's.
        for query, params in (
            (VALUES_FAST, ("100:100:", acme)),
            (VALUES_FAST, (snapshot, globex)),
            (VALUES_FAST, (snapshot, acme + "x")),
            (VALUES_FAST.replace("NULL", "'bob'", 1), (snapshot, acme)),
            (VALUES_FAST.replace("'items'", "'other'"), (snapshot, acme)),
            (VALUES_FAST.replace("'read'", "'write'"), (snapshot, acme)),
            (VALUES_FAST.replace("'{tenant_id,user}'", "'{tenant_id}'"), (snapshot, acme)),
            (VALUES_FAST.replace("'{}'::jsonb", "'{\"user\": \"bob\"}'::jsonb"), (snapshot, acme)),
            (VALUES_FAST.replace("'tenant_id')", "'anchor')"), (snapshot, acme)),
        ):
            assert app.execute(query, params).fetchone()[0] is None, query
        flag = (f"SELECT hessra_authz._designation_flag_fast(pg_current_snapshot(), current_setting('hessra.token'), "
                f"NULL, {ARGS}, %s, %s)")
        assert app.execute(flag, ("tenant_id", "floor")).fetchone()[0] is False
        assert app.execute(flag, ("user", "nulls")).fetchone()[0] is True
        assert app.execute(flag, (None, "fallback")).fetchone()[0] is False
        assert app.execute(flag, ("tenant_id", "anything")).fetchone()[0] is None
        # Switching the token inside the transaction: globex's own rows.
        app.execute("SELECT set_config('hessra.token', %s, true)", (globex,))
        assert app.execute("SELECT count(*) FROM public.items WHERE tenant = 'acme'").fetchone()[0] == 0
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 4


def test_one_trusted_call_per_snapshot_then_revocation_enforced(hessra_db, items, admin, app_role,  # noqa: F811
                                                                 minted_root):
    from hessra_pg.tokens.inspect import inspect_token

    acme = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                           valid_for=3600)
    with hessra_db.connect(app_role) as app:
        app.autocommit = True
        app.execute("SELECT set_config('hessra.token', %s, false)", (acme,))
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 4
        before = _stats(app)["trusted_calls"]
        for _ in range(5):  # nothing commits meanwhile: the same snapshot text
            assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 4
        assert _stats(app)["trusted_calls"] == before
        admin.execute("SELECT hessra_authz.revoke(%s)", (inspect_token(acme).revocation_ids[0],))
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 0
        assert app.execute(CURRENT).fetchone()[0] in (None, [])


def test_expiry_is_enforced_against_the_clock(hessra_db, items, app_role, minted_root):  # noqa: F811
    acme = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                           valid_for=2)
    with hessra_db.connect(app_role) as app:
        app.autocommit = True
        app.execute("SELECT set_config('hessra.token', %s, false)", (acme,))
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 4
        assert app.execute(CURRENT).fetchone()[0] == ["acme"]
        time.sleep(2.5)
        assert app.execute(CURRENT).fetchone()[0] is None
        assert app.execute("SELECT count(*) FROM public.items").fetchone()[0] == 0
