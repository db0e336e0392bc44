"""migrations/: an empty database -> hessra-ready -> empty -> hessra-ready,
through the documented `alembic` command, with keys and service chains from
a policy repository (both resources.toml layouts); demo data survives an
extension update in place."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import create_engine, pool

import hessra_pg
import hessra_pg.alembic  # noqa: F401  (op.update_hessra_extension)
from hessra_pg.dev.cluster import LocalCluster
from hessra_pg.repository.checker import load_resources
from hessra_pg.tokens.identity import delegate_identity, mint_identity
from hessra_pg.core.keys import generate_keypair, public_key_pem
from hessra_pg.tokens.mint import mint_authorization

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root():
    return generate_keypair("secp256r1")


@pytest.fixture
def policy_repo(tmp_path: Path, root) -> Path:
    """A Hessra policy repository: the authority's public key and a
    resources.toml using both service-chain layouts."""
    repo = tmp_path / "policies"
    repo.mkdir()
    (repo / "public_key.pem").write_text(public_key_pem(root.public_key))
    auth, orders = generate_keypair(), generate_keypair("secp256r1")
    (repo / "resources.toml").write_text(f"""
[resources.order_service]
type = "service_chain"
operations = ["read", "write"]
nodes = [
    {{ component = "auth_service", public_key = "{auth.public_key}" }},
    {{ component = "order_service", public_key = "{orders.public_key}" }},
]

[resources.payments]
mechanisms = ["service_chain"]
[resources.payments.service_chain]
nodes = [{{ component = "auth_service", public_key = "{auth.public_key}" }}]

