"""The ``set_local`` transport (``SET LOCAL hessra.token = '<literal>'``, for
Citus) on plain PostgreSQL: the token reaches the policies, is quoted
correctly, and nothing of it outlives its transaction (commit, rollback,
errors, pooled connections, psycopg and SQLAlchemy, sync and async).
The Citus side (the SET reaching the workers) is in test_citus.py."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from hessra_pg.context import SET_LOCAL, HessraContext, HessraContextError, hessra_context, set_local_sql
from hessra_pg.core.keys import generate_keypair
from hessra_pg.psycopg import hessra_pool_kwargs, hessra_transaction, hessra_transaction_async
from hessra_pg.sqlalchemy import install_hessra, set_hessra_context
from hessra_pg.tokens.mint import mint_authorization
from tests.app_helpers import PROBE, AppEnv, Seen, probe_row

# A subject that breaks naive quoting: a quote, backslashes, a semicolon.
ODD_SUBJECT = "o'brien\\x; \\\\'--"


def probe(conn: psycopg.Connection) -> Seen:
    return probe_row(conn.execute(PROBE).fetchone())


def after(conn: psycopg.Connection) -> Seen:
    """The next transaction on the same connection, opened without any token."""
    with conn.transaction():
        return probe(conn)


def no_setting_left(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT current_setting('hessra.token', true), current_setting('hessra.subject', true)")
    return all(value in (None, "") for value in row.fetchone())


# --- the statement -----------------------------------------------------------------------------


def test_set_local_sql_quotes_and_never_adds_citus_without_it() -> None:
    statement = set_local_sql(HessraContext("tok'en", ODD_SUBJECT), citus=False)
    assert "citus" not in statement
    assert statement.count("SET LOCAL") == 2 and "'tok''en'" in statement
    with_citus = set_local_sql(HessraContext("t", "s"), citus=True)
    assert with_citus.startswith("SET LOCAL citus.propagate_set_commands = 'local'; ")
    none = set_local_sql(HessraContext(), citus=False)
    assert none == "SET LOCAL hessra.token = ''; SET LOCAL hessra.subject = ''"


def test_nul_and_unknown_transport_are_clear_errors(app_env: AppEnv) -> None:
    with pytest.raises(HessraContextError, match="subject must not contain a NUL") as caught:
        set_local_sql(HessraContext("secret-token", "a\x00b"), citus=False)
    assert "secret-token" not in str(caught.value)
    with psycopg.connect(app_env.dsn) as conn:
        with pytest.raises(HessraContextError, match="unknown hessra transport 'set-local'"):
            with hessra_transaction(conn, token="t", subject="s", transport="set-local"):
                pass
    with pytest.raises(HessraContextError, match="unknown hessra transport"):
        install_hessra(sessionmaker(), transport="SET LOCAL")


# --- psycopg -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["commit", "rollback", "python error", "sql error"])
def test_psycopg_token_ends_with_the_transaction(app_env: AppEnv, ending: str) -> None:
    with psycopg.connect(app_env.dsn) as conn:
        pid = conn.info.backend_pid
        with pytest.raises((ValueError, psycopg.errors.DivisionByZero)) if "error" in ending else nullcontext():
            with hessra_transaction(conn, token=app_env.orders_token, subject="alice", transport=SET_LOCAL) as tx:
                inside = probe(conn)
                assert inside.token == app_env.orders_token and inside.subject == "alice" and inside.orders == 3
                if ending == "rollback":
                    raise psycopg.Rollback(tx)
                if ending == "python error":
                    raise ValueError("boom")
                if ending == "sql error":
                    conn.execute("SELECT 1 / 0")
        nxt = after(conn)
        assert nxt.pid == pid and nxt.no_token
        conn.commit()
        assert no_setting_left(conn)
        conn.rollback()


def test_psycopg_autocommit_connection_and_no_citus_setting(app_env: AppEnv) -> None:
    with psycopg.connect(app_env.dsn, autocommit=True) as conn:
        with hessra_transaction(conn, token=app_env.orders_token, subject="alice", transport=SET_LOCAL):
            assert probe(conn).orders == 3
            # Plain PostgreSQL: the Citus setting is not sent.
            assert conn.execute("SELECT current_setting('citus.propagate_set_commands', true)").fetchone()[0] is None
        assert no_setting_left(conn)
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0


def test_psycopg_quoting_under_both_string_syntaxes(app_env: AppEnv, admin: psycopg.Connection) -> None:
    # The subject is checked by the verifier: a quoting slip would deny (or
    # worse, run text as SQL). Both string syntaxes of the server.
    root = generate_keypair()
    admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
    token = mint_authorization(root, ODD_SUBJECT, "orders", "read")
    for conforming in ("on", "off"):
        with psycopg.connect(app_env.dsn) as conn:
            conn.execute(f"SET standard_conforming_strings = {conforming}")
            conn.commit()
            with hessra_transaction(conn, token=token, subject=ODD_SUBJECT, transport=SET_LOCAL):
                seen = probe(conn)
            assert (seen.subject, seen.token, seen.orders) == (ODD_SUBJECT, token, 3), conforming
            # Another subject with the same token: denied.
            with hessra_transaction(conn, token=token, subject="o'brien", transport=SET_LOCAL):
                assert probe(conn).orders == 0
            assert after(conn).no_token


def test_psycopg_statement_is_never_prepared(app_env: AppEnv) -> None:
    # A prepared statement would keep the token's text for the session.
    with psycopg.connect(app_env.dsn, prepare_threshold=0) as conn:
        for _ in range(8):
            with hessra_transaction(conn, token=app_env.orders_token, subject="alice", transport=SET_LOCAL):
                assert probe(conn).orders == 3
        statements = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert not any(app_env.orders_token in statement for (statement,) in statements)
        conn.rollback()


def test_psycopg_pool_reuse_switching_tokens(app_env: AppEnv) -> None:
    with ConnectionPool(app_env.dsn, min_size=1, max_size=1, open=True, **hessra_pool_kwargs()) as pool:
        pids = set()
        for round_ in range(3):
            for i, token in enumerate(app_env.customer_tokens[:4]):
                with pool.connection() as conn:
                    with hessra_transaction(conn, token=token, subject=app_env.customer_subject(i),
                                            transport=SET_LOCAL):
                        seen = probe(conn)
                    app_env.check_customer(seen, i)
                    pids.add(seen.pid)
                with pool.connection() as conn:
                    assert probe(conn).no_token, (round_, i)
        assert len(pids) == 1  # one server connection served every transaction


def test_psycopg_async(app_env: AppEnv) -> None:
    async def main() -> tuple[Seen, Seen]:
        async with await psycopg.AsyncConnection.connect(app_env.dsn) as conn:
            with hessra_context(token=app_env.orders_token, subject="alice"):
                async with hessra_transaction_async(conn, transport=SET_LOCAL):
                    inside = probe_row(await (await conn.execute(PROBE)).fetchone())
            async with conn.transaction():
                nxt = probe_row(await (await conn.execute(PROBE)).fetchone())
            return inside, nxt

    inside, nxt = asyncio.run(main())
    assert inside.orders == 3 and nxt.pid == inside.pid and nxt.no_token


# --- SQLAlchemy --------------------------------------------------------------------------------


def test_sqlalchemy_engine_pooled_connection_reuse(app_env: AppEnv) -> None:
    engine = install_hessra(create_engine(app_env.sqlalchemy_url(), pool_size=1, max_overflow=0),
                            transport=SET_LOCAL)
    try:
        pids = set()
        for i, token in enumerate(app_env.customer_tokens[:4]):
            with hessra_context(token=token, subject=app_env.customer_subject(i)), engine.begin() as conn:
                seen = probe_row(conn.execute(text(PROBE)).one())
            app_env.check_customer(seen, i)
            pids.add(seen.pid)
            # The same pooled connection, no token: nothing left.
            with engine.begin() as conn:
                assert probe_row(conn.execute(text(PROBE)).one()).no_token
        # An error inside: rolled back, nothing left.
        with pytest.raises(ValueError):
            with hessra_context(token=app_env.orders_token, subject="alice"), engine.begin() as conn:
                assert probe_row(conn.execute(text(PROBE)).one()).orders == 3
                raise ValueError
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw.execute("SELECT current_setting('hessra.token', true)").fetchone()[0] in (None, "")
            assert conn.connection.info["hessra_pg.citus"] is False  # asked once, kept with the connection
            conn.rollback()
        assert len(pids) == 1
    finally:
        engine.dispose()


def test_sqlalchemy_sessions_commit_and_rollback(app_env: AppEnv) -> None:
    engine = create_engine(app_env.sqlalchemy_url(), pool_size=1, max_overflow=0)
    Session = install_hessra(sessionmaker(engine), transport=SET_LOCAL)
    try:
        with Session() as session:
            set_hessra_context(session, app_env.orders_token, "alice")
            assert probe_row(session.execute(text(PROBE)).one()).orders == 3
            session.commit()
            set_hessra_context(session, None, None)
            assert probe_row(session.execute(text(PROBE)).one()).no_token
            session.rollback()
            set_hessra_context(session, app_env.orders_token, "alice")
            assert probe_row(session.execute(text(PROBE)).one()).orders == 3
            session.rollback()
        with Session() as session:  # the next user of the pooled connection
            assert probe_row(session.execute(text(PROBE)).one()).no_token
        with pytest.raises(HessraContextError, match="already called on this target with transport 'set_local'"):
            install_hessra(Session)
        assert install_hessra(Session, transport=SET_LOCAL) is Session  # again, same transport: harmless
    finally:
        engine.dispose()


def test_sqlalchemy_async(app_env: AppEnv) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    async def main() -> tuple[Seen, Seen]:
        engine = create_async_engine(app_env.sqlalchemy_url(async_=True), pool_size=1, max_overflow=0)
        Session = install_hessra(async_sessionmaker(engine), transport=SET_LOCAL)
        try:
            async with Session() as session:
                with hessra_context(token=app_env.orders_token, subject="alice"):
                    inside = probe_row((await session.execute(text(PROBE))).one())
                    await session.commit()
            async with Session() as session:
                nxt = probe_row((await session.execute(text(PROBE))).one())
            return inside, nxt
        finally:
            await engine.dispose()

    inside, nxt = asyncio.run(main())
    assert inside.orders == 3 and nxt.pid == inside.pid and nxt.no_token


