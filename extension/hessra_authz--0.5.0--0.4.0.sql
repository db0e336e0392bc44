-- hessra_authz 0.5.0 -> 0.4.0: undoes hessra_authz--0.4.0--0.5.0.sql, section
-- by section (the Citus section at the end).

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Per-row calls (issue 15 item 3)
-- ---------------------------------------------------------------------------

-- The 0.4.0 definitions, back; then the per-row helpers go.
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

CREATE OR REPLACE FUNCTION hessra_authz.authorized(resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._authorized(
        hessra_authz._context(), NULL, NULLIF(pg_catalog.current_setting('hessra.token', true), ''), NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
        authorized.resource, authorized.operation);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._authorized(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)), NULLIF(pg_catalog.current_setting('hessra.token', true), ''), NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
            authorized.resource, authorized.operation);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.current_token() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN NULLIF(pg_catalog.current_setting('hessra.token', true), ''); END $$;

CREATE OR REPLACE FUNCTION hessra_authz.current_subject() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN NULLIF(pg_catalog.current_setting('hessra.subject', true), ''); END $$;

CREATE OR REPLACE FUNCTION hessra_authz._authorized(
    context text, version text, token text, subject text, resource text, operation text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.authorized(context, version, token, subject, resource, operation)
$$;

DROP FUNCTION hessra_authz._authorized_fast(pg_catalog.pg_snapshot, text, text, text, text);
DROP FUNCTION hessra_authz._verify_token_fast(pg_catalog.pg_snapshot, text, text, text, text, text, text);
DROP FUNCTION hessra_authz._authorized_slow(text, text);
DROP FUNCTION hessra_authz._verify_token_slow();
DROP FUNCTION hessra_authz._verify_token_pending(text, text);


-- ---------------------------------------------------------------------------
-- Logical replication (issue 15 item 1)
-- ---------------------------------------------------------------------------

DO $$
DECLARE
    config record;
BEGIN
    FOR config IN
        SELECT t.tgrelid::pg_catalog.regclass AS rel
          FROM pg_catalog.pg_trigger AS t
         WHERE t.tgname OPERATOR(pg_catalog.=) 'refresh_on_apply'
           AND t.tgfoid OPERATOR(pg_catalog.=) 'hessra_authz._refresh_on_apply()'::pg_catalog.regprocedure
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER refresh_on_apply ON %s', config.rel);
    END LOOP;
END
$$;
DROP FUNCTION hessra_authz._refresh_on_apply();

-- 0.4.0's _config_ddl.
CREATE OR REPLACE FUNCTION hessra_authz._config_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin_only record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
                WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND c.objid IN ('hessra_authz.keys'::pg_catalog.regclass,
                                  'hessra_authz.service_chains'::pg_catalog.regclass,
                                  'hessra_authz.revocations'::pg_catalog.regclass,
                                  'hessra_authz.capability_settings'::pg_catalog.regclass)) THEN
        PERFORM hessra_authz._refresh_config_state();
        -- (This ALTER fires the event trigger once more; the trigger is
        -- then ALWAYS, so it stops there.)
        FOR origin_only IN
            SELECT t.tgrelid::pg_catalog.regclass AS rel
              FROM pg_catalog.pg_trigger AS t
             WHERE t.tgname = 'bump_generation' AND t.tgenabled = 'O'
               AND t.tgrelid IN ('hessra_authz.keys'::pg_catalog.regclass,
                                 'hessra_authz.service_chains'::pg_catalog.regclass,
                                 'hessra_authz.revocations'::pg_catalog.regclass,
                                 'hessra_authz.capability_settings'::pg_catalog.regclass)
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bump_generation', origin_only.rel);
        END LOOP;
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- Audit and stats (issue 16)
-- ---------------------------------------------------------------------------

-- The 0.4.0 _sync and admin lists back (_config_ddl: the logical
-- replication section above); then the audit table
-- (its rows are lost) and the stats functions go.
CREATE OR REPLACE FUNCTION hessra_authz._sync(held text) RETURNS text
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
                   c.node_components, c.node_keys, c.revoked_ids, c.revoked_identities, d.oid, d.xmin::text, c.anchor,
                   c.require_anchor, c.fallback)
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

