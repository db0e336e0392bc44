-- hessra_authz 0.3.0 -> 0.4.0: capability tokens with designations and the
-- database's anchor (spec hessra-capability-tokens.md §3.4, §4):
-- * capability_settings (admin only, dumped by pg_dump): the anchor,
--   require_anchor, and what designation policies do without an exact set;
--   kept in config_state with the rest of the configuration.
-- * verify_capability(token, resource, operation, designations jsonb,
--   subject) and explain_capability(); authorized() and explain() verify a
--   capability token as a capability.
-- * The set helpers of designation policies: capability_rows() and the
--   per-label designation_values/_floor/_nulls, designation_fallback(),
--   designation_row().
-- * Internal PL/Python entry points that change or are new call
--   hessra_pg.plpython.abi_0_4.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Capability settings
-- ---------------------------------------------------------------------------

-- At most one row; none means no anchor, require_anchor off, fallback per_row.
-- (No default row: a restored dump's row must not collide with one.)
CREATE TABLE hessra_authz.capability_settings (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    anchor          text CHECK (anchor <> ''),
    require_anchor  boolean NOT NULL DEFAULT false,
    fallback        text NOT NULL DEFAULT 'per_row' CHECK (fallback IN ('per_row', 'deny')),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE hessra_authz.capability_settings IS
    'The database''s anchor (its principal name, supplied to every capability check), whether capability tokens must be bound to it, and what designation policies do when a token''s checks give no exact set (per_row or deny). Write through set_anchor/set_capability_options.';
SELECT pg_catalog.pg_extension_config_dump('hessra_authz.capability_settings', '');
REVOKE ALL ON hessra_authz.capability_settings FROM PUBLIC;
DO $grant$
DECLARE
    grantee name;
BEGIN
    -- Whoever administers this database's keys reads the settings too.
    FOR grantee IN
        SELECT a.grantee::pg_catalog.regrole::text
          FROM pg_catalog.aclexplode((SELECT c.relacl FROM pg_catalog.pg_class AS c
                                       WHERE c.oid = 'hessra_authz.keys'::pg_catalog.regclass)) AS a
         WHERE a.privilege_type = 'SELECT' AND a.grantee <> 0
           AND a.grantee <> (SELECT c.relowner FROM pg_catalog.pg_class AS c
                              WHERE c.oid = 'hessra_authz.keys'::pg_catalog.regclass)
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON hessra_authz.capability_settings TO %s', grantee);
    END LOOP;
END
$grant$;
CREATE TRIGGER bump_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hessra_authz.capability_settings
    FOR EACH STATEMENT EXECUTE FUNCTION hessra_authz._bump_generation();
ALTER TABLE hessra_authz.capability_settings ENABLE ALWAYS TRIGGER bump_generation;

ALTER TABLE hessra_authz.config_state
    ADD COLUMN anchor text,
    ADD COLUMN require_anchor boolean NOT NULL DEFAULT false,
    ADD COLUMN fallback text NOT NULL DEFAULT 'per_row';

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

DROP FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[],
                                        text[], oid, text);
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

CREATE FUNCTION hessra_authz.set_anchor(anchor text) RETURNS void
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
COMMENT ON FUNCTION hessra_authz.set_anchor(text) IS
    'Set (or with NULL remove) this database''s anchor: the principal name supplied as designation("anchor", ...) to every capability check. Admin only; no session can supply or change it.';

CREATE FUNCTION hessra_authz.set_capability_options(require_anchor boolean DEFAULT NULL, fallback text DEFAULT NULL)
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
COMMENT ON FUNCTION hessra_authz.set_capability_options(boolean, text) IS
    'require_anchor: capability tokens must carry check if designation("anchor", <this anchor>) in their authority block; fallback: what a designation policy does when a token''s checks give no exact set: per_row (verify each row, the default) or deny. NULL keeps a setting. Admin only.';

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

DO $grant$
DECLARE
    grantee name;
BEGIN
    -- The new admin functions go to whoever may run add_key here.
    FOR grantee IN
        SELECT a.grantee::pg_catalog.regrole::text
          FROM pg_catalog.aclexplode((SELECT p.proacl FROM pg_catalog.pg_proc AS p
                                       WHERE p.oid = 'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)'::pg_catalog.regprocedure)) AS a
         WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> 0
           AND a.grantee <> (SELECT p.proowner FROM pg_catalog.pg_proc AS p
                              WHERE p.oid = 'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)'::pg_catalog.regprocedure)
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION hessra_authz.set_anchor(text), '
                                  'hessra_authz.set_capability_options(boolean, text) TO %s', grantee);
    END LOOP;
