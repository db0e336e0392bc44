"""`hessra-pg chains import|list` against a real database: both resources.toml
layouts, updates, --replace, --dry-run, one transaction, privileges, and
vector tokens verified through the imported chains."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hessra_pg.cli import main
from hessra_pg.core.keys import public_key_pem
from hessra_pg.dev.testing import HessraDatabase
from tests import vectors
from tests.integration.conftest import scalar

NOTIFY = ("api_gateway", "payment_service", "notification_service")


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


def node_key(component: str) -> str:
    return vectors.service_nodes()[component]["public_key"]


def notify_chain() -> list[dict[str, str]]:
    return [{"component": name, "public_key": node_key(name)} for name in NOTIFY]


def repository(directory: Path, *, order_nodes: list[dict[str, str]] | None = None, notify: bool = True) -> Path:
    """A resources.toml with layout 1 (order_service, the vectors' chain),
    layout 2 (notify, as [[...service_chain.nodes]] tables, one key as PEM)
    and a resource without a chain."""
    nodes = order_nodes if order_nodes is not None else vectors.order_service_chain()
    text = '[resources.order_service]\ntype = "service_chain"\noperations = ["read"]\nnodes = [\n'
    text += "".join(f'  {{ component = "{n["component"]}", public_key = "{n["public_key"]}" }},\n' for n in nodes)
    text += "]\n\n[resources.reports]\noperations = [\"read\"]\n"
    if notify:
        text += '\n[resources.notify]\nmechanisms = ["service_chain"]\n'
        for name in NOTIFY:
            key = node_key(name)
            value = f"'''\n{public_key_pem(key)}'''" if name == "payment_service" else f'"{key}"'
            text += f'[[resources.notify.service_chain.nodes]]\ncomponent = "{name}"\npublic_key = {value}\n'
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "resources.toml"
    path.write_text(text)
    return path


def chains_in(admin: psycopg.Connection) -> dict[str, list[dict[str, str]]]:
    return dict(admin.execute("SELECT name, nodes FROM hessra_authz.service_chains ORDER BY name").fetchall())


def test_import_both_layouts_then_vectors_verify(run: Run, tmp_path: Path, hessra_db: HessraDatabase,
                                                 admin: psycopg.Connection, vector_key: int, app_role: str) -> None:
    path = repository(tmp_path)
    code, out, err = run("chains", "import", path, "--dsn", hessra_db.dsn)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "created    order_service  (3 nodes: auth_service -> payment_service -> order_service)",
        "created    notify  (3 nodes: api_gateway -> payment_service -> notification_service)",
        "imported 2 service chains: 2 created",
    ]
    assert chains_in(admin) == {"notify": notify_chain(), "order_service": vectors.order_service_chain()}

    # The hessra-sdk chain vectors verify through the imported chain, as an ordinary role.
    with hessra_db.connect(app_role, autocommit=True) as app:
        query = "SELECT hessra_authz.verify_service_chain(%s, %s, %s, 'read', 'order_service', %s)"
        for token in vectors.chain_tokens("hessra-sdk"):
            meta = token["metadata"]
            got = tuple(scalar(app, query, (token["token"], meta["subject"], meta["resource"], component))
                        for component in vectors.CHAIN_COMPONENTS)
            assert got == vectors.CHAIN_MATRIX[token["name"]][1:], token["name"]

    # Again: nothing to change.
    code, out, _ = run("chains", "import", tmp_path, "--dsn", hessra_db.dsn)  # the directory works too
    assert code == 0
    assert out.splitlines()[-1] == "imported 2 service chains: 2 unchanged"


def test_update_dry_run_and_replace(run: Run, tmp_path: Path, hessra_db: HessraDatabase,
                                    admin: psycopg.Connection) -> None:
    path = repository(tmp_path)
    assert run("chains", "import", path, "--dsn", hessra_db.dsn)[0] == 0
    admin.execute("SELECT hessra_authz.set_service_chain('legacy', %s::jsonb)", (json.dumps(notify_chain()[:1]),))
    before = chains_in(admin)
    two_nodes = vectors.order_service_chain()[:2]
    repository(tmp_path, order_nodes=two_nodes, notify=False)

    code, out, _ = run("chains", "import", path, "--dsn", hessra_db.dsn, "--dry-run", "--replace")
    assert code == 0
    assert out.splitlines() == [
        "updated    order_service  (2 nodes: auth_service -> payment_service)",
        "dropped    legacy",
        "dropped    notify",
        "dry run: 1 updated, 2 dropped; rolled back, nothing written",
    ]
    assert chains_in(admin) == before

    code, out, _ = run("chains", "import", path, "--dsn", hessra_db.dsn)
    assert code == 0
    assert out.splitlines() == [
        "updated    order_service  (2 nodes: auth_service -> payment_service)",
        "kept       legacy  (not in the file; --replace drops it)",
        "kept       notify  (not in the file; --replace drops it)",
        "imported 1 service chain: 1 updated, 2 kept",
    ]
    assert chains_in(admin) == {**before, "order_service": two_nodes}

    code, out, _ = run("chains", "import", path, "--dsn", hessra_db.dsn, "--replace")
    assert code == 0
    assert out.splitlines()[-1] == "imported 1 service chain: 1 unchanged, 2 dropped"
    assert chains_in(admin) == {"order_service": two_nodes}

    code, out, _ = run("chains", "list", "--dsn", hessra_db.dsn)
    assert (code, out) == (0, "order_service  2 nodes: auth_service -> payment_service\n")
    code, out, _ = run("chains", "list", "--dsn", hessra_db.dsn, "--json")
    (listed,) = json.loads(out)
    assert (listed["name"], listed["nodes"]) == ("order_service", two_nodes)


def test_one_transaction(run: Run, tmp_path: Path, hessra_db: HessraDatabase, admin: psycopg.Connection) -> None:
    """The database refuses the second chain: the first is not written either."""
    admin.execute("""
        CREATE FUNCTION public.refuse_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = 'notify' THEN RAISE EXCEPTION 'notify refused by a test trigger'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_notify BEFORE INSERT ON hessra_authz.service_chains
            FOR EACH ROW EXECUTE FUNCTION public.refuse_notify();
    """)
    code, out, err = run("chains", "import", repository(tmp_path), "--dsn", hessra_db.dsn)
    assert (code, out) == (2, "")
    assert err == "hessra-pg: error: cannot import the service chains: notify refused by a test trigger\n"
    assert chains_in(admin) == {}


def test_a_file_with_problems_writes_nothing(run: Run, tmp_path: Path, hessra_db: HessraDatabase,
                                             admin: psycopg.Connection) -> None:
    nodes = vectors.order_service_chain()
    bad = [nodes[0], {"component": "payment_service", "public_key": "ed25519/00"}, nodes[0]]
    path = repository(tmp_path, order_nodes=bad)
    code, out, err = run("chains", "import", path, "--dsn", hessra_db.dsn)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"hessra-pg: error: 2 problems in {path}:",
        f"  {path}:6: bad public_key: ed25519 public key must be 64 hex digits, got 2",
        f"  {path}:7: duplicate component 'auth_service' in the service chain of 'order_service' (first at line 5)",
    ]
    assert chains_in(admin) == {}


def test_needs_hessra_admin(run: Run, tmp_path: Path, hessra_db: HessraDatabase, admin: psycopg.Connection,
                            app_role: str) -> None:
    path = repository(tmp_path)
    code, out, err = run("chains", "import", path, "--dsn", hessra_db.dsn_for(app_role))
    assert (code, out) == (2, "")
    assert err == ("hessra-pg: error: cannot import the service chains: permission denied for table "
                   "service_chains (connect as a member of hessra_admin: GRANT hessra_admin TO <role>)\n")
    assert chains_in(admin) == {}
    admin.execute(sql.SQL("GRANT hessra_admin TO {}").format(sql.Identifier(app_role)))
    try:
        code, out, err = run("chains", "import", path, "--dsn", hessra_db.dsn_for(app_role))
        assert (code, err) == (0, "")
        assert set(chains_in(admin)) == {"notify", "order_service"}
    finally:
        admin.execute(sql.SQL("REVOKE hessra_admin FROM {}").format(sql.Identifier(app_role)))


def test_unreachable_database_and_missing_extension(run: Run, tmp_path: Path, hessra_postgres) -> None:
    path = repository(tmp_path)
    code, out, err = run("chains", "import", path, "--dsn", "host=/nonexistent dbname=x connect_timeout=2")
    assert (code, out) == (2, "")
    assert err.startswith("hessra-pg: error: cannot connect to the database: ")
    code, _, err = run("chains", "list", "--dsn", hessra_postgres.dsn("postgres"))
    assert code == 2
    assert "is the hessra_authz extension created in this database?" in err
    code, _, err = run("chains", "import", tmp_path / "missing.toml", "--dsn", hessra_postgres.dsn("postgres"))
    assert code == 2 and err.strip().endswith("missing.toml: no such file or directory")
