-- hessra_authz 0.4.0 -> 0.5.0: beyond one server (issue 15).
-- * Per-row calls cheap enough for policies evaluated once per row (Citus
--   mode, and the bare form): see the first section.
-- * Citus mode: see the section at the end.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.5.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Per-row calls (issue 15 item 3)
-- ---------------------------------------------------------------------------

-- A policy evaluated once per row (Citus mode, or the bare form) calls
-- authorized() or verify_token() with the same arguments for every row.
-- Both become SQL functions with a SQL-standard body, which PostgreSQL
-- inlines into the calling query: per row, one PL/Python call (*_fast)
-- answers from what a trusted call recorded for this snapshot
-- (hessra_pg.plpython.row_answers) or returns NULL; only then does the query
-- call the SECURITY DEFINER wrapper (*_slow, the 0.4.0 function), which
-- verifies as before and records the answer. Unpinned: a SQL-standard body
-- binds every name (operators included) when it is created, so no
-- search_path can change what it calls, and a SET clause would forbid the
-- inlining. current_token() and current_subject() become SQL for the same
-- reason.

-- authorized()'s trusted entry point records its answers for the next rows.
CREATE OR REPLACE FUNCTION hessra_authz._authorized(
    context text, version text, token text, subject text, resource text, operation text
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5
return abi_0_5.authorized(context, version, token, subject, resource, operation)
$$;

-- verify_token()'s: the arguments of the fast path's miss (the query
-- evaluates them once: an argument of a megabyte isn't held twice).
CREATE FUNCTION hessra_authz._verify_token_pending(context text, version text) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5
return abi_0_5.verify_token(context, version)
$$;
REVOKE EXECUTE ON FUNCTION hessra_authz._verify_token_pending(text, text) FROM PUBLIC;

-- The per-row answers: any role may call these (the inlined bodies run as
-- the caller). They run no SQL, so no search_path pin; they only read what
-- a trusted call of this backend recorded, answer NULL for anything else
-- and never raise, so forged arguments can at most miss. The function is
-- looked up once per backend and kept in the procedure's globals (an import
-- statement on every call costs more than the rest of the call). COST 1:
-- the planner adds the cost of both arms of the COALESCE, and the second
-- (cost 100, the default) runs once per statement; without it, a per-row
-- policy's estimate doubles and crosses the JIT thresholds that the same
-- query stayed under with 0.4.0 (LLVM's optimizer holds ~15 MiB after).
CREATE FUNCTION hessra_authz._authorized_fast(
    snapshot pg_catalog.pg_snapshot, token text, subject text, resource text, operation text
) RETURNS boolean
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED COST 1
AS $$
global _fast
try:
    return _fast(snapshot, token, subject, resource, operation)
except NameError:
    from hessra_pg.plpython.abi_0_5 import authorized_fast as _fast
return _fast(snapshot, token, subject, resource, operation)
$$;
COMMENT ON FUNCTION hessra_authz._authorized_fast(pg_catalog.pg_snapshot, text, text, text, text) IS
    'Internal (authorized() per row): the answer a trusted call recorded for this snapshot, else NULL.';

CREATE FUNCTION hessra_authz._verify_token_fast(
    snapshot pg_catalog.pg_snapshot, token text, subject text, resource text, operation text, domain text,
    prefix text
) RETURNS boolean
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED COST 1
AS $$
global _fast
try:
    return _fast(snapshot, token, subject, resource, operation, domain, prefix)
except NameError:
    from hessra_pg.plpython.abi_0_5 import verify_token_fast as _fast
return _fast(snapshot, token, subject, resource, operation, domain, prefix)
$$;
COMMENT ON FUNCTION hessra_authz._verify_token_fast(pg_catalog.pg_snapshot, text, text, text, text, text, text) IS
    'Internal (verify_token() per row): the answer a trusted call recorded for this snapshot, else NULL (and the arguments kept for _verify_token_slow).';

-- The whole way, as 0.4.0's public functions went.
CREATE FUNCTION hessra_authz._authorized_slow(resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._authorized(
        hessra_authz._context(), NULL, NULLIF(pg_catalog.current_setting('hessra.token', true), ''), NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
        _authorized_slow.resource, _authorized_slow.operation);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._authorized(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)), NULLIF(pg_catalog.current_setting('hessra.token', true), ''), NULLIF(pg_catalog.current_setting('hessra.subject', true), ''),
            _authorized_slow.resource, _authorized_slow.operation);
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz._authorized_slow(text, text) IS
    'Internal (authorized() when no answer is recorded): verifies the current token and records the answer.';

-- No arguments: _verify_token_fast kept them at its miss, just before.
-- Called alone, it answers for the caller's own latest arguments, or false.
CREATE FUNCTION hessra_authz._verify_token_slow() RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outcome text := hessra_authz._verify_token_pending(hessra_authz._context(), NULL);
BEGIN
    IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    IF pg_catalog.left(outcome, 1) = 's' THEN  -- the configuration must be read first
        outcome := hessra_authz._verify_token_pending(
            hessra_authz._context(), hessra_authz._sync(pg_catalog.substr(outcome, 2)));
        IF outcome = 't' THEN RETURN true; ELSIF outcome = 'f' THEN RETURN false; END IF;
    END IF;
    PERFORM hessra_authz._raise(outcome);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION hessra_authz._verify_token_slow() IS
    'Internal (verify_token() when no answer is recorded): verifies the arguments _verify_token_fast kept and records the answer.';

-- The bodies are small on purpose: PostgreSQL reads an inlined body from
-- its stored tree every time it plans a query that calls it, so each node
-- costs planning time in every statement (the snapshot goes as it is, and
-- '' becomes NULL in Python). The snapshot's text is what _context() gives
-- the trusted path: the two agree on it.
CREATE OR REPLACE FUNCTION hessra_authz.authorized(resource text, operation text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN coalesce(
    hessra_authz._authorized_fast(pg_catalog.pg_current_snapshot(), pg_catalog.current_setting('hessra.token', true),
                                  pg_catalog.current_setting('hessra.subject', true), resource, operation),
    hessra_authz._authorized_slow(resource, operation));

CREATE OR REPLACE FUNCTION hessra_authz.verify_token(
    token text, subject text, resource text, operation text,
    domain text DEFAULT NULL, prefix text DEFAULT NULL
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN coalesce(
    hessra_authz._verify_token_fast(pg_catalog.pg_current_snapshot(), token, subject, resource, operation, domain,
                                    prefix),
    hessra_authz._verify_token_slow());

CREATE OR REPLACE FUNCTION hessra_authz.current_token() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NULLIF(pg_catalog.current_setting('hessra.token', true), '');

CREATE OR REPLACE FUNCTION hessra_authz.current_subject() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NULLIF(pg_catalog.current_setting('hessra.subject', true), '');

-- ---------------------------------------------------------------------------
-- Logical replication (issue 15 item 1)
-- ---------------------------------------------------------------------------

-- A subscriber's apply worker fires ROW triggers only, so the statement
-- triggers bump_generation never ran for an applied change and a replicated
-- revocation was never enforced there. refresh_on_apply is a deferred row
-- trigger on every configuration table, ENABLE REPLICA: it fires only in
-- replica mode (the apply worker; a role needs superuser to enter it), where
-- it refreshes config_state once per transaction, at commit, when every
-- applied row is in. Elsewhere it is not fired at all and queues nothing (a
-- deferred ALWAYS trigger would leave pending trigger events that make a
-- later ALTER TABLE or DROP EXTENSION in the same transaction fail); the
-- statement triggers refresh there.
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
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE REPLICA TRIGGER refresh_on_apply', config.rel);
    END LOOP;
END
$$;

-- _config_ddl also turns refresh_on_apply back into ENABLE REPLICA after a
-- plain ENABLE (which makes a trigger origin-only); the configuration
-- tables by name, so that the list holds with or without those added later.
CREATE OR REPLACE FUNCTION hessra_authz._config_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    config_tables pg_catalog.oid[] := ARRAY(
        SELECT r.oid FROM pg_catalog.pg_class AS r
         WHERE r.relnamespace OPERATOR(pg_catalog.=) 'hessra_authz'::pg_catalog.regnamespace
           AND r.relname OPERATOR(pg_catalog.=) ANY (ARRAY['keys', 'service_chains', 'revocations',
                                                           'capability_settings', 'audit_settings']));
    origin_only record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
                WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND c.objid OPERATOR(pg_catalog.=) ANY (config_tables)) THEN
        PERFORM hessra_authz._refresh_config_state();
        -- (This ALTER fires the event trigger once more; the triggers are
        -- then ALWAYS or REPLICA, so it stops there.)
        FOR origin_only IN
            SELECT t.tgrelid::pg_catalog.regclass AS rel, t.tgname
              FROM pg_catalog.pg_trigger AS t
             WHERE t.tgname OPERATOR(pg_catalog.=) ANY (ARRAY['bump_generation', 'refresh_on_apply']::name[])
               AND t.tgenabled OPERATOR(pg_catalog.=) 'O'
               AND t.tgrelid OPERATOR(pg_catalog.=) ANY (config_tables)
        LOOP
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE %s TRIGGER %I', origin_only.rel,
                                      CASE WHEN origin_only.tgname OPERATOR(pg_catalog.=) 'refresh_on_apply'
                                           THEN 'REPLICA' ELSE 'ALWAYS' END, origin_only.tgname);
        END LOOP;
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Audit and stats (issue 16)
-- ---------------------------------------------------------------------------

-- Audit levels (hessra_pg.plpython.audit, docs/audit.md): one row for the
-- database (role NULL) and one per role with its own level. Not a session
-- setting: only administrators write it (set_audit), and it travels with
-- the rest of the configuration (the generation bump; _sync() reads it with
-- the statement's snapshot). regrole: dumped and restored by role name.
CREATE TABLE hessra_authz.audit_settings (
    role        pg_catalog.regrole,
    level       text NOT NULL CHECK (level IN ('off', 'denied', 'all')),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT audit_settings_role_key UNIQUE NULLS NOT DISTINCT (role)
);
COMMENT ON TABLE hessra_authz.audit_settings IS
    'Audit levels (off, denied, all): the database''s (role NULL; no row means off) and roles'' own. Each audited decision writes one JSON line to the server log. Write through set_audit().';
SELECT pg_catalog.pg_extension_config_dump('hessra_authz.audit_settings', '');
REVOKE ALL ON hessra_authz.audit_settings FROM PUBLIC;
CREATE TRIGGER bump_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hessra_authz.audit_settings
    FOR EACH STATEMENT EXECUTE FUNCTION hessra_authz._bump_generation();
ALTER TABLE hessra_authz.audit_settings ENABLE ALWAYS TRIGGER bump_generation;

-- Refreshed on a logical-replication subscriber too (refresh_on_apply,
-- the section above; _config_ddl finds this table by name).
DO $refresh$
BEGIN
    -- (Guarded: this section does not depend on the order of the sections.)
    IF pg_catalog.to_regprocedure('hessra_authz._refresh_on_apply()') IS NOT NULL THEN
        CREATE CONSTRAINT TRIGGER refresh_on_apply AFTER INSERT OR UPDATE OR DELETE ON hessra_authz.audit_settings
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hessra_authz._refresh_on_apply();
        ALTER TABLE hessra_authz.audit_settings ENABLE REPLICA TRIGGER refresh_on_apply;
    END IF;
END
$refresh$;

-- The levels reach each backend's runtime with the rest of the
-- configuration: config_state keeps them (the same refresh, the same
-- generation), so _sync() reads one row and calls into Python once, which
-- is what a new connection's first verification pays for (issue 12).
ALTER TABLE hessra_authz.config_state
    ADD COLUMN audit_level text,
    ADD COLUMN audit_role_oids pg_catalog.oid[] NOT NULL DEFAULT '{}',
    ADD COLUMN audit_role_levels text[] NOT NULL DEFAULT '{}';

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
           fallback = coalesce(settings.fallback, 'per_row'),
           audit_level = a.level, audit_role_oids = coalesce(a.role_oids, '{}'),
           audit_role_levels = coalesce(a.role_levels, '{}')
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
              FROM hessra_authz.revocations AS r) AS r,
           (SELECT pg_catalog.max(a.level) FILTER (WHERE a.role IS NULL) AS level,
                   pg_catalog.array_agg(a.role::pg_catalog.oid ORDER BY a.role::pg_catalog.oid)
                       FILTER (WHERE a.role IS NOT NULL) AS role_oids,
                   pg_catalog.array_agg(a.level ORDER BY a.role::pg_catalog.oid)
                       FILTER (WHERE a.role IS NOT NULL) AS role_levels
              FROM hessra_authz.audit_settings AS a) AS a
      LEFT JOIN hessra_authz.capability_settings AS settings ON true;
    -- This backend's verifier must not trust its snapshot comparison while
    -- this transaction is open (hessra_pg.plpython.runtime explains why).
    PERFORM hessra_authz._config_changed(pg_catalog.pg_current_xact_id()::text);
END
$$;

DROP FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[], text[], text[],
                                        text[], oid, text, text, boolean, text);
