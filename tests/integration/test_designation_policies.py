"""Designation policies (mode designation, issue 13 item 3) against real
Postgres, as an ordinary role: a row is visible exactly when per-row
verify_capability with that row's designations is true, for the vector
scenarios and for tokens this project mints (hypothesis: designations at
mint, appended narrowing blocks, alternatives, expressions, rejections,
anchors, wrong rights); INSERT is checked the same way; the set helpers are
InitPlans and the per-row verifier runs only for tokens that need it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import biscuit_auth
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors, sql

from hessra_pg.core.keys import generate_keypair
from hessra_pg.rls.policies import PolicySpec, generate_sql
from hessra_pg.tokens.capability import designate, mint_capability
from tests import vectors
from tests.integration.test_policies import _verifier_outside_initplans

SCENARIOS = vectors.capability_expected()["rls"]


def _token(name: str) -> str:
    return vectors.capability_tokens()[name]["token"]


@contextlib.contextmanager
def _as_app(hessra_db, app_role: str, token: str | None) -> Iterator[psycopg.Connection]:
    with hessra_db.connect(app_role) as app:
        app.execute("SELECT set_config('hessra.token', coalesce(%s, ''), true)", (token,))
        yield app
        app.rollback()


def _grant(admin: psycopg.Connection, table: str, app_role: str) -> None:
    admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
        sql.SQL(table), sql.Identifier(app_role)))


# -- the vector scenarios ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_vector_scenario_through_a_generated_policy(hessra_db, admin, app_role, scenario):
    """The scenario's sample rows in a table whose columns hold its row
    labels: the app role sees exactly the rows marked visible."""
    admin.execute("SELECT hessra_authz.add_key(%s, 1)", (vectors.capability_keys()["root"]["public"],))
    admin.execute("SELECT hessra_authz.set_anchor(%s)", (scenario["anchor"],))
    labels = scenario["row_labels"]
    columns = {label: f"col_{i}" for i, label in enumerate(labels)}
    admin.execute(sql.SQL("CREATE TABLE public.scenario (id int PRIMARY KEY, {})").format(
        sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns.values())))
    for i, row in enumerate(scenario["rows"]):
        admin.execute(sql.SQL("INSERT INTO public.scenario VALUES (%s, {})").format(
            sql.SQL(", ").join(sql.Placeholder() for _ in labels)), (i, *(row["values"][label] for label in labels)))
    spec = PolicySpec("scenario", mode="designation", resource=scenario["resource"], designations=columns,
                      fixed=dict(scenario["fixed"]) or None,
                      operations={"SELECT": scenario["operation"]})
    admin.execute(generate_sql(spec))
    _grant(admin, "public.scenario", app_role)
    expected = sorted(i for i, row in enumerate(scenario["rows"]) if row["visible"])
    with _as_app(hessra_db, app_role, _token(scenario["token"])) as app:
        assert sorted(r[0] for r in app.execute("SELECT id FROM public.scenario")) == expected
    with _as_app(hessra_db, app_role, None) as app:
        assert app.execute("SELECT count(*) FROM public.scenario").fetchone()[0] == 0


# -- tokens minted here ----------------------------------------------------------------

TENANTS = ("acme", "globex", "", "ACME", 'x") or designation("tenant_id", "globex')
USERS = ("alice", "bob", "ali")
# Every combination, NULL included: 6 x 4 rows.
ROWS = [(t, u) for t in (*TENANTS, None) for u in (*USERS, None)]


@pytest.fixture(scope="module")
def minted_root():
    return generate_keypair()


@pytest.fixture
def items(hessra_db, admin, app_role, minted_root):
    """public.items(tenant, owner) with every combination, guarded by a
    designation policy over tenant_id -> tenant and user -> owner; the
    database's anchor is db:main."""
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (str(minted_root.public_key),))
    admin.execute("SELECT hessra_authz.set_anchor('db:main')")
    admin.execute("CREATE TABLE public.items (id serial PRIMARY KEY, tenant text, owner text)")
    admin.cursor().executemany("INSERT INTO public.items (tenant, owner) VALUES (%s, %s)", ROWS)
    spec = PolicySpec("items", mode="designation", designations={"tenant_id": "tenant", "user": "owner"})
    admin.execute(generate_sql(spec))
    _grant(admin, "public.items", app_role)
    admin.execute(sql.SQL("GRANT USAGE ON SEQUENCE public.items_id_seq TO {}").format(sql.Identifier(app_role)))
    return admin


