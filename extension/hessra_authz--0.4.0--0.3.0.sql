-- hessra_authz 0.4.0 -> 0.3.0: puts back the 0.3.0 functions (the reverse of
-- hessra_authz--0.3.0--0.4.0.sql). Keys, chains and revocations are
-- untouched; the capability settings (the anchor) are dropped.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.3.0'" to load this file. \quit

DROP FUNCTION hessra_authz.verify_capability(text, text, text, jsonb, text);
DROP FUNCTION hessra_authz.explain_capability(text, text, text, jsonb, text);
DROP FUNCTION hessra_authz.capability_rows(text, text, text[], jsonb);
DROP FUNCTION hessra_authz.designation_values(text, text, text[], text, jsonb);
DROP FUNCTION hessra_authz.designation_floor(text, text, text[], text, jsonb);
DROP FUNCTION hessra_authz.designation_nulls(text, text, text[], text, jsonb);
DROP FUNCTION hessra_authz.designation_fallback(text, text, text[], jsonb);
DROP FUNCTION hessra_authz.designation_row(text, text, jsonb, jsonb);
DROP FUNCTION hessra_authz._verify_capability(text, text, text, text, text, jsonb, text);
DROP FUNCTION hessra_authz._explain_capability(text, text, boolean, text, text, text, jsonb, text);
DROP FUNCTION hessra_authz._authorized(text, text, text, text, text, text);
DROP FUNCTION hessra_authz._capability_rows(text, text, text, text, text, text, text[], jsonb, text, text);
DROP FUNCTION hessra_authz._capability_rows_slow(text, text, text[], jsonb, text, text);
DROP FUNCTION hessra_authz._designation_set(text, text, text, text, text, text[], jsonb, text);
DROP FUNCTION hessra_authz._designation_flag(text, text, text, text, text, text[], jsonb, text, text);
DROP FUNCTION hessra_authz._designation_row_check(text, text, text, text, text, jsonb, jsonb);
DROP FUNCTION hessra_authz._designation_row_slow(text, text, jsonb, jsonb);
DROP FUNCTION hessra_authz._designation_row(text, text, text, text, text, text, jsonb, jsonb);
DROP FUNCTION hessra_authz.set_anchor(text);
DROP FUNCTION hessra_authz.set_capability_options(boolean, text);
DROP FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[],
                                        text[], oid, text, text, boolean, text);

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

ALTER EXTENSION hessra_authz DROP TABLE hessra_authz.capability_settings;
DROP TABLE hessra_authz.capability_settings;
ALTER TABLE hessra_authz.config_state DROP COLUMN anchor, DROP COLUMN require_anchor, DROP COLUMN fallback;

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
REVOKE EXECUTE ON FUNCTION
    hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[], text[],
                              oid, text)
FROM PUBLIC;

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
    'hessra_authz.revoke_identity(text, text)'
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
        'GRANT SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations TO %I',
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
        'REVOKE SELECT ON hessra_authz.keys, hessra_authz.service_chains, hessra_authz.revocations FROM %I',
        revoke_admin.role);
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._explain(
    context text, version text, admin boolean, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_3
return abi_0_3.explain(context, version, admin, token, subject, resource, operation, domain, prefix)
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
COMMENT ON FUNCTION hessra_authz.authorized(text, text) IS
    'verify_token for the current token and subject. In RLS policies write (SELECT hessra_authz.authorized(...)) so it runs once per statement.';

SELECT hessra_authz._refresh_config_state();
