-- hessra_authz 0.1.0: Hessra token verification for Row-Level Security.
-- Every object is schema-qualified; every function pins search_path.
-- The verifying functions are PARALLEL RESTRICTED: PL/Python runs each SPI query
-- in a subtransaction, which Postgres forbids in parallel mode, so a query
-- that calls them must not get a parallel plan.
-- PL/Python bodies only call into the hessra_pg package (one verifier,
-- shared with the client side).

\echo Use "CREATE EXTENSION hessra_authz CASCADE" to load this file. \quit

-- The role that may change keys and chains. Roles are cluster-wide, so it may
-- exist already (another database, an earlier install).
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hessra_admin') THEN
        CREATE ROLE hessra_admin NOLOGIN;
    END IF;
END
$do$;

GRANT USAGE ON SCHEMA hessra_authz TO PUBLIC;

-- ---------------------------------------------------------------------------
-- Configuration tables (dumped by pg_dump: they are extension config tables)
-- ---------------------------------------------------------------------------

CREATE TABLE hessra_authz.keys (
    kid         integer PRIMARY KEY CHECK (kid > 0),
    public_key  text NOT NULL UNIQUE
                CHECK (public_key ~ '^(ed25519/[0-9a-f]{64}|secp256r1/[0-9a-f]{66})$'),
    not_before  timestamptz NOT NULL DEFAULT pg_catalog.now() CHECK (not_before <> 'infinity'),
    not_after   timestamptz,
    comment     text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (not_after IS NULL OR not_after >= not_before)
);
COMMENT ON TABLE hessra_authz.keys IS
    'Root (authority) public keys that sign tokens. A key verifies while not_before <= statement time < not_after. Write through add_key/retire_key.';

CREATE TABLE hessra_authz.service_chains (
    name        text PRIMARY KEY CHECK (name <> ''),
    nodes       jsonb NOT NULL CHECK (pg_catalog.jsonb_typeof(nodes) = 'array'),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE hessra_authz.service_chains IS
    'Named service chains: JSON arrays of {"component", "public_key"} in chain order. Write through set_service_chain.';

CREATE TABLE hessra_authz.revocations (
    revocation_id  text UNIQUE CHECK (revocation_id ~ '^[0-9a-f]+$' AND length(revocation_id) BETWEEN 16 AND 1024),
    identity       text UNIQUE CHECK (identity <> ''),
    reason         text,
    revoked_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    revoked_by     name NOT NULL DEFAULT session_user,
    CHECK (pg_catalog.num_nonnulls(revocation_id, identity) = 1)
);
COMMENT ON TABLE hessra_authz.revocations IS
    'Revoked block revocation ids (hex; any block) and revoked identities (with every identity below them). Write through revoke, revoke_token, revoke_identity.';

-- One row whose generation changes with every change to keys, chains or
-- revocations, so
-- per-backend caches notice changes committed by other backends.
CREATE TABLE hessra_authz.config_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint NOT NULL
);
-- Start from the clock so a re-created extension never reuses a generation
-- that a long-lived backend has cached.
INSERT INTO hessra_authz.config_state (generation)
VALUES ((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000000)::bigint);

SELECT pg_catalog.pg_extension_config_dump('hessra_authz.keys', '');
SELECT pg_catalog.pg_extension_config_dump('hessra_authz.service_chains', '');
SELECT pg_catalog.pg_extension_config_dump('hessra_authz.revocations', '');

REVOKE ALL ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations,
    hessra_authz.config_state FROM PUBLIC;
GRANT SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations TO hessra_admin;

CREATE FUNCTION hessra_authz._bump_generation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE hessra_authz.config_state SET generation = generation + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER bump_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hessra_authz.keys
    FOR EACH STATEMENT EXECUTE FUNCTION hessra_authz._bump_generation();
CREATE TRIGGER bump_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hessra_authz.service_chains
    FOR EACH STATEMENT EXECUTE FUNCTION hessra_authz._bump_generation();