CREATE OR REPLACE FUNCTION hessra_authz._admin_functions() RETURNS pg_catalog.regprocedure[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
SELECT ARRAY[
    'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)',
    'hessra_authz.retire_key(integer, timestamp with time zone)',
    'hessra_authz.set_service_chain(text, jsonb)',
    'hessra_authz.drop_service_chain(text)',
    'hessra_authz.revoke(text, text)',
    'hessra_authz.revoke_token(text, text)',
    'hessra_authz.revoke_identity(text, text)',
    'hessra_authz.set_anchor(text)',
    'hessra_authz.set_capability_options(boolean, text)'
]::pg_catalog.regprocedure[]
$$;

CREATE OR REPLACE FUNCTION hessra_authz.grant_admin(role name) RETURNS void
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
        'GRANT SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations,
        hessra_authz.capability_settings TO %I',
        grant_admin.role);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.revoke_admin(role name) RETURNS void
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
        'REVOKE SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations,
        hessra_authz.capability_settings FROM %I',
        revoke_admin.role);
END
$$;

DROP FUNCTION hessra_authz.reset_database_stats();
DROP FUNCTION hessra_authz.database_stats();
DROP FUNCTION hessra_authz._database_stats(boolean);
DROP FUNCTION hessra_authz._read_database_stats(boolean, oid, text, integer[], bigint[], boolean);
DROP FUNCTION hessra_authz.reset_stats();
DROP FUNCTION hessra_authz.stats();
DROP FUNCTION hessra_authz._stats(boolean);
DROP FUNCTION hessra_authz.set_audit(text, name);
DROP TABLE hessra_authz.audit_settings;
-- 0.4.0's refresh and _load_config; config_state without the levels.
CREATE OR REPLACE FUNCTION hessra_authz._refresh_config_state() RETURNS void
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
           revoked_ids = coalesce(r.revoked_ids, '{}'), revoked_identities = coalesce(r.revoked_identities, '{}'),
           anchor = settings.anchor, require_anchor = coalesce(settings.require_anchor, false),
           fallback = coalesce(settings.fallback, 'per_row')
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
              FROM hessra_authz.revocations AS r) AS r
      LEFT JOIN hessra_authz.capability_settings AS settings ON true;
    -- This backend's verifier must not trust its snapshot comparison while
    -- this transaction is open (hessra_pg.plpython.runtime explains why).
    PERFORM hessra_authz._config_changed(pg_catalog.pg_current_xact_id()::text);
END
$$;

DROP FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[],
                                        text[], oid, text, text, boolean, text, text, pg_catalog.oid[], text[]);
CREATE FUNCTION hessra_authz._load_config(
    version text, kids integer[], public_keys text[], not_before_us int8[], not_after_us int8[],
    node_chains text[], node_kinds text[], node_components text[], node_keys text[],
    revoked_ids text[], revoked_identities text[], database oid, database_tag text,
    anchor text, require_anchor boolean, fallback text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.load_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds,
                           node_components, node_keys, revoked_ids, revoked_identities, database, database_tag,
                           anchor, require_anchor, fallback)
$$;
REVOKE EXECUTE ON FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[],
                                                     text[], text[], text[], oid, text, text, boolean, text) FROM PUBLIC;
ALTER TABLE hessra_authz.config_state
    DROP COLUMN audit_level, DROP COLUMN audit_role_oids, DROP COLUMN audit_role_levels;
-- A new generation: every backend reloads (and stops auditing).
SELECT hessra_authz._refresh_config_state();


-- ---------------------------------------------------------------------------
-- Designation fast path (issue 13)
-- ---------------------------------------------------------------------------

