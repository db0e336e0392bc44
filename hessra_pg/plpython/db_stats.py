"""Numbers across the backends of one database (hessra_authz.database_stats(),
issue 16 item 2).

stats() describes the calling backend only; a monitoring connection (a
postgres_exporter scrape) is a backend of its own. So each backend that
used the verifier publishes a compact snapshot of its counters (decisions
by kind, outcome and reason; the verification time histogram; hits and
misses of each cache and of the shared decision table; audit lines written
and suppressed) at most once a second, from its next call, and once more
when it exits, into a directory next to the shared decision table's file:

    <data directory>/hessra_authz_cache/<database OID>.stats/
        <pid>.<backend start in microseconds>.snap   one per backend
        retired.json   the sum of the backends that exited (since the reset)
        reset.json     the time of the last reset and, per live backend,
                       what its snapshot held at that time
        lock           flock'ed by whoever changes retired.json or reset.json

readable and writable only by the server's OS user (0700/0600, like the
shared table). A snapshot holds counts and names of kinds, outcomes,
reasons and caches: never a token, an argument or a key. It is cumulative
since the backend started (reset_stats() of that backend moves what it
zeroes into the snapshot's base, so a backend's reset never makes the
database's numbers go down).

database_stats() sums retired.json and the snapshots of the backends that
pg_stat_activity lists (pid and backend start: a reused pid is another
backend), minus their reset bases, and folds the snapshots of the backends
that are gone into retired.json. A backend writes its final snapshot at
exit (a before_shmem_exit callback: it runs while the backend is still
listed in pg_stat_activity, so no reader folds a snapshot that changes
afterwards). Without readers, a backend's first snapshot folds those of
dead processes once the directory holds more than MAX_FILES files. Works
on a hot standby: files, no table.

Sizes are bounded: at most SNAPSHOT_KEYS decision rows per snapshot (the
rest counted under reason "other"), a snapshot file of at most
SNAPSHOT_BYTES, and readers skip larger files.

A snapshot is rewritten in place (one pwrite of a length, a checksum and
the JSON text: ~1 us, where a new file renamed over the old one costs
~1.5 ms on ext4); a reader that catches a write half done sees a bad
checksum and reads again.
"""

from __future__ import annotations

import os
import struct
import time

from .shared_decisions import blake2b
from .stats import BUCKETS, SNAPSHOT_INTERVAL, bucket_index, bucket_rows, cache_counts, decision_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Seconds between two snapshots of one backend (at most).
INTERVAL = SNAPSHOT_INTERVAL
#: Decision rows kept in a snapshot (kinds x outcomes x reasons: a few dozen in practice).
SNAPSHOT_KEYS = 256
#: Files in a database's directory above which a backend folds those of dead processes.
MAX_FILES = 1024
#: A snapshot or an aggregate file larger than this is not read.
SNAPSHOT_BYTES = 64 * 1024
#: Microseconds between 1970-01-01 and PostgreSQL's epoch (2000-01-01).
_PG_EPOCH_US = 946_684_800_000_000
CACHES = ("tokens", "decisions", "results", "shared_decisions")


def directory(database: int, tag: str) -> str:
    """The snapshot directory of database `database` (its OID); `tag`
    (pg_database's xmin) tells it apart from a dropped one with that OID."""
    from .shared_decisions import DIRECTORY

    return os.path.join(os.getcwd(), DIRECTORY, f"{int(database)}.stats")


def database_tag(database: int, tag: str) -> str:
    return blake2b(f"{int(database)}/{tag}".encode(), digest_size=8).hexdigest()


# -- snapshots: plain dicts --------------------------------------------------------


def empty() -> dict[str, Any]:
    return {"d": {}, "b": [0] * BUCKETS, "s": 0, "c": {name: [0, 0] for name in CACHES}, "a": [0, 0, 0]}


def add(total: dict[str, Any], part: dict[str, Any], sign: int = 1) -> None:
    """total += sign * part (decision rows keyed 'kind|outcome|reason')."""
    for key, count in part.get("d", {}).items():
        total["d"][key] = total["d"].get(key, 0) + sign * int(count)
    for index, count in enumerate(part.get("b", ())[:BUCKETS]):
        total["b"][index] += sign * int(count)
    total["s"] += sign * int(part.get("s", 0))
    for name, pair in part.get("c", {}).items():
        if name in total["c"]:
            total["c"][name][0] += sign * int(pair[0])
            total["c"][name][1] += sign * int(pair[1])
    for index, count in enumerate(part.get("a", ())[:3]):
        total["a"][index] += sign * int(count)


