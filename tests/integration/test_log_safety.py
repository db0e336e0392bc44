"""The token never shows in query texts: pg_stat_activity, the server log, SQLAlchemy's echo.

It is always a bound parameter. With ``log_statement = 'all'`` (or
``log_min_duration_statement``) PostgreSQL logs the *values* of bound
parameters too (``DETAIL:  parameters: $1 = '...'``), so the README advises
``log_parameter_max_length = 0`` and ``log_parameter_max_length_on_error = 0``;
with those the token is nowhere in the log.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from hessra_pg.context import HessraContext
from hessra_pg.psycopg import hessra_transaction
from hessra_pg.sqlalchemy import hessra_context, install_hessra
from tests.app_helpers import PROBE, AppEnv, probe_row

PLACEHOLDERS = re.compile(r"set_config\('hessra\.token', \$1, true\) AS hessra_token, "
                          r"pg_catalog\.set_config\('hessra\.subject', \$2, true\)")


def activity(admin: psycopg.Connection, pid: int) -> tuple[list[str], str]:
    """Every query text of the database's backends, and the one of ``pid``."""
    rows = admin.execute("SELECT pid, query FROM pg_catalog.pg_stat_activity WHERE datname = current_database()"
                         ).fetchall()
    return [query for _, query in rows], next(query for row_pid, query in rows if row_pid == pid)


def test_token_not_in_pg_stat_activity(app_env: AppEnv, admin: psycopg.Connection) -> None:
    token = app_env.orders_token
    with psycopg.connect(app_env.dsn) as conn:
        pid = conn.info.backend_pid
        with hessra_transaction(conn, token=token, subject="alice"):
            # Idle in transaction right after the set_config statement.
            queries, mine = activity(admin, pid)
            assert PLACEHOLDERS.search(mine), mine
            assert not any(token in q for q in queries)

            # While a statement under the token is running.
            def slow() -> None:
                conn.execute("SELECT pg_catalog.pg_sleep(0.5), count(*) FROM public.orders")

            runner = threading.Thread(target=slow)
            runner.start()
            deadline = time.monotonic() + 5
            while "pg_sleep" not in (mine := activity(admin, pid)[1]) and time.monotonic() < deadline:
                time.sleep(0.02)
            queries, mine = activity(admin, pid)
            runner.join()
            assert "pg_sleep" in mine
            assert not any(token in q for q in queries)

    eng = create_engine(app_env.sqlalchemy_url())
    try:
        maker = install_hessra(sessionmaker(eng))
        with hessra_context(token=token, subject="alice"), maker() as session:
            session.connection()  # begins: the hook's statement is the backend's last query
            pid = session.execute(text("SELECT pg_catalog.pg_backend_pid()")).scalar_one()
            queries, _ = activity(admin, pid)
            assert not any(token in q for q in queries)
    finally:
        eng.dispose()


# --- the server log ---------------------------------------------------------------------------------


@pytest.fixture
def server_log(hessra_postgres: object) -> Path:
    path = getattr(hessra_postgres, "log_path", None)
    if path is None:
        pytest.skip("the server's log file is not reachable (not a local cluster)")
    return Path(path)


class LogWindow:
    """The lines a server writes to its log from now until :meth:`read`."""

    def __init__(self, path: Path, dsn: str) -> None:
        self.path, self.dsn = path, dsn
        self.start = path.stat().st_size

    def read(self) -> str:
        # A marker statement, then wait until it is written: everything before
        # it is in the file too.
        marker = f"hessra-log-marker-{uuid.uuid4().hex}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SELECT {}").format(sql.Literal(marker)))
        deadline = time.monotonic() + 10
        while True:
            with self.path.open("rb") as log:
                log.seek(self.start)
                chunk = log.read().decode(errors="replace")
            if marker in chunk or time.monotonic() > deadline:
                assert marker in chunk, "log_statement did not log the marker"
                return chunk
            time.sleep(0.05)


def log_settings(admin: psycopg.Connection, db: str, **settings: str) -> None:
    # Per database, not ALTER SYSTEM: only this throwaway database's new
    # sessions log everything, and nothing needs restoring afterwards.
    for name, value in settings.items():
        admin.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(db), sql.Identifier(name), sql.Literal(value)))


