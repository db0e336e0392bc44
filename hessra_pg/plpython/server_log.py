"""Lines for the server log only, and the backend facts an audit line names.

Why not `plpy.log`: a LOG message is also sent to the client when the
session sets `client_min_messages = log` (any role may), and PostgreSQL
appends the statement text to LOG messages whenever
`log_min_error_statement` is ERROR or lower (the default), plus a CONTEXT
line per calling function. An audit line must be one line, reach only the
server log, and never carry a statement text (which could hold a literal
token). So this calls PostgreSQL's own `ereport` pieces through ctypes (the
server exports them, as it does for every C extension): level
LOG_SERVER_ONLY, `errhidestmt(true)`, `errhidecontext(true)`. Interrupts are
held around the call: `errfinish` checks for a pending cancel, and an ERROR
raised there would jump over the Python frames calling it.

Only for code running inside a backend (the in-database runtime); loaded on
the first audit line, never on the decision path when audit is off.
"""

from __future__ import annotations

import ctypes

#: PostgreSQL's elog levels (utils/elog.h, PostgreSQL 14 and later).
LOG_SERVER_ONLY = 16


class ServerLogUnavailable(Exception):
    """The server's logging functions can't be reached from this process."""


class _Server:
    """The exported functions and variables of the running postgres binary."""

    def __init__(self) -> None:
        try:
            binary = ctypes.CDLL(None)
            self.errstart = binary.errstart
            self.errstart.restype = ctypes.c_bool
            self.errstart.argtypes = (ctypes.c_int, ctypes.c_char_p)
            self.errmsg_internal = binary.errmsg_internal  # variadic: no argtypes
            self.errhidestmt = binary.errhidestmt
            self.errhidestmt.argtypes = (ctypes.c_bool,)
            self.errhidecontext = binary.errhidecontext
            self.errhidecontext.argtypes = (ctypes.c_bool,)
            self.errfinish = binary.errfinish
            self.errfinish.restype = None
            self.errfinish.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
            self.holdoff = ctypes.c_uint32.in_dll(binary, "InterruptHoldoffCount")
            self.outer_user = binary.GetOuterUserId
            self.outer_user.restype = ctypes.c_uint32
            self.user_name = binary.GetUserNameFromId
            self.user_name.restype = ctypes.c_char_p
            self.user_name.argtypes = (ctypes.c_uint32, ctypes.c_bool)
            self.in_recovery = binary.RecoveryInProgress
            self.in_recovery.restype = ctypes.c_bool
            self.worker_number = ctypes.c_int.in_dll(binary, "ParallelWorkerNumber")
            self.query_id = binary.pgstat_get_my_query_id
            self.query_id.restype = ctypes.c_uint64
        except (AttributeError, OSError, ValueError) as error:
            raise ServerLogUnavailable(f"not inside a PostgreSQL backend ({type(error).__name__})") from None


_SERVER: _Server | None = None


def server() -> _Server:
    """The backend's exported functions (looked up once per backend)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = _Server()
    return _SERVER


def write(line: str) -> None:
    """Write one line to the server log only (no client, statement or context)."""
    pg = server()
    message = line.encode("ascii", "backslashreplace")
    pg.holdoff.value += 1  # HOLD_INTERRUPTS()
    try:
        if pg.errstart(LOG_SERVER_ONLY, None):
            pg.errmsg_internal(b"%s", message)
            pg.errhidestmt(True)
            pg.errhidecontext(True)
            pg.errfinish(b"hessra_pg/plpython/server_log.py", 0, b"hessra_authz audit")
    finally:
        pg.holdoff.value -= 1  # RESUME_INTERRUPTS(): a pending cancel is served at the next check


def outer_user_id() -> int:
    """The role the session acts as (SET ROLE or the login role), not the
    owner a SECURITY DEFINER function runs as; parallel workers get the leader's."""
    return int(server().outer_user())


def user_name(oid: int) -> str | None:
    name = server().user_name(oid, True)
    return None if name is None else name.decode("utf-8", "replace")


def in_recovery() -> bool:
    return bool(server().in_recovery())


def parallel_worker() -> bool:
    return server().worker_number.value >= 0


def query_id() -> int:
    """pg_stat_statements' query id of the running top-level statement (0
    unless compute_query_id computes one)."""
    value = int(server().query_id())
    return value - (1 << 64) if value >= 1 << 63 else value  # int8, as pg_stat_activity shows it