CREATE FUNCTION hessra_authz._load_config(
    version text, kids integer[], public_keys text[], not_before_us int8[], not_after_us int8[],
    node_chains text[], node_kinds text[], node_components text[], node_keys text[],
    revoked_ids text[], revoked_identities text[], database oid, database_tag text,
    anchor text, require_anchor boolean, fallback text,
    audit_level text, audit_role_oids pg_catalog.oid[], audit_role_levels text[]
) RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5
return abi_0_5.load_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds,
                           node_components, node_keys, revoked_ids, revoked_identities, database, database_tag,
                           anchor, require_anchor, fallback, audit_level, audit_role_oids, audit_role_levels)
$$;
REVOKE EXECUTE ON FUNCTION hessra_authz._load_config(text, integer[], text[], int8[], int8[], text[], text[], text[],
                                                     text[], text[], text[], oid, text, text, boolean, text, text,
                                                     pg_catalog.oid[], text[]) FROM PUBLIC;

-- One statement: the version, and the configuration only when it differs
-- (a CASE arm and its subqueries run only when taken), so a new
-- connection's first call plans and runs one query here.
CREATE OR REPLACE FUNCTION hessra_authz._sync(held text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    version text;
    outcome text;
BEGIN
    SELECT s.version,
           CASE WHEN s.version IS DISTINCT FROM _sync.held THEN hessra_authz._load_config(
               s.version, c.kids, c.public_keys, c.not_before_us, c.not_after_us, c.node_chains, c.node_kinds,
               c.node_components, c.node_keys, c.revoked_ids, c.revoked_identities,
               (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()),
               (SELECT d.xmin::text FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()),
               c.anchor, c.require_anchor, c.fallback, c.audit_level, c.audit_role_oids, c.audit_role_levels)
           END
      INTO version, outcome
      FROM hessra_authz.config_state AS c,
           LATERAL (SELECT c.generation::text || '/' || c.xmin::text) AS s(version);
    IF outcome <> '' THEN
        PERFORM hessra_authz._raise(outcome);
    END IF;
    RETURN version;
END
$$;

CREATE FUNCTION hessra_authz.set_audit(level text, role name DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target pg_catalog.regrole;
BEGIN
    IF set_audit.level IS NULL AND set_audit.role IS NULL THEN
        RAISE EXCEPTION 'hessra_authz: the database''s audit level must be off, denied or all'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF set_audit.level NOT IN ('off', 'denied', 'all') THEN
        RAISE EXCEPTION 'hessra_authz: audit level must be off, denied or all'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'NULL with a role removes that role''s own level.';
    END IF;
    IF set_audit.role IS NOT NULL THEN
        SELECT r.oid::pg_catalog.regrole INTO target FROM pg_catalog.pg_roles AS r WHERE r.rolname = set_audit.role;
        IF target IS NULL THEN
            RAISE EXCEPTION 'hessra_authz: role "%" does not exist', set_audit.role
                USING ERRCODE = 'undefined_object';
        END IF;
    END IF;
    IF set_audit.level IS NULL THEN
        DELETE FROM hessra_authz.audit_settings AS a WHERE a.role = target;
        RETURN;
    END IF;
    UPDATE hessra_authz.audit_settings AS a SET level = set_audit.level, updated_at = pg_catalog.now()
     WHERE a.role IS NOT DISTINCT FROM target;
    IF NOT FOUND THEN
        INSERT INTO hessra_authz.audit_settings (role, level) VALUES (target, set_audit.level);
    END IF;
END
$$;
COMMENT ON FUNCTION hessra_authz.set_audit(text, name) IS
    'Set the audit level (off, denied, all) of this database, or with a role that role''s own level (NULL removes it). Each audited decision writes one JSON line to the server log (docs/audit.md). Admin only; enforced by every backend''s next statement.';

CREATE FUNCTION hessra_authz._stats(admin boolean) RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5_audit
return abi_0_5_audit.stats(admin)
$$;

CREATE FUNCTION hessra_authz.stats() RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz._stats(hessra_authz._is_admin())::jsonb;
END
$$;
COMMENT ON FUNCTION hessra_authz.stats() IS
    'This backend''s verifier since its start or reset_stats(): decisions computed by kind, outcome and reason; verification time (count, sum, max, p50/p90/p99 in microseconds, histogram buckets); hits and misses of each cache and of the shared decision table; audit lines written and suppressed. Key reasons and audit levels for key administrators only. Counts only, never tokens.';

-- No SQL, no arguments: any role may reset its own backend's counters.
CREATE FUNCTION hessra_authz.reset_stats() RETURNS void
LANGUAGE plpython3u VOLATILE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5_audit
abi_0_5_audit.reset_stats()
$$;
COMMENT ON FUNCTION hessra_authz.reset_stats() IS
    'Zero this backend''s counters (stats()): decisions, verification times, cache hits and misses, audit line counts.';

-- The numbers of every backend of this database (hessra_pg.plpython.db_stats,
-- docs/audit.md): each backend writes a snapshot of its counters at most once
-- a second, and at exit, into files next to the shared decision table's (the
-- server's OS user only); this sums those of the backends pg_stat_activity
-- lists (pid and backend start) and of those that exited. No table, no
-- write: works on a hot standby. For administrators and pg_monitor.
CREATE FUNCTION hessra_authz._read_database_stats(admin boolean, database oid, database_tag text, pids integer[],
                                                  starts bigint[], reset boolean) RETURNS text
LANGUAGE plpython3u VOLATILE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5_audit
return abi_0_5_audit.database_stats(admin, database, database_tag, pids, starts, reset)
$$;

CREATE FUNCTION hessra_authz._database_stats(reset boolean) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
SELECT hessra_authz._read_database_stats(hessra_authz._is_admin(), d.oid, d.xmin::text, s.pids, s.starts,
                                         _database_stats.reset)::jsonb
  FROM pg_catalog.pg_database AS d,
       LATERAL (SELECT pg_catalog.array_agg(a.pid ORDER BY a.pid) AS pids,
                       pg_catalog.array_agg((EXTRACT(epoch FROM a.backend_start) * 1000000)::bigint
                                            ORDER BY a.pid) AS starts
                  FROM pg_catalog.pg_stat_activity AS a
                 WHERE a.datid = d.oid AND a.backend_start IS NOT NULL) AS s
 WHERE d.datname = pg_catalog.current_database()
$$;

CREATE FUNCTION hessra_authz.database_stats() RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
SELECT hessra_authz._database_stats(false)
$$;
COMMENT ON FUNCTION hessra_authz.database_stats() IS
    'This database''s verifier across its backends (live ones and those that exited) since reset_database_stats(): decisions computed by kind, outcome and reason; verification time histogram and p50/p90/p99; hits and misses of each cache; the shared decision table''s hit rate; audit lines written and suppressed. A backend''s numbers arrive at most once a second and at its exit. Administrators and pg_monitor; counts only, never tokens.';

CREATE FUNCTION hessra_authz.reset_database_stats() RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
SELECT hessra_authz._database_stats(true)
$$;
COMMENT ON FUNCTION hessra_authz.reset_database_stats() IS
    'Start database_stats() afresh for every backend of this database (their own stats() are unchanged); returns the numbers before the reset. Administrators only.';

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
    'hessra_authz.set_capability_options(boolean, text)',
    'hessra_authz.set_audit(text, name)',
    'hessra_authz.database_stats()',
    'hessra_authz.reset_database_stats()'
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
        hessra_authz.capability_settings, hessra_authz.audit_settings TO %I',
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
        hessra_authz.capability_settings, hessra_authz.audit_settings FROM %I',
        revoke_admin.role);
END
$$;

REVOKE EXECUTE ON FUNCTION
    hessra_authz._stats(boolean),
    hessra_authz.set_audit(text, name),
    hessra_authz._read_database_stats(boolean, oid, text, integer[], bigint[], boolean),
    hessra_authz._database_stats(boolean),
    hessra_authz.database_stats(),
    hessra_authz.reset_database_stats()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hessra_authz.database_stats() TO pg_monitor;

DO $grant$
DECLARE
    grantee name;
BEGIN
    -- Whoever may run add_key here may set the audit level and read it.
    FOR grantee IN
        SELECT a.grantee::pg_catalog.regrole::text
          FROM pg_catalog.aclexplode((SELECT p.proacl FROM pg_catalog.pg_proc AS p
                                       WHERE p.oid = 'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)'::pg_catalog.regprocedure)) AS a
         WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> 0
           AND a.grantee <> (SELECT p.proowner FROM pg_catalog.pg_proc AS p
                              WHERE p.oid = 'hessra_authz.add_key(text, integer, timestamp with time zone, timestamp with time zone, text)'::pg_catalog.regprocedure)
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION hessra_authz.set_audit(text, name) TO %s', grantee);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION hessra_authz.database_stats(), '
                                  'hessra_authz.reset_database_stats() TO %s', grantee);
        EXECUTE pg_catalog.format('GRANT SELECT ON hessra_authz.audit_settings TO %s', grantee);
    END LOOP;
