"""hessra_pg.sqlalchemy against a real server: sessions, engines, asyncio, pools."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hessra_pg.context import HessraContextError
from hessra_pg.tokens.identity import mint_identity
from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from hessra_pg.sqlalchemy import clear_hessra_context, hessra_context, hooks, install_hessra, set_hessra_context
from tests.app_helpers import PROBE, AppEnv, Seen, probe_row, sqlalchemy_url


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]


def probe(conn: Session | object) -> Seen:
    return probe_row(conn.execute(text(PROBE)).one())  # type: ignore[attr-defined]


@pytest.fixture
def engine(app_env: AppEnv) -> Iterator[Engine]:
    """One physical connection: consecutive sessions provably share it."""
    eng = create_engine(app_env.sqlalchemy_url(), pool_size=1, max_overflow=0)
    yield eng
    eng.dispose()


# --- sessions ----------------------------------------------------------------------------------


def test_session_commit_rollback_exception_close(app_env: AppEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    with maker() as session:
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        inside = probe(session)
        assert inside.orders == 3 and inside.token == app_env.orders_token
        assert len(session.scalars(select(Order)).all()) == 3  # the ORM goes through the same hook
        session.commit()
    with maker() as session:
        nxt = probe(session)
    assert nxt.pid == inside.pid and nxt.no_token

    # rollback
    with maker() as session:
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        assert probe(session).orders == 3
        session.rollback()
        clear_hessra_context(session)
        assert probe(session).no_token  # next transaction, same session, no explicit setting
    # exception inside session.begin()
    with pytest.raises(ZeroDivisionError):
        with maker() as session, session.begin():
            set_hessra_context(session, token=app_env.orders_token, subject="alice")
            assert probe(session).orders == 3
            1 / 0  # noqa: B018
    # closed without commit (returned to the pool mid-transaction)
    session = maker()
    set_hessra_context(session, token=app_env.orders_token, subject="alice")
    assert probe(session).orders == 3
    session.close()
    with maker() as session:
        nxt = probe(session)
    assert nxt.pid == inside.pid and nxt.no_token


def test_explicit_setting_persists_for_the_session_only(app_env: AppEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    with maker() as session:
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        assert probe(session).orders == 3
        session.commit()
        assert probe(session).orders == 3  # a new transaction of the same session
    with maker() as other:
        assert probe(other).no_token


def test_hessra_context_manager(app_env: AppEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    with hessra_context(token=app_env.orders_token, subject="alice"):
        with maker() as session:
            assert probe(session).orders == 3
            # The explicit per-session setting wins over the context.
            session.commit()
            set_hessra_context(session, token=None)
            assert probe(session).no_token
    with maker() as session:
        assert probe(session).no_token


def test_context_is_read_when_the_transaction_begins(app_env: AppEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    with maker() as session, session.begin():
        # begin() alone has not used a connection yet: setting now still counts.
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        assert probe(session).orders == 3
        set_hessra_context(session, token=app_env.orders_token, subject="alice")  # same: fine
        with pytest.raises(HessraContextError, match="commit or roll back"):
            set_hessra_context(session, token=app_env.customer_tokens[0], subject="user0")
    with maker() as session:
        with hessra_context(token=app_env.orders_token, subject="alice"):
            assert probe(session).orders == 3
        # Leaving the block does not change a transaction already under way.
        assert probe(session).orders == 3
        session.commit()
        assert probe(session).no_token


def test_savepoints_keep_the_token(app_env: AppEnv, engine: Engine) -> None:
    maker = install_hessra(sessionmaker(engine))
    with maker() as session:
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        with session.begin_nested():
            assert probe(session).orders == 3
        assert probe(session).orders == 3
        session.commit()
    with maker() as session:
        assert probe(session).no_token


def test_install_on_session_class_and_instance(app_env: AppEnv, engine: Engine) -> None:
    class AppSession(Session):
        pass

    install_hessra(AppSession)
    with AppSession(engine) as session:
        set_hessra_context(session, token=app_env.orders_token, subject="alice")
        assert probe(session).orders == 3
    plain = Session(engine)
    install_hessra(plain)
    install_hessra(plain)  # idempotent
    with plain:
        set_hessra_context(plain, token=app_env.orders_token, subject="alice")
        assert probe(plain).orders == 3
    with Session(engine) as other:  # not installed: the global Session class is untouched
        assert not event.contains(Session, "after_begin", hooks._after_begin)
        assert probe(other).no_token


def test_every_new_factory_is_installed(app_env: AppEnv, engine: Engine) -> None:
    # Regression: SQLAlchemy's listener registry is keyed by id(), so a new
    # sessionmaker class reusing a collected one's address once looked
    # "already installed" and ran without the hook.
    for _ in range(30):
        maker = install_hessra(sessionmaker(engine))
        with maker() as session:
            set_hessra_context(session, token=app_env.orders_token, subject="alice")
            assert probe(session).orders == 3
        del maker, session
        gc.collect()


def test_install_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="install_hessra"):
        install_hessra(object())
    with pytest.raises(TypeError, match="set_hessra_context"):
        set_hessra_context(object(), token="x")  # type: ignore[arg-type]


# --- engines (Core) ---------------------------------------------------------------------------------


def test_engine_hook(app_env: AppEnv, engine: Engine) -> None:
    install_hessra(engine)
    install_hessra(engine)  # idempotent
    with engine.connect() as conn:
        with hessra_context(token=app_env.orders_token, subject="alice"):
            inside = probe(conn)
            conn.commit()
        assert inside.orders == 3
        nxt = probe(conn)  # autobegin of a new transaction, outside the context
        assert nxt.pid == inside.pid and nxt.no_token
        conn.rollback()
        set_hessra_context(conn, token=app_env.orders_token, subject="alice")
        assert probe(conn).orders == 3
        with pytest.raises(HessraContextError):
            set_hessra_context(conn, token=None)
        conn.rollback()
        set_hessra_context(conn, token=None)
        with hessra_context(token=app_env.orders_token, subject="alice"):
            assert probe(conn).no_token  # the explicit setting wins
        conn.rollback()
        clear_hessra_context(conn)
        with hessra_context(token=app_env.orders_token, subject="alice"):
            assert probe(conn).orders == 3
        conn.rollback()
    # The explicit setting belonged to that Connection object, not to the
    # pooled DB-API connection.
    with engine.connect() as conn:
        assert probe(conn).no_token
    with pytest.raises(ValueError):
        with hessra_context(token=app_env.orders_token, subject="alice"), engine.begin() as conn:
            assert probe(conn).orders == 3
            raise ValueError
    with engine.begin() as conn:
        assert probe(conn).no_token and probe(conn).pid == inside.pid


def test_autocommit_connections_fail_closed(app_env: AppEnv, engine: Engine) -> None:
    # No transaction to hold the settings: they end with the hook's own
    # statement, so queries see no token rather than a stale one.
    install_hessra(engine)
    with hessra_context(token=app_env.orders_token, subject="alice"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            assert probe(conn).no_token


def test_engine_hook_also_serves_orm_sessions(app_env: AppEnv, engine: Engine) -> None:
    install_hessra(engine)
    with Session(engine) as session:
        with hessra_context(token=app_env.orders_token, subject="alice"):
            assert len(session.scalars(select(Order)).all()) == 3
        session.commit()
        assert session.scalars(select(Order)).all() == []


# --- asyncio -------------------------------------------------------------------------------------------


def test_async_engine_and_sessions(app_env: AppEnv) -> None:
    asyncio.run(_async_engine_and_sessions(app_env))


async def _async_engine_and_sessions(app_env: AppEnv) -> None:
    eng = create_async_engine(app_env.sqlalchemy_url(async_=True), pool_size=1, max_overflow=0)
    try:
        maker = install_hessra(async_sessionmaker(eng))
        async with maker() as session:
            set_hessra_context(session, token=app_env.orders_token, subject="alice")
            inside = probe_row((await session.execute(text(PROBE))).one())
            assert inside.orders == 3
            assert len((await session.scalars(select(Order))).all()) == 3
            await session.commit()
        async with maker() as session:
            nxt = probe_row((await session.execute(text(PROBE))).one())
        assert nxt.pid == inside.pid and nxt.no_token
        # The ContextVar reaches the hook through SQLAlchemy's greenlet.
        async with hessra_context(token=app_env.orders_token, subject="alice"):
            async with maker() as session:
                assert probe_row((await session.execute(text(PROBE))).one()).orders == 3
        with pytest.raises(ValueError):
            async with maker() as session, session.begin():
                set_hessra_context(session, token=app_env.orders_token, subject="alice")
                assert probe_row((await session.execute(text(PROBE))).one()).orders == 3
                raise ValueError
        async with maker() as session:
            assert probe_row((await session.execute(text(PROBE))).one()).no_token
        # A second factory on the same engine is not affected by the first.
        async with async_sessionmaker(eng)() as session:
            set_hessra_context(session, token=app_env.orders_token, subject="alice")
            seen = probe_row((await session.execute(text(PROBE))).one())
            assert seen.orders == 0 and not seen.token
        # An AsyncSession instance.
        single = AsyncSession(eng)
        install_hessra(single)
        async with single:
            set_hessra_context(single, token=app_env.orders_token, subject="alice")
            assert probe_row((await single.execute(text(PROBE))).one()).orders == 3
        # The engine (Core) hook.
        install_hessra(eng)
        async with eng.connect() as conn:
            async with hessra_context(token=app_env.orders_token, subject="alice"):
                assert probe_row((await conn.execute(text(PROBE))).one()).orders == 3
            await conn.commit()
            assert probe_row((await conn.execute(text(PROBE))).one()).no_token
            await conn.rollback()
            set_hessra_context(conn, token=app_env.orders_token, subject="alice")
            assert probe_row((await conn.execute(text(PROBE))).one()).orders == 3
    finally:
        await eng.dispose()


# --- concurrency -------------------------------------------------------------------------------------------

TRANSACTIONS = 1_200  # per mode; test_psycopg.py runs the 10,000-transaction soak
WORKERS = 8
POOL_SIZE = 4


def test_threads_with_context_each_see_only_their_own_rows(app_env: AppEnv) -> None:
    eng = create_engine(app_env.sqlalchemy_url(), pool_size=POOL_SIZE, max_overflow=0)
    maker = install_hessra(sessionmaker(eng))
    served: dict[int, set[int]] = defaultdict(set)
    lock = threading.Lock()

    def worker(i: int) -> int:
        with hessra_context(token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
            for n in range(TRANSACTIONS // WORKERS):
                with maker() as session:
                    if n % 10 == 9:
                        set_hessra_context(session, token=None)
                        assert probe(session).no_token
                        continue
                    seen = probe(session)
                    app_env.check_customer(seen, i)
                with lock:
                    served[seen.pid].add(i)
        return TRANSACTIONS // WORKERS

    try:
        with ThreadPoolExecutor(WORKERS) as executor:
            assert sum(executor.map(worker, range(WORKERS))) == TRANSACTIONS
    finally:
        eng.dispose()
    assert len(served) <= POOL_SIZE and any(len(w) > 1 for w in served.values())


def test_asyncio_tasks_with_context_each_see_only_their_own_rows(app_env: AppEnv) -> None:
    asyncio.run(_asyncio_tasks(app_env))


async def _asyncio_tasks(app_env: AppEnv) -> None:
    eng: AsyncEngine = create_async_engine(app_env.sqlalchemy_url(async_=True), pool_size=POOL_SIZE,
                                           max_overflow=0)
    maker = install_hessra(async_sessionmaker(eng))
    served: dict[int, set[int]] = defaultdict(set)

    async def task(i: int) -> int:
        async with hessra_context(token=app_env.customer_tokens[i], subject=app_env.customer_subject(i)):
            for n in range(TRANSACTIONS // WORKERS):
                async with maker() as session:
                    seen = probe_row((await session.execute(text(PROBE))).one())
                    app_env.check_customer(seen, i)
                    served[seen.pid].add(i)
                if n % 5 == 0:
                    await asyncio.sleep(0)
        return TRANSACTIONS // WORKERS

    try:
        assert sum(await asyncio.gather(*(task(i) for i in range(WORKERS)))) == TRANSACTIONS
    finally:
        await eng.dispose()
    assert len(served) <= POOL_SIZE and any(len(w) > 1 for w in served.values())


# --- the example web app (examples/wsgi_app.py), driven in-process --------------------------------------


def _load_example() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "wsgi_app.py"
    spec = importlib.util.spec_from_file_location("hessra_example_wsgi_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_wsgi_app(hessra_db, admin, app_role: str) -> None:
    example = _load_example()
    admin.execute(example.SCHEMA)
    admin.execute(sql.SQL("GRANT SELECT ON public.orders, public.documents TO {}").format(sql.Identifier(app_role)))
    root = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
    orders_token = mint_authorization(root, "alice", "orders", "read")
    identity = mint_identity(root, "urn:hessra:alice")

    eng = create_engine(sqlalchemy_url(hessra_db.dsn_for(app_role)), pool_size=1, max_overflow=0)
    app = example.make_app(sessionmaker(eng))

    def get(path: str, token: str | None = None, subject: str | None = None) -> tuple[str, Any]:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
        if token is not None:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        if subject is not None:
            environ["HTTP_X_HESSRA_SUBJECT"] = subject
        status: list[str] = []
        body = b"".join(app(environ, lambda s, headers: status.append(s)))
        return status[0], json.loads(body)

    try:
        status, orders = get("/orders", orders_token, "alice")
        assert status == "200 OK" and [o["customer"] for o in orders] == ["acme", "globex", "initech"]
        assert get("/orders", orders_token, "bob") == ("200 OK", [])  # someone else's token
        assert get("/orders", "garbage", "alice") == ("200 OK", [])
        assert get("/orders")[0] == "401 Unauthorized"
        status, docs = get("/documents", identity)
        assert status == "200 OK" and {d["owner"] for d in docs} == {"urn:hessra:alice"} and len(docs) == 2
        assert get("/documents", orders_token, "alice") == ("200 OK", [])
        assert get("/nope", orders_token)[0] == "404 Not Found"
        # Alternating callers on the one pooled connection: nothing carries over.
        for _ in range(5):
            assert len(get("/orders", orders_token, "alice")[1]) == 3
            assert get("/orders", "garbage")[1] == []
    finally:
        eng.dispose()
