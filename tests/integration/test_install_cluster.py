"""The local cluster, the installer and the CLI around them, against real PostgreSQL."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import hessra_pg
from hessra_pg.cli import main
from hessra_pg.dev.cluster import LocalCluster
from hessra_pg.admin.install import DEFAULT_TARGET_ROOT, InstallError, extension_source_dir, install
from hessra_pg.dev.testing import PostgresServer

SERVER_PYTHON = "/usr/bin/python3"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # zombies have exited


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir the postgres and nobody OS users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hessra-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- LocalCluster ----------------------------------------------------------------------


def test_cluster_starts_serves_and_stops_without_leftovers() -> None:
    cluster = LocalCluster()
    with cluster:
        with psycopg.connect(cluster.dsn()) as conn:
            user, fsync = conn.execute("SELECT current_user, current_setting('fsync')").fetchone()
        assert (user, fsync) == ("postgres", "off")
        dsn = cluster.create_database("scratch")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("scratch",)
        pid = cluster.pid
        assert pid is not None and _alive(pid)
        workers = _children(pid)
        assert workers, "a running postmaster has background workers"
        base = cluster.base_dir
    assert not cluster.is_running()
    assert not _alive(pid)
    assert not [w for w in workers if _alive(w)]
    assert not base.exists(), "a throwaway cluster removes its directory"


def test_cluster_on_a_free_tcp_port() -> None:
    with LocalCluster(port=0) as cluster:
        assert cluster.port != 5432 and cluster.listens_tcp
        with psycopg.connect(cluster.dsn(tcp=True)) as conn:
            assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)


def test_dev_db_outlives_the_cli_process(shared_tmp: Path) -> None:
    state = shared_tmp / "dev"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hessra_pg", "dev-db", *args, "--dir", str(state)],
                              capture_output=True, text=True, timeout=120)

    assert cli("status").returncode == 3
    started = cli("start")
    assert started.returncode == 0, started.stderr
    try:
        dsn = started.stdout.strip()
        # The `start` process has exited; the server must still answer.
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        status = cli("status")
        assert (status.returncode, status.stdout.strip()) == (0, dsn)
    finally:
        stopped = cli("stop", "--purge")
    assert stopped.returncode == 0, stopped.stderr
    assert cli("status").returncode == 3
    assert not state.exists()


# --- install -----------------------------------------------------------------------------


def test_install_is_idempotent_and_skips_pip_the_second_time() -> None:
    install()
    report = install()
    assert not report.pip_ran
    assert report.biscuit_version == importlib.metadata.version("biscuit-python")
    assert report.python_target == DEFAULT_TARGET_ROOT / f"python{report.server_python_version}"
    source = extension_source_dir()
    assert {p.name for p in report.extension_files} >= {"hessra_authz.control"}
    for installed in report.extension_files:
        assert installed.read_bytes() == (source / installed.name).read_bytes()
        assert installed.stat().st_mode & 0o444 == 0o444
    assert report.pth_file.read_text().strip() == str(report.python_target)
    # The server gets the verifier and its runtime, nothing an application or
    # operator imports (a lean first import in every backend).
    copied = {path.name for path in report.hessra_pg_dir.resolve().iterdir() if path.name != "__pycache__"}
    assert copied == {"__init__.py", "errors.py", "py.typed", "server.py", "backend.py", "core", "plpython"}
    # Only the live copy of hessra_pg remains after an upgrade in place.
    assert len(list(report.python_target.glob(".hessra_pg-*"))) == 1


def test_server_python_runs_this_checkout(hessra_postgres: PostgresServer) -> None:
    """PL/Python imports biscuit_auth and hessra_pg from the install target, no restart."""
    name = "hessra_install_check"
    with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(hessra_postgres.dsn(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION plpython3u")
            conn.execute("""
                CREATE FUNCTION where_is() RETURNS text[] LANGUAGE plpython3u AS $$
                import hashlib, sys
                import biscuit_auth, hessra_pg
                with open(hessra_pg.__file__, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                return [hessra_pg.__file__, biscuit_auth.__file__, digest,
                        "%d.%d" % sys.version_info[:2]]
                $$""")
            hessra_file, biscuit_file, digest, version = conn.execute("SELECT where_is()").fetchone()[0]
    finally:
        with psycopg.connect(hessra_postgres.dsn(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    target = DEFAULT_TARGET_ROOT / f"python{version}"
    assert Path(hessra_file) == target / "hessra_pg" / "__init__.py"
    assert Path(biscuit_file).is_relative_to(target)
    assert digest == hashlib.sha256(Path(hessra_pg.__file__).read_bytes()).hexdigest()


def test_hessra_db_has_the_extension(hessra_db) -> None:  # type: ignore[no-untyped-def]
    with hessra_db.connect() as conn:
        names = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
    assert {"plpython3u", "hessra_authz"} <= names


def test_install_falls_back_to_our_pip_for_a_server_python_without_pip(shared_tmp: Path) -> None:
    venv = shared_tmp / "server-venv"
    subprocess.run([SERVER_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    (shared_tmp / "ext").mkdir()
    report = install(extension_dir=shared_tmp / "ext", python_target=shared_tmp / "target",
                     server_python=str(venv / "bin" / "python3"))
    assert report.pip_ran
    assert (shared_tmp / "target" / "biscuit_auth").is_dir()
    assert report.pth_file.parent.is_relative_to(venv)
    out = subprocess.run([str(venv / "bin" / "python3"), "-c",
                          "import biscuit_auth, hessra_pg; print(hessra_pg.__file__)"],
                         capture_output=True, text=True, check=True, cwd="/")
    assert Path(out.stdout.strip()).is_relative_to(shared_tmp / "target")


# --- install errors ------------------------------------------------------------------------


def test_install_error_for_an_extension_dir_under_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(InstallError, match=r"not a directory.*--extension-dir"):
        install(extension_dir=a_file / "extension", pip=False)


def test_cli_reports_a_read_only_extension_dir_in_one_line(shared_tmp: Path) -> None:
    read_only = shared_tmp / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    if os.geteuid() == 0:
        # Root writes anywhere: run the CLI as an unprivileged user, on the
        # system Python (the venv's interpreter lives under /root).
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("runuser not available")
        # A copy of this checkout's package that nobody can read wherever the
        # checkout lives.
        pkg = shared_tmp / "pkg"
        shutil.copytree(Path(hessra_pg.__file__).parent, pkg / "hessra_pg",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(pkg)], check=True)
        result = subprocess.run(
            [runuser, "-u", "nobody", "--", SERVER_PYTHON, "-m", "hessra_pg", "install",
             "--extension-dir", str(read_only), "--no-pip"],
            capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pkg)},
        )
        code, err = result.returncode, result.stderr
    else:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            code = main(["install", "--extension-dir", str(read_only), "--no-pip"])
        err = buf.getvalue()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"hessra-pg: error: permission denied writing to {read_only}")
    assert "run as root" in err and "--extension-dir" in err
