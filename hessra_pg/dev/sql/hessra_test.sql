-- hessra_test: SQL helpers for policy tests (pgTAP or plain SQL). TEST DATABASES ONLY.
--
-- NEVER INSTALL THIS IN PRODUCTION. It registers a signing key whose PRIVATE
-- half is stored in this database (hessra_test.signing_key): whoever can read
-- that table, or run hessra_test.mint(), can mint tokens every policy of this
-- database accepts.
--
-- Install it with the Python loader, which asks for an explicit flag:
--     hessra-pg policy test-helpers --dsn 'dbname=shop_test' --test-database
--     hessra_pg.dev.sqlhelpers.install_test_helpers(conn, test_database=True)
-- Run by hand, the script refuses unless the session says it is a test database:
--     SET hessra_test.confirm = 'test-database';
--
-- Functions (docs/policy-tests.md):
--     hessra_test.authenticate_as(token, subject DEFAULT NULL, role DEFAULT NULL)
--     hessra_test.clear_authentication()
--     hessra_test.authorization_token(subject, resource, operation, expires_in, expired)
--     hessra_test.identity_token(subject, expires_in, expired)
--     hessra_test.capability_token(resource, operation, designations, subject, anchor, expires_in, expired)
--     hessra_test.mint(description jsonb)

DO $guard$
BEGIN
    IF pg_catalog.current_setting('hessra_test.confirm', true) IS DISTINCT FROM 'test-database' THEN
        RAISE EXCEPTION 'hessra_test is for test databases only: it stores a private signing key in the database'
            USING ERRCODE = '55000',
                  HINT = 'Install it with hessra-pg policy test-helpers --test-database (never in production).';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'hessra_authz') THEN
        RAISE EXCEPTION 'hessra_test needs the hessra_authz extension in this database'
            USING ERRCODE = '55000', HINT = 'CREATE EXTENSION hessra_authz CASCADE;';
    END IF;
END
$guard$;

CREATE SCHEMA hessra_test;
COMMENT ON SCHEMA hessra_test IS
    'TEST ONLY, never in production: helpers for policy tests; holds a private signing key (hessra-pg policy test-helpers).';
REVOKE ALL ON SCHEMA hessra_test FROM PUBLIC;
-- Any role may call authenticate_as/clear_authentication (they grant nothing
-- SET ROLE would not); nothing else in the schema is readable by PUBLIC.
GRANT USAGE ON SCHEMA hessra_test TO PUBLIC;

CREATE TABLE hessra_test.signing_key (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kid         integer NOT NULL,
    private_key text NOT NULL
);
COMMENT ON TABLE hessra_test.signing_key IS
    'TEST ONLY: the private half of the test key registered in hessra_authz.keys under kid.';
REVOKE ALL ON hessra_test.signing_key FROM PUBLIC;

-- The token authoring modules of the hessra_pg that installed the helpers
-- (hessra_pg.tokens, hessra_pg.policytest.tokens): a server has only the
-- verifier core, and these are the same modules the CLI mints with, not a copy.
CREATE TABLE hessra_test.token_code (
    position integer PRIMARY KEY,
    module   text NOT NULL UNIQUE,
    source   text NOT NULL
);
COMMENT ON TABLE hessra_test.token_code IS
    'TEST ONLY: hessra_pg token authoring modules hessra_test.mint() runs (filled by hessra-pg policy test-helpers).';
REVOKE ALL ON hessra_test.token_code FROM PUBLIC;

