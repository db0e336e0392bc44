"""Positive decisions shared by every backend of one database.

Each backend keeps its own caches (hessra_pg.plpython.runtime), so with a connection
pool of N backends every token is verified N times, and a pool that sees
many distinct tokens spends most of its CPU on signatures. This file-backed
table lets the first backend's answer serve the others.

What is stored is "under configuration version V, token T with
arguments A is allowed until U" (U: the token's expiry or its key's end; the
key also holds the hessra_pg version, so a package upgrade starts afresh):
a pure function of V, T, A and the time, computed by the one verifier and
kept under the same rules as a backend's own decision cache; and, for a
token that authorized() allowed, which kind it is (capability or not: a
pure function of its bytes, under an empty version, until forever), which
only picks the policy that verifies it (hessra_pg.plpython.runtime,
Statement.share_kind). Entries are 32
bytes: a 16-byte digest of (V, A, T), U, and an 8-byte checksum. Writers
don't lock; a torn or overwritten entry fails its checksum or digest and
reads as a miss. Nothing here can turn a "no" into a "yes" except a
decision the verifier made.

The file lives in the cluster's data directory (a backend's working
directory), one per database, readable and writable only by the server's OS
user, fixed in size (SLOTS entries, 2 MiB, and a 64-byte trailer), and removed
with the cluster. If it can't be opened, backends just don't share.

The trailer holds the newest configuration generation that some backend of
the database has read outside a transaction that changed it, i.e. a
committed one (hessra_pg.plpython.runtime): a backend whose snapshot shows an
older generation (a REPEATABLE READ transaction that started before a
revocation, an imported snapshot) refuses to verify instead of using keys
and revocations older than ones already in force. It is tagged with the
database's identity (OID and pg_database row xmin), so a database that
reuses the OID of a dropped one never inherits its value.
"""

from __future__ import annotations

import mmap
import os
import struct

from .. import __version__

try:  # hashlib would load OpenSSL (~3 ms in a new backend) for a built-in hash
    from _blake2 import blake2b
except ImportError:  # pragma: no cover (other Pythons)
    from hashlib import blake2b

#: Entries per database (a slot per digest; a newer entry replaces an older).
SLOTS = 1 << 16
_ENTRY = struct.Struct("<16sd8s")
#: Trailer: database tag digest, published generation and its complement
#: (a torn write fails the complement and reads as "nothing published").
_TRAILER = struct.Struct("<16sqq")
_TRAILER_OFFSET = SLOTS * _ENTRY.size
_SIZE = _TRAILER_OFFSET + 64
DIRECTORY = "hessra_authz_cache"


class SharedDecisions:
    """A fixed-size table of positive decisions in a shared memory map."""

    def __init__(self, path: str, tag: str = "") -> None:
        # os.path, not pathlib: this runs in every backend's first verification,
        # and pathlib's imports cost milliseconds there.
        self.path = path
        self.hits = 0
        self.misses = 0
        self._tag = blake2b(tag.encode(), digest_size=16).digest()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = _SIZE
            current = os.fstat(descriptor).st_size
            if current < size:
                # Written out, not sparse: a store into a hole of a full disk
                # would be a SIGBUS (a crashed backend), not an error. (A file
                # of hessra_pg 0.2.0 lacks only the trailer.)
                os.pwrite(descriptor, bytes(size - current), current)
            if os.fstat(descriptor).st_size < size:
                raise OSError(f"{path} is shorter than {size} bytes")  # never map past its end
            # Populated: every page mapped at once, not one fault per first use.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._map = mmap.mmap(descriptor, size, flags=flags)
        finally:
            os.close(descriptor)

    @classmethod
    def for_database(cls, database: int, tag: str = "") -> "SharedDecisions | None":
        """The table of database `database` (an OID; `tag` tells this
        database apart from a dropped one with the same OID), or None if the
        file can't be used (sharing is an optimisation, never a requirement)."""
        try:
            return cls(os.path.join(os.getcwd(), DIRECTORY, str(int(database))), f"{int(database)}/{tag}")
        except (OSError, ValueError, TypeError):
            return None

    def published_generation(self) -> int:
        """The newest committed configuration generation a backend of this
        database has published (0: none)."""
        tag, generation, complement = _TRAILER.unpack_from(self._map, _TRAILER_OFFSET)
        if tag != self._tag or complement != ~generation:
            return 0
        return generation

    def generation_view(self) -> memoryview:
        """The published generation and its complement as two int64s, for
        a check cheaper than published_generation() (the per-row path). The
        database tag is not compared: a dropped database's value can only
        send that path to the full check more often."""
        return memoryview(self._map)[_TRAILER_OFFSET + 16:_TRAILER_OFFSET + 32].cast("q")

    def publish_generation(self, generation: int) -> None:
        """Raise the published generation to `generation` (never lower it;
        a lost race with another writer only delays the raise)."""
        if generation > self.published_generation():
            _TRAILER.pack_into(self._map, _TRAILER_OFFSET, self._tag, generation, ~generation)

    @staticmethod
    def digest(version: str, arguments: str, token_digest: bytes) -> bytes:
        """The entry key: configuration version, arguments and token, and the
        package version (a backend still running older verifier code must
        not answer for a newer one, or the reverse)."""
        text = f"{__version__}\0{version}\0{arguments}\0"
        return blake2b(text.encode() + token_digest, digest_size=16).digest()

    def allowed_until(self, digest: bytes, now: float) -> float | None:
        """Until when the recorded decision holds, if a verifier recorded one
        that holds at `now`; else None."""
        until = self.held_until(digest, now)
        if until is None:
            self.misses += 1
        else:
            self.hits += 1
        return until

    def held_until(self, digest: bytes, now: float) -> float | None:
        """allowed_until() without counting a hit or a miss (the token kinds)."""
        offset = self._offset(digest)
        entry = self._map[offset:offset + _ENTRY.size]
        stored, until, check = _ENTRY.unpack(entry)
        if stored == digest and now < until and check == _check(entry[:24]):
            return until
        return None

    def record(self, digest: bytes, until: float) -> None:
        head = _ENTRY.pack(digest, until, b"")[:24]
        offset = self._offset(digest)
        self._map[offset:offset + _ENTRY.size] = head + _check(head)

    def _offset(self, digest: bytes) -> int:
        return (int.from_bytes(digest[:8], "little") % SLOTS) * _ENTRY.size


def _check(head: bytes) -> bytes:
    return blake2b(head, digest_size=8, person=b"hessra-decision").digest()
