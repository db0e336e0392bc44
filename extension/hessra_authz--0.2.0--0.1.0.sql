-- hessra_authz 0.2.0 -> 0.1.0: puts back the 0.1.0 functions (the reverse of
-- hessra_authz--0.1.0--0.2.0.sql), for reversible migrations. Keys, chains and
-- revocations are untouched; the shared decision files stay in the data
-- directory, unused.

\echo Use "ALTER EXTENSION hessra_authz UPDATE TO '0.1.0'" to load this file. \quit

DROP FUNCTION hessra_authz.cache_stats();
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

CREATE FUNCTION hessra_authz._load_config(version text, keys jsonb, chains jsonb, revocations jsonb)
RETURNS void
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
server.load_config(plpy, version, keys, chains, revocations)
$$;

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

CREATE OR REPLACE FUNCTION hessra_authz._canonical_key(key text) RETURNS text
LANGUAGE plpython3u IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.canonical_key(plpy, key)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._canonical_chain(nodes jsonb) RETURNS text
LANGUAGE plpython3u IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.canonical_chain(plpy, nodes)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._authority_revocation_id(token text) RETURNS text
LANGUAGE plpython3u IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.authority_revocation_id(plpy, token)
$$;

CREATE OR REPLACE FUNCTION hessra_authz._config_version() RETURNS text
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
from hessra_pg import server
return server.config_version()
$$;

CREATE OR REPLACE FUNCTION hessra_authz._bump_generation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE hessra_authz.config_state SET generation = generation + 1;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION hessra_authz._sync() RETURNS text
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

DROP FUNCTION hessra_authz._config_changed(text);

REVOKE EXECUTE ON FUNCTION
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
    hessra_authz._decision(text),
    hessra_authz._load_config(text, jsonb, jsonb, jsonb)
FROM PUBLIC;

CREATE OR REPLACE FUNCTION hessra_authz.verify_token(
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

CREATE OR REPLACE FUNCTION hessra_authz.verify_capability(token text, resource text, operation text) RETURNS boolean
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

CREATE OR REPLACE FUNCTION hessra_authz.verify_service_chain(
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

CREATE OR REPLACE FUNCTION hessra_authz.verify_service_chain(
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

CREATE OR REPLACE FUNCTION hessra_authz.explain(
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

CREATE OR REPLACE FUNCTION hessra_authz.verify_identity(
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

CREATE OR REPLACE FUNCTION hessra_authz.verify_bearer(token text, domain text DEFAULT NULL) RETURNS boolean
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

CREATE OR REPLACE FUNCTION hessra_authz.token_identity(token text, domain text DEFAULT NULL) RETURNS text
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

CREATE OR REPLACE FUNCTION hessra_authz.authorized(resource text, operation text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz.verify_token(hessra_authz.current_token(), hessra_authz.current_subject(),
                                     authorized.resource, authorized.operation);
END
$$;
COMMENT ON FUNCTION hessra_authz.authorized(text, text) IS
    'verify_token for the current token and subject. In RLS policies write (SELECT hessra_authz.authorized(...)) so it runs once per statement.';

CREATE OR REPLACE FUNCTION hessra_authz._current_scope() RETURNS text[]
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

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_scope() RETURNS jsonb
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

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_subtree_start() RETURNS text
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

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_subtree_end() RETURNS text
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

CREATE OR REPLACE FUNCTION hessra_authz.current_identity_revoked_below() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((hessra_authz._current_scope())[4:], '{}');
END
$$;
COMMENT ON FUNCTION hessra_authz.current_identity_revoked_below() IS
    'Revoked identities below the current token''s identity (their rows must stay hidden).';

CREATE OR REPLACE FUNCTION hessra_authz.current_identity() RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN (hessra_authz._current_scope())[2]; END $$;
COMMENT ON FUNCTION hessra_authz.current_identity() IS
    'token_identity of the token in hessra.token (NULL if none or invalid).';

CREATE OR REPLACE FUNCTION hessra_authz.token_resources(token text, subject text, operation text) RETURNS text[]
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

CREATE OR REPLACE FUNCTION hessra_authz.authorized_resources(operation text) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN hessra_authz.token_resources(hessra_authz.current_token(), hessra_authz.current_subject(),
                                        authorized_resources.operation);
END
$$;
COMMENT ON FUNCTION hessra_authz.authorized_resources(text) IS
    'token_resources for the current token and subject. In policies: col = ANY ((SELECT hessra_authz.authorized_resources(''read''))::text[]).';