def _clamped(total: dict[str, Any]) -> dict[str, Any]:
    """Negative counts (a base larger than a snapshot: only a torn file) read 0."""
    total["d"] = {key: count for key, count in total["d"].items() if count > 0}
    total["b"] = [max(0, count) for count in total["b"]]
    total["s"] = max(0, total["s"])
    total["c"] = {name: [max(0, pair[0]), max(0, pair[1])] for name, pair in total["c"].items()}
    total["a"] = [max(0, count) for count in total["a"]]
    return total


def of_runtime(runtime: Any) -> dict[str, Any]:
    """This backend's counters now (since its last reset_stats())."""
    counters = runtime.counters
    decisions: dict[str, int] = {}
    for (kind, outcome, reason), count in counters.decisions.items():
        key = f"{kind}|{outcome}|{reason}"
        if key not in decisions and len(decisions) >= SNAPSHOT_KEYS - 1:
            key = f"{kind}|{outcome}|other"[:200]
        decisions[key] = decisions.get(key, 0) + count
    audit = runtime.audit
    return {
        "d": decisions, "b": list(counters.buckets), "s": counters.total_us,
        "c": {row["cache"]: [row["hits"], row["misses"]] for row in cache_counts(runtime)},
        "a": [audit.written, audit.suppressed_total, audit.errors],
    }


def _name(text: str) -> str:
    """A kind, outcome or reason as a JSON string's contents (they are
    identifiers; anything else becomes '_')."""
    return "".join(char if char.isalnum() or char in "_-. " else "_" for char in str(text))[:200]


def _dumps(snapshot: dict[str, Any]) -> str:
    """The counts of a snapshot as JSON, written without the json module
    (its import costs ~10 ms in a backend; only readers load it)."""
    decisions = ",".join(f'"{"|".join(_name(part) for part in key.split("|"))}":{int(count)}'
                         for key, count in sorted(snapshot["d"].items()))
    caches = ",".join(f'"{name}":[{int(pair[0])},{int(pair[1])}]' for name, pair in snapshot["c"].items())
    return (f'"d":{{{decisions}}},"b":[{",".join(str(int(n)) for n in snapshot["b"])}],"s":{int(snapshot["s"])},'
            f'"c":{{{caches}}},"a":[{",".join(str(int(n)) for n in snapshot["a"])}]}}')


_FRAME = struct.Struct("<I8s")


def frame(text: str) -> bytes:
    """A snapshot file's contents: length, checksum, JSON text."""
    payload = text.encode()
    return _FRAME.pack(len(payload), blake2b(payload, digest_size=8).digest()) + payload


def _read_snapshot(path: str) -> dict[str, Any] | None:
    """A backend's snapshot; None if missing or unreadable. A write in
    progress (bad checksum) is read again."""
    import json

    for _ in range(50):
        try:
            with open(path, "rb") as handle:
                data = handle.read(SNAPSHOT_BYTES + 1)
        except OSError:
            return None
        if len(data) >= _FRAME.size:
            length, check = _FRAME.unpack_from(data)
            payload = data[_FRAME.size:_FRAME.size + length]
            if len(payload) == length and blake2b(payload, digest_size=8).digest() == check:
                try:
                    value = json.loads(payload)
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
        time.sleep(0.001)
    return None


def _read(path: str) -> dict[str, Any] | None:
    import json

    try:
        with open(path, "rb") as handle:
            data = handle.read(SNAPSHOT_BYTES + 1)
        if len(data) > SNAPSHOT_BYTES:
            return None
        value = json.loads(data)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _write(path: str, value: dict[str, Any]) -> None:
    """Replace `path` atomically (a reader sees the old or the new file)."""
    import json

    _replace(path, json.dumps(value, separators=(",", ":")))


