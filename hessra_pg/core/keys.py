"""Public keys: parse PEM (SPKI, P-256 or Ed25519) or the `alg/hex` form.

The canonical form everywhere (keys table, chain nodes, Datalog scopes) is
what biscuit prints: `ed25519/<64 hex>` or `secp256r1/<66 hex>` (spec §1.4).
"""

from __future__ import annotations

from ..errors import KeyFormatError
from .biscuit import biscuit_auth

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Mapping

#: Algorithm name -> (biscuit_auth.Algorithm member name, public key bytes).
_ALGORITHMS = {
    "ed25519": ("Ed25519", 32),
    "secp256r1": ("Secp256r1", 33),
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_PEM_PUBLIC = r"-----BEGIN PUBLIC KEY-----\s*[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----"
#: Parsed keys by text: the server parses the same few keys on every cold
#: verification. Cleared when full (keys are few).
_PARSED: dict[str, biscuit_auth.PublicKey] = {}
_PARSED_SIZE = 256
#: PEM text longer than this is not a public key; refuse before parsing.
_MAX_KEY_TEXT = 4096


def parse_public_key(text: str) -> biscuit_auth.PublicKey:
    """Parse a public key given as PEM or `alg/hex`; raise KeyFormatError."""
    text = _normalise(text)
    key = _PARSED.get(text)
    if key is None:
        key = _parse_public_key(text)
        if len(_PARSED) >= _PARSED_SIZE:
            _PARSED.clear()
        _PARSED[text] = key
    return key


def split_alg_hex(text: str) -> tuple[str, str] | None:
    """(algorithm, hex) of an `ed25519/<hex>` or `secp256r1/<hex>` text."""
    algorithm, slash, hex_text = text.partition("/")
    if slash and algorithm in _ALGORITHMS and hex_text and _HEX_DIGITS.issuperset(hex_text):
        return algorithm, hex_text
    return None


def canonical_public_key(text: str) -> str:
    """Return the canonical `alg/hex` form of a PEM or `alg/hex` key."""
    return str(parse_public_key(text))


def _normalise(text: object) -> str:
    if not isinstance(text, str):
        raise KeyFormatError("public key must be text (PEM or 'ed25519/<hex>' / 'secp256r1/<hex>')")
    text = text.strip()
    if not text:
        raise KeyFormatError("public key is empty")
    if len(text) > _MAX_KEY_TEXT:
        raise KeyFormatError("public key text is too long to be a key")
    return text


def _parse_public_key(text: str) -> biscuit_auth.PublicKey:
    if text.startswith("-----BEGIN"):
        import re  # PEM comes from administrators and clients, not the hot path

        if not re.fullmatch(_PEM_PUBLIC, text):
            raise KeyFormatError(
                "PEM key must be a single '-----BEGIN PUBLIC KEY-----' block "
                "(SPKI, P-256 or Ed25519); private keys are not accepted here"
            )
        try:
            return biscuit_auth.PublicKey.from_pem(text)
        except Exception:
            raise KeyFormatError(
                "PEM public key could not be parsed: expected an SPKI P-256 or Ed25519 key"
            ) from None
    split = split_alg_hex(text)
    if split is None:
        raise KeyFormatError(
            "public key must be PEM or 'ed25519/<64 hex>' / 'secp256r1/<66 hex>'"
        )
    alg_name, hex_text = split
    member, size = _ALGORITHMS[alg_name]
    if len(hex_text) != 2 * size:
        raise KeyFormatError(f"{alg_name} public key must be {2 * size} hex digits, got {len(hex_text)}")
    try:
        return biscuit_auth.PublicKey.from_bytes(bytes.fromhex(hex_text), getattr(biscuit_auth.Algorithm, member))
    except Exception:
        raise KeyFormatError(f"{alg_name} public key bytes are not a valid curve point") from None


# -- key pairs -------------------------------------------------------------

def generate_keypair(algorithm: str = "ed25519") -> biscuit_auth.KeyPair:
    """A fresh key pair: 'ed25519' (default) or 'secp256r1' (P-256)."""
    if algorithm == "ed25519":
        return biscuit_auth.KeyPair()
    if algorithm == "secp256r1":
        import secrets

        # biscuit-python generates only Ed25519; a random scalar below the
        # P-256 group order is a valid private key (retry the ~2^-32 misses).
        while True:
            try:
                private = biscuit_auth.PrivateKey.from_bytes(secrets.token_bytes(32), biscuit_auth.Algorithm.Secp256r1)
                return biscuit_auth.KeyPair.from_private_key(private)
            except Exception:
                continue
    raise KeyFormatError(f"unknown key algorithm {algorithm!r}: use 'ed25519' or 'secp256r1'")


def load_private_key(text: str) -> biscuit_auth.KeyPair:
    """A key pair from a PKCS#8 PEM private key (P-256 or Ed25519)."""
    if not isinstance(text, str) or "-----BEGIN PRIVATE KEY-----" not in text:
        raise KeyFormatError("private key must be a PKCS#8 PEM '-----BEGIN PRIVATE KEY-----' block")
    try:
        return biscuit_auth.KeyPair.from_private_key(biscuit_auth.PrivateKey.from_pem(text.strip()))
    except Exception:
        raise KeyFormatError("PEM private key could not be parsed: expected PKCS#8 P-256 or Ed25519") from None


# -- PEM encoding ----------------------------------------------------------
# biscuit-python reads PEM but does not write it. The DER structures are
# fixed for our two curves, so they are spelled out here (RFC 8410 for
# Ed25519, RFC 5480/5915 for P-256).

_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_PKCS8_PREFIX = bytes.fromhex("3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420")
# P-256 curve parameters, to decompress a point for SPKI output.
_P256_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _pem(label: str, der: bytes) -> str:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def _p256_uncompressed(compressed: bytes) -> bytes:
    x = int.from_bytes(compressed[1:], "big")
    y = pow((pow(x, 3, _P256_P) - 3 * x + _P256_B) % _P256_P, (_P256_P + 1) // 4, _P256_P)
    if (y & 1) != (compressed[0] & 1):
        y = _P256_P - y
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def public_key_pem(key: biscuit_auth.PublicKey | str) -> str:
    """SPKI PEM of a public key (uncompressed point for P-256)."""
    canonical = str(key) if isinstance(key, biscuit_auth.PublicKey) else canonical_public_key(key)
    algorithm, hex_text = canonical.split("/")
    raw = bytes.fromhex(hex_text)
    if algorithm == "ed25519":
        return _pem("PUBLIC KEY", _ED25519_SPKI_PREFIX + raw)
    return _pem("PUBLIC KEY", _P256_SPKI_PREFIX + _p256_uncompressed(raw))


def private_key_pem(pair: biscuit_auth.KeyPair) -> str:
    """PKCS#8 PEM of a key pair's private key."""
    raw = pair.private_key.to_bytes()
    if str(pair.public_key).startswith("ed25519/"):
        return _pem("PRIVATE KEY", _ED25519_PKCS8_PREFIX + raw)
    return _pem("PRIVATE KEY", _P256_PKCS8_PREFIX + raw)


def key_algorithm(key: biscuit_auth.PublicKey | biscuit_auth.KeyPair) -> str:
    """'ed25519' or 'secp256r1'."""
    public = key.public_key if isinstance(key, biscuit_auth.KeyPair) else key
    return str(public).split("/", 1)[0]


# -- files and environment -------------------------------------------------

def _key_text(value: str) -> str:
    """PEM or alg/hex as given, or a STANDARD-base64-encoded PEM (the form
    hessra-config's environment variables use, spec §1.4)."""
    value = value.strip()
    if value.startswith("-----BEGIN") or split_alg_hex(value) is not None:
        return value
    import base64
    import binascii

    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise KeyFormatError("key is neither PEM, 'alg/hex', nor base64-encoded PEM") from None
    if not decoded.lstrip().startswith("-----BEGIN"):
        raise KeyFormatError("base64 key does not decode to PEM")
    return decoded


def read_key_file(path: str) -> str:
    """The text of a key file, with a clear error if it can't be read."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a text key file"
        raise KeyFormatError(f"cannot read key file {path}: {reason}") from None


def public_key_from(value: str) -> biscuit_auth.PublicKey:
    """A public key from PEM, alg/hex or base64-encoded PEM text."""
    return parse_public_key(_key_text(value))


def keypair_from(value: str) -> biscuit_auth.KeyPair:
    """A key pair from PKCS#8 PEM or base64-encoded PKCS#8 PEM text."""
    return load_private_key(_key_text(value))


def public_key_from_env(prefix: str = "HESSRA", environ: Mapping[str, str] | None = None) -> biscuit_auth.PublicKey | None:
    """`{prefix}_PUBLIC_KEY` (PEM, alg/hex or base64 PEM) or
    `{prefix}_PUBLIC_KEY_FILE` (a path), as hessra-config reads them."""
    import os

    env = os.environ if environ is None else environ
    if env.get(f"{prefix}_PUBLIC_KEY"):
        return public_key_from(env[f"{prefix}_PUBLIC_KEY"])
    if env.get(f"{prefix}_PUBLIC_KEY_FILE"):
        return public_key_from(read_key_file(env[f"{prefix}_PUBLIC_KEY_FILE"]))
    return None


def keypair_from_env(prefix: str = "HESSRA", environ: Mapping[str, str] | None = None) -> biscuit_auth.KeyPair | None:
    """`{prefix}_PERSONAL_KEYPAIR` (PEM or base64 PEM) or
    `{prefix}_PERSONAL_KEYPAIR_FILE` (a path)."""
    import os

    env = os.environ if environ is None else environ
    if env.get(f"{prefix}_PERSONAL_KEYPAIR"):
        return keypair_from(env[f"{prefix}_PERSONAL_KEYPAIR"])
    if env.get(f"{prefix}_PERSONAL_KEYPAIR_FILE"):
        return keypair_from(read_key_file(env[f"{prefix}_PERSONAL_KEYPAIR_FILE"]))
    return None
