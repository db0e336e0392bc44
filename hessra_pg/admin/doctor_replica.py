"""The doctor's check of a hot standby: is it still following its primary?

A standby enforces the keys, service chains and revocations of its primary
as it replays them (docs/replicas.md). One that stopped streaming or whose
replay is paused keeps answering with the configuration it has, so a
revocation made on the primary since is not enforced there: that is what
this check reports. On a primary (not in recovery) it adds nothing.

Everything read here is readable by any role: ``pg_is_in_recovery()``, the
replay functions, and the WAL receiver's pid (its status needs
pg_read_all_stats: read with the admin connection when one is given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from hessra_pg.admin.doctor import Report

__all__ = ["check_replica"]

NAME = "replica"
_FIX_ON_PRIMARY = ("this server is read-only: change keys, chains, revocations, the extension and policies on "
                   "the primary")

_STATE = """
SELECT pg_catalog.pg_get_wal_replay_pause_state(),
       pg_catalog.pg_last_wal_replay_lsn()::text,
       pg_catalog.pg_last_xact_replay_timestamp(),
       extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())::float8,
       (SELECT r.pid IS NOT NULL FROM pg_catalog.pg_stat_wal_receiver AS r)
"""


def check_replica(conn: psycopg.Connection[Any], report: Report,
                  admin_conn: psycopg.Connection[Any] | None = None) -> bool:
    """Append the replica check when ``conn``'s server is a hot standby; returns whether it is one."""
    from hessra_pg.admin.doctor import OK, WARN, Check

    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    if row is None or not row[0]:
        return False
    state = conn.execute(_STATE).fetchone()
    assert state is not None
    pause, replayed, last_commit, age, receiving = state
    status = _receiver_status(admin_conn or conn)
    replay = f"replayed up to {replayed}"
    if last_commit is not None:
        replay += f", last replayed commit {last_commit:%Y-%m-%d %H:%M:%S %Z} ({age:.0f} s ago)"
    if pause != "not paused":
        report.checks.append(Check(
            NAME, WARN, f"hot standby with replay {pause}: changes made on the primary since, revocations "
                        f"included, are not enforced here ({replay})",
            "SELECT pg_wal_replay_resume() (as a superuser) once the pause is no longer needed"))
    elif not receiving or (status is not None and status != "streaming"):
        what = "no WAL receiver runs" if not receiving else f"the WAL receiver is {status}"
        report.checks.append(Check(
            NAME, WARN, f"hot standby not streaming from its primary ({what}; {replay}): changes made there, "
                        "revocations included, reach this server only when replay catches up",
            "check primary_conninfo and the server log of this standby; see docs/replicas.md"))
    else:
        streaming = "streaming" if status == "streaming" else "receiving WAL"
        report.checks.append(Check(
            NAME, OK, f"hot standby {streaming} from its primary ({replay}); keys, chains and revocations "
                      f"changed there are enforced here from the first statement after their replay; "
                      f"{_FIX_ON_PRIMARY}"))
    return True


def _receiver_status(conn: psycopg.Connection[Any]) -> str | None:
    """The WAL receiver's status, or None when this role may not see it."""
    row = conn.execute("SELECT r.status FROM pg_catalog.pg_stat_wal_receiver AS r").fetchone()
    return None if row is None else row[0]
