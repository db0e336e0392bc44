"""`hessra-pg dev-db` and the LocalCluster behaviour under it: a directory the
server can't reach, a failed start, destroy, and the printed next steps."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hessra_pg.dev.cluster import MARKER, ClusterAccessError, ClusterError, LocalCluster
from hessra_pg.dev.testing import PostgresServer


def dev_db(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hessra_pg", "dev-db", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir the postgres OS user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hessra-test-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    if (path / "dev" / "data" / "postmaster.pid").exists():
        dev_db("destroy", "--dir", str(path / "dev"))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blocked_parent(shared_tmp: Path) -> Path:
    """A directory the server's OS user can't enter: root's 0700 as root, else one
    without search permission for its owner (us)."""
    parent = shared_tmp / "private"
    parent.mkdir()
    parent.chmod(0o700 if os.geteuid() == 0 else 0o600)
    return parent


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # zombies have exited


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- a directory the server can't reach --------------------------------------------------


def test_start_in_a_directory_the_server_cannot_enter_says_what_to_do(blocked_parent: Path) -> None:
    target = blocked_parent / "checkout" / ".hessra-dev"
    result = dev_db("start", "--dir", str(target))
    assert result.returncode == 2
    err = result.stderr
    assert err.count("\n") == 1 and "Traceback" not in err and "initdb" not in err, err
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert err.startswith(f"hessra-pg: error: cannot use {target} for a cluster: "
                          f"the server runs as the OS user '{user}', which cannot enter {blocked_parent} ")
    mode = "0700" if os.geteuid() == 0 else "0600"
    assert f"cannot enter {blocked_parent} (mode {mode}, owner " in err
    assert "nothing was created" in err
    assert "--dir /tmp/hessra-dev" in err
    who = "o" if os.geteuid() == 0 else "u"
    assert f"`chmod {who}+x {blocked_parent}`" in err
    # Nothing half-made: not the cluster dir, not the parents it would create.
    blocked_parent.chmod(0o700)
    assert _tree(blocked_parent) == []


def test_the_printed_chmod_lets_the_server_through(blocked_parent: Path) -> None:
    target = blocked_parent / "dev"
    cluster = LocalCluster(target)
    with pytest.raises(ClusterAccessError) as caught:
        cluster.start()
    assert caught.value.blocked == (blocked_parent,)
    assert "base_dir='/tmp/hessra-dev'" in str(caught.value)
    assert not target.exists() or os.geteuid() != 0
    [command] = caught.value.chmod_commands()
    subprocess.run(shlex.split(command), check=True)
    try:
        cluster.start()
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        assert cluster.destroy()
    assert _tree(blocked_parent) == []


def test_parents_it_creates_are_searchable_by_the_server(shared_tmp: Path) -> None:
    old = os.umask(0o077)
    try:
        with LocalCluster(shared_tmp / "a" / "b" / "dev", keep=False) as cluster:
            with psycopg.connect(cluster.dsn()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        assert (shared_tmp / "a").stat().st_mode & 0o001


def test_a_failed_start_leaves_nothing_behind(shared_tmp: Path) -> None:
    with LocalCluster(port=0) as first:
        taken = first.port
        second = LocalCluster(shared_tmp / "new" / "dev", port=taken)
        with pytest.raises(ClusterError, match="did not start"):
            second.start()
        assert not (shared_tmp / "new").exists()
        assert not second.is_running()


def test_start_refuses_a_directory_holding_other_files(shared_tmp: Path) -> None:
    (shared_tmp / "notes.txt").write_text("mine")
    result = dev_db("start", "--dir", str(shared_tmp))
    assert result.returncode == 2
    assert "is not empty and does not hold a cluster (notes.txt)" in result.stderr
    assert _tree(shared_tmp) == ["notes.txt"]
    assert shared_tmp.stat().st_uid == os.geteuid() and shared_tmp.stat().st_mode & 0o777 == 0o755


# --- destroy ---------------------------------------------------------------------------------


def test_destroy_a_running_cluster(shared_tmp: Path) -> None:
    state = shared_tmp / "dev"
    started = dev_db("start", "--dir", str(state), "--quiet")
    assert started.returncode == 0, started.stderr
    pid = LocalCluster(state).pid
    assert pid is not None
    result = dev_db("destroy", "--dir", str(state))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"stopped; removed {state}\n"
    assert not state.exists()
    assert not _alive(pid)
    # Idempotent.
    again = dev_db("destroy", "--dir", str(state))
    assert (again.returncode, again.stderr) == (0, f"nothing to remove: {state} does not exist\n")


def test_destroy_a_stopped_cluster(shared_tmp: Path) -> None:
    state = shared_tmp / "dev"
    assert dev_db("start", "--dir", str(state), "-q").returncode == 0
    assert dev_db("stop", "--dir", str(state)).returncode == 0
    assert (state / "data" / "PG_VERSION").exists(), "stop keeps the data"
    result = dev_db("destroy", "--dir", str(state))
    assert (result.returncode, result.stderr) == (0, f"removed {state}\n")
    assert not state.exists()


def test_destroy_a_long_path_cluster_removes_its_socket_dir(shared_tmp: Path) -> None:
    state = shared_tmp / ("x" * 60) / ("y" * 40)
    cluster = LocalCluster(state, stop_at_exit=False)
    cluster.start()
    socket_dir = cluster.socket_dir
    assert socket_dir.parent != state and socket_dir.exists()
    assert LocalCluster(state).destroy()
    assert not state.exists() and not socket_dir.exists()


def test_destroy_refuses_a_foreign_directory(shared_tmp: Path) -> None:
    foreign = shared_tmp / "project"
    (foreign / "src").mkdir(parents=True)
    (foreign / "data").mkdir()
    (foreign / "data" / "PG_VERSION").write_text("15\n")
    (foreign / "README").write_text("keep me")
    before = _tree(foreign)
    result = dev_db("destroy", "--dir", str(foreign))
    assert result.returncode == 2
    assert result.stderr == (f"hessra-pg: error: refusing to remove {foreign}: it holds files a cluster "
                             "directory does not (README, src)\n")
    assert _tree(foreign) == before

    empty = shared_tmp / "empty"
    empty.mkdir()
    result = dev_db("destroy", "--dir", str(empty))
    assert result.returncode == 2 and f"no {MARKER}, no data/PG_VERSION" in result.stderr
    assert empty.is_dir()

    link = shared_tmp / "link"
    link.symlink_to(foreign)
    result = dev_db("destroy", "--dir", str(link))
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert _tree(foreign) == before

    # stop --purge is destroy: the same refusal.
    result = dev_db("stop", "--purge", "--dir", str(foreign))
    assert result.returncode == 2 and _tree(foreign) == before


def test_destroy_removes_a_half_made_directory_of_older_versions(shared_tmp: Path) -> None:
    state = shared_tmp / "dev"
    (state / "data").mkdir(parents=True)
    (state / "run").mkdir()
    result = dev_db("destroy", "--dir", str(state))
    assert result.returncode == 0, result.stderr
    assert not state.exists()


# --- next steps ---------------------------------------------------------------------------------


def _section(text: str, start: str, end: str) -> list[str]:
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith(start))
    last = next(i for i, line in enumerate(lines) if i > first and line.lstrip().startswith(end))
    return [line.strip() for line in lines[first + 1:last] if line.startswith("       ")]


def test_start_prints_next_steps_that_work(hessra_postgres: PostgresServer, shared_tmp: Path) -> None:
    # hessra_postgres: the session has run `hessra-pg install` for this PostgreSQL.
    state = shared_tmp / "dev"
    started = dev_db("start", "--dir", str(state))
    assert started.returncode == 0, started.stderr
    try:
        err = started.stderr
        dsn = started.stdout.strip()
        assert started.stdout.count("\n") == 1, "stdout holds only the DSN"
        socket_dir = str(state / "run")
        [psql_line] = [line.strip() for line in err.splitlines() if line.strip().startswith("psql ")]
        assert psql_line == f"psql -h {socket_dir} -p 5432 -U postgres -d postgres"
        assert "hessra-pg install" in err and "already done for this PostgreSQL" in err
        sql_lines = _section(err, "3.", "then ")
        assert sql_lines == [
            "CREATE DATABASE app;",
            "\\c app",
            "CREATE EXTENSION hessra_authz CASCADE;",
            "CREATE ROLE app LOGIN NOSUPERUSER NOBYPASSRLS;",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app;",
        ]
        [doctor_line] = [line.strip() for line in err.splitlines() if line.strip().startswith("hessra-pg doctor")]
        assert doctor_line == f"hessra-pg doctor --dsn 'host={socket_dir} port=5432 dbname=app user=app'"
        assert f"`hessra-pg dev-db stop --dir {state}`" in err
        assert f"`hessra-pg dev-db destroy --dir {state}`" in err

        # Follow them: psql with the printed SQL, then a table as the steps describe.
        ran = subprocess.run([*shlex.split(psql_line), "-v", "ON_ERROR_STOP=1", "-X", "-q"],
                             input="\n".join(sql_lines) + "\n", capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        app_dsn = psycopg.conninfo.make_conninfo(dsn, dbname="app")
        with psycopg.connect(app_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
            conn.execute("ALTER TABLE orders FORCE ROW LEVEL SECURITY")
            conn.execute("CREATE POLICY orders_read ON orders FOR SELECT "
                         "USING ((SELECT hessra_authz.authorized('orders', 'read')))")
        with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname="app", user="app")) as conn:
            row = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
            assert row == (False, False)
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)

        doctor = subprocess.run([sys.executable, "-m", "hessra_pg", *shlex.split(doctor_line)[1:]],
                                capture_output=True, text=True, timeout=120)
        # It connects as app and judges it; no key is registered yet, so it FAILs (1), not 2.
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "as role 'app'" in doctor.stdout
        assert any(line.strip().startswith("ok    role app: not superuser, no BYPASSRLS")
                   for line in doctor.stdout.splitlines()), doctor.stdout
    finally:
        dev_db("destroy", "--dir", str(state))


def test_next_steps_over_tcp_and_quiet(shared_tmp: Path) -> None:
    state = shared_tmp / "dev"
    started = dev_db("start", "--dir", str(state), "--port", "0")
    try:
        assert started.returncode == 0, started.stderr
        port = psycopg.conninfo.conninfo_to_dict(started.stdout.strip())["port"]
        assert f"psql -h 127.0.0.1 -p {port} -U postgres -d postgres" in started.stderr
        assert f"hessra-pg doctor --dsn 'host=127.0.0.1 port={port} dbname=app user=app'" in started.stderr
        again = dev_db("start", "--dir", str(state), "--port", "0", "-q")
        assert again.returncode == 0
        assert again.stderr == f"already running in {state}\n"
        assert again.stdout == started.stdout
    finally:
        dev_db("destroy", "--dir", str(state))


def test_next_steps_omit_the_default_dir(shared_tmp: Path) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "HESSRA_DEV_DIR"}
    result = subprocess.run([sys.executable, "-m", "hessra_pg", "dev-db", "start"], capture_output=True,
                            text=True, timeout=120, cwd=shared_tmp, env=env_free)
    try:
        assert result.returncode == 0, result.stderr
        assert "`hessra-pg dev-db stop` (data kept)" in result.stderr
        assert "`hessra-pg dev-db destroy`." in result.stderr
        assert (shared_tmp / ".hessra-dev" / MARKER).is_file()
    finally:
        subprocess.run([sys.executable, "-m", "hessra_pg", "dev-db", "destroy"], cwd=shared_tmp, env=env_free,
                       capture_output=True, timeout=120)
    assert not (shared_tmp / ".hessra-dev").exists()


def test_dev_db_help_lists_destroy_and_the_next_steps() -> None:
    result = dev_db("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for action in ("start", "stop", "status", "destroy"):
        assert f"\n    {action} " in result.stdout
    assert "CREATE EXTENSION hessra_authz CASCADE" in text
    assert "LOGIN NOSUPERUSER NOBYPASSRLS" in text and "hessra-pg doctor" in text
    assert "a checkout under /root or a 0700 home can't hold it" in text
    assert "hessra-pg dev-db destroy" in text
