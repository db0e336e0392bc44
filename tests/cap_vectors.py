"""Read the capability-token vectors from ../shared/vectors/capability
(spec hessra-capability-tokens.md §9), never copied here: the directory is
found as tests/vectors.py finds the others."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import biscuit_auth

from tests.vectors import VECTORS

CAPABILITY = VECTORS / "capability"
#: The clock of the vector cases and the expiry of the long-lived tokens.
NOW = 1893456000
EXP = 4070908800


def _read(name: str) -> dict:
    path: Path = CAPABILITY / name
    if not path.exists():
        raise FileNotFoundError(f"capability vectors not found at {path}: tests expect ../shared/vectors beside "
                                "the checkout (or set HESSRA_VECTORS_DIR)")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def keys() -> dict[str, dict]:
    """root, activator, attester, rogue: {"public": "ed25519/...", "private_hex": ...}."""
    return _read("keys.json")["keys"]


def public(name: str) -> str:
    return keys()[name]["public"]


def keypair(name: str) -> biscuit_auth.KeyPair:
    private = bytes.fromhex(keys()[name]["private_hex"])
    return biscuit_auth.KeyPair.from_private_key(
        biscuit_auth.PrivateKey.from_bytes(private, biscuit_auth.Algorithm.Ed25519))


@lru_cache(maxsize=None)
def tokens() -> dict[str, dict]:
    """Each vector token by name: {"token", "kind", "blocks", "revocation_ids", ...}."""
    return {entry["name"]: entry for entry in _read("tokens.json")["tokens"]}
