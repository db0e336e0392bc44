"""Errors reach SQL with a SQLSTATE that says what kind of problem it is
(hessra_pg.errors): configuration missing, an undefined object named by the
caller, an invalid argument; token problems are never errors."""

import psycopg
import pytest
from psycopg.types.json import Jsonb

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization

CASES = [
    # (setup needs a key?, statement, params, SQLSTATE class, message fragment)
    (False, "SELECT hessra_authz.verify_token(%s, 'a', 'r', 'o')", "token", psycopg.errors.ObjectNotInPrerequisiteState,
     "no active key"),
    (True, "SELECT hessra_authz.verify_service_chain(%s, 'a', 'r', 'o', 'nope')", "token",
     psycopg.errors.UndefinedObject, "no service chain named 'nope'"),
    (True, "SELECT hessra_authz.verify_service_chain(%s, 'a', 'r', 'o', NULL::text)", "token",
     psycopg.errors.InvalidParameterValue, "must not be NULL"),
    (True, "SELECT hessra_authz.verify_service_chain(%s, 'a', 'r', 'o', 'flow', 'stranger')", "token",
     psycopg.errors.InvalidParameterValue, "not in the service chain"),
    (True, "SELECT hessra_authz.verify_service_chain(%s, 'a', 'r', 'o', '[1]'::jsonb)", "token",
     psycopg.errors.InvalidParameterValue, "not a JSON object"),
    (True, "SELECT hessra_authz.add_key('ed25519/zz')", None, psycopg.errors.InvalidParameterValue,
     "public key"),
]


@pytest.mark.parametrize("needs_key, statement, param, error, fragment", CASES)
def test_error_classes(admin, needs_key, statement, param, error, fragment):
    root = generate_keypair()
    if needs_key:
        admin.execute("SELECT hessra_authz.add_key(%s)", (str(root.public_key),))
        admin.execute("SELECT hessra_authz.set_service_chain('flow', %s)",
                      (Jsonb([{"component": "gate", "public_key": str(generate_keypair().public_key)}]),))
    token = mint_authorization(root, "a", "r", "o")
    with pytest.raises(error, match=fragment) as raised:
        admin.execute(statement, (token,) if param else ())
    assert token not in str(raised.value)
    assert raised.value.diag.message_hint  # every configuration or argument error says what to do