def workload(app_env: AppEnv) -> None:
    """The same token through every path: psycopg, SQLAlchemy sessions and engines, an error."""
    token = app_env.orders_token
    with psycopg.connect(app_env.dsn) as conn:
        for _ in range(7):  # past psycopg's prepare_threshold: prepared statements log too
            with hessra_transaction(conn, token=token, subject="alice"):
                assert probe_row(conn.execute(PROBE).fetchone()).orders == 3
        with pytest.raises(psycopg.errors.DivisionByZero):
            with hessra_transaction(conn, token=token, subject="alice"):
                conn.execute("SELECT count(*) / 0 FROM public.orders")
    eng = create_engine(app_env.sqlalchemy_url())
    try:
        install_hessra(eng)
        maker = install_hessra(sessionmaker(eng))
        with hessra_context(token=token, subject="alice"):
            with maker() as session:
                assert probe_row(session.execute(text(PROBE)).one()).orders == 3
            with eng.connect() as c:
                assert probe_row(c.execute(text(PROBE)).one()).orders == 3
    finally:
        eng.dispose()


def test_log_statement_all_never_logs_the_token_in_statement_text(
    app_env: AppEnv, admin: psycopg.Connection, server_log: Path
) -> None:
    log_settings(admin, app_env.db.name, log_statement="all", log_min_duration_statement="0")
    window = LogWindow(server_log, app_env.dsn)
    workload(app_env)
    logged = window.read()

    token = app_env.orders_token
    assert PLACEHOLDERS.search(logged), "the set_config statement should be logged, with placeholders"
    lines = logged.splitlines()
    statements = [line for line in lines if re.search(r"(statement|execute [^:]*|duration: .*?):", line)
                  and "parameters:" not in line]
    assert statements and not any(token in line for line in statements)
    # Bound values are logged as parameters by default: that is what the
    # log_parameter_max_length advice is for.
    leaking = [line for line in lines if token in line]
    assert leaking and all("parameters: $1 = '" in line for line in leaking), leaking


def test_with_log_parameter_max_length_zero_the_token_is_nowhere_in_the_log(
    app_env: AppEnv, admin: psycopg.Connection, server_log: Path
) -> None:
    log_settings(admin, app_env.db.name, log_statement="all", log_min_duration_statement="0",
                 log_parameter_max_length="0", log_parameter_max_length_on_error="0")
    window = LogWindow(server_log, app_env.dsn)
    workload(app_env)
    logged = window.read()
    assert PLACEHOLDERS.search(logged)
    assert "division by zero" in logged  # the error path was logged too
    assert app_env.orders_token not in logged


# --- SQLAlchemy's own logging ------------------------------------------------------------------------


@pytest.fixture
def echo_engine(app_env: AppEnv) -> Iterator[object]:
    eng = create_engine(app_env.sqlalchemy_url(), echo=True)
    yield eng
    eng.dispose()


def test_sqlalchemy_echo_never_logs_the_token(app_env: AppEnv, echo_engine, caplog: pytest.LogCaptureFixture) -> None:
    # echo=True logs every statement with its bound parameters; the hook's
    # statement goes straight to the driver so the token is never among them.
    install_hessra(echo_engine)
    maker = install_hessra(sessionmaker(echo_engine))
    with caplog.at_level("DEBUG", logger="sqlalchemy.engine"):
        with hessra_context(token=app_env.orders_token, subject="alice"):
            with echo_engine.connect() as conn:
                assert probe_row(conn.execute(text(PROBE)).one()).orders == 3
            with maker() as session:
                assert probe_row(session.execute(text(PROBE)).one()).orders == 3
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "FROM public.orders" in logged  # the capture works
    assert app_env.orders_token not in logged


def test_context_reprs_never_show_the_token() -> None:
    token = "EoYCCpsBCgVhbGljZQ-secret-token"
    context = HessraContext(token, "alice")
    for text_ in (repr(context), str(context), repr(hessra_context(token=token, subject="alice"))):
        assert token not in text_ and "alice" in text_ and "<set>" in text_
