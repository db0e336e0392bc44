"""A throwaway pgbouncer in front of the test server, for tests only.

Runs Debian's ``/usr/sbin/pgbouncer`` (``scripts/bootstrap.sh`` installs the
package and keeps its system service off) in the foreground with a generated
ini: listening on a free 127.0.0.1 port, ``auth_type = trust`` (the cluster
itself trusts its private socket), every database forwarded to the server's
unix socket, transaction pooling by default. Always stopped by :meth:`stop`
(and by an atexit hook if a test run dies first).

pgbouncer refuses to run as root; as root it runs as the ``postgres`` user,
like the cluster, which also lets it reach the cluster's 0700 socket dir.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PGBOUNCER = Path("/usr/sbin/pgbouncer")
_RUNNING: dict[int, PgBouncer] = {}


class PgBouncer:
    """``PgBouncer(socket_dir, port, users).start()``; ``.dsn(db, user)``; ``.stop()``."""

    def __init__(
        self,
        server_host: str,
        server_port: int,
        users: Iterable[str],
        *,
        pool_mode: str = "transaction",
        pool_size: int = 2,
        start_timeout: float = 15.0,
    ) -> None:
        self.server_host, self.server_port = server_host, server_port
        self.users = list(users)
        self.pool_mode, self.pool_size = pool_mode, pool_size
        self.start_timeout = start_timeout
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return PGBOUNCER.is_file() and os.access(PGBOUNCER, os.X_OK)

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "pgbouncer.log"

    def dsn(self, dbname: str, user: str, **params: Any) -> str:
        """libpq conninfo of a database through this pgbouncer."""
        items = {"host": "127.0.0.1", "port": str(self.port), "dbname": dbname, "user": user, **params}
        return " ".join(f"{key}={value}" for key, value in items.items())

    def start(self) -> PgBouncer:
        run_as = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="hessra-pgbouncer-"))
        self.port = _free_port()
        auth_file = self.dir / "users.txt"
        auth_file.write_text("".join(f'"{user}" ""\n' for user in self.users))
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth_file}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
            f"logfile = {self.log_path}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            for path in (self.dir, auth_file, ini):
                shutil.chown(path, run_as.pw_uid, run_as.pw_gid)
            kwargs = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [str(PGBOUNCER), str(ini)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=self.dir, **kwargs,
        )
        _RUNNING[id(self)] = self
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not listening after {self.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no pgbouncer log)"

    def stop(self) -> None:
        """Stop our pgbouncer process (by its pid) and remove its directory."""
        _RUNNING.pop(id(self), None)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for bouncer in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            bouncer.stop()


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