def _per_row(admin: psycopg.Connection, token: str, operation: str = "read") -> list[int]:
    """The rows per-row verify_capability admits (superuser: RLS bypassed)."""
    return [r[0] for r in admin.execute(
        "SELECT id FROM public.items WHERE hessra_authz.verify_capability(%s, 'items', %s, "
        "pg_catalog.jsonb_build_object('tenant_id', tenant, 'user', owner)) ORDER BY id", (token, operation))]


def _visible(hessra_db, app_role: str, token: str) -> list[int]:
    with _as_app(hessra_db, app_role, token) as app:
        return [r[0] for r in app.execute("SELECT id FROM public.items ORDER BY id")]


def _append(token: str, root, source: str, params: dict[str, str]) -> str:
    biscuit = biscuit_auth.Biscuit.from_base64(token, root.public_key)
    return biscuit.append(biscuit_auth.BlockBuilder(source, params)).to_base64()


LABELS = ("tenant_id", "user")
VALUES = {"tenant_id": TENANTS, "user": USERS}
label_values = st.sampled_from(LABELS).flatmap(lambda label: st.tuples(st.just(label), st.sampled_from(VALUES[label])))

# One appended first-party block: a narrowing designation, alternatives, a
# presence check, an expression, or a rejection.
amendment = st.one_of(
    st.tuples(st.just("designate"), label_values),
    st.tuples(st.just("or"), st.sampled_from(LABELS).flatmap(
        lambda label: st.tuples(st.just(label), st.lists(st.sampled_from(VALUES[label]), min_size=2, max_size=3,
                                                         unique=True)))),
    st.tuples(st.just("presence"), st.sampled_from(LABELS)),
    st.tuples(st.just("prefix"), st.sampled_from(LABELS).flatmap(
        lambda label: st.tuples(st.just(label), st.sampled_from(("a", "ac", "glo", ""))))),
    st.tuples(st.just("reject"), label_values),
)


def _amend(token: str, root, step: tuple) -> str:
    kind, arg = step
    if kind == "designate":
        return designate(token, root.public_key, [arg])
    if kind == "or":
        label, values = arg
        params = {"l": label, **{f"v{i}": v for i, v in enumerate(values)}}
        alternatives = " or ".join(f"designation({{l}}, {{v{i}}})" for i in range(len(values)))
        return _append(token, root, f"check if {alternatives};", params)
    if kind == "presence":
        return _append(token, root, "check if designation({l}, $v);", {"l": arg})
    if kind == "prefix":
        label, prefix = arg
        return _append(token, root, "check if designation({l}, $v), $v.starts_with({p});", {"l": label, "p": prefix})
    label, value = arg
    return _append(token, root, "reject if designation({l}, {v});", {"l": label, "v": value})


