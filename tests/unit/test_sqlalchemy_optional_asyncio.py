"""hessra_pg.sqlalchemy without greenlet (security issue 11, "also fix").

SQLAlchemy 2.1 no longer installs greenlet by default, and importing
``sqlalchemy.ext.asyncio`` without it raises ImportError: the sync hooks
must import and work without it, and the async ones once the application
loads asyncio support. Each case runs in a fresh interpreter, since this
one may already have loaded either module.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_GREENLET = "import sys; sys.modules['greenlet'] = None  # as if not installed\n"

SYNC_API = """
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from hessra_pg.sqlalchemy import clear_hessra_context, hessra_context, install_hessra, set_hessra_context
from hessra_pg.sqlalchemy.hooks import SESSION_INFO_KEY, _after_begin, _on_engine_begin

engine = create_engine("postgresql+psycopg://")  # never connects
assert install_hessra(engine) is engine
assert event.contains(engine, "begin", _on_engine_begin)
maker = install_hessra(sessionmaker(engine))
assert event.contains(maker.class_, "after_begin", _after_begin)
install_hessra(scoped_session(sessionmaker(engine)))
session = install_hessra(Session(engine))
context = set_hessra_context(session, token="t", subject="alice")
assert session.info[SESSION_INFO_KEY] == context
clear_hessra_context(session)
assert SESSION_INFO_KEY not in session.info
with hessra_context(token="t", subject="alice"):
    pass
try:
    install_hessra(object())
except TypeError:
    pass
else:
    raise AssertionError("install_hessra(object()) should raise TypeError")
assert "sqlalchemy.ext.asyncio" not in sys.modules
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def assert_runs(code: str) -> None:
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_greenlet_is_really_blocked():
    # The simulation is faithful: SQLAlchemy's asyncio module refuses to import.
    result = run_python(BLOCK_GREENLET + "import sqlalchemy.ext.asyncio")
    assert result.returncode != 0 and "greenlet" in result.stderr


def test_sync_hooks_import_and_work_without_greenlet():
    assert_runs(BLOCK_GREENLET + SYNC_API)


def test_async_targets_loaded_after_the_hooks_are_recognised():
    # The async types are looked up when install_hessra runs, not at import.
    assert_runs("""
        import sys
        from sqlalchemy import event
        from hessra_pg.sqlalchemy import clear_hessra_context, install_hessra, set_hessra_context
        from hessra_pg.sqlalchemy.hooks import SESSION_INFO_KEY, _on_engine_begin
        assert "sqlalchemy.ext.asyncio" not in sys.modules
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

        engine = create_async_engine("postgresql+psycopg://")  # never connects
        assert install_hessra(engine) is engine
        assert event.contains(engine.sync_engine, "begin", _on_engine_begin)
        maker = install_hessra(async_sessionmaker(engine))
        assert getattr(maker.kw["sync_session_class"], "_hessra_pg_factory", None) is maker
        session = install_hessra(AsyncSession(engine))
        context = set_hessra_context(session, token="t")
        assert session.sync_session.info[SESSION_INFO_KEY] == context
        clear_hessra_context(session)
        assert SESSION_INFO_KEY not in session.sync_session.info
    """)
