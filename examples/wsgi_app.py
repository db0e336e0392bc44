"""A small web app whose queries run under the caller's Hessra token (stdlib WSGI + SQLAlchemy).

The request handlers know nothing about tokens: a middleware takes the bearer
token from the ``Authorization`` header and runs the request inside
``hessra_context(...)``; the session factory has ``install_hessra`` on it, so
every transaction the handlers open starts with both settings set, bound and
transaction-local. Row-Level Security in the database does the rest.

Routes (JSON):

- ``GET /orders``: the ``orders`` rows. Policy: the token grants ``read`` on
  ``orders`` to the subject. The subject is whoever your authentication says
  the caller is; here the ``X-Hessra-Subject`` header stands in for it.
- ``GET /documents``: the ``documents`` rows owned by the identity that the
  bearer token (an identity token, used as an API key) proves.

Try it (as root: it installs the extension into the local PostgreSQL, starts
a throwaway cluster, prints curl commands, and stops the cluster on Ctrl-C)::

    .venv/bin/python examples/wsgi_app.py --demo

Against your own database (with the schema below and a role that is not the
table owner): ``python examples/wsgi_app.py --url postgresql+psycopg://app@/db``.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import make_server

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from hessra_pg.sqlalchemy import hessra_context, install_hessra

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

SCHEMA = """
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL);
INSERT INTO public.orders VALUES (1, 'acme', 120.00), (2, 'globex', 75.50), (3, 'initech', 9.99);
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));

CREATE TABLE public.documents (id serial PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
INSERT INTO public.documents (owner, body) VALUES
    ('urn:hessra:alice', 'alice''s notes'), ('urn:hessra:alice', 'alice''s plans'), ('urn:hessra:bob', 'bob''s');
ALTER TABLE public.documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.documents FORCE ROW LEVEL SECURITY;
CREATE POLICY documents_owner ON public.documents FOR SELECT
    USING (owner = (SELECT hessra_authz.current_identity()));
"""
"""Tables and policies the app expects (run as the owner; GRANT SELECT to the app's role)."""


# --- the app ---------------------------------------------------------------------------------------


def make_app(sessions: sessionmaker[Session]) -> WSGIApp:
    """The WSGI application: ``sessions`` must have ``install_hessra`` on it (done here too)."""
    install_hessra(sessions)

    def list_orders(session: Session) -> list[dict[str, Any]]:
        rows = session.execute(text("SELECT id, customer, total FROM public.orders ORDER BY id"))
        return [{"id": r.id, "customer": r.customer, "total": str(r.total)} for r in rows]

    def list_documents(session: Session) -> list[dict[str, Any]]:
        rows = session.execute(text("SELECT id, owner, body FROM public.documents ORDER BY id"))
        return [{"id": r.id, "owner": r.owner, "body": r.body} for r in rows]

    routes: dict[str, Callable[[Session], Any]] = {"/orders": list_orders, "/documents": list_documents}

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        handler = routes.get(environ.get("PATH_INFO", ""))
        if handler is None:
            return _reply(start_response, "404 Not Found", {"error": "not found"})
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return _reply(start_response, "405 Method Not Allowed", {"error": "GET only"})
        token = _bearer(environ)
        if token is None:
            return _reply(start_response, "401 Unauthorized", {"error": "missing bearer token"},
                          [("WWW-Authenticate", "Bearer")])
        subject = environ.get("HTTP_X_HESSRA_SUBJECT") or None
        # Everything the handler does in the database runs under this token.
        with hessra_context(token=token, subject=subject), sessions() as session:
            body = handler(session)
        return _reply(start_response, "200 OK", body)

    return app


def _bearer(environ: Environ) -> str | None:
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _reply(start_response: StartResponse, status: str, body: Any,
           headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                            *(headers or [])])
    return [payload]


# --- running it ----------------------------------------------------------------------------------


def serve(engine: Engine, host: str, port: int) -> None:
    app = make_app(sessionmaker(engine))
    with make_server(host, port, app) as server:
        print(f"listening on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@contextmanager
def demo_database() -> Iterator[tuple[str, dict[str, str]]]:
    """A throwaway cluster with the schema and an app role; yields (SQLAlchemy URL, tokens)."""
    import psycopg

    from hessra_pg.dev.cluster import LocalCluster
    from hessra_pg.tokens.identity import mint_identity
    from hessra_pg.admin.install import install
    from hessra_pg.core.keys import generate_keypair
    from hessra_pg.tokens.mint import mint_authorization

    install()
    root = generate_keypair()
    with LocalCluster() as cluster:
        cluster.create_database("hessra_example")
        with psycopg.connect(cluster.dsn("hessra_example"), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION hessra_authz CASCADE")
            admin.execute(SCHEMA)
            admin.execute("CREATE ROLE example_app LOGIN")
            admin.execute("GRANT SELECT ON public.orders, public.documents TO example_app")
            admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
        tokens = {
            "alice_orders": mint_authorization(root, "alice", "orders", "read"),
            "alice_identity": mint_identity(root, "urn:hessra:alice"),
        }
        url = f"postgresql+psycopg://example_app@/hessra_example?host={cluster.socket_dir}&port={cluster.port}"
        yield url, tokens


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops the server like Ctrl-C, so --demo always stops its cluster.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="SQLAlchemy URL of the database (postgresql+psycopg://...)")
    where.add_argument("--demo", action="store_true", help="throwaway cluster with sample data and tokens")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.url:
        serve(create_engine(args.url), args.host, args.port)
        return 0
    with demo_database() as (url, tokens):
        base = f"http://{args.host}:{args.port}"
        print("Try:")
        print(f"  curl -H 'Authorization: Bearer {tokens['alice_orders']}' -H 'X-Hessra-Subject: alice' {base}/orders")
        print(f"  curl -H 'Authorization: Bearer {tokens['alice_orders']}' -H 'X-Hessra-Subject: bob' {base}/orders")
        print(f"  curl -H 'Authorization: Bearer {tokens['alice_identity']}' {base}/documents")
        engine = create_engine(url)
        try:
            serve(engine, args.host, args.port)
        finally:
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