capabilities = st.fixed_dictionaries({
    "resource": st.sampled_from(("items", "items", "items", "orders")),
    "operation": st.sampled_from(("read", "read", "read", "write")),
    "anchor": st.sampled_from((None, None, "db:main", "db:other")),
    "designations": st.lists(label_values, max_size=2, unique_by=lambda pair: pair[0]),
    "amendments": st.lists(amendment, max_size=2),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capability=capabilities)
def test_policy_shows_a_row_exactly_when_per_row_verification_admits_it(hessra_db, items, app_role, minted_root,
                                                                       capability):
    token = mint_capability(minted_root, "alice", capability["resource"], capability["operation"],
                            designations=capability["designations"], anchor=capability["anchor"], valid_for=3600)
    for step in capability["amendments"]:
        token = _amend(token, minted_root, step)
    assert _visible(hessra_db, app_role, token) == _per_row(items, token)


def test_the_property_covers_every_verdict(hessra_db, items, app_role, minted_root):
    """The generator above reaches each case the policy treats differently:
    every row, one tenant, a finite set, non-NULL only, the per-row fallback,
    an empty set and a wrong anchor (each checked against per-row)."""
    root = minted_root
    everything = mint_capability(root, "alice", "items", "read", valid_for=3600)
    acme = mint_capability(root, "alice", "items", "read", designations=[("tenant_id", "acme")], valid_for=3600)
    either = _amend(everything, root, ("or", ("tenant_id", ["acme", "globex"])))
    present = _amend(everything, root, ("presence", "user"))
    prefix = _amend(everything, root, ("prefix", ("user", "ali")))
    conflict = designate(acme, root.public_key, [("tenant_id", "globex")])
    wrong_anchor = mint_capability(root, "alice", "items", "read", anchor="db:other", valid_for=3600)
    anchored = mint_capability(root, "alice", "items", "read", anchor="db:main",
                               designations=[("user", "bob")], valid_for=3600)
    tenant_of = {i: row for i, row in enumerate(ROWS, 1)}
    cases = {
        everything: set(tenant_of),
        acme: {i for i, (t, _) in tenant_of.items() if t == "acme"},
        either: {i for i, (t, _) in tenant_of.items() if t in ("acme", "globex")},
        present: {i for i, (_, u) in tenant_of.items() if u is not None},
        prefix: {i for i, (_, u) in tenant_of.items() if u is not None and u.startswith("ali")},
        conflict: set(),
        wrong_anchor: set(),
        anchored: {i for i, (_, u) in tenant_of.items() if u == "bob"},
    }
    for token, expected in cases.items():
        visible = _visible(hessra_db, app_role, token)
        assert set(visible) == expected
        assert visible == _per_row(items, token)
    with _as_app(hessra_db, app_role, prefix) as app:
        rows = app.execute("SELECT hessra_authz.capability_rows('items', 'read', '{tenant_id,user}')").fetchone()[0]
        assert rows["statement"]["verdict"] == "fallback"


def test_insert_and_update_are_checked_with_the_new_row(hessra_db, items, app_role, minted_root):
    acme = mint_capability(minted_root, "alice", "items", "write", designations=[("tenant_id", "acme")],
                           valid_for=3600)
    read_acme = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                                valid_for=3600)
    with _as_app(hessra_db, app_role, acme) as app:
        app.execute("INSERT INTO public.items (tenant, owner) VALUES ('acme', 'carol')")
        for tenant in ("globex", None, "ACME"):
            with pytest.raises(errors.InsufficientPrivilege), app.transaction():
                app.execute("INSERT INTO public.items (tenant, owner) VALUES (%s, 'carol')", (tenant,))
        # UPDATE reaches acme rows only (USING; without a WHERE clause, so the
        # SELECT policies, which need "read", don't apply) and can't move one
        # out (WITH CHECK).
        assert app.execute("UPDATE public.items SET owner = 'dave'").rowcount == 5  # 4 + the one inserted
        with pytest.raises(errors.InsufficientPrivilege), app.transaction():
            app.execute("UPDATE public.items SET tenant = 'globex'")
    with _as_app(hessra_db, app_role, read_acme) as app:
        with pytest.raises(errors.InsufficientPrivilege):
            app.execute("INSERT INTO public.items (tenant, owner) VALUES ('acme', 'carol')")


def test_set_helpers_run_once_per_statement_and_per_row_only_in_fallback(hessra_db, items, app_role, minted_root):
    """The set helpers are InitPlans; the per-row verifier sits behind the
    InitPlan that says whether it runs, and runs for no row of a token with
    an exact set (counted with track_functions, set by the admin)."""
    items.execute(sql.SQL("ALTER ROLE {} SET track_functions = 'pl'").format(sql.Identifier(app_role)))
    acme = mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                           valid_for=3600)
    prefix = _amend(mint_capability(minted_root, "alice", "items", "read", valid_for=3600), minted_root,
                    ("prefix", ("user", "ali")))
    # The helpers are SQL functions PostgreSQL inlines (0.5.0): their PL/Python
    # and PL/pgSQL calls are counted (the recorded answers, and the trusted
    # way that computes and records every label's answers at once).
    calls = ("SELECT funcname, calls FROM pg_stat_xact_user_functions "
             "WHERE schemaname = 'hessra_authz' AND funcname LIKE '%designation%' ORDER BY 1")
    with _as_app(hessra_db, app_role, acme) as app:
        plan = app.execute("EXPLAIN (VERBOSE, COSTS OFF, FORMAT JSON) SELECT * FROM public.items").fetchone()[0]
        outside = _verifier_outside_initplans(plan[0]["Plan"])
        assert outside and all("designation_row" in entry for entry in outside), outside
        assert len(app.execute("SELECT * FROM public.items").fetchall()) == 4
        counted = dict(app.execute(calls).fetchall())
        # At most once per InitPlan (EXPLAIN runs none): per label one values,
        # two floor and one nulls subquery; five fallback ones. One trusted
        # call at most for all of them.
        assert counted.get("designation_row", 0) == 0 and counted["_designation_values_fast"] == 2, counted
        assert counted.get("_designation_flag_fast", 0) <= 4 + 2 + 5, counted
        assert counted.get("_designation_values_slow", 0) + counted.get("_designation_flag_slow", 0) <= 1, counted
    with _as_app(hessra_db, app_role, prefix) as app:
        assert len(app.execute("SELECT * FROM public.items").fetchall()) == 12
        counted = dict(app.execute(calls).fetchall())
        assert counted["designation_row"] == len(ROWS) and counted["_designation_flag_fast"] <= 4 + 2 + 5, counted