-- 0.4.0's helpers back (SECURITY DEFINER PL/pgSQL with a Python fast path
-- of their own); then the recorded answers' functions go.
CREATE OR REPLACE FUNCTION hessra_authz.designation_values(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN coalesce(
        hessra_authz._designation_set(hessra_authz._context(), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            designation_values.resource, designation_values.operation, designation_values.row_labels, designation_values.fixed, designation_values.label),
        (hessra_authz._capability_rows_slow(designation_values.resource, designation_values.operation, designation_values.row_labels, designation_values.fixed, designation_values.label, 'values'))[2:]);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.designation_floor(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN CASE WHEN coalesce(
        hessra_authz._designation_flag(hessra_authz._context(), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            designation_floor.resource, designation_floor.operation, designation_floor.row_labels, designation_floor.fixed, designation_floor.label, 'floor'),
        (hessra_authz._capability_rows_slow(designation_floor.resource, designation_floor.operation, designation_floor.row_labels, designation_floor.fixed, designation_floor.label, 'floor'))[2]::pg_catalog.bool) THEN ''::pg_catalog.text END;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.designation_nulls(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN coalesce(
        hessra_authz._designation_flag(hessra_authz._context(), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            designation_nulls.resource, designation_nulls.operation, designation_nulls.row_labels, designation_nulls.fixed, designation_nulls.label, 'nulls'),
        (hessra_authz._capability_rows_slow(designation_nulls.resource, designation_nulls.operation, designation_nulls.row_labels, designation_nulls.fixed, designation_nulls.label, 'nulls'))[2]::pg_catalog.bool);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.designation_fallback(resource text, operation text, row_labels text[], fixed jsonb DEFAULT '{}') RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN coalesce(
        hessra_authz._designation_flag(hessra_authz._context(), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            designation_fallback.resource, designation_fallback.operation, designation_fallback.row_labels, designation_fallback.fixed, NULL::pg_catalog.text, 'fallback'),
        (hessra_authz._capability_rows_slow(designation_fallback.resource, designation_fallback.operation, designation_fallback.row_labels, designation_fallback.fixed, NULL::pg_catalog.text, 'fallback'))[2]::pg_catalog.bool);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._capability_rows(
    context text, version text, token text, subject text, resource text, operation text, row_labels text[], fixed jsonb,
    label text, want text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.capability_rows(context, version, token, subject, resource, operation, row_labels, fixed, label, want)
$$;

DROP FUNCTION hessra_authz._designation_values_fast(pg_catalog.pg_snapshot, text, text, text, text, text[], jsonb, text);
DROP FUNCTION hessra_authz._designation_flag_fast(pg_catalog.pg_snapshot, text, text, text, text, text[], jsonb, text, text);
DROP FUNCTION hessra_authz._designation_values_slow(text, text, text[], jsonb, text);
DROP FUNCTION hessra_authz._designation_flag_slow(text, text, text[], jsonb, text, text);

-- ---------------------------------------------------------------------------
-- Citus mode (issue 15 item 2)
-- ---------------------------------------------------------------------------

-- Back to the 0.4.0 upserts (updated_at = now() in DO UPDATE: refused by Citus on
-- reference tables, fine everywhere else).
CREATE OR REPLACE FUNCTION hessra_authz.set_service_chain(name text, nodes jsonb) RETURNS void
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

CREATE OR REPLACE FUNCTION hessra_authz.set_anchor(anchor text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF set_anchor.anchor = '' THEN
        RAISE EXCEPTION 'hessra_authz: the anchor must not be empty'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass NULL to remove the anchor.';
    END IF;
    INSERT INTO hessra_authz.capability_settings AS s (anchor) VALUES (set_anchor.anchor)
    ON CONFLICT (singleton) DO UPDATE SET anchor = EXCLUDED.anchor, updated_at = pg_catalog.now();
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz.set_capability_options(require_anchor boolean DEFAULT NULL,
                                                               fallback text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF set_capability_options.fallback IS NOT NULL AND set_capability_options.fallback NOT IN ('per_row', 'deny') THEN
        RAISE EXCEPTION 'hessra_authz: fallback must be per_row or deny'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO hessra_authz.capability_settings AS s (require_anchor, fallback)
    VALUES (coalesce(set_capability_options.require_anchor, false), coalesce(set_capability_options.fallback, 'per_row'))
    ON CONFLICT (singleton) DO UPDATE
       SET require_anchor = coalesce(set_capability_options.require_anchor, s.require_anchor),
           fallback = coalesce(set_capability_options.fallback, s.fallback),
           updated_at = pg_catalog.now();
END
$$;
