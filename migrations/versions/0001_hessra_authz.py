"""hessra_authz: the extension, its roles, and the keys and service chains of a policy repository

Upgrade (as a superuser):
- ``hessra_admin`` (created first if missing, marked as ours), then
  ``CREATE EXTENSION hessra_authz VERSION '0.1.0' CASCADE`` (the version
  this revision was written for; later revisions update it in place);
- ``GRANT hessra_admin`` to the ``admin_roles`` setting;
- the application role (``app_role``, default ``hessra_app``): NOLOGIN unless
  ``app_login``, never superuser nor BYPASSRLS; an existing role is kept as
  it is, but refused if it is superuser or has BYPASSRLS;
- the root public keys of the policy repository (``public_key.pem`` /
  ``hessra_key.pem``) and of HESSRA_PUBLIC_KEY / HESSRA_PUBLIC_KEY_FILE;
- the service chains of its ``resources.toml`` (both layouts, read by
  :func:`hessra_pg.repository.checker.load_resources`).

Downgrade: DROP EXTENSION (keys, chains and revocations go with it; it fails
while other objects still use hessra_authz functions, so drop those first),
REVOKE hessra_admin from the admin roles, DROP ROLE for the roles this
migration created (kept, with a notice, while another database still uses
them), and DROP EXTENSION plpython3u unless other functions use PL/Python.

Revision ID: 0001_hessra_authz
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import context, op

from hessra_pg.alembic import run_sql  # also registers the hessra operations
from hessra_pg.repository.checker import RESOURCES_FILE, load_resources
from hessra_pg.errors import ConfigurationError
from hessra_pg.core.keys import canonical_public_key, public_key_from_env, read_key_file
from hessra_pg.rls.policies import quote_ident, quote_literal

revision: str = "0001_hessra_authz"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("hessra_pg.migrations")

MARKER = "created by hessra-pg migrations"
KEY_FILES = ("public_key.pem", "hessra_key.pem")
_TAG = "$hessra_migration$"


def _settings() -> dict[str, Any]:
    return dict(context.config.attributes.get("hessra") or {})


def _do(body: str) -> None:
    """Run a plpgsql block (names inside are quoted; the tag can't occur)."""
    if _TAG in body:
        raise ValueError("a role name contains the reserved text " + _TAG)
    run_sql(f"DO {_TAG}\nBEGIN\n{body}\nEND\n{_TAG}")


def _create_role(name: str, options: str) -> None:
    _do(f"""
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {quote_literal(name)}) THEN
        CREATE ROLE {quote_ident(name)} {options};
        COMMENT ON ROLE {quote_ident(name)} IS {quote_literal(MARKER)};
    ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {quote_literal(name)}
                  AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'hessra migrations: role % exists and is superuser or has BYPASSRLS', {quote_literal(name)}
            USING HINT = 'Row-level security does not apply to such a role: choose another name.';
    END IF;""")


def _drop_role_if_ours(name: str) -> None:
    _do(f"""
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = {quote_literal(name)}
               AND pg_catalog.shobj_description(r.oid, 'pg_authid') = {quote_literal(MARKER)}) THEN
        BEGIN
            DROP ROLE {quote_ident(name)};
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'hessra migrations: role % is still used elsewhere, kept (%)', {quote_literal(name)}, SQLERRM;
        END;
    END IF;""")


def repository_keys(repo: str | None) -> list[tuple[str, str]]:
    """(canonical public key, where it came from), without duplicates."""
    found: list[tuple[str, str]] = []
    if repo:
        for name in KEY_FILES:
            path = Path(repo) / name
            if path.is_file():
                text = read_key_file(str(path))
                if "PRIVATE KEY" in text:
                    raise ConfigurationError(f"{path} holds a private key: a policy repository keeps only the "
                                             "authority's public key")
                found.append((canonical_public_key(text), f"policy repository {name}"))
    env = public_key_from_env("HESSRA")
    if env is not None:
        found.append((str(env), "HESSRA_PUBLIC_KEY"))
    unique: dict[str, str] = {}
    for key, source in found:
        unique.setdefault(key, source)
    return list(unique.items())


def repository_chains(repo: str | None) -> dict[str, list[dict[str, str]]]:
    """The service chains of the repository's resources.toml (none without one)."""
    if not repo or not (Path(repo) / RESOURCES_FILE).is_file():
        return {}
    return load_resources(repo)


def upgrade() -> None:
    settings = _settings()
    repo = settings.get("policy_repo")
    if repo and not Path(repo).is_dir():
        raise ConfigurationError(f"policy_repo {repo} is not a directory")
    _create_role("hessra_admin", "NOLOGIN")
    op.create_hessra_extension(version="0.1.0")
    for role in settings.get("admin_roles", []):
        run_sql(f"GRANT hessra_admin TO {quote_ident(role)}")
    app_role = settings.get("app_role") or "hessra_app"
    login = "LOGIN" if settings.get("app_login") else "NOLOGIN"
    _create_role(app_role, f"{login} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION")

    keys = repository_keys(repo)
    if not keys:
        log.warning("no root public key (policy_repo public_key.pem / hessra_key.pem, HESSRA_PUBLIC_KEY): "
                    "every token is denied until one is added with hessra_authz.add_key()")
    for key, source in keys:
        op.add_hessra_key(key, comment=f"from {source} (hessra-pg migrations)")
    for name, nodes in sorted(repository_chains(repo).items()):
        op.set_hessra_service_chain(name, nodes)
    log.info("hessra_authz: %d key(s), %d service chain(s), application role %s",
             len(keys), len(repository_chains(repo)), app_role)


def downgrade() -> None:
    settings = _settings()
    op.drop_hessra_extension()
    for role in settings.get("admin_roles", []):
        _do(f"""
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {quote_literal(role)}) THEN
        REVOKE hessra_admin FROM {quote_ident(role)};
    END IF;""")
    _drop_role_if_ours(settings.get("app_role") or "hessra_app")
    _drop_role_if_ours("hessra_admin")
    # CASCADE created PL/Python; drop it too unless other functions use it.
    _do("""
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
                   WHERE l.lanname = 'plpython3u') THEN
        DROP EXTENSION IF EXISTS plpython3u;
    END IF;""")