CREATE TRIGGER bump_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hessra_authz.revocations
    FOR EACH STATEMENT EXECUTE FUNCTION hessra_authz._bump_generation();

-- ---------------------------------------------------------------------------
-- Internal PL/Python entry points. They return an outcome text ('t', 'f', a
-- JSON result, or a JSON object with "error") instead of raising, because an
-- exception escaping PL/Python shows the user a Python traceback; the public
-- plpgsql wrappers below turn errors into a clean ERROR with _raise().
-- They stay revoked from PUBLIC: their `now` and `version` arguments feed
-- the per-backend caches, so only the wrappers (which compute them from the
-- statement itself) may call them.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz._raise(outcome text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e jsonb := _raise.outcome::jsonb;
BEGIN
    RAISE EXCEPTION USING MESSAGE = e->>'error', HINT = coalesce(e->>'hint', ''),
                          ERRCODE = coalesce(e->>'sqlstate', '22023');
END
$$;

CREATE FUNCTION hessra_authz._canonical_key(key text) RETURNS text
LANGUAGE plpython3u IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.canonical_key(plpy, key)
$$;

CREATE FUNCTION hessra_authz._canonical_chain(nodes jsonb) RETURNS text
LANGUAGE plpython3u IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.canonical_chain(plpy, nodes)
$$;

CREATE FUNCTION hessra_authz._verify_token(
    now float8, version text, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_token(plpy, now, version, token, subject, resource, operation, domain, prefix)
$$;

CREATE FUNCTION hessra_authz._verify_capability(
    now float8, version text, token text, resource text, operation text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_capability(plpy, now, version, token, resource, operation)
$$;

CREATE FUNCTION hessra_authz._verify_service_chain(
    now float8, version text, token text, subject text, resource text, operation text, chain text, component text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_service_chain(plpy, now, version, token, subject, resource, operation, chain, component)
$$;

CREATE FUNCTION hessra_authz._verify_service_chain_nodes(
    now float8, version text, token text, subject text, resource text, operation text, nodes jsonb, component text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_service_chain_nodes(plpy, now, version, token, subject, resource, operation, nodes, component)
$$;

CREATE FUNCTION hessra_authz._explain(
    now float8, version text, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.explain(plpy, now, version, token, subject, resource, operation, domain, prefix)
$$;

CREATE FUNCTION hessra_authz._verify_identity(
    now float8, version text, token text, identity text, domain text, ensure_subject_in_domain boolean
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_identity(plpy, now, version, token, identity, domain, ensure_subject_in_domain)
$$;

CREATE FUNCTION hessra_authz._verify_bearer(now float8, version text, token text, domain text) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.verify_bearer(plpy, now, version, token, domain)
$$;

CREATE FUNCTION hessra_authz._token_identity(now float8, version text, token text, domain text) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.token_identity(plpy, now, version, token, domain)
$$;

CREATE FUNCTION hessra_authz._authority_revocation_id(token text) RETURNS text
LANGUAGE plpython3u IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.authority_revocation_id(plpy, token)
$$;

CREATE FUNCTION hessra_authz._identity_scope(now float8, version text, token text) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.identity_scope(plpy, now, version, token)
$$;

CREATE FUNCTION hessra_authz._authorized_resources(
    now float8, version text, token text, subject text, operation text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.authorized_resources(plpy, now, version, token, subject, operation)
$$;

-- The configuration reaches the verifier through plpgsql: PL/Python's own SPI
-- runs in subtransactions, which parallel mode forbids. _sync() reads the
-- version (generation and row xmin) with the statement's snapshot on every
-- call and hands keys, chains and revocations to the backend's verifier only
-- when the version it holds differs.
CREATE FUNCTION hessra_authz._config_version() RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.config_version()
$$;

CREATE FUNCTION hessra_authz._load_config(version text, keys jsonb, chains jsonb, revocations jsonb)
RETURNS void
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
server.load_config(plpy, version, keys, chains, revocations)
$$;

CREATE FUNCTION hessra_authz._sync() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    version text;
BEGIN
    SELECT c.generation::text || '/' || c.xmin::text INTO version FROM hessra_authz.config_state AS c;
    IF hessra_authz._config_version() IS DISTINCT FROM version THEN
        PERFORM hessra_authz._load_config(
            version,
            (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'kid', k.kid,
                        'public_key', k.public_key,
                        'not_before', CASE WHEN k.not_before = '-infinity' THEN NULL
                                           ELSE date_part('epoch', k.not_before) END,
                        'not_after', CASE WHEN k.not_after IS NULL OR k.not_after = 'infinity' THEN NULL
                                          ELSE date_part('epoch', k.not_after) END)), '[]')
               FROM hessra_authz.keys AS k),
            (SELECT coalesce(jsonb_object_agg(c.name, c.nodes), '{}') FROM hessra_authz.service_chains AS c),
            (SELECT jsonb_build_object(
                        'ids', coalesce(jsonb_agg(r.revocation_id) FILTER (WHERE r.revocation_id IS NOT NULL), '[]'),
                        'identities', coalesce(jsonb_agg(r.identity) FILTER (WHERE r.identity IS NOT NULL), '[]'))
               FROM hessra_authz.revocations AS r));
    END IF;
    RETURN version;
END
$$;

-- Turn an outcome into a boolean, raising configuration errors.
CREATE FUNCTION hessra_authz._decision(outcome text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF _decision.outcome = 't' THEN
        RETURN true;
    ELSIF _decision.outcome = 'f' THEN
        RETURN false;
    END IF;
    PERFORM hessra_authz._raise(_decision.outcome);
    RETURN false;
END
$$;

-- ---------------------------------------------------------------------------
-- Administration (hessra_admin only)
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.add_key(
    key         text,
    kid         integer DEFAULT NULL,
    not_before  timestamptz DEFAULT pg_catalog.now(),
    not_after   timestamptz DEFAULT NULL,
    comment     text DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    canonical   text;
    existing    integer;
    new_kid     integer;
BEGIN
    IF add_key.key IS NULL THEN
        RAISE EXCEPTION 'hessra_authz: key must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass a PEM public key (P-256 or Ed25519) or ''ed25519/<hex>'' / ''secp256r1/<hex>''.';
    END IF;
    IF add_key.not_before IS NULL THEN
        RAISE EXCEPTION 'hessra_authz: not_before must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF add_key.not_after IS NOT NULL AND add_key.not_after <= add_key.not_before THEN
        RAISE EXCEPTION 'hessra_authz: not_after (%) must be later than not_before (%)',
            add_key.not_after, add_key.not_before USING ERRCODE = 'invalid_parameter_value';
    END IF;
    canonical := hessra_authz._canonical_key(add_key.key);
    IF left(canonical, 1) = '{' THEN
        PERFORM hessra_authz._raise(canonical);
    END IF;

    -- Serialise key registration so the default kid (max + 1) is unique.
    LOCK TABLE hessra_authz.keys IN SHARE ROW EXCLUSIVE MODE;
    SELECT k.kid INTO existing FROM hessra_authz.keys AS k WHERE k.public_key = canonical;
    IF FOUND THEN
        RAISE EXCEPTION 'hessra_authz: this public key is already registered as kid %', existing
            USING ERRCODE = 'unique_violation',
                  HINT = 'Each key is registered once; use hessra_authz.retire_key() to end its validity.';
    END IF;
    new_kid := coalesce(add_key.kid, (SELECT coalesce(max(k.kid), 0) + 1 FROM hessra_authz.keys AS k));
    IF EXISTS (SELECT 1 FROM hessra_authz.keys AS k WHERE k.kid = new_kid) THEN
        RAISE EXCEPTION 'hessra_authz: kid % is already in use', new_kid
            USING ERRCODE = 'unique_violation', HINT = 'Pick another kid, or pass NULL to take the next free one.';
    END IF;
    IF new_kid <= 0 THEN
        RAISE EXCEPTION 'hessra_authz: kid must be a positive integer' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO hessra_authz.keys (kid, public_key, not_before, not_after, comment)
    VALUES (new_kid, canonical, add_key.not_before, add_key.not_after, add_key.comment);
    RETURN new_kid;
END
$$;
COMMENT ON FUNCTION hessra_authz.add_key(text, integer, timestamptz, timestamptz, text) IS
    'Register a root public key (PEM P-256/Ed25519 or alg/hex); returns its kid. Tokens carrying root_key_id are checked only against the key with that kid.';

CREATE FUNCTION hessra_authz.retire_key(kid integer, at timestamptz DEFAULT pg_catalog.now())
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF retire_key.at IS NULL THEN
        RAISE EXCEPTION 'hessra_authz: retirement time must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    UPDATE hessra_authz.keys AS k
       SET not_after = greatest(retire_key.at, k.not_before)
     WHERE k.kid = retire_key.kid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hessra_authz: no key with kid %', retire_key.kid
            USING ERRCODE = 'no_data_found', HINT = 'SELECT kid, public_key FROM hessra_authz.keys lists the keys.';
    END IF;
END
$$;
COMMENT ON FUNCTION hessra_authz.retire_key(integer, timestamptz) IS
    'End a key''s validity at the given time (default now): statements starting after that no longer accept tokens it signed.';

CREATE FUNCTION hessra_authz.set_service_chain(name text, nodes jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    canonical text;
BEGIN
    IF set_service_chain.name IS NULL OR set_service_chain.name = '' THEN
        RAISE EXCEPTION 'hessra_authz: service chain name must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    canonical := hessra_authz._canonical_chain(set_service_chain.nodes);
    IF canonical::jsonb ? 'error' THEN
        PERFORM hessra_authz._raise(canonical);
    END IF;
    INSERT INTO hessra_authz.service_chains AS c (name, nodes)
    VALUES (set_service_chain.name, canonical::jsonb)
    ON CONFLICT ON CONSTRAINT service_chains_pkey
    DO UPDATE SET nodes = EXCLUDED.nodes, updated_at = pg_catalog.now();
END
$$;
COMMENT ON FUNCTION hessra_authz.set_service_chain(text, jsonb) IS
    'Create or replace a named service chain: a JSON array of {"component", "public_key"} in chain order.';

CREATE FUNCTION hessra_authz.drop_service_chain(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM hessra_authz.service_chains AS c WHERE c.name = drop_service_chain.name;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION hessra_authz.drop_service_chain(text) IS
    'Remove a named service chain; returns false if there was none.';

CREATE FUNCTION hessra_authz.revoke(revocation_id text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    normalized text := lower(btrim(revoke.revocation_id));
BEGIN
    IF normalized IS NULL OR normalized !~ '^[0-9a-f]+$' OR length(normalized) NOT BETWEEN 16 AND 1024 THEN
        RAISE EXCEPTION 'hessra_authz: a revocation id is the hex of a block signature'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'hessra_authz.explain(token, ...)->''revocation_ids'' or `hessra-pg token inspect` lists them; hessra_authz.revoke_token(token) revokes a whole token.';
    END IF;
    INSERT INTO hessra_authz.revocations AS r (revocation_id, reason)
    VALUES (normalized, revoke.reason)
    ON CONFLICT ON CONSTRAINT revocations_revocation_id_key DO NOTHING;
END
$$;
COMMENT ON FUNCTION hessra_authz.revoke(text, text) IS
    'Revoke a block by its revocation id (hex): every token containing that block is denied from the next statement on, in every backend.';

CREATE FUNCTION hessra_authz.revoke_token(token text, reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result jsonb := hessra_authz._authority_revocation_id(revoke_token.token)::jsonb;
BEGIN
    IF result ? 'error' THEN
        PERFORM hessra_authz._raise(result::text);
    END IF;
    PERFORM hessra_authz.revoke(result->>'revocation_id', revoke_token.reason);
    RETURN result->>'revocation_id';
END
$$;
COMMENT ON FUNCTION hessra_authz.revoke_token(text, text) IS
    'Revoke a token''s authority block, so the token and every token derived from it (attenuated, attested, delegated) are denied. Returns the revocation id.';

CREATE FUNCTION hessra_authz.revoke_identity(identity text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF revoke_identity.identity IS NULL OR revoke_identity.identity = '' THEN
        RAISE EXCEPTION 'hessra_authz: identity must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO hessra_authz.revocations AS r (identity, reason)
    VALUES (revoke_identity.identity, revoke_identity.reason)
    ON CONFLICT ON CONSTRAINT revocations_identity_key DO NOTHING;
END
$$;
COMMENT ON FUNCTION hessra_authz.revoke_identity(text, text) IS
    'Revoke an identity and every identity delegated under it (identity:...): tokens proving them, and authorization tokens for them, are denied.';

REVOKE EXECUTE ON FUNCTION
    hessra_authz._bump_generation(),
    hessra_authz._config_version(),
    hessra_authz._load_config(text, jsonb, jsonb, jsonb),
    hessra_authz._sync(),
    hessra_authz._raise(text),
    hessra_authz._decision(text),
    hessra_authz._canonical_key(text),
    hessra_authz._canonical_chain(jsonb),
    hessra_authz._verify_token(float8, text, text, text, text, text, text, text),
    hessra_authz._verify_capability(float8, text, text, text, text),
    hessra_authz._verify_service_chain(float8, text, text, text, text, text, text, text),
    hessra_authz._verify_service_chain_nodes(float8, text, text, text, text, text, jsonb, text),
    hessra_authz._explain(float8, text, text, text, text, text, text, text),
    hessra_authz._verify_identity(float8, text, text, text, text, boolean),
    hessra_authz._verify_bearer(float8, text, text, text),
    hessra_authz._token_identity(float8, text, text, text),
    hessra_authz._identity_scope(float8, text, text),
    hessra_authz._authorized_resources(float8, text, text, text, text),
    hessra_authz._authority_revocation_id(text),
    hessra_authz.revoke(text, text),
    hessra_authz.revoke_token(text, text),
    hessra_authz.revoke_identity(text, text),
    hessra_authz.add_key(text, integer, timestamptz, timestamptz, text),
    hessra_authz.retire_key(integer, timestamptz),
    hessra_authz.set_service_chain(text, jsonb),
    hessra_authz.drop_service_chain(text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    hessra_authz.revoke(text, text),
    hessra_authz.revoke_token(text, text),
    hessra_authz.revoke_identity(text, text),
    hessra_authz.add_key(text, integer, timestamptz, timestamptz, text),
    hessra_authz.retire_key(integer, timestamptz),
    hessra_authz.set_service_chain(text, jsonb),
    hessra_authz.drop_service_chain(text)
TO hessra_admin;

-- ---------------------------------------------------------------------------
-- Verification (STABLE: the answer depends on time and configuration).
-- Any token problem gives false; configuration problems raise an ERROR.
-- SECURITY DEFINER so that callers need no access to the key tables.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.verify_token(
    token text, subject text, resource text, operation text,
    domain text DEFAULT NULL, prefix text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_token(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_token.token, verify_token.subject, verify_token.resource, verify_token.operation,
        verify_token.domain, verify_token.prefix));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_token(text, text, text, text, text, text) IS
    'True if the token is valid now and grants operation on resource to subject (Hessra authorization token; optional domain and prefix context).';

CREATE FUNCTION hessra_authz.verify_capability(token text, resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_capability(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_capability.token, verify_capability.resource, verify_capability.operation));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_capability(text, text, text) IS
    'True if the token is valid now and grants operation on resource to whoever holds it (subject not checked).';

CREATE FUNCTION hessra_authz.verify_service_chain(
    token text, subject text, resource text, operation text,
    chain text, component text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_service_chain(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.chain, verify_service_chain.component));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_service_chain(text, text, text, text, text, text) IS
    'verify_token plus service-chain attestations: every node of the named chain before component (all nodes if NULL) must have attested. Unknown chain or component: ERROR.';

CREATE FUNCTION hessra_authz.verify_service_chain(
    token text, subject text, resource text, operation text,
    nodes jsonb, component text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_service_chain_nodes(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.nodes, verify_service_chain.component));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_service_chain(text, text, text, text, jsonb, text) IS
    'Like verify_service_chain with a chain name, but with the nodes given as a JSON array of {"component", "public_key"}.';

CREATE FUNCTION hessra_authz.explain(
    token text, subject text, resource text, operation text,
    domain text DEFAULT NULL, prefix text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result jsonb := hessra_authz._explain(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        explain.token, explain.subject, explain.resource,
                                          explain.operation, explain.domain, explain.prefix)::jsonb;
BEGIN
    IF result ? 'error' THEN
        PERFORM hessra_authz._raise(result::text);
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION hessra_authz.explain(text, text, text, text, text, text) IS
    'Why verify_token accepts or denies: {valid, reason, kid, expires_at, revocation_ids, detail}. Never contains the token.';

-- ---------------------------------------------------------------------------
-- Identity tokens (spec §6): an identity token proves its root subject and,
-- if delegatable, every descendant (parent:child); each delegation narrows it.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.verify_identity(
    token text, identity text, domain text DEFAULT NULL, ensure_subject_in_domain boolean DEFAULT false
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_identity(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_identity.token, verify_identity.identity, verify_identity.domain,
        verify_identity.ensure_subject_in_domain));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_identity(text, text, text, boolean) IS
    'True if the identity token is valid now and proves identity (its subject, or a descendant if delegatable; a delegated token proves only its delegated identity and descendants). domain: the verifier domain of domain-restricted tokens; ensure_subject_in_domain requires one.';

CREATE FUNCTION hessra_authz.verify_bearer(token text, domain text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._decision(hessra_authz._verify_bearer(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        verify_bearer.token, verify_bearer.domain));
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_bearer(text, text) IS
    'True if the identity token is valid now for its own root subject (an API key check). A delegated token is not a bearer token: false.';

CREATE FUNCTION hessra_authz.token_identity(token text, domain text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result jsonb := hessra_authz._token_identity(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        token_identity.token, token_identity.domain)::jsonb;
BEGIN
    IF result ? 'error' THEN
        PERFORM hessra_authz._raise(result::text);
    END IF;
    RETURN result->>'identity';
END
$$;
COMMENT ON FUNCTION hessra_authz.token_identity(text, text) IS
    'The most specific identity a valid identity token proves (its last delegation, else its subject); NULL if the token is not valid now.';

-- ---------------------------------------------------------------------------
-- Per-transaction context: the application sets hessra.token and
-- hessra.subject with set_config(name, value, true). '' and NULL mean none.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.current_token() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN NULLIF(pg_catalog.current_setting('hessra.token', true), ''); END $$;
COMMENT ON FUNCTION hessra_authz.current_token() IS
    'The token in the hessra.token setting, or NULL if unset or empty.';

CREATE FUNCTION hessra_authz.current_subject() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN NULLIF(pg_catalog.current_setting('hessra.subject', true), ''); END $$;
COMMENT ON FUNCTION hessra_authz.current_subject() IS
    'The subject in the hessra.subject setting, or NULL if unset or empty.';

CREATE FUNCTION hessra_authz.authorized(resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(),
                                     authorized.resource, authorized.operation);
END
$$;
COMMENT ON FUNCTION hessra_authz.authorized(text, text) IS
    'verify_token for the current token and subject. In RLS policies write (SELECT hessra_authz.authorized(...)) so it runs once per statement.';


-- ---------------------------------------------------------------------------
-- Rows owned by identities. Evaluated once per statement as (SELECT ...) in a
-- policy, these describe what the current token proves: its identity, the
-- half-open range [identity || ':', identity || ';') of its descendants in
-- "C" collation (NULL when it may not act for descendants), and the revoked
-- identities inside that range. README "Rows owned by identities" has the
-- policy that combines them; it can use an index on (owner COLLATE "C").
-- ---------------------------------------------------------------------------

-- ["ok", identity, 't'/'f' (descendants), revoked below...] for the current
-- token; the helpers below slice it (one verification per statement). It only
-- describes the caller's own token, so PUBLIC may call it like those helpers.
CREATE FUNCTION hessra_authz._current_scope() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text[] := hessra_authz._identity_scope(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        hessra_authz.current_token());
BEGIN
    IF result[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(result[2]);
    END IF;
    RETURN result;
END
$$;

CREATE FUNCTION hessra_authz.current_identity_scope() RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._current_scope();
BEGIN
    RETURN pg_catalog.jsonb_build_object('identity', s[2], 'descendants', s[3] = 't',
                                         'revoked_below', pg_catalog.to_jsonb(coalesce(s[4:], '{}')));
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_scope() IS
    '{identity, descendants, revoked_below} for the token in hessra.token; verified once per statement.';

CREATE FUNCTION hessra_authz.current_identity_subtree_start() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._current_scope();
BEGIN
    RETURN CASE WHEN s[3] = 't' THEN s[2] || ':' END;
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_subtree_start() IS
    'identity || '':'' if the current token may act for descendants of its identity, else NULL (inclusive lower bound, "C" collation).';

CREATE FUNCTION hessra_authz.current_identity_subtree_end() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._current_scope();
BEGIN
    RETURN CASE WHEN s[3] = 't' THEN s[2] || ';' END;
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_subtree_end() IS
    'identity || '';'' if the current token may act for descendants of its identity, else NULL (exclusive upper bound, "C" collation).';

CREATE FUNCTION hessra_authz.current_identity_revoked_below() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((hessra_authz._current_scope())[4:], '{}');
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_revoked_below() IS
    'Revoked identities below the current token''s identity (their rows must stay hidden).';

CREATE FUNCTION hessra_authz.current_identity() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN (hessra_authz._current_scope())[2]; END $$;
COMMENT ON FUNCTION hessra_authz.current_identity() IS
    'token_identity of the token in hessra.token (NULL if none or invalid).';

-- ---------------------------------------------------------------------------
-- Row-dependent resources: the set of resources the token grants, computed
-- once per statement, so a policy compares an indexed column with it:
--   USING ('orders/' || id = ANY ((SELECT hessra_authz.authorized_resources('read'))::text[]))
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.token_resources(token text, subject text, operation text) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text[] := hessra_authz._authorized_resources(
        pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()),
        hessra_authz._sync(),
        token_resources.token, token_resources.subject, token_resources.operation);
BEGIN
    IF result[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(result[2]);
    END IF;
    RETURN result[2:];
END
$$;
COMMENT ON FUNCTION hessra_authz.token_resources(text, text, text) IS
    'Every resource r for which verify_token(token, subject, r, operation) is true (empty if none).';

CREATE FUNCTION hessra_authz.authorized_resources(operation text) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz.token_resources(hessra_authz.current_token(), hessra_authz.current_subject(),
                                        authorized_resources.operation);
END
$$;
COMMENT ON FUNCTION hessra_authz.authorized_resources(text) IS
    'token_resources for the current token and subject. In policies: col = ANY ((SELECT hessra_authz.authorized_resources(''read''))::text[]).';