END
$grant$;


-- ---------------------------------------------------------------------------
-- Designation fast path (issue 13)
-- ---------------------------------------------------------------------------

-- A designation policy calls designation_values/_floor/_nulls/_fallback
-- once per statement each (InitPlans; a one-row lookup of a matching row
-- runs one). They become SQL functions with a SQL-standard body, which
-- PostgreSQL inlines into the calling query: one PL/Python call
-- (_designation_values_fast/_designation_flag_fast) answers from what a
-- trusted call of this backend recorded for this snapshot
-- (hessra_pg.plpython.designation_answers) or returns NULL; only then does
-- the query call the SECURITY DEFINER way (_designation_values_slow,
-- _designation_flag_slow: 0.4.0's wrappers' slow path), which computes the
-- statement's context itself, verifies (or finds the sets in the runtime's
-- caches) and records the
-- answers of every label of the policy at once. Unpinned, as authorized()
-- (Per-row calls, above): a SQL-standard body binds every name when it is
-- created, and a SET clause would forbid the inlining.

-- The trusted computation (the helpers' slow path and capability_rows())
-- records the answers for the next calls.
CREATE OR REPLACE FUNCTION hessra_authz._capability_rows(
    context text, version text, token text, subject text, resource text, operation text, row_labels text[], fixed jsonb,
    label text, want text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED
AS $$
from hessra_pg.plpython import abi_0_5_designation
return abi_0_5_designation.capability_rows(context, version, token, subject, resource, operation, row_labels, fixed,
                                           label, want)
$$;

-- The recorded answers: any role may call these (the inlined bodies run as
-- the caller). They run no SQL, so no search_path pin; they only read what
-- a trusted call of this backend recorded, answer NULL for anything else
-- and never raise, so forged arguments can at most miss. The function is
-- kept in the procedure's globals (an import per call costs more than the
-- rest of the call); COST 1 as the per-row fast functions.
CREATE FUNCTION hessra_authz._designation_values_fast(
    snapshot pg_catalog.pg_snapshot, token text, subject text, resource text, operation text, row_labels text[],
    fixed jsonb, label text
) RETURNS text[]
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED COST 1
AS $$
global _fast
try:
    return _fast(snapshot, token, subject, resource, operation, row_labels, fixed, label)
except NameError:
    from hessra_pg.plpython.abi_0_5_designation import values_fast as _fast
return _fast(snapshot, token, subject, resource, operation, row_labels, fixed, label)
$$;
COMMENT ON FUNCTION hessra_authz._designation_values_fast(pg_catalog.pg_snapshot, text, text, text, text, text[], jsonb, text) IS
    'Internal (designation_values()): the answer a trusted call recorded for this snapshot, else NULL.';

CREATE FUNCTION hessra_authz._designation_flag_fast(
    snapshot pg_catalog.pg_snapshot, token text, subject text, resource text, operation text, row_labels text[],
    fixed jsonb, label text, want text
) RETURNS boolean
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED COST 1
AS $$
global _fast
try:
    return _fast(snapshot, token, subject, resource, operation, row_labels, fixed, label, want)
except NameError:
    from hessra_pg.plpython.abi_0_5_designation import flag_fast as _fast
return _fast(snapshot, token, subject, resource, operation, row_labels, fixed, label, want)
$$;
COMMENT ON FUNCTION hessra_authz._designation_flag_fast(pg_catalog.pg_snapshot, text, text, text, text, text[], jsonb, text, text) IS
    'Internal (designation_floor/_nulls/_fallback()): the flag a trusted call recorded for this snapshot, else NULL.';

-- The whole way (0.4.0's _capability_rows_slow: the configuration read
-- first when it must be; errors raised), as the owner, answering in the
-- helpers' own types: an inlined body then holds one node for it, which
-- every statement initializes even when unused. Each records every label's
-- answers (_capability_rows, above).
CREATE FUNCTION hessra_authz._designation_values_slow(
    resource text, operation text, row_labels text[], fixed jsonb, label text
) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (hessra_authz._capability_rows_slow(
        _designation_values_slow.resource, _designation_values_slow.operation, _designation_values_slow.row_labels,
        _designation_values_slow.fixed, _designation_values_slow.label, 'values'))[2:];
END
$$;
COMMENT ON FUNCTION hessra_authz._designation_values_slow(text, text, text[], jsonb, text) IS
    'Internal (designation_values() when no answer is recorded): computes the sets for the current token and records every label''s answers.';

CREATE FUNCTION hessra_authz._designation_flag_slow(
    resource text, operation text, row_labels text[], fixed jsonb, label text, want text
) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (hessra_authz._capability_rows_slow(
        _designation_flag_slow.resource, _designation_flag_slow.operation, _designation_flag_slow.row_labels,
        _designation_flag_slow.fixed, _designation_flag_slow.label, _designation_flag_slow.want))[2]::pg_catalog.bool;
END
$$;
COMMENT ON FUNCTION hessra_authz._designation_flag_slow(text, text, text[], jsonb, text, text) IS
    'Internal (designation_floor/_nulls/_fallback() when no answer is recorded): computes the sets for the current token and records every label''s answers.';

-- Same names, arguments and answers as 0.4.0 (the policies already written
-- call them); the snapshot goes as it is and '' becomes NULL in Python,
-- keeping the inlined bodies small (they are planned in every statement).
CREATE OR REPLACE FUNCTION hessra_authz.designation_values(
    resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}'
) RETURNS text[]
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN coalesce(
    hessra_authz._designation_values_fast(pg_catalog.pg_current_snapshot(), pg_catalog.current_setting('hessra.token', true),
        pg_catalog.current_setting('hessra.subject', true), resource, operation, row_labels, fixed, label),
    hessra_authz._designation_values_slow(resource, operation, row_labels, fixed, label));

