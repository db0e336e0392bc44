"""Mint Hessra authorization tokens in the newest (G3) format, spec §2.1,
and append the third-party blocks of §3.2 (service attestation), §4
(multi-party sign-off) and §5 (prefix restriction)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import biscuit_auth

from ..core.encoding import decode_token, encode_token
from ..core.keys import parse_public_key
from ..core.verifier import ChainNode

DEFAULT_DURATION = 300


@dataclass(frozen=True)
class TokenTime:
    """Hessra's TokenTimeConfig: expiry = (start or now) + duration seconds."""

    start: int | None = None
    duration: int = DEFAULT_DURATION

    def expiration(self) -> int:
        return (int(time.time()) if self.start is None else self.start) + self.duration


def mint_authorization(
    signer: biscuit_auth.KeyPair,
    subject: str,
    resource: str,
    operation: str,
    *,
    time_config: TokenTime = TokenTime(),
    domain: str | None = None,
    prefix_key: str | None = None,
    service_chain: Sequence[ChainNode] = (),
    multi_party: Sequence[ChainNode] = (),
    root_key_id: int | None = None,
) -> str:
    """An authorization token with exactly the Datalog and order of §2.1."""
    source = [
        "right({subject}, {resource}, {operation});",
        "check if subject($sub), resource($res), operation($op), right($sub, $res, $op);",
        "check if time($time), $time < {expiration};",
    ]
    params: dict[str, Any] = {
        "subject": subject,
        "resource": resource,
        "operation": operation,
        "expiration": time_config.expiration(),
    }
    scope: dict[str, biscuit_auth.PublicKey] = {}
    if domain is not None:
        source.append("check if domain({domain});")
        params["domain"] = domain
    if prefix_key is not None:
        source.append("check if prefix_added(true) trusting {prefix_key};")
        scope["prefix_key"] = parse_public_key(prefix_key)
    for index, node in enumerate(service_chain):
        source.append(f"node($s, {{component{index}}}) <- service($s) trusting {{node_key{index}}};")
        params[f"component{index}"] = node.component
        scope[f"node_key{index}"] = parse_public_key(node.public_key)
    for index, node in enumerate(multi_party):
        source.append(f"check if namespace({{party{index}}}) trusting {{party_key{index}}};")
        params[f"party{index}"] = node.component
        scope[f"party_key{index}"] = parse_public_key(node.public_key)
    builder = biscuit_auth.BiscuitBuilder("\n".join(source), params, scope)
    if root_key_id is not None:
        builder.set_root_key_id(root_key_id)
    return builder.build(signer.private_key).to_base64()


def _append_third_party(
    token: str, root_key: str, signer: biscuit_auth.KeyPair, source: str, params: dict[str, Any]
) -> str:
    biscuit = biscuit_auth.Biscuit.from_bytes(decode_token(token), parse_public_key(root_key))
    block = biscuit.third_party_request().create_block(signer.private_key, biscuit_auth.BlockBuilder(source, params))
    return encode_token(biscuit.append_third_party(signer.public_key, block).to_bytes())


def attest_service(token: str, root_key: str, service: str, node: biscuit_auth.KeyPair) -> str:
    """A service-chain attestation block `service({service});` signed by the
    node's key (§3.2). `service` must equal the resource verifiers pass."""
    return _append_third_party(token, root_key, node, "service({service});", {"service": service})


def sign_off(token: str, root_key: str, namespace: str, party: biscuit_auth.KeyPair) -> str:
    """A multi-party sign-off block `namespace({namespace});` (§4)."""
    return _append_third_party(token, root_key, party, "namespace({namespace});", {"namespace": namespace})


def restrict_prefix(token: str, root_key: str, prefix: str, prefix_key: biscuit_auth.KeyPair) -> str:
    """A prefix-restriction block (§5): `check if prefix(p); prefix_added(true);`."""
    return _append_third_party(
        token, root_key, prefix_key, "check if prefix({prefix});\nprefix_added(true);", {"prefix": prefix}
    )
