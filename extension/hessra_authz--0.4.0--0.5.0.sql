-- hessra_authz 0.4.0 -> 0.5.0: beyond one server (issue 15).
-- * Per-row calls cheap enough for policies evaluated once per row (Citus
--   mode, and the bare form): see the first section.
-- * Citus mode: see the section at the end.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.5.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Per-row calls (issue 15 item 3)
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- Logical replication (issue 15 item 1)
-- ---------------------------------------------------------------------------

-- A subscriber's apply worker fires ROW triggers only, so the statement
-- triggers bump_generation never ran for an applied change and a replicated
-- revocation was never enforced there. refresh_on_apply is a deferred row
-- trigger on every configuration table: in replica mode (the apply worker;
-- a role needs superuser to enter it) it refreshes config_state once per
-- transaction, at commit, when every applied row is in. Elsewhere the
-- statement triggers refresh and this one returns at once.
CREATE FUNCTION hessra_authz._refresh_on_apply() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    xid text;
BEGIN
    IF pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.=) 'replica' THEN
        xid := pg_catalog.pg_current_xact_id()::text;
        IF pg_catalog.current_setting('hessra_authz.refreshed_on_apply', true) IS DISTINCT FROM xid THEN
            PERFORM hessra_authz._refresh_config_state();
            PERFORM pg_catalog.set_config('hessra_authz.refreshed_on_apply', xid, true);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION hessra_authz._refresh_on_apply() FROM PUBLIC;

DO $$
DECLARE
    config record;
BEGIN
    FOR config IN
        SELECT c.oid::pg_catalog.regclass AS rel
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace OPERATOR(pg_catalog.=) 'hessra_authz'::pg_catalog.regnamespace
           AND c.relname OPERATOR(pg_catalog.=) ANY (ARRAY['keys', 'service_chains', 'revocations',
                                                           'capability_settings', 'audit_settings'])
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE CONSTRAINT TRIGGER refresh_on_apply AFTER INSERT OR UPDATE OR DELETE ON %s '
            'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hessra_authz._refresh_on_apply()',
            config.rel);
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER refresh_on_apply', config.rel);
    END LOOP;
END
$$;

-- _config_ddl also turns refresh_on_apply back into ENABLE ALWAYS after a
-- plain ENABLE (which makes a trigger origin-only); the configuration
-- tables by name, so that the list holds with or without those added later.
CREATE OR REPLACE FUNCTION hessra_authz._config_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin_only record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
                WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND c.objid IN (SELECT r.oid FROM pg_catalog.pg_class AS r
                                   WHERE r.relnamespace OPERATOR(pg_catalog.=) 'hessra_authz'::pg_catalog.regnamespace
                                     AND r.relname OPERATOR(pg_catalog.=) ANY (ARRAY['keys', 'service_chains',
                                         'revocations', 'capability_settings', 'audit_settings']))) THEN
        PERFORM hessra_authz._refresh_config_state();
        -- (This ALTER fires the event trigger once more; the triggers are
        -- then ALWAYS, so it stops there.)
        FOR origin_only IN
            SELECT t.tgrelid::pg_catalog.regclass AS rel, t.tgname
              FROM pg_catalog.pg_trigger AS t
              JOIN pg_catalog.pg_class AS r ON r.oid OPERATOR(pg_catalog.=) t.tgrelid
             WHERE t.tgname OPERATOR(pg_catalog.=) ANY (ARRAY['bump_generation', 'refresh_on_apply']::name[])
               AND t.tgenabled OPERATOR(pg_catalog.=) 'O'
               AND r.relnamespace OPERATOR(pg_catalog.=) 'hessra_authz'::pg_catalog.regnamespace
               AND r.relname OPERATOR(pg_catalog.=) ANY (ARRAY['keys', 'service_chains', 'revocations',
                                                               'capability_settings', 'audit_settings'])
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', origin_only.rel, origin_only.tgname);
        END LOOP;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Citus mode (issue 15 item 2)
-- ---------------------------------------------------------------------------

-- Citus refuses a non-IMMUTABLE function in the DO UPDATE SET of an INSERT
-- into a distributed or reference table ("functions used in the DO UPDATE SET
-- clause of INSERTs on distributed tables must be marked IMMUTABLE"), and the
-- configuration tables are reference tables in Citus mode
-- (hessra_pg.admin.citus). These upserts now take updated_at from the
-- proposed row (EXCLUDED.updated_at: its DEFAULT now(), the same value as
-- before), which Citus evaluates once on the coordinator. Nothing else
-- changes; without Citus they behave exactly as in 0.4.0.

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
    DO UPDATE SET nodes = EXCLUDED.nodes, updated_at = EXCLUDED.updated_at;
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
    ON CONFLICT (singleton) DO UPDATE SET anchor = EXCLUDED.anchor, updated_at = EXCLUDED.updated_at;
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
           updated_at = EXCLUDED.updated_at;
END
$$;