CREATE FUNCTION hessra_test.authenticate_as(token text, subject text DEFAULT NULL, role name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
-- No search_path pin: every name is qualified, and EXECUTE runs only SET LOCAL ROLE.
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('hessra.token', COALESCE(token, ''), true);
    PERFORM pg_catalog.set_config('hessra.subject', COALESCE(subject, ''), true);
    IF role IS NOT NULL THEN
        EXECUTE pg_catalog.format('SET LOCAL ROLE %I', role);
    END IF;
END
$fn$;
COMMENT ON FUNCTION hessra_test.authenticate_as(text, text, name) IS
    'TEST ONLY: for the rest of this transaction, act with this token and subject (hessra.token/hessra.subject, '
    'transaction-local), as role when given (SET LOCAL ROLE). Call it inside BEGIN ... ROLLBACK.';
GRANT EXECUTE ON FUNCTION hessra_test.authenticate_as(text, text, name) TO PUBLIC;

CREATE FUNCTION hessra_test.clear_authentication()
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('hessra.token', '', true);
    PERFORM pg_catalog.set_config('hessra.subject', '', true);
    SET LOCAL ROLE NONE;
END
$fn$;
COMMENT ON FUNCTION hessra_test.clear_authentication() IS
    'TEST ONLY: no token, no subject, and back to the session''s own role, for the rest of this transaction.';
GRANT EXECUTE ON FUNCTION hessra_test.clear_authentication() TO PUBLIC;

CREATE FUNCTION hessra_test.create_key()
RETURNS integer
LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp
AS $fn$
# A fresh Ed25519 key: registered with add_key, its private half kept here.
from hessra_pg.core.keys import generate_keypair, private_key_pem

pair = generate_keypair("ed25519")
plan = plpy.prepare("SELECT hessra_authz.add_key($1, comment => $2) AS kid", ["text", "text"])
kid = plan.execute([str(pair.public_key),
                    "hessra_test: TEST-ONLY key, private half in hessra_test.signing_key; never in production"])[0]["kid"]
plpy.execute(plpy.prepare("INSERT INTO hessra_test.signing_key (kid, private_key) VALUES ($1, $2)",
                          ["integer", "text"]), [kid, private_key_pem(pair)])
return kid
$fn$;
REVOKE ALL ON FUNCTION hessra_test.create_key() FROM PUBLIC;

CREATE FUNCTION hessra_test._mint(description jsonb)
RETURNS jsonb
LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp
AS $fn$
# {"token": ...} from a description as in CASES.toml ({"kind": "capability",
# "resource": ..., "operation": ..., "designations": {...}, "expires_in": 300,
# "expired": false, ...}), or {"error", "sqlstate", "hint"} that mint() raises
# (a plpy.error raised here would carry a Python traceback as its context).
import json
import sys
import types

tokens = sys.modules.get("hessra_pg.policytest.tokens")
if tokens is None:
    try:
        import hessra_pg.policytest.tokens as tokens
    except ImportError:  # a server with only the verifier core: load the stored modules
        rows = plpy.execute("SELECT module, source FROM hessra_test.token_code ORDER BY position")
        if len(rows) == 0:
            return json.dumps({"error": "hessra_test.token_code is empty", "sqlstate": "55000",
                               "hint": "install the helpers with hessra-pg policy test-helpers --test-database"})
        for row in rows:
            name = row["module"]
            package = name.rpartition(".")[0]
            if package not in sys.modules:
                holder = types.ModuleType(package)
                holder.__path__ = []
                sys.modules[package] = holder
            module = types.ModuleType(name)
            module.__package__ = package
            module.__file__ = "hessra_test.token_code:" + name
            sys.modules[name] = module
            exec(compile(row["source"], module.__file__, "exec"), module.__dict__)
        tokens = sys.modules["hessra_pg.policytest.tokens"]

from hessra_pg.core.keys import load_private_key
from hessra_pg.errors import TokenSpecError

def refuse(message):
    return json.dumps({"error": message, "sqlstate": "22023", "hint": None})

data = json.loads(description)
if not isinstance(data, dict):
    return refuse("a token description is a JSON object")
try:
    spec = tokens.TokenSpec.from_mapping(data)
except TokenSpecError as error:
    return refuse(f"token description: {error}")
except TypeError:
    return refuse("token description: a field has the wrong type")
key = plpy.execute("SELECT kid, private_key FROM hessra_test.signing_key")
if len(key) == 0:
    return json.dumps({"error": "no test key in hessra_test.signing_key", "sqlstate": "55000",
                       "hint": "reinstall: hessra-pg policy test-helpers --drop, then --test-database"})
return json.dumps({"token": tokens.mint_test_token(spec, load_private_key(key[0]["private_key"]),
                                                   key[0]["kid"]).token})
$fn$;
REVOKE ALL ON FUNCTION hessra_test._mint(jsonb) FROM PUBLIC;

CREATE FUNCTION hessra_test.mint(description jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    outcome jsonb;
BEGIN
    IF description IS NULL THEN
        RAISE EXCEPTION 'a token description is needed' USING ERRCODE = '22023';
    END IF;
    outcome := hessra_test._mint(description);
    IF outcome ? 'error' THEN
        RAISE EXCEPTION '%', outcome->>'error'
            USING ERRCODE = outcome->>'sqlstate', HINT = COALESCE(outcome->>'hint', '');
    END IF;
    RETURN outcome->>'token';
END
$fn$;
COMMENT ON FUNCTION hessra_test.mint(jsonb) IS
    'TEST ONLY: a token signed by the test key, from a description (kind, subject, resource, operation, '
    'designations, anchor, expires_in, expired, key) as in a policy test file.';
REVOKE ALL ON FUNCTION hessra_test.mint(jsonb) FROM PUBLIC;

CREATE FUNCTION hessra_test.authorization_token(subject text, resource text, operation text,
                                                expires_in integer DEFAULT 300, expired boolean DEFAULT false)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT hessra_test.mint(pg_catalog.jsonb_build_object(
        'kind', 'authorization', 'subject', subject, 'resource', resource, 'operation', operation,
        'expires_in', expires_in, 'expired', expired))
$fn$;
COMMENT ON FUNCTION hessra_test.authorization_token(text, text, text, integer, boolean) IS
    'TEST ONLY: an authorization token (subject may operation on resource) signed by the test key.';
REVOKE ALL ON FUNCTION hessra_test.authorization_token(text, text, text, integer, boolean) FROM PUBLIC;

CREATE FUNCTION hessra_test.identity_token(subject text, expires_in integer DEFAULT 300,
                                           expired boolean DEFAULT false)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT hessra_test.mint(pg_catalog.jsonb_build_object(
        'kind', 'identity', 'subject', subject, 'expires_in', expires_in, 'expired', expired))
$fn$;
COMMENT ON FUNCTION hessra_test.identity_token(text, integer, boolean) IS
    'TEST ONLY: an identity token for subject signed by the test key.';
REVOKE ALL ON FUNCTION hessra_test.identity_token(text, integer, boolean) FROM PUBLIC;

CREATE FUNCTION hessra_test.capability_token(resource text, operation text, designations jsonb DEFAULT '{}',
                                             subject text DEFAULT NULL, anchor text DEFAULT NULL,
                                             expires_in integer DEFAULT 300, expired boolean DEFAULT false)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT hessra_test.mint(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'kind', 'capability', 'resource', resource, 'operation', operation,
        'designations', COALESCE(designations, '{}'), 'subject', subject, 'anchor', anchor,
        'expires_in', expires_in, 'expired', expired)))
$fn$;
COMMENT ON FUNCTION hessra_test.capability_token(text, text, jsonb, text, text, integer, boolean) IS
    'TEST ONLY: a capability token for operation on resource, designated as given, signed by the test key.';
REVOKE ALL ON FUNCTION hessra_test.capability_token(text, text, jsonb, text, text, integer, boolean) FROM PUBLIC;

SELECT hessra_test.create_key();