def _replace(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


class _Locked:
    """flock() on the directory's lock file, for changes of retired/reset."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "lock")

    def __enter__(self) -> "_Locked":
        import fcntl

        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.descriptor, fcntl.LOCK_EX)
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.descriptor)  # releases the lock


def _aggregate(folder: str, name: str, tag: str) -> dict[str, Any]:
    value = _read(os.path.join(folder, name))
    if value is None or value.get("tag") != tag:
        value = {"tag": tag, "since": time.time(), "n": 0, **empty()} if name == "retired.json" else \
            {"tag": tag, "since": time.time(), "base": {}}
    return value


def _fold(folder: str, tag: str, backend: str, snapshot: dict[str, Any] | None) -> None:
    """Move a gone backend's snapshot (minus its reset base) into
    retired.json; the caller holds the lock."""
    retired = _aggregate(folder, "retired.json", tag)
    reset = _aggregate(folder, "reset.json", tag)
    if snapshot is not None and snapshot.get("tag") == tag:
        add(retired, snapshot)
        base = reset["base"].pop(backend, None)
        if base is not None:
            add(retired, base, -1)
        retired["n"] = int(retired.get("n", 0)) + 1
        _write(os.path.join(folder, "retired.json"), _clamped(retired))
        _write(os.path.join(folder, "reset.json"), reset)
    try:
        os.unlink(os.path.join(folder, backend + ".snap"))
    except FileNotFoundError:
        pass


# -- the publishing backend --------------------------------------------------------


class Publisher:
    """The snapshot of this backend (one per backend: PUBLISHER)."""

    def __init__(self) -> None:
        #: What reset_stats() of this backend zeroed, kept in the snapshot.
        self.base = empty()
        self.last: str | None = None
        self.folder: str | None = None
        self.tag: str | None = None
        self.name: str | None = None
        self.descriptor: int | None = None
        self.hooked = False
        self.exited = False
        self.failures = 0

    def absorb(self, runtime: Any) -> None:
        """Called before reset_stats() zeroes this backend's counters."""
        add(self.base, of_runtime(runtime))

    def snapshot(self, runtime: Any) -> dict[str, Any]:
        total = empty()
        add(total, self.base)
        add(total, of_runtime(runtime))
        return total

    def _place(self, runtime: Any) -> bool:
        database = runtime.shared_database
        if database is None:
            return False  # no configuration loaded: nothing decided yet
        tag = database_tag(*database)
        if tag != self.tag:
            self.folder = directory(*database)
            self.tag = tag
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            self.name = f"{os.getpid()}.{_start_us()}"
            if self.descriptor is not None:
                os.close(self.descriptor)
            self.descriptor = None
            self.descriptor = os.open(os.path.join(self.folder, self.name + ".snap"), os.O_RDWR | os.O_CREAT, 0o600)
        return True

    def publish(self, runtime: Any) -> None:
        """Write this backend's snapshot if it changed (and, the first time,
        register the exit hook)."""
        runtime.stats_due = time.monotonic() + INTERVAL
        if self.exited or self.failures > 3:
            return
        try:
            if not self._place(runtime):
                return
            text = _dumps(self.snapshot(runtime))
            if text == self.last:
                return
            assert self.descriptor is not None
            contents = frame(f'{{"tag":"{self.tag}","pid":{os.getpid()},"at":{time.time()!r},{text}')
            if len(contents) > SNAPSHOT_BYTES:
                return
            os.pwrite(self.descriptor, contents, 0)
            self.last = text
            if not self.hooked:
                self.hooked = True
                _register_exit_hook(runtime)
                self._housekeeping()
        except Exception:  # noqa: BLE001 (numbers are never worth a failed statement)
            self.failures += 1

    def exit(self, runtime: Any) -> None:
        """At backend exit, while pg_stat_activity still lists this backend:
        its final snapshot (a reader folds it into retired.json once the
        backend is gone)."""
        if not self.exited:
            self.publish(runtime)
            self.exited = True

    def _housekeeping(self) -> None:
        """Fold the snapshots of dead processes when too many piled up (no
        database_stats() reader for a long while, and many short
        connections). A process that no longer exists ran its exit hook or
        never will: its file is final."""
        assert self.folder is not None and self.tag is not None
        entries = os.listdir(self.folder)
        if len(entries) <= MAX_FILES:
            return
        with _Locked(self.folder):
            for entry in os.listdir(self.folder):
                if entry.endswith(".snap"):
                    try:
                        os.kill(int(entry.split(".", 1)[0]), 0)
                        continue
                    except ProcessLookupError:
                        pass
                    except (OSError, ValueError):
                        continue
                    _fold(self.folder, self.tag, entry[:-5], _read_snapshot(os.path.join(self.folder, entry)))

PUBLISHER = Publisher()


def publish(runtime: Any) -> None:
    PUBLISHER.publish(runtime)


def _start_us() -> int:
    """This backend's start (MyStartTimestamp), in microseconds since 1970:
    pg_stat_activity.backend_start."""
    try:
        import ctypes

        value = ctypes.c_int64.in_dll(ctypes.CDLL(None), "MyStartTimestamp").value
        return value + _PG_EPOCH_US
    except (AttributeError, OSError, ValueError):
        return 0


_EXIT_HOOK: Any = None


def _register_exit_hook(runtime: Any) -> None:
    """before_shmem_exit(): runs at backend exit before the backend leaves
    pg_stat_activity (callbacks run last registered first; pgstat's was
    registered when the backend started)."""
    global _EXIT_HOOK
    import ctypes

    try:
        binary = ctypes.CDLL(None)
        register = binary.before_shmem_exit
    except (AttributeError, OSError):
        return
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_size_t)

    def on_exit(code: int, argument: int) -> None:
        try:
            PUBLISHER.exit(runtime)
        except BaseException:  # noqa: BLE001 (never raise into the server's exit path)
            pass

    _EXIT_HOOK = callback_type(on_exit)  # kept: the server holds only its address
    register.restype = None
    register.argtypes = (callback_type, ctypes.c_size_t)
    register(_EXIT_HOOK, 0)


