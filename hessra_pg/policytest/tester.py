"""The ``policy_tester`` pytest fixture's object: mint tokens, run as a role.

::

    def test_acme_reader_sees_only_acme(policy_tester):
        token = policy_tester.token("capability", resource="orders", operation="read",
                                    designations={"tenant_id": "acme"})
        with policy_tester.as_role("app", token) as conn:
            assert conn.execute("SELECT tenant_id FROM orders").fetchall() == [("acme",), ("acme",)]

The tester registers a test key in the database (committed, so tokens also
work on the application's own connections) and deletes it at the end.
:meth:`PolicyTester.as_role` runs in a transaction rolled back on the way
out, so a test's writes don't leak into the next block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..tokens.mint import DEFAULT_DURATION
from .session import TestKey, acting_as, register_test_key
from .tokens import MintedToken, TokenSpec, mint_test_token

if TYPE_CHECKING:
    import psycopg

__all__ = ["PolicyTester", "policy_tester_for"]

FIXTURE_KEY_COMMENT = "hessra-pg policy_tester key (test only, deleted after the test)"


class PolicyTester:
    """Mints test tokens under a registered test key and runs statements as a role holding one."""

    def __init__(self, conn: psycopg.Connection[Any], key: TestKey) -> None:
        self.conn = conn
        """The superuser (or hessra_admin) connection the tester runs on, autocommit."""
        self.key = key

    @property
    def kid(self) -> int:
        """The test key's kid in hessra_authz.keys."""
        return self.key.kid

    def token(self, kind: str = "authorization", *, subject: str | None = None, resource: str | None = None,
              operation: str | None = None, designations: Mapping[str, str] | None = None,
              anchor: str | None = None, expires_in: int = DEFAULT_DURATION, expired: bool = False,
              key: str = "test") -> MintedToken:
        """A token minted now from a description (see TokenSpec; ``key="unregistered"``: a forgery)."""
        spec = TokenSpec(kind=kind, subject=subject, resource=resource, operation=operation,
                         designations=dict(designations or {}), anchor=anchor, expires_in=expires_in,
                         expired=expired, key=key)
        return mint_test_token(spec, self.key.pair, self.key.kid)

    @contextmanager
    def as_role(self, role: str | None, token: MintedToken | str | None = None, *,
                subject: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """The tester's connection in a transaction where the current role
        is ``role`` (``SET LOCAL ROLE``; None: stay superuser) and
        hessra.token/hessra.subject are set locally; rolled back at the end.
        ``subject`` defaults to the minted token's (its subject for an
        authorization token, none for the others); "" sets none."""
        if isinstance(token, MintedToken):
            text: str | None = token.token
            chosen = token.subject if subject is None else subject
        else:
            text, chosen = token, subject
        with acting_as(self.conn, role, text, chosen or None) as conn:
            yield conn

    def rows(self, role: str | None, token: MintedToken | str | None, query: str,
             params: Any = None, *, subject: str | None = None) -> list[tuple[Any, ...]]:
        """The rows ``query`` returns as ``role`` with ``token`` (rolled back)."""
        with self.as_role(role, token, subject=subject) as conn:
            return [tuple(row) for row in conn.execute(query, params).fetchall()]


@contextmanager
def policy_tester_for(dsn: str) -> Iterator[PolicyTester]:
    """A PolicyTester on a new connection to ``dsn`` (a role that may run
    add_key and SET ROLE to the roles tested, e.g. a superuser); its key is
    registered now and deleted at the end."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        key = register_test_key(conn, FIXTURE_KEY_COMMENT)
        try:
            yield PolicyTester(conn, key)
        finally:
            if not conn.closed:
                _remove_key(conn, key.kid)


def _remove_key(conn: psycopg.Connection[Any], kid: int) -> None:
    """Delete the key; a hessra_admin that may not DELETE retires it instead."""
    import psycopg

    try:
        conn.execute("DELETE FROM hessra_authz.keys WHERE kid = %s", (kid,))
    except psycopg.errors.InsufficientPrivilege:
        conn.execute("SELECT hessra_authz.retire_key(%s)", (kid,))