END
$grant$;

-- ---------------------------------------------------------------------------
-- Internal PL/Python entry points (hessra_pg.plpython.abi_0_4); no SQL, so
-- no search_path pin; revoked from PUBLIC.
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz._verify_capability(
    context text, version text, token text, resource text, operation text, designations jsonb, subject text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.verify_capability(context, version, token, resource, operation, designations, subject)
$$;

CREATE FUNCTION hessra_authz._explain_capability(
    context text, version text, admin boolean, token text, resource text, operation text, designations jsonb, subject text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.explain_capability(context, version, admin, token, resource, operation, designations, subject)
$$;

CREATE FUNCTION hessra_authz._authorized(
    context text, version text, token text, subject text, resource text, operation text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.authorized(context, version, token, subject, resource, operation)
$$;

CREATE FUNCTION hessra_authz._capability_rows(
    context text, version text, token text, subject text, resource text, operation text, row_labels text[], fixed jsonb,
    label text, want text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.capability_rows(context, version, token, subject, resource, operation, row_labels, fixed, label, want)
$$;

-- The fast paths of the policy helpers: the answer, or NULL for anything else
-- (configuration to read, an error), when the wrappers take the slow path.
CREATE FUNCTION hessra_authz._designation_set(
    context text, token text, subject text, resource text, operation text, row_labels text[], fixed jsonb, label text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.designation_set(context, token, subject, resource, operation, row_labels, fixed, label)
$$;

CREATE FUNCTION hessra_authz._designation_flag(
    context text, token text, subject text, resource text, operation text, row_labels text[], fixed jsonb, label text,
    want text
) RETURNS boolean
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.designation_flag(context, token, subject, resource, operation, row_labels, fixed, label, want)
$$;

CREATE FUNCTION hessra_authz._designation_row_check(
    context text, token text, subject text, resource text, operation text, row_values jsonb, fixed jsonb
) RETURNS boolean
LANGUAGE plpython3u STABLE PARALLEL SAFE
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.designation_row_check(context, token, subject, resource, operation, row_values, fixed)
$$;

-- The slow path of the policy helpers: read the configuration and ask again
-- (STALE), or raise the error outcome; ["ok", answer...] otherwise. Called
-- by the SECURITY DEFINER helpers, so it runs as the extension's owner.
CREATE FUNCTION hessra_authz._capability_rows_slow(
    resource text, operation text, row_labels text[], fixed jsonb, label text, want text
) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text[] := hessra_authz._capability_rows(
        hessra_authz._context(), NULL, pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
        _capability_rows_slow.resource, _capability_rows_slow.operation, _capability_rows_slow.row_labels,
        _capability_rows_slow.fixed, _capability_rows_slow.label, _capability_rows_slow.want);
BEGIN
    IF r[1] = 's' THEN  -- the configuration must be read first
        r := hessra_authz._capability_rows(
            hessra_authz._context(), hessra_authz._sync(r[2]), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            _capability_rows_slow.resource, _capability_rows_slow.operation, _capability_rows_slow.row_labels,
            _capability_rows_slow.fixed, _capability_rows_slow.label, _capability_rows_slow.want);
    END IF;
    IF r[1] <> 'ok' THEN
        PERFORM hessra_authz._raise(r[2]);
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION hessra_authz._designation_row(
    context text, version text, token text, subject text, resource text, operation text, row_values jsonb, fixed jsonb
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL SAFE
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.designation_row(context, version, token, subject, resource, operation, row_values, fixed)
$$;

CREATE FUNCTION hessra_authz._designation_row_slow(
    resource text, operation text, row_values jsonb, fixed jsonb
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._designation_row(
        hessra_authz._context(), NULL, pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true), _designation_row_slow.resource,
        _designation_row_slow.operation, _designation_row_slow.row_values, _designation_row_slow.fixed);
BEGIN
    IF pg_catalog.left(outcome, 1) = 's' THEN
        outcome := hessra_authz._designation_row(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            _designation_row_slow.resource, _designation_row_slow.operation, _designation_row_slow.row_values,
            _designation_row_slow.fixed);
    END IF;
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._explain(
    context text, version text, admin boolean, token text, subject text, resource text, operation text, domain text, prefix text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_4
return abi_0_4.explain(context, version, admin, token, subject, resource, operation, domain, prefix)
$$;

REVOKE EXECUTE ON FUNCTION
    hessra_authz._verify_capability(text, text, text, text, text, jsonb, text),
    hessra_authz._explain_capability(text, text, boolean, text, text, text, jsonb, text),
    hessra_authz._authorized(text, text, text, text, text, text),
    hessra_authz._capability_rows(text, text, text, text, text, text, text[], jsonb, text, text),
    hessra_authz._designation_set(text, text, text, text, text, text[], jsonb, text),
    hessra_authz._designation_flag(text, text, text, text, text, text[], jsonb, text, text),
    hessra_authz._designation_row_check(text, text, text, text, text, jsonb, jsonb),
    hessra_authz._capability_rows_slow(text, text, text[], jsonb, text, text),
    hessra_authz._designation_row(text, text, text, text, text, text, jsonb, jsonb),
    hessra_authz._designation_row_slow(text, text, jsonb, jsonb),
    hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[], text[],
                              oid, text, text, boolean, text),
    hessra_authz.set_anchor(text),
    hessra_authz.set_capability_options(boolean, text)
FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Public functions
-- ---------------------------------------------------------------------------

CREATE FUNCTION hessra_authz.verify_capability(
    token text, resource text, operation text, designations jsonb, subject text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_capability(
        hessra_authz._context(), NULL,
        verify_capability.token, verify_capability.resource, verify_capability.operation,
        verify_capability.designations, verify_capability.subject);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_capability(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)),
            verify_capability.token, verify_capability.resource, verify_capability.operation,
            verify_capability.designations, verify_capability.subject);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz.verify_capability(text, text, text, jsonb, text) IS
    'True if the capability token is valid now and grants operation on resource, given the designations (a JSON object label -> text value, or null to declare a label without a value) and this database''s anchor; with a subject, only if the right names it. Designation values must come from rows, policy literals or verified tokens, never from session settings. The labels anchor and facet, or a label given twice, are an ERROR.';

CREATE FUNCTION hessra_authz.explain_capability(
    token text, resource text, operation text, designations jsonb DEFAULT '{}', subject text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    admin boolean := hessra_authz._is_admin();
    outcome text := hessra_authz._explain_capability(
        hessra_authz._context(), NULL, admin,
        explain_capability.token, explain_capability.resource, explain_capability.operation,
        explain_capability.designations, explain_capability.subject);
    result jsonb;
BEGIN
    IF pg_catalog.left(outcome, 1) = 's' THEN
        outcome := hessra_authz._explain_capability(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)), admin,
            explain_capability.token, explain_capability.resource, explain_capability.operation,
            explain_capability.designations, explain_capability.subject);
    END IF;
    result := outcome::jsonb;
    IF result ? 'error' THEN
        PERFORM hessra_authz._raise(outcome);
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION hessra_authz.explain_capability(text, text, text, jsonb, text) IS
    'Why verify_capability accepts or denies: {valid, reason, kid, expires_at, revocation_ids, detail} with the reasons of capability tokens (designation_mismatch:<label>, anchor_mismatch, not_activated, trusting_designation_on_supplied_label:<label>, ...); kid and detail for key administrators only.';

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
COMMENT ON FUNCTION hessra_authz.authorized(text, text) IS
    'verify_token for the current token and subject; a capability token is verified as a capability (this database''s anchor supplied, the subject checked only when set). In RLS policies write (SELECT hessra_authz.authorized(...)) so it runs once per statement.';

CREATE FUNCTION hessra_authz.capability_rows(resource text, operation text, row_labels text[], fixed jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN (hessra_authz._capability_rows_slow(capability_rows.resource, capability_rows.operation, capability_rows.row_labels, capability_rows.fixed, NULL::pg_catalog.text, 'sets'))[2]::pg_catalog.jsonb;
END
$$;
COMMENT ON FUNCTION hessra_authz.capability_rows(text, text, text[], jsonb) IS
    'For the current token (hessra.token, and hessra.subject when set): {statement: {verdict: filter|none|fallback, reason}, sets: {label: {kind: all|nonnull|set|fallback, values|why}}} for a designation policy over row_labels (and fixed designations written by the policy author), once per statement.';

CREATE FUNCTION hessra_authz.designation_values(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS text[]
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
COMMENT ON FUNCTION hessra_authz.designation_values(text, text, text[], text, jsonb) IS
    'The values of label a row may hold under the current token (filter verdict, a finite set); empty otherwise. Policies: col::text COLLATE "C" = ANY ((SELECT ...)::text[]).';

CREATE FUNCTION hessra_authz.designation_floor(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS text
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
COMMENT ON FUNCTION hessra_authz.designation_floor(text, text, text[], text, jsonb) IS
    ''''' when any non-NULL value of label is accepted (filter verdict), else NULL: col::text COLLATE "C" >= (SELECT ...) then matches every non-NULL row, none otherwise.';

CREATE FUNCTION hessra_authz.designation_nulls(resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}') RETURNS boolean
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
COMMENT ON FUNCTION hessra_authz.designation_nulls(text, text, text[], text, jsonb) IS
    'Whether rows whose label column is NULL are visible (the token does not restrict the label).';

CREATE FUNCTION hessra_authz.designation_fallback(resource text, operation text, row_labels text[], fixed jsonb DEFAULT '{}') RETURNS boolean
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
COMMENT ON FUNCTION hessra_authz.designation_fallback(text, text, text[], jsonb) IS
    'Whether the current token needs per-row verification under this policy (its checks give no exact set and the fallback setting is per_row): policies verify rows with designation_row() only then.';

-- PARALLEL SAFE, unlike the other wrappers: it runs per row, and a
-- parallel-restricted call there would keep every scan under a designation
-- policy serial. In a worker it works as in the leader (the token, subject
-- and transaction are the leader's; the configuration is read with the
-- leader's snapshot, freshness checked as everywhere); the set helpers stay
-- InitPlans, which the leader runs.
CREATE FUNCTION hessra_authz.designation_row(
    resource text, operation text, row_values jsonb, fixed jsonb DEFAULT '{}'
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- One expression: each PL/pgSQL expression costs its setup once per transaction.
    RETURN coalesce(
        hessra_authz._designation_row_check(hessra_authz._context(), pg_catalog.current_setting('hessra.token', true), pg_catalog.current_setting('hessra.subject', true),
            designation_row.resource, designation_row.operation, designation_row.row_values, designation_row.fixed),
        hessra_authz._designation_row_slow(designation_row.resource, designation_row.operation, designation_row.row_values, designation_row.fixed));
END
$$;
COMMENT ON FUNCTION hessra_authz.designation_row(text, text, jsonb, jsonb) IS
    'Per-row verification of the current token with a row''s label values (a JSON object; null declares the label without a value) and the policy''s fixed designations: the fallback of designation policies.';

-- Fill config_state's new columns (a new generation: every backend reloads).
SELECT hessra_authz._refresh_config_state();
