-- hessra_authz 0.5.0 -> 0.4.0: undoes hessra_authz--0.4.0--0.5.0.sql, section
-- by section (the Citus section at the end).

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Per-row calls (issue 15 item 3)
-- ---------------------------------------------------------------------------

-- ---------------------------------------------------------------------------
-- Citus mode (issue 15 item 2)
-- ---------------------------------------------------------------------------