CREATE OR REPLACE FUNCTION hessra_authz.designation_floor(
    resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}'
) RETURNS text
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN CASE WHEN coalesce(
    hessra_authz._designation_flag_fast(pg_catalog.pg_current_snapshot(), pg_catalog.current_setting('hessra.token', true),
        pg_catalog.current_setting('hessra.subject', true), resource, operation, row_labels, fixed, label, 'floor'),
    hessra_authz._designation_flag_slow(resource, operation, row_labels, fixed, label, 'floor'))
    THEN ''::pg_catalog.text END;

CREATE OR REPLACE FUNCTION hessra_authz.designation_nulls(
    resource text, operation text, row_labels text[], label text, fixed jsonb DEFAULT '{}'
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN coalesce(
    hessra_authz._designation_flag_fast(pg_catalog.pg_current_snapshot(), pg_catalog.current_setting('hessra.token', true),
        pg_catalog.current_setting('hessra.subject', true), resource, operation, row_labels, fixed, label, 'nulls'),
    hessra_authz._designation_flag_slow(resource, operation, row_labels, fixed, label, 'nulls'));

CREATE OR REPLACE FUNCTION hessra_authz.designation_fallback(
    resource text, operation text, row_labels text[], fixed jsonb DEFAULT '{}'
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN coalesce(
    hessra_authz._designation_flag_fast(pg_catalog.pg_current_snapshot(), pg_catalog.current_setting('hessra.token', true),
        pg_catalog.current_setting('hessra.subject', true), resource, operation, row_labels, fixed, NULL, 'fallback'),
    hessra_authz._designation_flag_slow(resource, operation, row_labels, fixed, NULL, 'fallback'));

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
