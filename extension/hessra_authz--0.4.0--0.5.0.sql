-- hessra_authz 0.4.0 -> 0.5.0: beyond one server (issue 15).
-- * Per-row calls cheap enough for policies evaluated once per row (Citus
--   mode, and the bare form): see the first section.
-- * Citus mode: see the section at the end.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.5.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Per-row calls (issue 15 item 3)
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- Citus mode (issue 15 item 2)
-- ---------------------------------------------------------------------------
