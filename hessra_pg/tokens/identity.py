"""Hessra identity tokens (spec §6): roots, delegation, JIT blocks.

Identities are URIs with `:` as the hierarchy separator
(`urn:hessra:alice` -> `urn:hessra:alice:laptop`). A delegatable root proves
its subject and every descendant; each delegation block, signed by a fresh
ephemeral key that is thrown away, narrows it to one descendant.
"""

from __future__ import annotations

import time
from typing import Any

import biscuit_auth

from ..core.encoding import decode_token, encode_token
from ..errors import DelegationError, HessraError
from ..core.keys import generate_keypair, parse_public_key
from .mint import TokenTime
from ..core.shape import read_shape
from ..core.verifier import RootKey, verify_identity

#: Lifetime of a JIT block (spec §6.3).
JIT_SECONDS = 5


def mint_identity(
    signer: biscuit_auth.KeyPair,
    subject: str,
    *,
    time_config: TokenTime = TokenTime(),
    delegatable: bool = True,
    domain: str | None = None,
    root_key_id: int | None = None,
) -> str:
    """An identity token (§6.1). `delegatable=True` is Hessra's
    create_identity_token; False its non-delegatable form; `domain` adds the
    domain restriction (Hessra makes those non-delegatable)."""
    actor_check = (
        "check if actor($a), $a == {subject} || $a.starts_with({subject} + \":\");"
        if delegatable
        else "check if actor($a), $a == {subject};"
    )
    source = ["subject({subject});", actor_check, "check if time($time), $time < {expiration};"]
    params: dict[str, Any] = {"subject": subject, "expiration": time_config.expiration()}
    if domain is not None:
        source += ["check if domain({domain});", "subject($d, $s) <- domain($d), subject($s);"]
        params["domain"] = domain
    builder = biscuit_auth.BiscuitBuilder("\n".join(source), params)
    if root_key_id is not None:
        builder.set_root_key_id(root_key_id)
    return builder.build(signer.private_key).to_base64()


def _append_ephemeral(token: str, root_key: str, source: str, params: dict[str, Any]) -> str:
    biscuit = biscuit_auth.Biscuit.from_bytes(decode_token(token), parse_public_key(root_key))
    ephemeral = generate_keypair()
    block = biscuit.third_party_request().create_block(ephemeral.private_key, biscuit_auth.BlockBuilder(source, params))
    return encode_token(biscuit.append_third_party(ephemeral.public_key, block).to_bytes())


def delegate_identity(
    token: str, root_key: str, identity: str, *, time_config: TokenTime = TokenTime(), domain: str | None = None
) -> str:
    """Delegate to `identity` (§6.2): a third-party block signed by a fresh
    ephemeral key. Refuses (DelegationError) a delegation whose result could
    not be used: lateral (alice:laptop -> alice:phone), from a
    non-delegatable root, or to an identity that is not a descendant. Pass
    `domain` for a domain-restricted root."""
    delegated = _append_ephemeral(
        token,
        root_key,
        "check if actor($a), $a == {identity} || $a.starts_with({identity} + \":\");\n"
        "check if time($time), $time < {expiration};",
        {"identity": identity, "expiration": time_config.expiration()},
    )
    now = time.time() if time_config.start is None else time_config.start
    # Check with the key under the token's own root_key_id, if it has one.
    kid = read_shape(decode_token(delegated)).root_key_id or 0
    decision = verify_identity(delegated, [RootKey(kid, str(parse_public_key(root_key)))], now=now,
                               identity=identity, domain=domain)
    if not decision.valid:
        raise DelegationError(
            f"refusing to delegate to {identity!r}: the result would not verify for it ({decision.reason}); "
            "delegate only to a descendant (parent:child) of the identity the token proves, from a delegatable token"
        )
    return delegated


def jit_identity(token: str, root_key: str, *, seconds: int = JIT_SECONDS, start: int | None = None) -> str:
    """A just-in-time copy valid for `seconds` more (§6.3)."""
    expiration = (int(time.time()) if start is None else start) + seconds
    return _append_ephemeral(token, root_key, "check if time($time), $time < {expiration};", {"expiration": expiration})
