"""The wheel, installed non-editable into fresh virtualenvs: the core install
and each extra bring exactly what they promise (README, "Installing").

One wheel per session, built from a copy of this checkout; one virtualenv per
install, created and filled in parallel from pip's cache. Each virtualenv
imports every module of the installed package: those of an extra it lacks
must refuse to import (naming the extra where the module says so), all the
others must import. Then a smoke test per extra, `hessra-pg --help` in every
one, and `hessra-pg install` from the core install into temporary
directories (never the real server install the integration tests use).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
CHECK_ENV = Path(__file__).with_name("check_env.py")
SERVER_PYTHON = "/usr/bin/python3"

# The optional distributions, and which hessra_pg modules need which.
OPTIONAL = ["sqlalchemy", "greenlet", "alembic", "mako", "psycopg-pool", "pytest", "testcontainers", "docker", "pglast"]
NEEDS = {
    "hessra_pg.sqlalchemy": "sqlalchemy",
    "hessra_pg.alembic": "alembic",
    "hessra_pg.dev.testing": "pytest",
    "hessra_pg.dev.factories": "pytest",  # fixture factories for the plugin
    "hessra_pg.testing": "pytest",  # the deprecated alias of dev.testing
}
# Modules that say which extra to install when their library is missing.
NAMES_ITS_EXTRA = {"hessra_pg.sqlalchemy": "sqlalchemy", "hessra_pg.dev.testing": "testing",
                   "hessra_pg.dev.factories": "testing", "hessra_pg.testing": "testing"}


@dataclass(frozen=True)
class Install:
    extra: str | None
    present: frozenset[str]
    """Optional distributions this install brings (the core ones always)."""

    @property
    def name(self) -> str:
        return self.extra or "core"

    @property
    def absent(self) -> list[str]:
        unexpected = [d for d in OPTIONAL if d not in self.present]
        # Only this repository's test and bench extras bring these.
        return unexpected + ["hypothesis", "hessra-py", "matplotlib"]


INSTALLS = {
    i.name: i
    for i in [
        Install(None, frozenset()),
        Install("sqlalchemy", frozenset({"sqlalchemy"})),
        Install("sqlalchemy-asyncio", frozenset({"sqlalchemy", "greenlet"})),
        Install("alembic", frozenset({"alembic", "mako", "sqlalchemy"})),
        Install("pool", frozenset({"psycopg-pool"})),
        Install("testing", frozenset({"pytest", "testcontainers", "docker"})),
        Install("doctor", frozenset({"pglast"})),
        Install("all", frozenset(OPTIONAL)),
    ]
}
CORE = frozenset({"biscuit-python", "psycopg", "psycopg-binary", "hessra-pg"})


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_ROOT_USER_ACTION="ignore")
    return env


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", _env())
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
    return result


# --- the wheel ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built (in an isolated build environment, as pip does for a
    user) from a copy of what the package is made of: the checkout stays clean."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # symlinks=True: hessra_pg/_extension stays the link to ../extension it is in git.
    shutil.copytree(ROOT / "hessra_pg", src / "hessra_pg", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "extension", src / "extension", ignore=ignore)
    out = base / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(src)], timeout=600)
    (built,) = out.glob("hessra_pg-*.whl")
    return built


def _wheel_metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name).decode().splitlines()


def test_wheel_metadata_core_requirements_and_extras(wheel: Path) -> None:
    lines = _wheel_metadata(wheel)
    extras = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}
    assert extras == {"sqlalchemy", "sqlalchemy-asyncio", "alembic", "pool", "testing", "doctor", "all",
                      "test", "bench"}
    requirements = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]

    def names(extra: str | None) -> set[str]:
        found = set()
        for req in requirements:
            applies = req.marker.evaluate({"extra": extra or ""}) if req.marker else extra is None
            if applies:
                found.add(req.name.lower() + "".join(f"[{e}]" for e in sorted(req.extras)))
        return found

    assert names(None) == {"biscuit-python", "psycopg[binary]"}
    assert names("sqlalchemy") == {"sqlalchemy"}
    assert names("sqlalchemy-asyncio") == {"sqlalchemy[asyncio]"}
    assert names("alembic") == {"alembic", "sqlalchemy"}
    assert names("pool") == {"psycopg-pool"}
    assert names("testing") == {"pytest", "testcontainers"}
    assert names("doctor") == {"pglast"}
    # all = every extra (sqlalchemy[asyncio] covers plain sqlalchemy); test = all + its own.
    union = set().union(*(names(e) for e in ("sqlalchemy-asyncio", "alembic", "pool", "testing", "doctor")))
    union.discard("sqlalchemy")
    assert names("all") == union
    assert names("test") == union | {"hypothesis", "hessra-py"}
    # Same versions wherever a requirement appears twice.
    specs: dict[str, set[str]] = {}
    for req in requirements:
        specs.setdefault(req.name.lower(), set()).add(str(req.specifier))
    assert {name: s for name, s in specs.items() if len(s) > 1} == {}


def test_wheel_carries_the_extension_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("hessra_pg/_extension/")}
    assert "hessra_authz.control" in shipped
    assert {p.name for p in (ROOT / "extension").glob("hessra_authz--*.sql")} <= shipped
    assert "hessra_pg/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "extension/")) or "__pycache__" in n]


# --- one virtualenv per install -------------------------------------------------------


@dataclass
class Venv:
    install: Install
    path: Path
    error: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def ready(self) -> Venv:
        if self.error:
            pytest.fail(f"installing hessra-pg[{self.install.name}] failed:\n{self.error}")
        return self


def _make_venv(venv: Venv, wheel: Path) -> Venv:
    spec = str(wheel) if venv.install.extra is None else f"{wheel}[{venv.install.extra}]"
    try:
        if venv.install.extra is None:
            # The core install gets its own pip, as a user's virtualenv has:
            # `hessra-pg install` uses it for a server Python without pip.
            run([sys.executable, "-m", "venv", str(venv.path)])
            run([venv.python, "-m", "pip", "install", spec], timeout=600)
        else:
            # No pip inside (faster): this interpreter's pip installs into it.
            run([sys.executable, "-m", "venv", "--without-pip", str(venv.path)])
            run([sys.executable, "-m", "pip", "--python", venv.python, "install", spec], timeout=600)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        venv.error = str(exc)
    return venv


@pytest.fixture(scope="session")
def venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Venv]:
    base = tmp_path_factory.mktemp("venvs")
    wanted = [Venv(install, base / install.name) for install in INSTALLS.values()]
    # pip spends much of an install waiting (cache reads, unpacking): three
    # at a time keeps both cores busy.
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(lambda v: _make_venv(v, wheel), wanted))
    return {v.install.name: v for v in done}


def _python(venv: Venv, code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run([venv.python, "-c", textwrap.dedent(code)], cwd="/", **kwargs)


@pytest.mark.parametrize("name", list(INSTALLS))
def test_install_brings_and_imports_exactly_its_promise(venvs: dict[str, Venv], name: str) -> None:
    venv = venvs[name].ready()
    install = venv.install
    spec = {"present": sorted(CORE | install.present), "absent": install.absent, "needs": NEEDS}
    report = json.loads(run([venv.python, str(CHECK_ENV), json.dumps(spec)], cwd="/").stdout)
    # Installed from the wheel into the venv, not imported from the checkout.
    assert Path(report["hessra_pg_file"]).is_relative_to(venv.path)
    assert report["missing"] == [], f"[{name}] should install {report['missing']}"
    assert report["unexpected"] == [], f"[{name}] should not install {report['unexpected']}"
    assert report["broken"] == {}, f"[{name}] modules that should import but don't: {report['broken']}"
    assert "hessra_pg" in report["imported"] and "hessra_pg.cli" in report["imported"]
    refused = report["refused"]
    expected_refused = {
        module for module in report["imported"] + list(refused)
        if any(module == p or module.startswith(p + ".") for p, dist in NEEDS.items() if dist not in install.present)
    }
    assert set(refused) == expected_refused
    for module, message in refused.items():
        extra = NAMES_ITS_EXTRA.get(module)
        if extra:
            assert f"pip install 'hessra-pg[{extra}]'" in message, (module, message)


@pytest.mark.parametrize("name", list(INSTALLS))
def test_cli_help_runs(venvs: dict[str, Venv], name: str) -> None:
    venv = venvs[name].ready()
    out = run([venv.bin("hessra-pg"), "--help"], cwd="/").stdout
    for command in ("install", "dev-db", "keys", "token", "identity", "cap", "policy", "doctor", "chains"):
        assert command in out
    assert run([venv.python, "-m", "hessra_pg", "--version"], cwd="/").stdout.strip().startswith("hessra-pg ")


def test_core_cli_keys_tokens_identities_policies(venvs: dict[str, Venv], tmp_path: Path) -> None:
    venv = venvs["core"].ready()
    cli = venv.bin("hessra-pg")
    key = tmp_path / "root.pem"
    pub = run([cli, "keys", "generate", "--out", str(key)]).stdout.strip()
    assert pub.startswith("ed25519/")
    token = run([cli, "token", "mint", "--key", str(key), "--subject", "alice", "--resource", "orders",
                 "--operation", "read"]).stdout.strip()
    request = ["--root-key", pub, "--subject", "alice", "--resource", "orders"]
    assert run([cli, "token", "verify", token, *request, "--operation", "read"]).stdout.strip() == "valid"
    denied = run([cli, "token", "verify", token, *request, "--operation", "write"], check=False)
    assert denied.returncode == 1 and denied.stdout.startswith("denied")
    assert "orders" in run([cli, "token", "inspect", token]).stdout
    identity = run([cli, "identity", "create", "--key", str(key), "--subject", "urn:hessra:alice"]).stdout.strip()
    verified = run([cli, "identity", "verify", identity, "--identity", "urn:hessra:alice:laptop", "--root-key", pub])
    assert verified.stdout.strip() == "valid"
    sql = run([cli, "policy", "generate", "--table", "orders", "--resource", "orders"]).stdout
    assert "CREATE POLICY" in sql and "FORCE ROW LEVEL SECURITY" in sql
    # Capability tokens (hessra_pg.tokens.capability, hessra_pg.core.capability) with the core install.
    cap = run([cli, "cap", "mint", "--key", str(key), "--subject", "alice", "--resource", "orders", "--operation",
               "read", "--designation", "tenant_id=acme", "--anchor", "db:main"]).stdout.strip()
    narrowed = run([cli, "cap", "designate", cap, "--designation", "user=alice", "--root-key", pub]).stdout.strip()
    check = [cli, "cap", "verify", narrowed, "--root-key", pub, "--resource", "orders", "--operation", "read",
             "--anchor", "db:main", "--designation", "tenant_id=acme"]
    assert run([*check, "--designation", "user=alice"]).stdout.strip() == "valid"
    assert run([*check, "--designation", "user=bob"], check=False).returncode == 1
    sql = run([cli, "policy", "generate", "--table", "orders", "--mode", "designation", "--label", "tenant_id",
               "--column", "tenant_id"]).stdout
    assert "designation_values" in sql and "designation_row" in sql


def test_core_install_names_the_extra_of_a_missing_library(venvs: dict[str, Venv]) -> None:
    venv = venvs["core"].ready()
    _python(venv, """
        import sys
        from hessra_pg.cli import main
        from hessra_pg.cli.common import guarded

        # A command whose handler needs pglast ([doctor]), as doctor's parser does.
        def handler(args):
            import pglast
        import argparse
        args = argparse.Namespace(command="doctor")
        try:
            guarded(handler)(args)
        except Exception as exc:
            assert "pip install 'hessra-pg[doctor]'" in str(exc), exc
            assert "\\n" not in str(exc)
        else:
            raise AssertionError("no error")
        for name in ("sqlalchemy", "alembic", "psycopg_pool", "pytest", "testcontainers", "pglast", "greenlet"):
            assert name not in sys.modules, name
    """)


def test_sqlalchemy_sync_hooks_without_greenlet(venvs: dict[str, Venv]) -> None:
    venv = venvs["sqlalchemy"].ready()
    _python(venv, """
        import sys
        from sqlalchemy import create_engine, event
        from sqlalchemy.orm import Session, sessionmaker
        from hessra_pg.sqlalchemy import hessra_context, install_hessra, set_hessra_context
        from hessra_pg.sqlalchemy.hooks import _after_begin, _on_engine_begin

        engine = create_engine("postgresql+psycopg://")  # never connects
        assert install_hessra(engine) is engine
        assert event.contains(engine, "begin", _on_engine_begin)
        maker = install_hessra(sessionmaker(engine))
        assert event.contains(maker.class_, "after_begin", _after_begin)
        set_hessra_context(install_hessra(Session(engine)), token="t", subject="alice")
        assert "sqlalchemy.ext.asyncio" not in sys.modules
        try:
            import sqlalchemy.ext.asyncio
        except ImportError as exc:
            assert "greenlet" in str(exc), exc
        else:
            raise AssertionError("greenlet should not be installed by [sqlalchemy]")
    """)


def test_sqlalchemy_asyncio_hooks(venvs: dict[str, Venv]) -> None:
    venv = venvs["sqlalchemy-asyncio"].ready()
    _python(venv, """
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
        from hessra_pg.sqlalchemy import install_hessra, set_hessra_context
        from hessra_pg.sqlalchemy.hooks import _on_engine_begin

        engine = create_async_engine("postgresql+psycopg://")  # never connects
        assert install_hessra(engine) is engine
        assert event.contains(engine.sync_engine, "begin", _on_engine_begin)
        install_hessra(async_sessionmaker(engine))
        set_hessra_context(install_hessra(AsyncSession(engine)), token="t")
    """)


def test_alembic_operations_register(venvs: dict[str, Venv]) -> None:
    venv = venvs["alembic"].ready()
    _python(venv, """
        from alembic.operations import Operations
        import hessra_pg.alembic
        for name in ("create_hessra_extension", "create_hessra_policies", "add_hessra_key"):
            assert hasattr(Operations, name), name
    """)


def test_pool_kwargs_with_psycopg_pool(venvs: dict[str, Venv]) -> None:
    venv = venvs["pool"].ready()
    _python(venv, """
        from psycopg_pool import AsyncConnectionPool, ConnectionPool
        from hessra_pg.psycopg import hessra_pool_kwargs, hessra_pool_kwargs_async, reset_hessra

        pool = ConnectionPool("dbname=none", open=False, **hessra_pool_kwargs(pgbouncer=True))
        assert pool._reset is reset_hessra and pool.kwargs["prepare_threshold"] is None
        AsyncConnectionPool("dbname=none", open=False, **hessra_pool_kwargs_async())
    """)


def test_core_psycopg_integration_without_psycopg_pool(venvs: dict[str, Venv]) -> None:
    venv = venvs["core"].ready()
    _python(venv, """
        import sys
        import hessra_pg.psycopg
        from hessra_pg.psycopg import hessra_pool_kwargs, hessra_transaction
        assert hessra_pool_kwargs()["reset"] is hessra_pg.psycopg.reset_hessra
        assert "psycopg_pool" not in sys.modules
    """)


def test_testing_plugin_loads_in_pytest(venvs: dict[str, Venv], tmp_path: Path) -> None:
    venv = venvs["testing"].ready()
    out = run([venv.python, "-m", "pytest", "-p", "hessra_pg.dev.testing", "--fixtures", "-q", str(tmp_path)],
              cwd=tmp_path).stdout
    for fixture in ("hessra_postgres", "hessra_db", "bare_db"):
        assert fixture in out
    # No Docker engine and no docker/ folder next to an installed package: the local cluster.
    env = {k: v for k, v in _env().items() if not k.startswith("HESSRA_PG_TEST_")}
    _python(venv, """
        from hessra_pg.dev.testing import _use_docker
        assert _use_docker() is False
    """, env=env)


def test_doctor_extra_parses(venvs: dict[str, Venv]) -> None:
    venv = venvs["doctor"].ready()
    _python(venv, """
        import pglast
        assert pglast.parse_sql("SELECT 1")
    """)


def test_importing_hessra_pg_loads_no_optional_library(venvs: dict[str, Venv]) -> None:
    # With every extra installed, the core modules still import none of them.
    venv = venvs["all"].ready()
    _python(venv, """
        import sys
        import hessra_pg, hessra_pg.context, hessra_pg.psycopg, hessra_pg.cli, hessra_pg.admin.install
        import hessra_pg.admin.doctor, hessra_pg.rls.policies, hessra_pg.repository.checker
        import hessra_pg.tokens.mint, hessra_pg.tokens.identity, hessra_pg.tokens.inspect, hessra_pg.dev.cluster
        from hessra_pg.cli import build_parser
        build_parser()
        loaded = [m for m in ("sqlalchemy", "alembic", "psycopg_pool", "pytest", "testcontainers", "docker",
                              "pglast", "greenlet") if m in sys.modules]
        assert loaded == [], loaded
    """)


# --- hessra-pg install from the wheel -------------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir the postgres OS user can traverse (the installer checks the
    server-side import as that user; pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hessra-wheel-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _real_pth() -> str | None:
    """The real server Python's hessra_pg.pth (what the integration tests'
    installs rely on); its target's contents change with every install."""
    site = run([SERVER_PYTHON, "-I", "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    pth = Path(site) / "hessra_pg.pth"
    return pth.read_text() if pth.is_file() else None


@pytest.mark.skipif(not Path(SERVER_PYTHON).is_file(), reason=f"needs {SERVER_PYTHON}")
def test_hessra_pg_install_from_the_wheel_into_temporary_dirs(
    venvs: dict[str, Venv], wheel: Path, shared_tmp: Path
) -> None:
    venv = venvs["core"].ready()
    before = _real_pth()
    # A throwaway interpreter stands in for the server's: the .pth lands in its
    # site-packages, never in /usr/bin/python3's. No pip in it, so the
    # installer fetches biscuit-python with the core install's pip.
    server = shared_tmp / "server-venv"
    run([SERVER_PYTHON, "-m", "venv", "--without-pip", str(server)])
    server_python = server / "bin" / "python3"
    ext, target = shared_tmp / "ext", shared_tmp / "target"
    ext.mkdir()
    out = run([venv.bin("hessra-pg"), "install", "--extension-dir", str(ext), "--python-target", str(target),
               "--server-python", str(server_python)], cwd="/", timeout=600).stdout
    assert str(target) in out

    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.rsplit("/", 1)[1] for n in zf.namelist() if n.startswith("hessra_pg/_extension/")}
    assert {p.name for p in ext.iterdir()} == shipped
    installed = target / "hessra_pg"
    assert (installed / "core" / "verifier.py").is_file() and (installed / "plpython" / "runtime.py").is_file()
    # Only the server side goes in: no client integrations, CLI or dev tools.
    for client_only in ("sqlalchemy", "alembic", "psycopg", "cli", "dev", "tokens", "admin"):
        assert not (installed / client_only).exists(), client_only
    assert list((server / "lib").glob("python3*/site-packages/hessra_pg.pth"))
    result = run([str(server_python), "-I", "-c",
                  "import biscuit_auth, hessra_pg, hessra_pg.core.verifier, hessra_pg.plpython.runtime;"
                  " print(hessra_pg.__file__)"], cwd="/")
    assert Path(result.stdout.strip()).is_relative_to(target)
    # The real server install is exactly as it was.
    assert _real_pth() == before
