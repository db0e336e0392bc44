"""PL/Python entry points that extension version 0.5.0 adds or changes
(per-row calls, issue 15 item 3); its other functions keep calling
hessra_pg.plpython.abi_0_3 and abi_0_4, whose conventions these share.

`authorized()` and `verify_token()` are SQL functions that PostgreSQL
inlines into the calling query. A policy evaluated once per row then costs
one call of a `*_fast` function per row: it answers from what a trusted
call recorded for this snapshot (hessra_pg.plpython.row_answers) or returns
None, and only then does the query call the SECURITY DEFINER wrapper,
which verifies through `authorized`/`verify_token` below and
records the answer. The `*_fast` functions may be called by any role with
any arguments: they only read (verify_token_fast also keeps the arguments
of a miss for the call that follows), never raise, and a forged argument
can only miss.
"""

from __future__ import annotations

from . import imports_without_gc

with imports_without_gc():
    from .abi_0_3 import _bool, _entry, take_config
    from .runtime import RUNTIME, CapabilitySettings

# -- per-row fast paths (any role may call them; RUNTIME.rows lives as long as the backend) --

#: authorized_fast(snapshot, token, subject, resource, operation): the settings as they
#: are ('' is none, as the trusted wrapper's NULLIF says); no domain or prefix.
authorized_fast = RUNTIME.rows.reader("authorized", blank_is_none=True)
#: verify_token_fast(snapshot, token, subject, resource, operation, domain, prefix):
#: a miss keeps the arguments for verify_token() below (the query passes them once).
verify_token_fast = RUNTIME.rows.reader("verify_token", stash=True)


# -- trusted entry points (revoked from PUBLIC; their wrappers compute the context) --

@_entry("f")
def authorized(context: str, version: str | None, token: str | None, subject: str | None, resource: str | None,
               operation: str | None) -> str:
    """abi_0_4.authorized, and the answer recorded for the next rows."""
    call = RUNTIME.call(context, version)
    valid = call.authorized(token, subject, resource, operation)
    if valid:
        call.share_kind(token)  # the next backend then takes the decision without reading the token
    call.keep_row_answer(token, "authorized", (subject, resource, operation, None, None), valid)
    return _bool(valid)


@_entry("f")
def verify_token(context: str, version: str | None) -> str:
    """verify_token() when its per-row fast path missed
    (hessra_authz._verify_token_pending): the arguments that miss kept
    (none: false), verified as abi_0_3.verify_token does, and the answer
    recorded for the next rows. The arguments are the caller's own, as in
    any verify_token() call; the context is the wrapper's. (Named as the
    SQL function it answers for: the audit reads the name.)"""
    call = RUNTIME.call(context, version)  # STALE keeps the arguments for the call after _sync()
    pending = RUNTIME.rows.take_pending()
    if pending is None:
        return "f"
    token, subject, resource, operation, domain, prefix = pending
    valid = call.decide(token, subject=subject, resource=resource, operation=operation, domain=domain,
                        prefix=prefix).valid
    call.keep_row_answer(token, "verify_token", (subject, resource, operation, domain, prefix), valid)
    return _bool(valid)


# -- configuration ----------------------------------------------------------------------

@_entry(None)
def load_config(version: str, kids: list[int] | None, public_keys: list[str] | None,
                not_before_us: list[int | None] | None, not_after_us: list[int | None] | None,
                node_chains: list[str] | None, node_kinds: list[str | None] | None,
                node_components: list[str | None] | None, node_keys: list[str | None] | None,
                revoked_ids: list[str] | None, revoked_identities: list[str] | None, database: int | None,
                database_tag: str | None, anchor: str | None, require_anchor: bool | None,
                fallback: str | None, audit_level: str | None, audit_role_oids: list[int] | None,
                audit_role_levels: list[str] | None) -> str:
    """abi_0_4.load_config, plus the audit levels (config_state keeps them
    since 0.5.0: one call per configuration change). The levels are taken
    with the configuration, and not when the runtime refuses an older one
    (the statement then fails)."""
    if take_config(version, kids, public_keys, not_before_us, not_after_us, node_chains, node_kinds,
                   node_components, node_keys, revoked_ids, revoked_identities, database, database_tag,
                   CapabilitySettings(anchor, bool(require_anchor), fallback or "per_row")):
        RUNTIME.audit.load(version, audit_level, audit_role_oids, audit_role_levels)
    return ""