[resources.catalog]
operations = ["read"]
""")
    return repo


@pytest.fixture
def app_role(hessra_postgres) -> Iterator[str]:
    """A unique name for the migration's application role (roles are
    cluster-wide); dropped afterwards if a test left it."""
    name = f"hessra_app_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def alembic(dsn: str, *args: str, repo: Path | None = None, app_role: str, login: bool = True) -> str:
    """`alembic -x dsn=... <args>` from the repository root, as the README shows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HESSRA_PUBLIC_KEY", "HESSRA_APP",
                                                                    "HESSRA_POLICY", "HESSRA_DEMO",
                                                                    "HESSRA_ADMIN", "HESSRA_DATABASE",
                                                                    "DATABASE_URL"))}
    argv = [sys.executable, "-m", "alembic", "-x", f"dsn={dsn}", "-x", f"app_role={app_role}",
            "-x", f"app_login={'true' if login else 'false'}"]
    if repo is not None:
        argv += ["-x", f"policy_repo={repo}"]
    result = subprocess.run([*argv, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def _state(dsn: str, app_role: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        one = lambda q, p=(): conn.execute(q, p).fetchone()  # noqa: E731
        state: dict[str, Any] = {
            "extensions": sorted(r[0] for r in conn.execute("SELECT extname FROM pg_extension")),
            "version": one("SELECT version_num FROM alembic_version")
            if one("SELECT to_regclass('public.alembic_version')")[0] else None,
            "demo": one("SELECT count(*) FROM pg_namespace WHERE nspname = 'demo'")[0],
            "role": one("SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (app_role,)),
            "policies": sorted(conn.execute("SELECT tablename, policyname FROM pg_policies").fetchall()),
        }
        if "hessra_authz" in state["extensions"]:
            state["keys"] = conn.execute("SELECT public_key FROM hessra_authz.keys ORDER BY kid").fetchall()
            state["chains"] = dict(conn.execute("SELECT name, nodes FROM hessra_authz.service_chains").fetchall())
    return state


def test_upgrade_downgrade_upgrade_from_an_empty_database(bare_db, policy_repo, root, app_role):
    empty = _state(bare_db.dsn, app_role)
    assert empty["extensions"] == ["plpgsql"] and empty["role"] is None and empty["demo"] == 0

    for _ in range(2):
        alembic(bare_db.dsn, "upgrade", "head", repo=policy_repo, app_role=app_role)
        ready = _state(bare_db.dsn, app_role)
        assert ready["extensions"] == ["hessra_authz", "plpgsql", "plpython3u"]
        assert ready["version"] == ("0006_hessra_authz_0_5_0",)
        assert ready["keys"] == [(str(root.public_key),)]
        assert ready["chains"] == load_resources(policy_repo)
        assert set(ready["chains"]) == {"order_service", "payments"}
        assert ready["role"] == (True, False, False)
        assert len(ready["policies"]) == 12 and {p[0] for p in ready["policies"]} == {"orders", "documents",
                                                                                       "catalog"}
        assert "0006_hessra_authz_0_5_0 (head)" in alembic(bare_db.dsn, "current", app_role=app_role)

        alembic(bare_db.dsn, "downgrade", "base", app_role=app_role)
        down = _state(bare_db.dsn, app_role)
        assert down == empty
        assert down["extensions"] == ["plpgsql"] and down["role"] is None and down["demo"] == 0


def test_nologin_by_default_and_no_repository(bare_db, app_role):
    alembic(bare_db.dsn, "upgrade", "0001_hessra_authz", app_role=app_role, login=False)
    state = _state(bare_db.dsn, app_role)
    assert state["role"] == (False, False, False) and state["keys"] == [] and state["chains"] == {}
    assert state["demo"] == 0
    alembic(bare_db.dsn, "downgrade", "base", app_role=app_role, login=False)
    assert _state(bare_db.dsn, app_role)["role"] is None


def test_refuses_an_unsafe_existing_app_role(bare_db, hessra_postgres, app_role):
    with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} BYPASSRLS").format(sql.Identifier(app_role)))
    with pytest.raises(AssertionError, match="superuser or has BYPASSRLS"):
        alembic(bare_db.dsn, "upgrade", "head", app_role=app_role)
    assert _state(bare_db.dsn, app_role)["extensions"] == ["plpgsql"]  # the transaction rolled back
    assert _state(bare_db.dsn, app_role)["role"] == (False, False, True)  # not ours: left alone


def _visible(dsn_for_app: str, token: str | None, subject: str | None = None) -> dict[str, list[Any]]:
    with psycopg.connect(dsn_for_app) as app:
        app.execute("SELECT set_config('hessra.token', coalesce(%s, ''), true), "
                    "set_config('hessra.subject', coalesce(%s, ''), true)", (token, subject))
        return {
            "orders": [r[0] for r in app.execute("SELECT id FROM demo.orders ORDER BY id")],
            "documents": [r[0] for r in app.execute("SELECT owner FROM demo.documents ORDER BY owner")],
            "catalog": [r[0] for r in app.execute("SELECT sku FROM demo.catalog ORDER BY sku")],
        }


def test_demo_data_survives_an_extension_update(bare_db, hessra_postgres, policy_repo, root, app_role):
    alembic(bare_db.dsn, "upgrade", "0002_demo_schema", repo=policy_repo, app_role=app_role)  # hessra_authz 0.1.0
    with psycopg.connect(bare_db.dsn, autocommit=True) as admin:
        admin.execute("INSERT INTO demo.orders SELECT g, 'customer ' || g, 'item', 1 FROM generate_series(1, 500) g")
        admin.execute("INSERT INTO demo.documents (owner, title) VALUES ('alice', 'a'), ('alice:laptop', 'b'), "
                      "('bob', 'c')")
        admin.execute("INSERT INTO demo.catalog VALUES ('sku-1', 'one', 100), ('sku-2', 'two', 250)")
        before_rows = admin.execute("SELECT (SELECT count(*) FROM demo.orders), (SELECT count(*) FROM demo.documents),"
                                    " (SELECT count(*) FROM demo.catalog)").fetchone()
    app_dsn = hessra_postgres.dsn(psycopg.conninfo.conninfo_to_dict(bare_db.dsn)["dbname"], app_role)
    public = str(root.public_key)
    alice = mint_identity(root, "alice")
    probes = [
        (mint_authorization(root, "alice", "orders/42", "read"), "alice"),
        (mint_authorization(root, "alice", "catalog", "read"), "alice"),
        (alice, None),
        (delegate_identity(alice, public, "alice:laptop"), None),
        (None, None),
    ]
    before = [_visible(app_dsn, token, subject) for token, subject in probes]
    assert before[0]["orders"] == [42] and before[1]["catalog"] == ["sku-1", "sku-2"]
    assert before[2]["documents"] == ["alice", "alice:laptop"] and before[3]["documents"] == ["alice:laptop"]
    assert before[4] == {"orders": [], "documents": [], "catalog": []}
    with psycopg.connect(app_dsn) as app:  # the app writes through the policies too
        app.execute("SELECT set_config('hessra.token', %s, true)", (alice,))
        app.execute("INSERT INTO demo.documents (title) VALUES ('by default the current identity')")
        app.commit()

    # The extension update path: new files on the host (hessra-pg install), then
    # ALTER EXTENSION ... UPDATE in migrations (0003: 0.1.0 -> 0.2.0, 0004: -> 0.3.0, 0005: -> 0.4.0,
    # 0006: -> 0.5.0), and the same through the Alembic operation at head (a no-op): nothing is dropped.
    if isinstance(hessra_postgres, LocalCluster) and os.environ.get("HESSRA_PG_TEST_INSTALL", "1") != "0":
        from hessra_pg.admin.install import install

        install(pip=False)
    with psycopg.connect(bare_db.dsn) as admin:
        assert admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'").fetchone() == \
            ("0.1.0",)
    alembic(bare_db.dsn, "upgrade", "head", repo=policy_repo, app_role=app_role)
    engine = create_engine("postgresql+psycopg://", poolclass=pool.NullPool, creator=lambda: psycopg.connect(bare_db.dsn))
    try:
        with engine.begin() as connection:
            Operations(MigrationContext.configure(connection)).update_hessra_extension()
    finally:
        engine.dispose()

    with psycopg.connect(bare_db.dsn) as admin:
        assert admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'hessra_authz'").fetchone() == \
            (hessra_pg.__version__,)
        after_rows = admin.execute("SELECT (SELECT count(*) FROM demo.orders), (SELECT count(*) FROM demo.documents),"
                                   " (SELECT count(*) FROM demo.catalog)").fetchone()
    assert after_rows == (before_rows[0], before_rows[1] + 1, before_rows[2])
    after = [_visible(app_dsn, token, subject) for token, subject in probes]  # new connections
    before[2]["documents"] = ["alice", "alice", "alice:laptop"]
    assert after == before

    alembic(bare_db.dsn, "downgrade", "base", app_role=app_role)
