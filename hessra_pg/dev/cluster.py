"""A throwaway PostgreSQL cluster (initdb + pg_ctl) for tests, the demo and dev.

``LocalCluster`` runs the local PostgreSQL binaries on a private unix socket
(and, on request, a loopback TCP port), with durability turned off for speed.
Running as root, it runs the server as the ``postgres`` OS user, because
initdb and postgres refuse to run as root.

    with LocalCluster() as pg:
        pg.create_database("app")
        psycopg.connect(pg.dsn("app"))

Every cluster started with ``stop_at_exit=True`` (the default) is stopped by an
``atexit`` hook even if the caller forgets to; ``hessra-pg dev-db`` opts out so
its server outlives the command.

Before creating anything, :meth:`LocalCluster.start` checks that the server's
OS user can enter every parent of the directory (a checkout under ``/root`` or
a 0700 home can't hold a cluster run as ``postgres``) and raises
:class:`ClusterAccessError` saying which parent blocks and how to fix it. A
start that fails leaves nothing it created behind. :meth:`LocalCluster.destroy`
stops the server and removes the directory, and refuses a directory that does
not look like one of its clusters (the ``.hessra-pg-cluster`` marker, or only
``data/`` and ``run/``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hessra_pg.admin.system import last_line as _last_line, remove_path as _remove
from hessra_pg.errors import ClusterError, HessraError

if TYPE_CHECKING:
    from psycopg import sql

    from hessra_pg.dev.standby import StandbyCluster

__all__ = ["ClusterAccessError", "ClusterError", "LocalCluster"]

SERVER_OS_USER = "postgres"
SUPERUSER = "postgres"
_RUNTIME_CONF = "hessra_runtime.conf"
# In the cluster directory: says the directory is one of ours (destroy() checks it).
MARKER = ".hessra-pg-cluster"
_OUR_ENTRIES = frozenset({"data", "run", MARKER})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# sun_path is 108 bytes; leave room for "/.s.PGSQL.65535" and the NUL.
_MAX_SOCKET_DIR = 90

# Settings for a cluster whose data is disposable: no fsync, no WAL safety.
_BASE_CONF = f"""
# --- added by hessra_pg.dev.cluster.LocalCluster: a disposable test cluster ---
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
# Per-start settings (port, sockets): rewritten before every start.
include '{_RUNTIME_CONF}'
"""


class ClusterAccessError(ClusterError):
    """The server's OS user can't enter a parent of the cluster directory.

    ``path``: the cluster directory; ``blocked``: the parents it can't enter
    (outermost first); ``os_user``: the server's OS user. ``option`` names how
    a caller chooses the directory (``base_dir``, ``--dir``) in the message.
    """

    sqlstate = "42501"  # insufficient_privilege (see hessra_pg.errors)

    def __init__(self, path: Path, blocked: Sequence[Path], os_user: str, *, option: str = "base_dir") -> None:
        self.path = path
        self.blocked = tuple(blocked)
        self.os_user = os_user
        self.option = option
        super().__init__(self._message())

    def with_option(self, option: str) -> ClusterAccessError:
        """The same error, naming ``option`` (e.g. ``--dir``) in its advice."""
        return ClusterAccessError(self.path, self.blocked, self.os_user, option=option)

    @property
    def suggestion(self) -> Path:
        """A directory the server user can reach: under /tmp (every user can enter it)."""
        return Path("/tmp/hessra-dev")

    def chmod_commands(self) -> list[str]:
        """The chmod commands that let the server user through, one per permission class."""
        by_class: dict[str, list[str]] = {}
        for parent in self.blocked:
            by_class.setdefault(_search_class(parent, self.os_user), []).append(str(parent))
        return [f"chmod {who}+x {' '.join(paths)}" for who, paths in by_class.items()]

    def _message(self) -> str:
        described = ", ".join(_describe(parent) for parent in self.blocked)
        where = f"{self.option} {self.suggestion}" if self.option.startswith("-") else f"{self.option}={str(self.suggestion)!r}"
        return (
            f"cannot use {self.path} for a cluster: the server runs as the OS user '{self.os_user}', "
            f"which cannot enter {described}; nothing was created. Pass {where} (or any directory "
            f"'{self.os_user}' can reach), or let it through with `{' && '.join(self.chmod_commands())}` "
            "(search permission only: it still can't list or read the directory)"
        )


class LocalCluster:
    """A private PostgreSQL cluster in a directory of its own.

    ``base_dir``: where the cluster lives (default: a new temp dir, removed by
    :meth:`stop`). ``bin_dir``: PostgreSQL's bin directory (default:
    ``pg_config --bindir``). ``port``: ``None`` for unix socket only, ``0`` for
    a free loopback TCP port, or a fixed TCP port. ``keep``: leave the
    directory on :meth:`stop` (default: keep a given ``base_dir``, remove a
    temp one). An existing cluster in ``base_dir`` is reused, not re-created.
    ``settings``: extra server settings (``{"log_statement": "all"}``), applied
    at every start.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        bin_dir: Path | None = None,
        port: int | None = None,
        *,
        keep: bool | None = None,
        stop_at_exit: bool = True,
        start_timeout: float = 60.0,
        settings: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        self._owns_base = base_dir is None
        self._base_dir = Path(base_dir).absolute() if base_dir is not None else None
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._requested_port = port
        self.port = port or 5432
        self.keep = (base_dir is not None) if keep is None else keep
        self.stop_at_exit = stop_at_exit
        self.start_timeout = start_timeout
        self.settings = dict(settings or {})
        for name in self.settings:
            if not _SETTING_NAME.fullmatch(name):
                raise ClusterError(f"not a PostgreSQL setting name: {name!r}")
        self._os_user = _server_os_user()

    # --- paths -----------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The directory holding the cluster (created by :meth:`start`)."""
        if self._base_dir is None:
            raise ClusterError("the cluster has no directory yet: call start() first")
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server log (inside the data directory)."""
        return self.data_dir / "server.log"

    @property
    def socket_dir(self) -> Path:
        """Directory of the unix socket; also the ``host`` of :meth:`dsn`."""
        preferred = self.base_dir / "run"
        if len(str(preferred)) <= _MAX_SOCKET_DIR:
            return preferred
        # Deep base dirs exceed the unix socket path limit; derive a short,
        # stable path so a later `dev-db status` finds the same socket.
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"hessra-pg-{digest}"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            from hessra_pg.admin.install import InstallError, find_pg_config

            try:
                pg_config = find_pg_config()
            except InstallError as exc:
                raise ClusterError(f"{exc} (or pass bin_dir)") from None
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
            if out.returncode != 0:
                raise ClusterError(f"{pg_config} --bindir failed: {out.stderr.strip()}")
            self._bin_dir = Path(out.stdout.strip())
        return self._bin_dir

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Create (if needed) and start the cluster; returns self once it accepts connections.

        Raises :class:`ClusterAccessError` before creating anything when the
        server's OS user can't reach the directory. If the start fails, what
        it created (directories, a fresh cluster) is removed again.
        """
        if self.attach():
            return self
        for tool in ("initdb", "pg_ctl", "postgres", "pg_isready"):
            if not (self.bin_dir / tool).exists():
                raise ClusterError(f"{self.bin_dir / tool} not found: install the PostgreSQL server "
                                   "packages or pass bin_dir")
        created: list[Path] = []
        fresh = False
        try:
            if self._base_dir is None:
                self._check_reachable(Path(tempfile.gettempdir()) / "hessra-pg-XXXXXXXX")
                self._base_dir = Path(tempfile.mkdtemp(prefix="hessra-pg-"))
                created.append(self._base_dir)
            else:
                self._check_reachable(self.base_dir)
            self._prepare_dirs(created)
            if not (self.data_dir / "PG_VERSION").exists():
                fresh = True
                self._initdb()
            if self._requested_port == 0:
                self.port = _free_port()
            self._write_runtime_conf()
            result = self._run_as_server(
                [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                 "-w", "-t", str(int(self.start_timeout))],
            )
            if result.returncode != 0:
                raise ClusterError(
                    f"PostgreSQL did not start ({_last_line(result.stderr or result.stdout)}); "
                    f"server log {self.log_path}:\n{self.log_tail()}"
                )
            if self.stop_at_exit:
                _RUNNING[id(self)] = self
            self.wait()
        except BaseException:
            self._undo_start(created, fresh)
            raise
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server accepts connections; ClusterError with the log tail if not."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        cmd = [str(self.bin_dir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port),
               "-U", SUPERUSER, "-d", "postgres", "-t", "1"]
        while True:
            if subprocess.run(cmd, env=_clean_env()).returncode == 0:
                return
            if not self.is_running():
                raise ClusterError(f"PostgreSQL exited while starting; server log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL not ready after {timeout or self.start_timeout:.0f}s; "
                                   f"server log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the directory unless ``keep``."""
        _RUNNING.pop(id(self), None)
        if self._base_dir is None:
            return
        if self.is_running():
            pg_ctl = str(self.bin_dir / "pg_ctl")
            result = self._run_as_server([pg_ctl, "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"])
            if result.returncode != 0 and self.is_running():
                # A stuck backend must not leave a server behind.
                self._run_as_server([pg_ctl, "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"])
        if not self.keep:
            if self.socket_dir.parent != self.base_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            if self._owns_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                shutil.rmtree(self.base_dir / "run", ignore_errors=True)
                with contextlib.suppress(OSError):
                    (self.base_dir / MARKER).unlink()

    def destroy(self) -> bool:
        """Stop the server if it runs and remove the cluster directory.

        Returns False when there was no directory (idempotent). Raises
        ClusterError, touching nothing, when the directory does not look like
        one of ours: no marker and no cluster in ``data/``, or other entries
        than ``data/``, ``run/`` and the marker.
        """
        base = self.base_dir
        if not os.path.lexists(base):
            if self.socket_dir.parent != base:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            return False
        problem = _not_a_cluster_dir(base)
        if problem:
            raise ClusterError(f"refusing to remove {base}: {problem}")
        keep, self.keep = self.keep, True
        try:
            self.stop()
        finally:
            self.keep = keep
        if self.is_running():
            raise ClusterError(f"the server in {self.data_dir} did not stop; nothing was removed")
        if self.socket_dir.parent != base:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        # The marker goes last: an interrupted destroy can be run again.
        for name in ("run", "data", MARKER):
            path = base / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()
        base.rmdir()
        return True

    def standby(self, base_dir: Path | None = None, port: int | None = None, *,
                settings: Mapping[str, str | int | float | bool] | None = None,
                stop_at_exit: bool = True) -> StandbyCluster:
        """A streaming hot standby of this (running) cluster, not started yet.

        See :class:`hessra_pg.dev.standby.StandbyCluster`: ``start()`` (or
        ``with``) copies this cluster with ``pg_basebackup -R`` and waits until
        it streams; ``wait_for_replay()`` waits for this cluster's latest writes.
        """
        from hessra_pg.dev.standby import StandbyCluster

        return StandbyCluster(self, base_dir, port, settings=settings, stop_at_exit=stop_at_exit)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, or None when there is none."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError, ClusterError):
            return None

    def attach(self) -> bool:
        """Adopt a server already running in ``base_dir`` (its port); False if none runs."""
        if self._base_dir is None or not self.is_running():
            return False
        # postmaster.pid lines: pid, datadir, start time, port, socket dir, ...
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        with contextlib.suppress(IndexError, ValueError):
            self.port = int(lines[3])
        runtime = (self.data_dir / _RUNTIME_CONF).read_text() if (self.data_dir / _RUNTIME_CONF).exists() else ""
        if "listen_addresses = '127.0.0.1'" in runtime and self._requested_port is None:
            self._requested_port = self.port
        return True

    @property
    def listens_tcp(self) -> bool:
        """True when the server also listens on 127.0.0.1:``port``."""
        return self._requested_port is not None

    def is_running(self) -> bool:
        """True when the postmaster recorded in postmaster.pid is alive."""
        pid = self.pid
        return pid is not None and _alive(pid)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- clients -------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, *, tcp: bool = False) -> str:
        """libpq conninfo for the unix socket (or for 127.0.0.1 with ``tcp=True``)."""
        if tcp and not self.listens_tcp:
            raise ClusterError("this cluster listens on a unix socket only: create it with port=0")
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return " ".join(f"{k}={_conninfo_quote(v)}" for k, v in
                        (("host", host), ("port", str(self.port)), ("dbname", dbname), ("user", user)))

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its superuser DSN."""
        from psycopg import sql

        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name`` if it exists, terminating its sessions first."""
        from psycopg import sql

        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _execute(self, statement: sql.Composed) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def __repr__(self) -> str:
        where = self._base_dir or "(not started)"
        return f"LocalCluster({where}, port={self.port}, running={self._base_dir is not None and self.is_running()})"

    # --- internals -----------------------------------------------------------------------

    def _prepare_dirs(self, created: list[Path]) -> None:
        """Create the directories, appending each one it creates to ``created``."""
        base = self.base_dir
        if os.path.lexists(base):
            self._check_ours(base)
            foreign = _foreign_entries(base)
            if foreign:
                raise ClusterError(
                    f"{base} is not empty and does not hold a cluster ({', '.join(foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}): choose a new or empty directory"
                )
        else:
            # Missing parents: created here, searchable by the server user.
            missing = [p for p in reversed(base.parents) if not os.path.lexists(p)]
            for parent in missing:
                parent.mkdir()
                created.append(parent)
                if self._os_user is not None:
                    os.chmod(parent, parent.stat().st_mode | 0o011)
        socket_dir = self.socket_dir
        if socket_dir.parent != base and os.path.lexists(socket_dir):
            self._check_ours(socket_dir)
        # 0700 dirs owned by the server user: trust auth is safe only while
        # nobody else can reach the socket.
        for directory in (base, self.data_dir, socket_dir):
            if not os.path.lexists(directory):
                directory.mkdir(mode=0o700)
                created.append(directory)
            self._chown(directory)
            os.chmod(directory, 0o700)
        marker = base / MARKER
        if not marker.exists():
            marker.write_text(
                "A throwaway PostgreSQL cluster made by hessra_pg.dev.cluster.LocalCluster "
                f"(hessra-pg dev-db).\nRemove it with: hessra-pg dev-db destroy --dir {base}\n"
            )
            created.append(marker)
            self._chown(marker)

    def _check_ours(self, path: Path) -> None:
        """Refuse an existing path owned by another user (e.g. planted in /tmp)."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) and st.st_uid in (os.geteuid(), self._server_uid()):
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise ClusterError(f"{path} exists and is not a directory")
        if st.st_uid not in (os.geteuid(), self._server_uid()):
            raise ClusterError(f"{path} belongs to {_user_name(st.st_uid)}, not to this user nor "
                               f"'{self._os_user or _user_name(os.geteuid())}': choose another directory")

    def _check_reachable(self, path: Path) -> None:
        """ClusterAccessError unless the server user can enter every existing parent of ``path``."""
        existing = next(p for p in path.parents if os.path.exists(p))
        if self._server_can_enter(existing):
            return
        uid, gids = self._server_ids()
        chain = [p for p in reversed(path.parents) if p == existing or p in existing.parents]
        blocked = [p for p in chain if not _searchable(p, uid, gids)]
        raise ClusterAccessError(path, blocked or [existing], self._os_user or _user_name(uid))

    def _server_can_enter(self, directory: Path) -> bool:
        if self._os_user is None:
            return os.access(directory, os.X_OK)
        entry = pwd.getpwnam(self._os_user)
        # As _run_as_server runs the server: its uid and primary group only.
        result = subprocess.run(["test", "-x", str(directory)], cwd="/", env=_clean_env(),
                                user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                                stdin=subprocess.DEVNULL, capture_output=True)
        return result.returncode == 0

    def _server_ids(self) -> tuple[int, set[int]]:
        if self._os_user is None:
            return os.geteuid(), {os.getegid(), *os.getgroups()}
        entry = pwd.getpwnam(self._os_user)
        return entry.pw_uid, {entry.pw_gid}

    def _undo_start(self, created: list[Path], fresh: bool) -> None:
        """After a failed start: stop a server it left, remove what it created."""
        _RUNNING.pop(id(self), None)
        if fresh and self.is_running():
            self._run_as_server([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                                 "-m", "immediate", "-w"])
        if fresh and self.data_dir not in created and self.data_dir.is_dir():
            for child in self.data_dir.iterdir():
                with contextlib.suppress(OSError):
                    _remove(child)
        for path in reversed(created):
            with contextlib.suppress(OSError):
                _remove(path)
        if self._owns_base and self._base_dir in created:
            self._base_dir = None

    def _initdb(self) -> None:
        # initdb spends most of its ~2 s probing shared memory; a copy of a
        # pristine cluster made earlier on this machine takes ~0.1 s.
        template = self._template_dir()
        if _is_private_dir(template, self._server_uid()):
            if self._run_as_server(["cp", "-a", f"{template}/.", str(self.data_dir)]).returncode == 0:
                return
            for child in self.data_dir.iterdir():
                _remove(child)
        errors = []
        for locale in ("C.UTF-8", "C"):
            result = self._run_as_server(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", f"--locale={locale}", "--no-sync"],
            )
            if result.returncode == 0:
                break
            errors.append(_last_line(result.stderr or result.stdout))
            # initdb cleans up after itself, but be sure before retrying.
            for child in self.data_dir.iterdir():
                _remove(child)
        else:
            raise ClusterError(f"initdb failed in {self.data_dir}: {errors[-1]}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_BASE_CONF)
        self._save_template(template)

    def _template_dir(self) -> Path:
        key = f"{self.bin_dir}\0{self._server_uid()}\0{_BASE_CONF}".encode()
        return Path(tempfile.gettempdir()) / f"hessra-pg-template-{hashlib.sha256(key).hexdigest()[:16]}"

    def _save_template(self, template: Path) -> None:
        """Keep a copy of a fresh cluster for the next _initdb; best effort."""
        staging = Path(tempfile.mkdtemp(prefix=f"{template.name}-", dir=template.parent))
        try:
            self._chown(staging)
            if self._run_as_server(["cp", "-a", f"{self.data_dir}/.", str(staging)]).returncode == 0:
                # Atomic publish; if another process won the race, keep theirs.
                staging.rename(template)
        except OSError:
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _server_uid(self) -> int:
        return pwd.getpwnam(self._os_user).pw_uid if self._os_user is not None else os.getuid()

    def _write_runtime_conf(self) -> None:
        listen = "127.0.0.1" if self._requested_port is not None else ""
        path = self.data_dir / _RUNTIME_CONF
        path.write_text(
            f"listen_addresses = {_conf_quote(listen)}\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = {_conf_quote(str(self.socket_dir))}\n"
            + "".join(f"{name} = {_conf_quote(_setting_text(value))}\n" for name, value in self.settings.items())
        )
        self._chown(path)

    def _chown(self, path: Path) -> None:
        if self._os_user is not None:
            shutil.chown(path, self._os_user, self._os_user)

    def _run_as_server(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        try:
            result: subprocess.CompletedProcess[str] = subprocess.run(
                list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                cwd=self.base_dir, env=_clean_env(), **kwargs,
            )
            return result
        except OSError as exc:
            raise ClusterError(f"could not run {cmd[0]}: {exc.strerror or exc}") from None


# --- module helpers --------------------------------------------------------------------

_RUNNING: dict[int, LocalCluster] = {}


@atexit.register
def _stop_all() -> None:
    """Safety net: stop every cluster this process started and did not stop."""
    for cluster in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            cluster.stop()


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may contain spaces.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill()
    return state != "Z"


def _is_private_dir(path: Path, uid: int) -> bool:
    # Only trust a template in the shared temp dir if the server user owns it
    # and nobody else can write it (no planted clusters, no symlinks).
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and st.st_mode & 0o077 == 0


def _searchable(directory: Path, uid: int, gids: set[int]) -> bool:
    """Whether the mode bits let ``uid`` (in groups ``gids``) search ``directory``."""
    try:
        st = os.stat(directory)
    except OSError:
        return True  # not ours to judge: a parent above it blocks
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _search_class(directory: Path, os_user: str) -> str:
    """Which chmod class (u, g, o) ``os_user`` falls in for ``directory``."""
    try:
        entry = pwd.getpwnam(os_user)
        st = os.stat(directory)
    except (KeyError, OSError):
        return "o"
    if st.st_uid == entry.pw_uid:
        return "u"
    return "g" if st.st_gid == entry.pw_gid else "o"


def _describe(directory: Path) -> str:
    try:
        st = os.stat(directory)
    except OSError:
        return str(directory)
    return f"{directory} (mode {stat.S_IMODE(st.st_mode):04o}, owner {_user_name(st.st_uid)})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _foreign_entries(base: Path) -> list[str]:
    """Entries of ``base`` a cluster directory does not have."""
    return sorted(name for name in os.listdir(base) if name not in _OUR_ENTRIES)


def _not_a_cluster_dir(base: Path) -> str | None:
    """Why ``base`` does not look like a LocalCluster directory, or None if it does."""
    if os.path.islink(base):
        return "it is a symbolic link (remove the link, or destroy its target)"
    if not base.is_dir():
        return "it is not a directory"
    foreign = _foreign_entries(base)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"it holds files a cluster directory does not ({shown})"
    data = base / "data"
    if (base / MARKER).is_file() or (data / "PG_VERSION").is_file():
        return None
    # An older half-made directory: data/ and run/ only, both empty.
    names = os.listdir(base)
    if names and all((base / name).is_dir() and not os.listdir(base / name) for name in names):
        return None
    return f"it is not a cluster directory (no {MARKER}, no data/PG_VERSION)"


def _setting_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _server_os_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ClusterError(
            f"running as root needs the '{SERVER_OS_USER}' OS user (initdb refuses to run as root): "
            "create it, or run as a normal user"
        ) from None
    return SERVER_OS_USER


def _clean_env() -> dict[str, str]:
    # PGDATA/PGHOST/PGPORT/... from the caller's shell must not redirect the
    # tools to another cluster.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conninfo_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
