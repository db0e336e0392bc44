"""The local authority's signing key: one PKCS#8 PEM file, watched.

``hessra-pg authority serve --key FILE`` signs with FILE and serves its
public key. ``hessra-pg authority rotate-key --key FILE`` (:func:`rotate_key`)
replaces FILE atomically (a new 0600 file renamed over it) with a fresh key
pair, after writing the old key's *public* key to ``FILE.retired/`` (one
``<unix time>.pub.pem`` per rotation; the old private key is not kept). A
running authority looks at FILE every ``--reload-interval`` seconds
(:meth:`KeyStore.refresh`): on a change it signs new tokens with the new key
and serves it on ``/public_key``; tokens of the old key still verify at the
authority (identity tokens presented as Bearer, /verify_token, /sign_token)
for ``retired_for`` seconds after the rotation, so identity tokens issued
just before it keep working until they expire. A key file that doesn't load
(half-written by hand, wrong format) is refused and the previous key kept.

Every key has a key id (:func:`key_id`, derived from the public key: no
state to keep, the same across restarts and for every authority serving the
key). Tokens carry it as their Biscuit ``root_key_id`` and ``/public_key``
names it, so ``hessra-pg keys sync`` registers the key under it and a
database that doesn't have the key yet refuses its tokens as
``unknown_key`` (not a generic ``bad_signature``) and never tries the other
keys on them.

Private keys are never logged or printed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import biscuit_auth

from ..core.keys import (
    canonical_public_key,
    generate_keypair,
    key_algorithm,
    load_private_key,
    private_key_pem,
    public_key_pem,
)
from ..core.verifier import RootKey
from ..errors import ConfigurationError, KeyFormatError

__all__ = ["KeyStore", "RetiredKey", "key_id", "retired_directory", "rotate_key"]

log = logging.getLogger("hessra_pg.authority")

RETIRED_SUFFIX = ".retired"


def retired_directory(key_file: str | Path) -> Path:
    """Where rotate_key keeps the public keys it retired: FILE.retired/."""
    path = Path(key_file)
    return path.with_name(path.name + RETIRED_SUFFIX)


def key_id(public_key: str) -> int:
    """The key id (a Biscuit ``root_key_id``, a ``hessra_authz.keys`` kid)
    the authority gives a public key (alg/hex): the first 31 bits of the
    SHA-256 of its alg/hex form, 1 to 2**31 - 1 (the keys table's kid is a
    positive integer). Derived rather than counted so that nothing can make
    it drift from the key: a restart, a lost FILE.retired/, two authorities
    sharing a key all name it alike."""
    digest = hashlib.sha256(canonical_public_key(public_key).encode("ascii")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF or 1


@dataclass(frozen=True)
class RetiredKey:
    public_key: str  # alg/hex
    retired_at: int


def _read_key(path: Path) -> tuple[bytes, biscuit_auth.KeyPair]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read signing key {path}: {error.strerror or error}") from None
    try:
        return raw, load_private_key(raw.decode("ascii"))
    except (UnicodeDecodeError, KeyFormatError):
        raise KeyFormatError(f"signing key {path}: not a PKCS#8 PEM private key (Ed25519 or P-256)") from None


def _retired(directory: Path) -> list[RetiredKey]:
    found: list[RetiredKey] = []
    if not directory.is_dir():
        return found
    for entry in directory.glob("*.pub.pem"):
        stamp = entry.name.split(".", 1)[0].split("-", 1)[0]
        try:
            found.append(RetiredKey(canonical_public_key(entry.read_text("ascii")), int(stamp)))
        except (OSError, UnicodeDecodeError, ValueError):  # a stray file is skipped, not fatal
            log.warning("ignoring %s: not a retired public key (<unix time>.pub.pem)", entry)
    return sorted(found, key=lambda key: key.retired_at)


class KeyStore:
    """The signing key of a running authority and the keys it still
    verifies with. Thread-safe; `refresh()` reloads after a rotation."""

    def __init__(self, path: str | Path, *, retired_for: int) -> None:
        self.path = Path(path)
        self.retired_for = retired_for
        self._lock = threading.Lock()
        raw, pair = _read_key(self.path)
        self._digest = hashlib.sha256(raw).digest()
        self._signer = pair
        self._kid = key_id(str(pair.public_key))
        self._seen: list[RetiredKey] = []  # keys this process saw replaced
        self._retired = _retired(retired_directory(self.path))
        mode = self.path.stat().st_mode
        if mode & 0o077:
            log.warning("signing key %s is readable by group or others (mode %o): chmod 600 it",
                        self.path, mode & 0o777)

    @property
    def signer(self) -> biscuit_auth.KeyPair:
        with self._lock:
            return self._signer

    @property
    def public_key(self) -> str:
        """The current public key, alg/hex."""
        return str(self.signer.public_key)

    @property
    def public_key_pem(self) -> str:
        return public_key_pem(self.signer.public_key)

    def signing_key(self) -> tuple[biscuit_auth.KeyPair, int]:
        """The signing key pair and its key id, read together (a rotation
        between two reads would pair a key with another key's id)."""
        with self._lock:
            return self._signer, self._kid

    def published(self) -> tuple[str, int]:
        """What GET /public_key serves: the public key (PEM) and its key id."""
        pair, kid = self.signing_key()
        return public_key_pem(pair.public_key), kid

    def verification_keys(self, now: float | None = None) -> list[RootKey]:
        """The current key (newest kid) and the keys retired less than
        `retired_for` seconds ago, as the verifier takes them."""
        now = time.time() if now is None else now
        with self._lock:
            current = str(self._signer.public_key)
            retired = {key.public_key: key for key in self._retired + self._seen}
        # Each under its key id: the tokens it signed name it (root_key_id).
        keys = [RootKey(key_id(current), current)]
        for key in sorted(retired.values(), key=lambda k: k.retired_at):
            if key.public_key != current and now < key.retired_at + self.retired_for:
                keys.append(RootKey(key_id(key.public_key), key.public_key,
                                    not_after=key.retired_at + self.retired_for))
        return keys

    def refresh(self) -> bool:
        """Reload the key file if it changed; True if the signing key did.
        A file that doesn't load is refused (logged), the old key kept."""
        try:
            raw = self.path.read_bytes()
        except OSError as error:
            log.error("signing key %s unreadable (%s): keeping the current key", self.path, error.strerror)
            return False
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return False
        try:
            _, pair = _read_key(self.path)
        except (ConfigurationError, KeyFormatError) as error:
            log.error("%s: keeping the current key", error)
            return False
        with self._lock:
            self._digest = digest
            changed = str(pair.public_key) != str(self._signer.public_key)
            if changed:
                self._seen.append(RetiredKey(str(self._signer.public_key), int(time.time())))
                self._signer = pair
                self._kid = key_id(str(pair.public_key))
            self._retired = _retired(retired_directory(self.path))
        if changed:
            log.info("signing key rotated: now %s (key id %d)", pair.public_key, key_id(str(pair.public_key)))
        return changed


def rotate_key(key_file: str | Path, *, algorithm: str | None = None, now: int | None = None) -> biscuit_auth.KeyPair:
    """Replace the signing key in `key_file` with a new key pair (the same
    algorithm unless `algorithm` is given), keeping the old public key in
    FILE.retired/<unix time>.pub.pem. The new file is written 0600 and
    renamed over the old one, so a running authority never reads half a
    key. Returns the new key pair."""
    path = Path(key_file)
    _, old = _read_key(path)
    new = generate_keypair(algorithm or key_algorithm(old))
    stamp = int(time.time()) if now is None else now
    directory = retired_directory(path)
    directory.mkdir(mode=0o700, exist_ok=True)
    retired = directory / f"{stamp}.pub.pem"
    suffix = 1
    while retired.exists():
        retired = directory / f"{stamp}-{suffix}.pub.pem"
        suffix += 1
    retired.write_text(public_key_pem(old.public_key))
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(private_key_pem(new))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return new
