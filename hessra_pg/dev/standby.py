"""A streaming hot standby of a running :class:`~hessra_pg.dev.cluster.LocalCluster`.

    with LocalCluster(port=0) as primary, primary.standby() as standby:
        ...                                   # write on the primary
        delay = standby.wait_for_replay()     # seconds until the standby replayed it
        psycopg.connect(standby.dsn("app"))   # read-only queries

:meth:`StandbyCluster.start` copies the primary with ``pg_basebackup -R``
(``-X stream``, a fast checkpoint) into a directory of its own, starts it on
its own socket (and a free loopback port when the primary has one) with
``hot_standby`` on, and returns once it accepts read-only connections and its
WAL receiver is streaming. Stop it like any LocalCluster (before its primary,
or it keeps retrying the connection until it is stopped).

The primary needs nothing special: initdb's defaults (``wal_level =
replica``, ``max_wal_senders = 10``, ``local replication all trust`` in
pg_hba.conf) let pg_basebackup and the WAL receiver in over the primary's
unix socket. No replication slot is made: a standby stopped for long may
need a new base backup (a throwaway cluster).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessra_pg.admin.system import last_line as _last_line
from hessra_pg.dev.cluster import SUPERUSER, LocalCluster
from hessra_pg.errors import ClusterError

__all__ = ["ReplayTimeout", "StandbyCluster"]

# A standby answers read-only queries and asks the primary not to remove rows
# its queries still read (fewer "canceling statement due to conflict with
# recovery" in tests that read while the primary writes).
_STANDBY_SETTINGS: dict[str, str | int | float | bool] = {
    "hot_standby": True,
    "hot_standby_feedback": True,
    # Replies every second instead of ten, so pg_stat_replication on the
    # primary stays close to the truth.
    "wal_receiver_status_interval": "1s",
}


class ReplayTimeout(ClusterError):
    """The standby did not replay up to the primary's position in time."""

    sqlstate = "57014"  # query_canceled: gave up waiting (see hessra_pg.errors)


class StandbyCluster(LocalCluster):
    """A hot standby of ``primary``, made by ``pg_basebackup -R`` at :meth:`start`.

    ``port``: like LocalCluster's; default: a free loopback port when the
    primary listens on one, else the unix socket only. ``settings``: extra
    server settings on top of the standby's (hot_standby, hot_standby_feedback).
    """

    def __init__(
        self,
        primary: LocalCluster,
        base_dir: Path | None = None,
        port: int | None = None,
        *,
        keep: bool | None = None,
        stop_at_exit: bool = True,
        start_timeout: float = 60.0,
        settings: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        if port is None and primary.listens_tcp:
            port = 0
        super().__init__(base_dir, primary.bin_dir, port, keep=keep, stop_at_exit=stop_at_exit,
                         start_timeout=start_timeout, settings={**_STANDBY_SETTINGS, **(settings or {})})
        self.primary = primary

    def start(self) -> StandbyCluster:
        """Copy the primary (if not done yet), start, and wait until streaming."""
        if not self.primary.is_running():
            raise ClusterError("the primary is not running: start it before its standby")
        if (self.bin_dir / "pg_basebackup").exists() is False:
            raise ClusterError(f"{self.bin_dir / 'pg_basebackup'} not found: install the PostgreSQL server packages")
        super().start()
        try:
            self.wait_streaming()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> StandbyCluster:
        return self.start()

    # --- replication state ---------------------------------------------------------------

    def is_in_recovery(self) -> bool:
        """True while the server is a standby (``pg_is_in_recovery()``)."""
        return bool(self._query("SELECT pg_catalog.pg_is_in_recovery()"))

    def wait_streaming(self, timeout: float | None = None) -> None:
        """Block until the WAL receiver streams from the primary; ClusterError (with the log) if not."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            status = self._query("SELECT status FROM pg_catalog.pg_stat_wal_receiver")
            if status == "streaming":
                return
            if not self.is_running():
                raise ClusterError(f"the standby exited; server log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"the standby is not streaming (WAL receiver: {status or 'not running'}); "
                                   f"server log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.02)

    def replay_lsn(self) -> str:
        """The standby's last replayed WAL position (``pg_last_wal_replay_lsn()``)."""
        return str(self._query("SELECT pg_catalog.pg_last_wal_replay_lsn()"))

    def wait_for_replay(self, lsn: str | None = None, timeout: float = 30.0, poll: float = 0.001) -> float:
        """Block until the standby has replayed the primary's WAL up to ``lsn``.

        ``lsn``: default, the primary's current insert position
        (``pg_current_wal_insert_lsn()``), which covers every transaction
        that has committed there, including asynchronous commits not yet
        flushed. Returns the seconds waited: the replication delay as seen
        from the caller, within ``poll``. Raises :class:`ReplayTimeout`.
        """
        import psycopg

        if lsn is None:
            lsn = str(self.primary_query("SELECT pg_catalog.pg_current_wal_insert_lsn()"))
        started = time.monotonic()
        deadline = started + timeout
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_catalog.pg_lsn, "
                                   "pg_catalog.pg_last_wal_replay_lsn()", (lsn,)).fetchone()
                assert row is not None
                if row[0]:
                    return time.monotonic() - started
                if time.monotonic() > deadline:
                    raise ReplayTimeout(f"the standby replayed up to {row[1]}, not {lsn}, within {timeout:g}s; "
                                        f"server log {self.log_path}:\n{self.log_tail()}")
                time.sleep(poll)

    def primary_query(self, query: str) -> Any:
        """The first column of the first row of ``query`` on the primary (superuser, ``postgres``)."""
        return _scalar(self.primary.dsn(), query)

    def _query(self, query: str) -> Any:
        return _scalar(self.dsn(), query)

    # --- creation ------------------------------------------------------------------------

    def _initdb(self) -> None:
        # Instead of initdb: a base backup of the running primary, with
        # standby.signal and primary_conninfo (-R) and the WAL it needs (-X stream).
        result = self._run_as_server(
            [str(self.bin_dir / "pg_basebackup"), "-D", str(self.data_dir), "-h", str(self.primary.socket_dir),
             "-p", str(self.primary.port), "-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast", "--no-sync"],
        )
        if result.returncode != 0:
            raise ClusterError(f"pg_basebackup from {self.primary.data_dir} failed: "
                               f"{_last_line(result.stderr or result.stdout)}")
        # The copy holds the primary's server log (pg_ctl -l in the data
        # directory): start this server's own log empty.
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def _scalar(dsn: str, query: str) -> Any:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]