# -- the reader ---------------------------------------------------------------------


def _percentile(buckets: list[int], fraction: float) -> int | None:
    index = bucket_index(buckets, fraction)
    return None if index is None or index == BUCKETS - 1 else 1 << index


def read(database: int, tag_text: str, live: list[tuple[int, int]], admin: bool, reset: bool = False
         ) -> dict[str, Any]:
    """The database's numbers: retired.json plus the snapshots of the
    backends in `live` ((pid, backend start in microseconds) from
    pg_stat_activity), minus their reset bases. With `reset`, start them
    afresh instead (and return what they were)."""
    folder = directory(database, tag_text)
    tag = database_tag(database, tag_text)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    alive = {f"{int(pid)}.{int(start)}" for pid, start in live}
    total = empty()
    backends = 0
    with _Locked(folder):
        snapshots: dict[str, dict[str, Any]] = {}
        for entry in os.listdir(folder):
            if not entry.endswith(".snap"):
                if entry.endswith(".tmp"):
                    pid = entry.rsplit(".", 2)[-2]
                    if not any(name.split(".", 1)[0] == pid for name in alive):
                        _unlink(os.path.join(folder, entry))
                continue
            backend = entry[:-5]
            snapshot = _read_snapshot(os.path.join(folder, entry))
            if backend in alive:
                if snapshot is not None and snapshot.get("tag") == tag:
                    snapshots[backend] = snapshot
            else:
                _fold(folder, tag, backend, snapshot)
        retired = _aggregate(folder, "retired.json", tag)
        state = _aggregate(folder, "reset.json", tag)
        # Bases of backends that are gone with no snapshot left: nothing to subtract from.
        state["base"] = {name: base for name, base in state["base"].items() if name in snapshots}
        add(total, retired)
        for backend, snapshot in snapshots.items():
            add(total, snapshot)
            base = state["base"].get(backend)
            if base is not None:
                add(total, base, -1)
            backends += 1
        since = float(state.get("since", retired.get("since", time.time())))
        exited = int(retired.get("n", 0))
        if reset:
            _write(os.path.join(folder, "retired.json"), {"tag": tag, "since": time.time(), "n": 0, **empty()})
            _write(os.path.join(folder, "reset.json"), {"tag": tag, "since": time.time(), "base": {
                backend: {key: snapshot[key] for key in ("d", "b", "s", "c", "a") if key in snapshot}
                for backend, snapshot in snapshots.items()}})
        elif "since" not in state or _read(os.path.join(folder, "reset.json")) is None:
            _write(os.path.join(folder, "reset.json"), {**state, "since": since})
    return report(_clamped(total), admin, backends=backends, exited=exited, since=since)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def report(total: dict[str, Any], admin: bool, *, backends: int, exited: int, since: float) -> dict[str, Any]:
    decisions = ((tuple((key.split("|") + ["", "", ""])[:3]), count) for key, count in total["d"].items())
    buckets = total["b"]
    count = sum(buckets)
    hits, misses = total["c"]["shared_decisions"]
    return {
        "backends": backends,
        "exited_backends": exited,
        "decisions": decision_rows(decisions, admin),  # type: ignore[arg-type]
        "verification_us": {
            "count": count, "sum": total["s"],
            "p50": _percentile(buckets, 0.5), "p90": _percentile(buckets, 0.9), "p99": _percentile(buckets, 0.99),
            "buckets": bucket_rows(buckets),
        },
        "caches": [{"cache": name, "hits": total["c"][name][0], "misses": total["c"][name][1]} for name in CACHES],
        "shared_decisions": {"hits": hits, "misses": misses,
                             "hit_rate": None if hits + misses == 0 else hits / (hits + misses)},
        "audit": {"lines": total["a"][0], "suppressed": total["a"][1], "errors": total["a"][2]},
        "since": since,
        "now": time.time(),
        "interval_seconds": INTERVAL,
    }
