"""Run statements "as" a role holding a token, and register the test key.

Both the pytest fixture and ``hessra-pg policy test`` go through here:

- :func:`register_test_key` adds a fresh Ed25519 key with
  ``hessra_authz.add_key`` (so the connecting role must be a member of
  ``hessra_admin``, or a superuser) and returns it with its kid;
- :func:`acting_as` opens a transaction (a savepoint when one is already
  open), sets ``hessra.token``/``hessra.subject`` transaction-locally with
  bound parameters, switches role with ``SET LOCAL ROLE``, and rolls it all
  back at the end, whatever happened inside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import biscuit_auth

from hessra_pg.context import SET_CONTEXT_SQL
from hessra_pg.core.keys import generate_keypair

if TYPE_CHECKING:
    import psycopg

__all__ = ["TestKey", "acting_as", "register_test_key", "session_control"]

KEY_COMMENT = "hessra-pg policy test key (test only, removed after the run)"


@dataclass(frozen=True)
class TestKey:
    """A root key registered for tests: its kid and its key pair."""

    __test__ = False  # not a pytest test class, whatever module imports it

    kid: int
    pair: biscuit_auth.KeyPair = field(repr=False)


def register_test_key(conn: psycopg.Connection[Any], comment: str = KEY_COMMENT) -> TestKey:
    """Register a fresh Ed25519 key (cheap to verify) under the next free kid,
    in the connection's current transaction (or committed, in autocommit)."""
    pair = generate_keypair("ed25519")
    row = conn.execute("SELECT hessra_authz.add_key(%s, comment => %s)",
                       (str(pair.public_key), comment)).fetchone()
    assert row is not None
    return TestKey(kid=int(row[0]), pair=pair)


@contextmanager
def acting_as(conn: psycopg.Connection[Any], role: str | None, token: str | None,
              subject: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """Yield ``conn`` inside a transaction (or savepoint) where the current
    role is ``role`` (None: stay the connecting role) and the token and
    subject are set for this transaction only (None: no token / no subject);
    everything done inside is rolled back on the way out.

    The values are bound parameters of ``set_config(..., true)``, never text
    of a statement (they don't reach the server log with the query)."""
    from psycopg import sql

    with conn.transaction(force_rollback=True):
        conn.execute(SET_CONTEXT_SQL, (token or "", subject or ""))  # (an empty select list: no token echoed)
        if role is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        yield conn


# Statements that would end the transaction the run depends on (and so
# commit the test key), or leave the case's role: refused before they are
# sent. DO and CALL can't end a transaction block, and one statement per
# execution (extended protocol) rules out "SELECT 1; COMMIT".
_SESSION_CONTROL = re.compile(
    r"""(?ix) ^ (?: begin | start | commit | end | rollback | abort | savepoint | release
                | prepare \s+ transaction
                | set \s+ (?: (?: session | local ) \s+ )? (?: role | session \s+ authorization )
                | reset \s+ (?: role | session \s+ authorization | all )
                | discard ) \b""")
_LEADING_NOISE = re.compile(r"(?s)\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*")


def session_control(statement: str) -> str | None:
    """The transaction or role control keyword ``statement`` starts with
    (``COMMIT``, ``SET ROLE``...), or None when it is an ordinary statement."""
    text = _LEADING_NOISE.sub("", statement, count=1)
    match = _SESSION_CONTROL.match(text)
    return " ".join(match.group(0).upper().split()) if match else None
