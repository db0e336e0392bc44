-- hessra_authz 0.2.0 -> 0.3.0 (security release):
-- * No session setting changes what the verifier sees: key windows reach it
--   as integer microseconds in arrays (0.2.0 built float epochs inside
--   jsonb, whose text follows extra_float_digits: a retired key could be
--   made to verify), the statement context as one text built by
--   _context(). docs/security.md lists every setting and why it can't matter.
-- * The verification time is the clock, bounded below by the statement's
--   start (a DO block no longer keeps an expired token alive).
-- * A snapshot older than a configuration already in force (REPEATABLE READ,
--   imported snapshots) gets SQLSTATE 40001 instead of a decision.
-- * The configuration triggers fire always (session_replication_role =
--   replica, logical replication apply), and DDL on the configuration tables
--   (ALTER TABLE ... DISABLE/ENABLE TRIGGER, as pg_restore --disable-triggers
--   does) bumps the generation.
-- * explain(), errors and cache_stats() tell roles that can't administer the
--   keys only what they need (README "What an application role can learn").
-- * grant_admin()/revoke_admin(): key administration per database.
-- * Internal PL/Python entry points are hessra_pg.plpython.abi_0_3.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.3.0'" to load this file. \quit

DROP FUNCTION hessra_authz._verify_token(float8, text, text, text, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._verify_capability(float8, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._verify_service_chain(float8, text, text, text, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._verify_service_chain_nodes(float8, text, text, text, text, text, text, text, jsonb, text);
DROP FUNCTION hessra_authz._explain(float8, text, text, text, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._verify_identity(float8, text, text, text, text, text, text, boolean);
DROP FUNCTION hessra_authz._verify_bearer(float8, text, text, text, text, text);
DROP FUNCTION hessra_authz._token_identity(float8, text, text, text, text, text);
DROP FUNCTION hessra_authz._identity_scope(float8, text, text, text, text);
DROP FUNCTION hessra_authz._authorized_resources(float8, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._load_config(text, jsonb, jsonb, jsonb, oid);
-- The verifier's STALE answer carries the version it holds: _sync(held)
-- compares in plpgsql, with no PL/Python call to ask.
DROP FUNCTION hessra_authz._sync();
DROP FUNCTION hessra_authz._config_version();

-- ---------------------------------------------------------------------------
-- The configuration as the verifier reads it, kept with its version
-- ---------------------------------------------------------------------------

-- Each change recomputes, in config_state's one row, the arrays the verifier
-- loads: reading them is then one row, no aggregation and no jsonb work in
-- the backend that verifies (its first verification, and every reload).
-- Key windows are integer microseconds (extract() is exact numeric: no
-- float text conversion), service chains one row per node.
ALTER TABLE hessra_authz.config_state
    ADD COLUMN kids integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN public_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN not_before_us int8[] NOT NULL DEFAULT '{}',
    ADD COLUMN not_after_us int8[] NOT NULL DEFAULT '{}',
    ADD COLUMN node_chains text[] NOT NULL DEFAULT '{}',
    ADD COLUMN node_kinds text[] NOT NULL DEFAULT '{}',
    ADD COLUMN node_components text[] NOT NULL DEFAULT '{}',
    ADD COLUMN node_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN revoked_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN revoked_identities text[] NOT NULL DEFAULT '{}';

CREATE FUNCTION hessra_authz._refresh_config_state() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Concurrent changes serialise here. The arrays are read by the next
    -- statement, whose snapshot (READ COMMITTED) sees every change committed
    -- before this lock was granted: computing them first, with an older
    -- snapshot, would let the later committer overwrite the earlier one's
    -- change (a lost revocation). REPEATABLE READ and SERIALIZABLE writers
    -- get a serialization failure here instead, and retry.
    PERFORM 1 FROM hessra_authz.config_state FOR UPDATE;
    UPDATE hessra_authz.config_state AS s
       SET generation = s.generation + 1,
           kids = coalesce(k.kids, '{}'), public_keys = coalesce(k.public_keys, '{}'),
           not_before_us = coalesce(k.not_before_us, '{}'), not_after_us = coalesce(k.not_after_us, '{}'),
           node_chains = coalesce(n.node_chains, '{}'), node_kinds = coalesce(n.node_kinds, '{}'),
           node_components = coalesce(n.node_components, '{}'), node_keys = coalesce(n.node_keys, '{}'),
           revoked_ids = coalesce(r.revoked_ids, '{}'), revoked_identities = coalesce(r.revoked_identities, '{}')
      FROM (SELECT pg_catalog.array_agg(k.kid ORDER BY k.kid) AS kids,
                   pg_catalog.array_agg(k.public_key ORDER BY k.kid) AS public_keys,
                   pg_catalog.array_agg(CASE WHEN k.not_before = '-infinity' THEN NULL
                                             ELSE (pg_catalog.extract('epoch', k.not_before) * 1000000)::int8 END
                                        ORDER BY k.kid) AS not_before_us,
                   pg_catalog.array_agg(CASE WHEN k.not_after IS NULL OR k.not_after = 'infinity' THEN NULL
                                             WHEN k.not_after = '-infinity' THEN -9223372036854775807
                                             ELSE (pg_catalog.extract('epoch', k.not_after) * 1000000)::int8 END
                                        ORDER BY k.kid) AS not_after_us
              FROM hessra_authz.keys AS k) AS k,
           (SELECT pg_catalog.array_agg(c.name ORDER BY c.name, e.position) AS node_chains,
                   pg_catalog.array_agg(pg_catalog.jsonb_typeof(e.node) ORDER BY c.name, e.position) AS node_kinds,
                   pg_catalog.array_agg(CASE WHEN pg_catalog.jsonb_typeof(e.node -> 'component') = 'string'
                                             THEN e.node ->> 'component' END
                                        ORDER BY c.name, e.position) AS node_components,
                   pg_catalog.array_agg(CASE WHEN pg_catalog.jsonb_typeof(e.node -> 'public_key') = 'string'
                                             THEN e.node ->> 'public_key' END
                                        ORDER BY c.name, e.position) AS node_keys
              FROM hessra_authz.service_chains AS c
              LEFT JOIN LATERAL pg_catalog.jsonb_array_elements(c.nodes) WITH ORDINALITY AS e(node, position)
                ON true) AS n,
           (SELECT pg_catalog.array_agg(r.revocation_id ORDER BY r.revocation_id)
                       FILTER (WHERE r.revocation_id IS NOT NULL) AS revoked_ids,
                   pg_catalog.array_agg(r.identity ORDER BY r.identity)
                       FILTER (WHERE r.identity IS NOT NULL) AS revoked_identities
              FROM hessra_authz.revocations AS r) AS r;
    -- This backend's verifier must not trust its snapshot comparison while
    -- this transaction is open (hessra_pg.plpython.runtime explains why).
    PERFORM hessra_authz._config_changed(pg_catalog.pg_current_xact_id()::text);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._bump_generation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM hessra_authz._refresh_config_state();
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- Freshness that no trigger setting skips
-- ---------------------------------------------------------------------------

-- ALWAYS: also under session_replication_role = replica (logical
-- replication apply workers, pg_restore's replica mode).
ALTER TABLE hessra_authz.keys ENABLE ALWAYS TRIGGER bump_generation;
ALTER TABLE hessra_authz.service_chains ENABLE ALWAYS TRIGGER bump_generation;
ALTER TABLE hessra_authz.revocations ENABLE ALWAYS TRIGGER bump_generation;

-- DISABLE TRIGGER ALL switches even ALWAYS triggers off (pg_restore
-- --disable-triggers loads data that way): any ALTER TABLE of a
-- configuration table bumps the generation, so the rows written while the
-- triggers were off are read at the latest when they are switched back on,
-- and a plain ENABLE (which makes a trigger origin-only again) is turned
-- back into ENABLE ALWAYS.
CREATE FUNCTION hessra_authz._config_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin_only record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
                WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND c.objid IN ('hessra_authz.keys'::pg_catalog.regclass,
                                  'hessra_authz.service_chains'::pg_catalog.regclass,
                                  'hessra_authz.revocations'::pg_catalog.regclass)) THEN
        PERFORM hessra_authz._refresh_config_state();
        -- (This ALTER fires the event trigger once more; the trigger is
        -- then ALWAYS, so it stops there.)
        FOR origin_only IN
            SELECT t.tgrelid::pg_catalog.regclass AS rel
              FROM pg_catalog.pg_trigger AS t
             WHERE t.tgname = 'bump_generation' AND t.tgenabled = 'O'
               AND t.tgrelid IN ('hessra_authz.keys'::pg_catalog.regclass,
                                 'hessra_authz.service_chains'::pg_catalog.regclass,
                                 'hessra_authz.revocations'::pg_catalog.regclass)
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bump_generation', origin_only.rel);
        END LOOP;
    END IF;
END
$$;
CREATE EVENT TRIGGER hessra_authz_config_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION hessra_authz._config_ddl();
ALTER EVENT TRIGGER hessra_authz_config_ddl ENABLE ALWAYS;

-- ---------------------------------------------------------------------------
-- Internal PL/Python entry points (hessra_pg.plpython.abi_0_3). The first
-- two arguments are the statement context (hessra_authz._context(), below)
-- and the configuration version (NULL on the first attempt). They run no
-- SQL, so they don't pin search_path (the pin costs a GUC save and restore
-- on every call); revoked from PUBLIC because their context feeds the caches.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz._verify_token(
    context text, version text, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_token(context, version, token, subject, resource, operation, domain, prefix)
$$;
CREATE FUNCTION hessra_authz._verify_capability(
    context text, version text, token text, resource text, operation text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_capability(context, version, token, resource, operation)
$$;
CREATE FUNCTION hessra_authz._verify_service_chain(
    context text, version text, token text, subject text, resource text, operation text, chain text, component text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_service_chain(context, version, token, subject, resource, operation, chain, component)
$$;
CREATE FUNCTION hessra_authz._verify_service_chain_nodes(
    context text, version text, token text, subject text, resource text, operation text, nodes jsonb, component text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_service_chain_nodes(context, version, token, subject, resource, operation, nodes, component)
$$;
CREATE FUNCTION hessra_authz._explain(
    context text, version text, admin boolean, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.explain(context, version, admin, token, subject, resource, operation, domain, prefix)
$$;
CREATE FUNCTION hessra_authz._verify_identity(
    context text, version text, token text, identity text, domain text, ensure_subject_in_domain boolean
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_identity(context, version, token, identity, domain, ensure_subject_in_domain)
$$;
CREATE FUNCTION hessra_authz._verify_bearer(
    context text, version text, token text, domain text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.verify_bearer(context, version, token, domain)
$$;
CREATE FUNCTION hessra_authz._token_identity(
    context text, version text, token text, domain text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.token_identity(context, version, token, domain)
$$;
CREATE FUNCTION hessra_authz._identity_scope(
    context text, version text, token text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.identity_scope(context, version, token)
$$;
CREATE FUNCTION hessra_authz._authorized_resources(
    context text, version text, token text, subject text, operation text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.authorized_resources(context, version, token, subject, operation)
$$;
-- The statement context every wrapper passes (hessra_pg.plpython.runtime,
-- Runtime.call): statement start in integer microseconds, snapshot,
-- top-level transaction id, space-separated. One place to extend it. A
-- SQL-standard body binds its names when it is created (so it needs no
-- search_path pin) and is inlined into each wrapper (no call at run time).
CREATE FUNCTION hessra_authz._context() RETURNS text
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN pg_catalog.concat_ws(' ',
    (pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()) * 1000000)::int8,
    pg_catalog.pg_current_snapshot(),
    pg_catalog.pg_current_xact_id_if_assigned());

-- Key windows as integer microseconds (NULL: unbounded), service chains one
-- row per node, revocations as text arrays: forms no session setting
-- formats, and nothing the verifier must parse. Returns '' or an error outcome.
CREATE FUNCTION hessra_authz._load_config(
    version text, kids integer[], public_keys text[], not_before_us int8[], not_after_us int8[],
    node_chains text[], node_kinds text[], node_components text[], node_keys text[],
    revoked_ids text[], revoked_identities text[], database oid, database_tag text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.load_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds,
                           node_components, node_keys, revoked_ids, revoked_identities, database, database_tag)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._config_changed(xid text) RETURNS void
LANGUAGE plpython3u VOLATILE
AS $$
from hessra_pg.plpython import abi_0_3
abi_0_3.config_changed(xid)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._canonical_key(key text) RETURNS text
LANGUAGE plpython3u IMMUTABLE STRICT
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.canonical_key(key)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._canonical_chain(nodes jsonb) RETURNS text
LANGUAGE plpython3u IMMUTABLE
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.canonical_chain(nodes)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._authority_revocation_id(token text) RETURNS text
LANGUAGE plpython3u IMMUTABLE
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.authority_revocation_id(token)
$$;

CREATE FUNCTION hessra_authz._cache_stats(admin boolean) RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.cache_stats(admin)
$$;

-- Reads the configuration version with the statement's snapshot and, when
-- it differs from the version the verifier holds (`held`, which the
-- verifier's STALE answer carries), hands it the configuration kept in
-- config_state (_refresh_config_state).
CREATE FUNCTION hessra_authz._sync(held text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    version text;
    outcome text;
BEGIN
    SELECT c.generation::text || '/' || c.xmin::text INTO version FROM hessra_authz.config_state AS c;
    IF version IS DISTINCT FROM _sync.held THEN
        SELECT hessra_authz._load_config(
                   version, c.kids, c.public_keys, c.not_before_us, c.not_after_us, c.node_chains, c.node_kinds,
                   c.node_components, c.node_keys, c.revoked_ids, c.revoked_identities, d.oid, d.xmin::text)
          INTO outcome
          FROM hessra_authz.config_state AS c, pg_catalog.pg_database AS d
         WHERE d.datname = pg_catalog.current_database();
        IF outcome <> '' THEN
            PERFORM hessra_authz._raise(outcome);
        END IF;
    END IF;
    RETURN version;
END
$$;

-- Whether the session's login role administers this database's keys: it may
-- run add_key (hessra_admin, a role given grant_admin(), or a superuser).
-- session_user, because inside a SECURITY DEFINER function current_user is
-- the owner; a role can't change its session_user without superuser rights.
CREATE FUNCTION hessra_authz._is_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
SELECT pg_catalog.has_function_privilege(
    session_user,
    'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)'::pg_catalog.regprocedure,
    'EXECUTE')
$$;

-- Errors: the detail (it may name configuration, e.g. a chain's components)
-- only for administrators.
CREATE OR REPLACE FUNCTION hessra_authz._raise(outcome text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e jsonb := _raise.outcome::jsonb;
    message text := e->>'error';
    code text := coalesce(e->>'sqlstate', '22023');
    hint text := NULLIF(e->>'hint', '');
    detail text := CASE WHEN NULLIF(e->>'detail', '') IS NOT NULL AND hessra_authz._is_admin() THEN e->>'detail' END;
BEGIN
    -- Only the fields there are: an empty DETAIL or HINT line says nothing.
    IF hint IS NOT NULL AND detail IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = message, HINT = hint, DETAIL = detail, ERRCODE = code;
    ELSIF hint IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = message, HINT = hint, ERRCODE = code;
    ELSIF detail IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = message, DETAIL = detail, ERRCODE = code;
    ELSE
        RAISE EXCEPTION USING MESSAGE = message, ERRCODE = code;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Key administration per database. hessra_admin is a cluster-wide role:
-- membership gives key control in every database with the extension. To
-- give it in one database only, a superuser runs, in that database,
--   SELECT hessra_authz.revoke_admin('hessra_admin');
--   SELECT hessra_authz.grant_admin('shop_key_admin');
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz._admin_functions() RETURNS pg_catalog.regprocedure[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
SELECT ARRAY[
    'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)',
    'hessra_authz.retire_key(integer, timestamp with time zone)',
    'hessra_authz.set_service_chain(text, jsonb)',
    'hessra_authz.drop_service_chain(text)',
    'hessra_authz.revoke(text, text)',
    'hessra_authz.revoke_token(text, text)',
    'hessra_authz.revoke_identity(text, text)'
]::pg_catalog.regprocedure[]
$$;

CREATE FUNCTION hessra_authz.grant_admin(role name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = grant_admin.role) THEN
        RAISE EXCEPTION 'hessra_authz: role "%" does not exist', grant_admin.role
            USING ERRCODE = 'undefined_object';
    END IF;
    FOREACH f IN ARRAY hessra_authz._admin_functions() LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', f, grant_admin.role);
    END LOOP;
    EXECUTE pg_catalog.format(
        'GRANT SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations TO %I',
        grant_admin.role);
END
$$;
COMMENT ON FUNCTION hessra_authz.grant_admin(name) IS
    'Superuser only: let a role administer keys, chains and revocations in this database (EXECUTE on the admin functions, SELECT on the configuration tables).';

CREATE FUNCTION hessra_authz.revoke_admin(role name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = revoke_admin.role) THEN
        RAISE EXCEPTION 'hessra_authz: role "%" does not exist', revoke_admin.role
            USING ERRCODE = 'undefined_object';
    END IF;
    FOREACH f IN ARRAY hessra_authz._admin_functions() LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM %I', f, revoke_admin.role);
    END LOOP;
    EXECUTE pg_catalog.format(
        'REVOKE SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations FROM %I',
        revoke_admin.role);
END
$$;
COMMENT ON FUNCTION hessra_authz.revoke_admin(name) IS
    'Superuser only: take key administration in this database away from a role (e.g. the cluster-wide hessra_admin, after grant_admin() to a per-database role).';

REVOKE EXECUTE ON FUNCTION
    hessra_authz._context(),
    hessra_authz._sync(text),
    hessra_authz._verify_token(text, text, text, text, text, text, text, text),
    hessra_authz._verify_capability(text, text, text, text, text),
    hessra_authz._verify_service_chain(text, text, text, text, text, text, text, text),
    hessra_authz._verify_service_chain_nodes(text, text, text, text, text, text, jsonb, text),
    hessra_authz._explain(text, text, boolean, text, text, text, text, text, text),
    hessra_authz._verify_identity(text, text, text, text, text, boolean),
    hessra_authz._verify_bearer(text, text, text, text),
    hessra_authz._token_identity(text, text, text, text),
    hessra_authz._identity_scope(text, text, text),
    hessra_authz._authorized_resources(text, text, text, text, text),
    hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[], text[],
                              oid, text),
    hessra_authz._cache_stats(boolean),
    hessra_authz._config_ddl(),
    hessra_authz._refresh_config_state(),
    hessra_authz.grant_admin(name),
    hessra_authz.revoke_admin(name)
FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Public functions: same signatures; the statement context from _context().
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION hessra_authz.verify_token(
    token text, subject text, resource text, operation text,
    domain text DEFAULT NULL, prefix text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_token(
        hessra_authz._context(), NULL,
        verify_token.token, verify_token.subject, verify_token.resource, verify_token.operation,
        verify_token.domain, verify_token.prefix);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_token(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_token.token, verify_token.subject, verify_token.resource, verify_token.operation,
        verify_token.domain, verify_token.prefix);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_token(text, text, text, text, text, text) IS
    'True if the token is valid now and grants operation on resource to subject (Hessra authorization token; optional domain and prefix context). A service chain registered under the resource''s name must have attested in full.';
CREATE OR REPLACE FUNCTION hessra_authz.verify_capability(token text, resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_capability(
        hessra_authz._context(), NULL,
        verify_capability.token, verify_capability.resource, verify_capability.operation);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_capability(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_capability.token, verify_capability.resource, verify_capability.operation);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_capability(text, text, text) IS
    'True if the token is valid now and grants operation on resource to whoever holds it (subject not checked; denied if it grants that right to a revoked identity).';
CREATE OR REPLACE FUNCTION hessra_authz.verify_service_chain(
    token text, subject text, resource text, operation text,
    chain text, component text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_service_chain(
        hessra_authz._context(), NULL,
        verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.chain, verify_service_chain.component);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_service_chain(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.chain, verify_service_chain.component);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_service_chain(text, text, text, text, text, text) IS
    'verify_token plus service-chain attestations: every node of the named chain before component (all nodes if NULL) must have attested. Unknown chain or component: ERROR.';
CREATE OR REPLACE FUNCTION hessra_authz.verify_service_chain(
    token text, subject text, resource text, operation text,
    nodes jsonb, component text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_service_chain_nodes(
        hessra_authz._context(), NULL,
        verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.nodes, verify_service_chain.component);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_service_chain_nodes(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_service_chain.token, verify_service_chain.subject, verify_service_chain.resource,
        verify_service_chain.operation, verify_service_chain.nodes, verify_service_chain.component);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_service_chain(text, text, text, text, jsonb, text) IS
    'Like verify_service_chain with a chain name, but with the nodes given as a JSON array of {"component", "public_key"}.';
CREATE OR REPLACE FUNCTION hessra_authz.verify_identity(
    token text, identity text, domain text DEFAULT NULL, ensure_subject_in_domain boolean DEFAULT false
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_identity(
        hessra_authz._context(), NULL,
        verify_identity.token, verify_identity.identity, verify_identity.domain,
        verify_identity.ensure_subject_in_domain);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_identity(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_identity.token, verify_identity.identity, verify_identity.domain,
        verify_identity.ensure_subject_in_domain);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_identity(text, text, text, boolean) IS
    'True if the identity token is valid now and proves identity (its subject, or a descendant if delegatable; a delegated token proves only its delegated identity and descendants). domain: the verifier domain of domain-restricted tokens; ensure_subject_in_domain requires one.';
CREATE OR REPLACE FUNCTION hessra_authz.verify_bearer(token text, domain text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_bearer(
        hessra_authz._context(), NULL,
        verify_bearer.token, verify_bearer.domain);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_bearer(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_bearer.token, verify_bearer.domain);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_bearer(text, text) IS
    'True if the identity token is valid now for its own root subject (an API key check). A delegated token is not a bearer token: false.';
CREATE OR REPLACE FUNCTION hessra_authz.explain(
    token text, subject text, resource text, operation text,
    domain text DEFAULT NULL, prefix text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    admin boolean := hessra_authz._is_admin();
    outcome text := hessra_authz._explain(
        hessra_authz._context(), NULL,
        admin, explain.token, explain.subject, explain.resource, explain.operation, explain.domain, explain.prefix);
    result jsonb;
BEGIN
    IF pg_catalog.left(outcome, 1) = 's' THEN
        outcome := hessra_authz._explain(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            admin, explain.token, explain.subject, explain.resource, explain.operation, explain.domain,
            explain.prefix);
    END IF;
    result := outcome::jsonb;
    IF result ? 'error' THEN
        PERFORM hessra_authz._raise(outcome);
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION hessra_authz.explain(text, text, text, text, text, text) IS
    'Why verify_token accepts or denies: {valid, reason, kid, expires_at, revocation_ids, detail}; kid and detail for key administrators only. Never contains the token.';

CREATE OR REPLACE FUNCTION hessra_authz.token_identity(token text, domain text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text[] := hessra_authz._token_identity(
        hessra_authz._context(), NULL,
        token_identity.token, token_identity.domain);
BEGIN
    IF result[1] = 's' THEN
        result := hessra_authz._token_identity(
            hessra_authz._context(), hessra_authz._sync(result[2]),
            token_identity.token, token_identity.domain);
    END IF;
    IF result[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(result[2]);
    END IF;
    RETURN result[2];
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.authorized(resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The fast path of verify_token, inlined: this runs in every policy.
    outcome text := hessra_authz._verify_token(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''),
        NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
        authorized.resource, authorized.operation, NULL, NULL);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    RETURN hessra_authz.verify_token(NULLIF(pg_catalog.current_setting('hessra.token', true), ''),
                                     NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
                                     authorized.resource, authorized.operation);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._current_scope() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    token text := NULLIF(pg_catalog.current_setting('hessra.token', true), '');
    result text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        token);
BEGIN
    IF result[1] = 's' THEN
        result := hessra_authz._identity_scope(
            hessra_authz._context(), hessra_authz._sync(result[2]),
            token);
    END IF;
    IF result[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(result[2]);
    END IF;
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_scope() RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''));
BEGIN
    IF s[1] <> 'ok' THEN
        s := hessra_authz._current_scope();  -- configuration changed, or an error to raise
    END IF;
    RETURN pg_catalog.jsonb_build_object('identity', s[2], 'descendants', s[3] = 't',
                                         'exact', s[3] <> 'x',
                                         'revoked_below', pg_catalog.to_jsonb(coalesce(s[4:], '{}')));
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_scope() IS
    '{identity, descendants, exact, revoked_below} for the token in hessra.token, verified once per statement. exact is false when the token restricts actor beyond Hessra''s delegation shapes: the helpers then describe only the identity itself (fewer rows than verify_identity, never more).';

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_subtree_start() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''));
BEGIN
    IF s[1] <> 'ok' THEN
        s := hessra_authz._current_scope();  -- configuration changed, or an error to raise
    END IF;
    RETURN CASE WHEN s[3] = 't' THEN s[2] || ':' END;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_subtree_end() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''));
BEGIN
    IF s[1] <> 'ok' THEN
        s := hessra_authz._current_scope();  -- configuration changed, or an error to raise
    END IF;
    RETURN CASE WHEN s[3] = 't' THEN s[2] || ';' END;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_revoked_below() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''));
BEGIN
    IF s[1] <> 'ok' THEN
        s := hessra_authz._current_scope();  -- configuration changed, or an error to raise
    END IF;
    RETURN coalesce(s[4:], '{}');
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.current_identity() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text[] := hessra_authz._identity_scope(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''));
BEGIN
    IF s[1] <> 'ok' THEN
        s := hessra_authz._current_scope();  -- configuration changed, or an error to raise
    END IF;
    RETURN s[2];
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.token_resources(token text, subject text, operation text) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text[] := hessra_authz._authorized_resources(
        hessra_authz._context(), NULL,
        token_resources.token, token_resources.subject, token_resources.operation);
BEGIN
    IF result[1] = 's' THEN
        result := hessra_authz._authorized_resources(
            hessra_authz._context(), hessra_authz._sync(result[2]),
            token_resources.token, token_resources.subject, token_resources.operation);
    END IF;
    IF result[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(result[2]);
    END IF;
    RETURN result[2:];
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.authorized_resources(operation text) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The fast path of token_resources, inlined.
    result text[] := hessra_authz._authorized_resources(
        hessra_authz._context(), NULL,
        NULLIF(pg_catalog.current_setting('hessra.token', true), ''),
        NULLIF(pg_catalog.current_setting('hessra.subject', true), ''), authorized_resources.operation);
BEGIN
    IF result[1] = 'ok' THEN
        RETURN result[2:];
    END IF;
    RETURN hessra_authz.token_resources(NULLIF(pg_catalog.current_setting('hessra.token', true), ''),
                                        NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
                                        authorized_resources.operation);
END
$$;

-- Observability: counts and sizes; the configuration version for administrators only.
CREATE OR REPLACE FUNCTION hessra_authz.cache_stats() RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._cache_stats(hessra_authz._is_admin())::jsonb;
END
$$;
COMMENT ON FUNCTION hessra_authz.cache_stats() IS
    'This backend''s verifier caches (entries, bytes and byte bounds), its unexpected internal errors, and its hits and misses in the decision table shared by the database''s backends; the configuration version for key administrators. Counts only, never tokens.';

-- Fill config_state's arrays (a new generation: every backend reloads). This
-- also tells a backend that updates the extension inside one transaction not
-- to keep trusting the configuration it read before.
SELECT hessra_authz._refresh_config_state();