def test_column_types_and_collations_compare_as_token_text(hessra_db, admin, app_role, minted_root):
    """An integer column compares by its text; a case-insensitive column
    collation does not widen ('ACME' is not 'acme' for a token)."""
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (str(minted_root.public_key),))
    admin.execute("CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    admin.execute("CREATE TABLE public.accounts (id int PRIMARY KEY, tenant text COLLATE public.ci, shard int)")
    admin.execute("INSERT INTO public.accounts VALUES (1, 'acme', 7), (2, 'ACME', 7), (3, 'acme', 8), (4, 'Acme', NULL)")
    admin.execute(generate_sql(PolicySpec("accounts", mode="designation",
                                          designations={"tenant_id": "tenant", "shard": "shard"})))
    _grant(admin, "public.accounts", app_role)
    token = mint_capability(minted_root, "alice", "accounts", "read",
                            designations=[("tenant_id", "acme"), ("shard", "7")], valid_for=3600)
    with _as_app(hessra_db, app_role, token) as app:
        assert [r[0] for r in app.execute("SELECT id FROM public.accounts ORDER BY id")] == [1]
        assert app.execute("SELECT count(*) FROM public.accounts WHERE tenant = 'ACME'").fetchone()[0] == 1


def test_fallback_deny_hides_what_needs_per_row_verification(hessra_db, items, app_role, minted_root):
    everything = mint_capability(minted_root, "alice", "items", "read", valid_for=3600)
    prefix = _amend(everything, minted_root, ("prefix", ("user", "ali")))
    assert len(_visible(hessra_db, app_role, prefix)) == 12
    items.execute("SELECT hessra_authz.set_capability_options(fallback => 'deny')")
    assert _visible(hessra_db, app_role, prefix) == []
    assert len(_visible(hessra_db, app_role, everything)) == len(ROWS)


def test_fixed_designations_are_supplied_by_the_policy(hessra_db, admin, app_role, minted_root):
    """A label the policy writes as a literal (fixed) satisfies the token's
    check for every row; a token for another value sees nothing."""
    admin.execute("SELECT hessra_authz.add_key(%s, 7)", (str(minted_root.public_key),))
    admin.execute("CREATE TABLE public.notes (id int PRIMARY KEY, tenant text)")
    admin.execute("INSERT INTO public.notes VALUES (1, 'acme'), (2, 'globex')")
    admin.execute(generate_sql(PolicySpec("notes", mode="designation", designations={"tenant_id": "tenant"},
                                          fixed={"region": "eu"})))
    _grant(admin, "public.notes", app_role)
    eu = mint_capability(minted_root, "alice", "notes", "read", designations=[("region", "eu")], valid_for=3600)
    us = mint_capability(minted_root, "alice", "notes", "read", designations=[("region", "us")], valid_for=3600)
    with _as_app(hessra_db, app_role, eu) as app:
        assert [r[0] for r in app.execute("SELECT id FROM public.notes ORDER BY id")] == [1, 2]
    with _as_app(hessra_db, app_role, us) as app:
        assert app.execute("SELECT count(*) FROM public.notes").fetchone()[0] == 0


def test_parallel_scans_decide_as_serial_ones(hessra_db, items, app_role, minted_root):
    """designation_row is PARALLEL SAFE so that scans under a designation
    policy can run in parallel: with parallel plans forced (settings any
    session may change), workers give the same rows, including for a token
    verified row by row in the workers."""
    everything = mint_capability(minted_root, "alice", "items", "read", valid_for=3600)
    tokens = [everything,
              mint_capability(minted_root, "alice", "items", "read", designations=[("tenant_id", "acme")],
                              valid_for=3600),
              _amend(everything, minted_root, ("prefix", ("user", "ali"))),
              _amend(everything, minted_root, ("or", ("tenant_id", ["acme", "", "ACME"])))]
    serial = [_visible(hessra_db, app_role, token) for token in tokens]
    items.execute("ALTER TABLE public.items SET (parallel_workers = 2)")
    with hessra_db.connect(app_role) as app:
        # Workers scan every row; the leader only gathers (and runs the InitPlans).
        for setting in ("parallel_leader_participation = off", "parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0", "enable_indexscan = off", "enable_bitmapscan = off"):
            app.execute(f"SET {setting}")
        app.commit()
        for token, expected in zip(tokens, serial):
            app.execute("SELECT set_config('hessra.token', %s, true)", (token,))
            plan = app.execute("EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM public.items").fetchone()[0][0]["Plan"]
            assert plan["Node Type"] in ("Gather", "Gather Merge") and plan["Workers Launched"] >= 1, plan
            assert [r[0] for r in app.execute("SELECT id FROM public.items ORDER BY id")] == expected
            app.rollback()
    assert serial[2] and serial[2] == _per_row(items, tokens[2])
