"""Conveniences over tests/vectors.py's capability loaders (the vectors stay
in ../shared/vectors/capability, never copied here): keys by name as
biscuit key pairs, and the clock of the vector cases."""

from __future__ import annotations

import biscuit_auth

from tests.vectors import capability_keys as keys
from tests.vectors import capability_tokens as tokens

__all__ = ["EXP", "NOW", "keypair", "keys", "public", "tokens"]

#: The clock of the vector cases and the expiry of the long-lived tokens.
NOW = 1893456000
EXP = 4070908800


def public(name: str) -> str:
    return keys()[name]["public"]


def keypair(name: str) -> biscuit_auth.KeyPair:
    private = bytes.fromhex(keys()[name]["private_hex"])
    return biscuit_auth.KeyPair.from_private_key(
        biscuit_auth.PrivateKey.from_bytes(private, biscuit_auth.Algorithm.Ed25519))
