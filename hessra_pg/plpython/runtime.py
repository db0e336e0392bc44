"""The verifier as it runs inside a database backend: configuration
freshness, per-backend caches, and the time of a verification.

One `Runtime` per backend (module-level `RUNTIME`, since a PL/Python
interpreter lives as long as its backend) holds the configuration and the
caches; each SQL call builds a `Statement` from what its plpgsql wrapper
passes and verifies through it. Nothing here runs SQL: PL/Python runs every
SPI query in a subtransaction, which parallel mode forbids.

Freshness (a configuration change is enforced by every statement whose
snapshot sees it, in every backend):

- fast path: the wrapper passes the statement's snapshot
  (`pg_current_snapshot()`) and top-level transaction id. If the snapshot is
  the one this backend last confirmed its configuration with, every committed
  change visible now was visible then, so the configuration held is current,
  unless this very transaction changed it (the configuration triggers report
  that through `config_changed`; such a transaction always takes the slow
  path, and its snapshots are never remembered).
- slow path: the call returns STALE with the version it holds; the wrapper
  runs `hessra_authz._sync(held)`, which reads the configuration version
  (generation counter bumped by triggers, plus its row's xmin) with the
  statement's snapshot, hands over the keys, chains and revocations kept
  ready in config_state (`load_config`) only when the version differs, and
  calls again with that version.
- never backwards: a snapshot can be older than a change that has committed
  (REPEATABLE READ, `SET TRANSACTION SNAPSHOT`). Each backend publishes the
  newest generation it has read outside a changing transaction (a committed
  one) in the database's shared file; a statement whose snapshot shows an
  older generation than any published one gets StaleSnapshotError (SQLSTATE
  40001, retry the transaction) instead of a decision made with keys or
  revocations older than those already in force.

Time: the verification time is the wall clock, bounded below by the
statement's start, so a long statement or a DO block can't keep a token, key
or cached decision alive past its end. The statement's start also keys the
per-statement results that the helpers of one policy share.

Memory: every cache is bounded by (estimated) bytes, see hessra_pg.core.lru.
"""

from __future__ import annotations

import time

from ..core.lru import ByteBoundedLRU, text_size
from ..core.record import Record
from ..errors import (
    ArgumentError,
    ChainFormatError,
    ConfigurationError,
    HessraError,
    InternalError,
    StaleSnapshotError,
    UnknownChainError,
)
from . import imports_without_gc
from .row_answers import RowAnswers
from .shared_decisions import SharedDecisions, blake2b
from .audit import Audit
from .stats import SNAPSHOT_INTERVAL, Counters
from ..core.records import ChainNode, Decision, Revocations, RootKey, TokenRejected, VerifiedToken, parse_chain

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing at run time: this is imported by every backend's first verification
    from typing import Any, Callable, TypeVar

    from .designation_answers import DesignationAnswers

    R = TypeVar("R")

#: Signature-checked tokens (and the reasons of malformed ones), each
#: charged its estimated weight (hessra_pg.core.verifier.estimated_weight).
TOKEN_CACHE_BYTES = 8 * 1024 * 1024
#: Positive decisions, each until the token's expiry or its key's end.
DECISION_CACHE_BYTES = 4 * 1024 * 1024
#: Results of the per-statement helpers (identity scope, resource sets).
RESULT_CACHE_BYTES = 2 * 1024 * 1024
#: Token kinds (capability or not) by digest: ~0.5 MiB at most.
TOKEN_KINDS_MAX = 4096

#: Outcome asking the wrapper to run hessra_authz._sync() and call again.
STALE = "s"


def _kind_digest(capability: bool, token_digest: bytes) -> bytes:
    """The shared decision table's entry saying which kind a token is (no
    configuration version: the kind never changes)."""
    return SharedDecisions.digest("", "capability token" if capability else "authorization token", token_digest)


_VERIFIER: Any = None


def _verifier() -> Any:
    """hessra_pg.core.verifier and biscuit-python, imported when a token must
    actually be checked: a backend that answers from its caches and the
    shared decision table never loads them (issue 12). Imported as the entry
    modules are, with the cyclic GC paused."""
    global _VERIFIER
    if _VERIFIER is None:
        with imports_without_gc():
            from ..core import verifier
            from ..core.biscuit import biscuit_auth

            biscuit_auth.Biscuit  # noqa: B018 (the check that follows needs the module itself)
        _VERIFIER = verifier
    return _VERIFIER


class _Stale(Exception):
    """The configuration held may be out of date: go through _sync()."""


class CapabilitySettings(Record):
    """The database's capability configuration (hessra_authz.capability_settings):
    its anchor, whether tokens must be bound to it in their authority block,
    and what a designation policy does when a token's checks give no exact
    set ("per_row" verification, or "deny")."""

    __slots__ = ("anchor", "require_anchor", "fallback")

    def __init__(self, anchor: str | None = None, require_anchor: bool = False, fallback: str = "per_row") -> None:
        self.anchor = anchor
        self.require_anchor = require_anchor
        self.fallback = fallback


NO_CAPABILITY_SETTINGS = CapabilitySettings()


class Config(Record):
    """Keys, chains, revocations and capability settings of one
    configuration version."""

    __slots__ = ("version", "generation", "keys", "chains", "revocations", "capability")

    def __init__(self, version: str, generation: int, keys: tuple[RootKey, ...], chains: dict[str, Any],
                 revocations: Revocations, capability: CapabilitySettings = NO_CAPABILITY_SETTINGS) -> None:
        self.version = version
        self.generation = generation
        self.keys = keys
        #: name -> tuple of ChainNode, or the ConfigurationError of a bad row
        self.chains = chains
        self.revocations = revocations
        self.capability = capability


class _Rejection(Record):
    """A malformed token's reason, kept instead of the exception (re-raising
    one exception instance grows its traceback on every raise)."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def result_size(result: Any) -> int:
    """Estimated bytes of a cached result (a Decision or a list of texts)."""
    return result.weight() if isinstance(result, Decision) else text_size(result)


def generation_of(version: str) -> int:
    """The generation counter of a version text `generation/xmin`."""
    return int(version.split("/", 1)[0])


def snapshot_names_visibility(snapshot: str | None, xid: str | None) -> bool:
    """Whether two statements whose `pg_current_snapshot()` text equals
    `snapshot` are sure to see the same committed transactions.

    On a primary the text lists every transaction in progress below xmax
    except the caller's own (`xid`), so equal texts see the same. On a hot
    standby the list is always empty (the standby keeps those transaction
    ids apart, in its subxip array), so while one runs on the primary a
    commit between xmin and xmax changes what the next statement sees and
    not the text (measured: '726:730:' before and after a commit of 727).
    Such a text is no proof: it is never remembered, and each call reads the
    configuration version with its own snapshot (hessra_authz._sync).
    """
    if snapshot is None:
        return False
    xmin, _, rest = snapshot.partition(":")
    xmax, _, in_progress = rest.partition(":")
    # Nothing in progress below xmax; a primary's list; or the caller's own
    # transaction as the only one in progress (a primary: a standby has none).
    return xmin == xmax or in_progress != "" or (xid is not None and xid == xmin)


def parse_chains(chains: dict[str, Any]) -> dict[str, Any]:
    """Chain rows (name -> JSON nodes) parsed, a bad row kept as its error
    (raised only when a call needs that chain)."""
    parsed: dict[str, Any] = {}
    for name, nodes in chains.items():
        try:
            parsed[name] = parse_chain(nodes)
        except ChainFormatError as error:
            # A stored row: a configuration problem, not the caller's argument.
            parsed[name] = ConfigurationError(f"service chain {name!r} is invalid: {error}",
                                              hint="Fix it with hessra_authz.set_service_chain(name, nodes).")
    return parsed


class Runtime:
    """The state of one backend's verifier."""

    def __init__(self) -> None:
        self.config: Config | None = None
        #: The snapshot text with which `config` was last confirmed current.
        self.confirmed_snapshot: str | None = None
        #: Top-level transaction id of this backend's latest configuration change.
        self.changing_xid: str | None = None
        #: Newest generation this backend read outside a changing transaction.
        self.committed_generation = 0
        self.shared: SharedDecisions | None = None
        self.shared_database: tuple[int, str] | None = None
        #: VerifiedToken or _Rejection by (token digest, version)
        self.tokens = ByteBoundedLRU(TOKEN_CACHE_BYTES)
        #: (result, valid until) by (version, token digest, arguments)
        self.decisions = ByteBoundedLRU(DECISION_CACHE_BYTES)
        #: (result, valid until) by (arguments, token digest, statement start, version)
        self.results = ByteBoundedLRU(RESULT_CACHE_BYTES)
        #: Unexpected exceptions by class name (each denied; see entry points).
        self.internal_errors: dict[str, int] = {}
        #: Whether a token (by digest) is a capability token; at most TOKEN_KINDS_MAX entries.
        self.token_kinds: dict[bytes, bool] = {}
        #: Audit levels and line budget (hessra_pg.plpython.audit); decision counters (.stats).
        self.audit = Audit()
        self.counters = Counters()
        #: When this backend's next snapshot for database_stats() is due (hessra_pg.plpython.db_stats).
        self.stats_due = time.monotonic() + SNAPSHOT_INTERVAL
        #: Answers of per-row calls under the latest snapshot (hessra_pg.plpython.row_answers).
        self.rows = RowAnswers()
        #: (the designations property)
        self._designations: DesignationAnswers | None = None

    @property
    def designations(self) -> DesignationAnswers:
        """Answers of designation-policy helpers under the latest snapshot
        (hessra_pg.plpython.designation_answers), made at the first
        designation call: most backends never make one."""
        if self._designations is None:
            from .designation_answers import DesignationAnswers

            self._designations = DesignationAnswers(lambda: self.rows.published)
        return self._designations

    def _clear_answers(self) -> None:
        """Forget the per-row and designation answers (another configuration, or this backend changing it)."""
        self.rows.clear()
        if self._designations is not None:
            self._designations.clear()

    # -- configuration ------------------------------------------------------

    def config_version(self) -> str | None:
        return None if self.config is None else self.config.version

    def config_changed(self, xid: str) -> None:
        """Called by the configuration triggers in the changing backend:
        until transaction `xid` ends, every call re-reads the version (its
        own uncommitted changes, and their rollback, are invisible to the
        snapshot comparison)."""
        self.changing_xid = xid
        self.confirmed_snapshot = None
        self._clear_answers()

    def load_config(self, version: str, keys: tuple[RootKey, ...], chains: dict[str, Any],
                    revocations: Revocations, database: int | None = None, database_tag: str = "",
                    capability: CapabilitySettings = NO_CAPABILITY_SETTINGS) -> None:
        """Take the configuration read by hessra_authz._sync() in database
        `database` (OID). An older generation than one already committed is
        not taken: the statement that read it is refused (see statement())."""
        generation = generation_of(version)
        if database is not None and (database, database_tag) != self.shared_database:
            self.shared = SharedDecisions.for_database(database, database_tag)
            self.shared_database = (database, database_tag)
            self.rows.published = None if self.shared is None else self.shared.generation_view()
        if self.config is not None and generation < self.committed_generation:
            return
        self.config = Config(version, generation, keys, parse_chains(chains), revocations, capability)
        self.confirmed_snapshot = None
        self._clear_answers()
        self.tokens.clear()
        self.decisions.clear()
        self.results.clear()

    def _published_generation(self) -> int:
        return self.shared.published_generation() if self.shared is not None else 0

    def statement(self, statement_us: int | None, snapshot: str | None, xid: str | None,
                  version: str | None) -> "Statement":
        """The context of one call, with the configuration current for it.

        `version` None (the wrapper's first attempt): the configuration held,
        if it was confirmed with this very snapshot outside a changing
        transaction and no newer one was published; else _Stale. `version`
        given (after _sync()): the configuration _sync() just loaded,
        confirmed from now on for `snapshot`.
        """
        config = self.config
        if version is None:
            if (config is None or snapshot is None or snapshot != self.confirmed_snapshot
                    or (xid is not None and xid == self.changing_xid)
                    or self._published_generation() > config.generation):
                raise _Stale()
        else:
            newest = max(self.committed_generation, self._published_generation())
            if generation_of(version) < newest:
                raise StaleSnapshotError(
                    "this transaction's snapshot predates a change of keys, service chains or revocations "
                    "that has committed; retry the transaction",
                    hint="REPEATABLE READ and SERIALIZABLE transactions, and imported snapshots, can't "
                         "verify tokens with a configuration older than the one in force.")
            if config is None or config.version != version:
                raise InternalError("configuration not loaded: call through the hessra_authz functions")
            changing = xid is not None and xid == self.changing_xid
            if not changing and config.generation > self.committed_generation:
                self.committed_generation = config.generation
                if self.shared is not None:
                    self.shared.publish_generation(config.generation)
            # A snapshot taken inside a changing transaction sees its
            # uncommitted rows; the same snapshot text after a rollback would
            # not. Nor does every snapshot text name what it sees (a hot
            # standby's, see snapshot_names_visibility).
            self.confirmed_snapshot = None if changing or not snapshot_names_visibility(snapshot, xid) else snapshot
        assert config is not None
        if time.monotonic() >= self.stats_due:  # database_stats(): a snapshot at most once a second
            from .db_stats import publish  # (not before: a short-lived backend never loads it)

            publish(self)
        statement = Statement(self, config, statement_us)
        if snapshot is not None and snapshot == self.confirmed_snapshot and not self.audit.active:
            # Confirmed for this snapshot, outside a changing transaction:
            # per-row and designation answers may be recorded under it
            # (row_answers, designation_answers). Not while auditing is on
            # anywhere in the database: the audit writes a line per
            # statement, and recorded answers would serve later statements
            # without one.
            statement.row_snapshot = snapshot
        return statement

    def call(self, context: str | None, version: str | None) -> "Statement":
        """statement() from the context text hessra_authz._context() builds:
        `<statement start in microseconds> <snapshot> [<transaction id>]`,
        space-separated (none of them contains a space; new fields go at the
        end, and this is the one place that reads them)."""
        fields = (context or "").split(" ")
        try:
            statement_us = int(fields[0])
        except ValueError:
            statement_us = None
        snapshot = fields[1] if len(fields) > 1 else None
        xid = fields[2] if len(fields) > 2 else None
        return self.statement(statement_us, snapshot, xid, version)

    def stats(self, admin: bool) -> dict[str, Any]:
        """Sizes and bounds of the caches (hessra_authz.cache_stats()); the
        configuration version only for administrators."""
        from ..core.verifier import _builders

        return {
            "configuration_version": self.config_version() if admin else None,
            "tokens": self.tokens.stats(),
            "decisions": self.decisions.stats(),
            "results": self.results.stats(),
            "authorizers": _builders.stats(),
            "shared_decisions": None if self.shared is None else {"hits": self.shared.hits,
                                                                  "misses": self.shared.misses},
            "internal_errors": dict(self.internal_errors),
            "row_answers": self.rows.stats(),
            "designation_answers": self.designations.stats(),
        }


class Statement:
    """One call: the runtime, the configuration current for it, the
    verification time, and the token digest (computed once per call)."""

    __slots__ = ("runtime", "config", "now", "statement_us", "_token", "_digest", "row_snapshot", "kept_until",
                 "kind_read")

    def __init__(self, runtime: Runtime, config: Config, statement_us: int | None) -> None:
        self.runtime = runtime
        self.config = config
        clock_us = time.time_ns() // 1000
        self.statement_us = clock_us if statement_us is None else statement_us
        self.now = max(self.statement_us, clock_us) / 1_000_000
        self._token: str | None = None
        self._digest = b""
        #: The key under which this call may record per-row answers (None: it may not).
        self.row_snapshot: str | None = None
        #: Until when the latest remembered() result is kept (None: not kept).
        self.kept_until: float | None = None
        #: The kind is_capability() read from a token itself (share_kind() passes it on), else None.
        self.kind_read: bool | None = None

    def digest(self, token: str) -> bytes:
        if token is not self._token:
            self._token, self._digest = token, blake2b(token.encode(), digest_size=16).digest()
        return self._digest

    # -- signature check through the token cache ---------------------------

    def load(self, token: str | None, now: float) -> VerifiedToken:
        if token is None:
            raise TokenRejected("no_token", "no token was given")
        cache = self.runtime.tokens
        key = (self.digest(token), self.config.version)
        cached = cache.get(key)
        if isinstance(cached, _Rejection):
            raise TokenRejected(cached.reason, cached.detail)
        if cached is not None and cached.key.active_at(now):
            return cached
        try:
            verified = _verifier().load_token(token, self.config.keys, now)
        except TokenRejected as rejected:
            # Format and shape rejections depend on the token alone; key and
            # signature ones may change with time (a key's not_before).
            if rejected.reason in ("bad_token", "too_complex"):
                cache.put(key, _Rejection(rejected.reason, rejected.detail), len(rejected.detail))
            raise
        cache.put(key, verified, verified.weight)
        return verified

    # -- decisions -----------------------------------------------------------

    def remembered(self, token: str | None, args: tuple[Any, ...], compute: Callable[[], R],
                   keep: Callable[[R], bool] = lambda decision: decision.valid,  # type: ignore[attr-defined]
                   shared: bool = False) -> R:
        """A result from the cache, or compute one and keep it if `keep` says
        so and the token verified: until the token's expiry or its key's end.

        Only results that can't turn from "no" to "yes" as time passes are
        kept: positive decisions, and the resources or identity a verified
        token grants (they only shrink, at expiry). With `shared` (yes/no
        decisions whose caller needs only `valid`), positive ones are also
        shared with the database's other backends.
        """
        if self.runtime.audit.active and not self.runtime.audit.busy:  # audit off: this one test
            return self.runtime.audit.remembered(self, token, args, compute, keep, shared)
        self.kept_until = None
        if token is None:
            return self.runtime.counters.computed(args, compute)
        runtime, now = self.runtime, self.now
        token_digest = self.digest(token)
        key = (self.config.version, token_digest, args)
        hit = runtime.decisions.get(key)
        if hit is not None and now < hit[1]:
            self.kept_until = hit[1]
            return hit[0]
        shared_digest = None
        if shared and runtime.shared is not None:
            shared_digest = SharedDecisions.digest(self.config.version, repr(args), token_digest)
            until = runtime.shared.allowed_until(shared_digest, now)
            if until is not None:
                result: Any = Decision(True, "ok")
                runtime.decisions.put(key, (result, until), text_size(args) + result.weight())
                self.kept_until = until
                return result
        result = runtime.counters.computed(args, compute)
        until = self._valid_until(token_digest)
        if until is not None and keep(result):
            runtime.decisions.put(key, (result, until), text_size(args) + result_size(result))
            self.kept_until = until
            if shared_digest is not None and runtime.shared is not None:
                runtime.shared.record(shared_digest, until)
        return result

    def keep_row_answer(self, token: str | None, kind: str,
                        arguments: tuple[str | None, str | None, str | None, str | None, str | None],
                        valid: bool) -> None:
        """Record a yes/no answer for the next rows of this statement
        (row_answers), if this call may (a row_snapshot, see statement()),
        and a yes only while the decision caches keep it."""
        rows = self.runtime.rows
        rows.trusted_calls += 1
        if self.row_snapshot is not None:
            rows.record(self.row_snapshot, self.config.generation, self.now, token, kind, arguments, valid,
                        self.kept_until)

    def _valid_until(self, token_digest: bytes) -> float | None:
        """Until when results about a verified token hold (its expiry or its
        key's end), or None if it isn't a verified token with a known expiry."""
        verified = self.runtime.tokens.get((token_digest, self.config.version))
        if not isinstance(verified, VerifiedToken) or not verified.expiry_known:
            return None
        limits = [limit for limit in (verified.expires_at, verified.key.not_after) if limit is not None]
        return min(limits) if limits else float("inf")

    def per_statement(self, token: str | None, args: tuple[Any, ...], compute: Callable[[], R]) -> R:
        """A helper result computed once per statement (the several helpers
        of one policy share it), and kept until the token's expiry."""
        key = (args, None if token is None else self.digest(token), self.statement_us, self.config.version)
        hit = self.runtime.results.get(key)
        if hit is not None and self.now < hit[1]:
            return hit[0]
        result = self.remembered(token, args, compute, keep=lambda _: True)
        until = None if token is None else self._valid_until(self.digest(token))
        self.runtime.results.put(key, (result, float("inf") if until is None else until),
                                 text_size(args) + result_size(result))
        return result

    def chain(self, name: str | None) -> tuple[ChainNode, ...]:
        if name is None:
            raise ArgumentError("service chain name must not be NULL",
                                hint="Pass the name of a chain registered with hessra_authz.set_service_chain().")
        chain = self.config.chains.get(name)
        if chain is None:
            raise UnknownChainError(f"no service chain named {name!r}")
        if isinstance(chain, ConfigurationError):
            raise chain
        return chain

    def decide(self, token: str | None, *, subject: str | None, resource: str | None, operation: str | None,
               domain: str | None = None, prefix: str | None = None, chain_name: str | None = None,
               nodes_json: str | None = None, use_chain: bool = False, component: str | None = None,
               capability: bool = False, detailed: bool = False) -> Decision:
        """An authorization decision. `detailed`: the caller reports the
        whole Decision (explain), so it is cached apart from the yes/no
        answers, which other backends may supply.

        The chain is keyed by its name or its nodes' JSON text and resolved
        only when the decision is computed: a cached "yes" implies it
        resolved under this configuration, and a cache hit must stay cheap.
        """
        config = self.config
        chain_key = None if not use_chain else ("nodes", nodes_json) if nodes_json is not None else ("named", chain_name)

        def compute() -> Decision:
            chain: tuple[ChainNode, ...] | None = None
            if use_chain:
                if nodes_json is not None:
                    import json  # only the jsonb-nodes overload of verify_service_chain

                    chain = parse_chain(json.loads(nodes_json))
                else:
                    chain = self.chain(chain_name)
            return _verifier().verify(token, config.keys, now=self.now, subject=subject, resource=resource,
                                      operation=operation, domain=domain, prefix=prefix, chain=chain,
                                      component=component, capability=capability, load=self.load,
                                      revoked=config.revocations, diagnose=detailed,
                                      chains=None if use_chain else config.chains)

        return self.remembered(
            token,
            ("explain" if detailed else "authorization", subject, resource, operation, domain, prefix, chain_key,
             component, capability),
            compute,
            shared=not detailed,
        )

    def capability(self, token: str | None, resource: str | None, operation: str | None,
                   designations: tuple[tuple[str, str | None], ...] = (), subject: str | None = None,
                   detailed: bool = False) -> Decision:
        """A capability decision under this database's policy (its anchor,
        require_anchor, chains, revocations): hessra_pg.core.capability."""
        config = self.config
        settings = config.capability

        def compute() -> Decision:
            with imports_without_gc():  # (not for a shared or cached decision)
                from ..core.capability import verify_capability

            return verify_capability(token, config.keys, now=self.now, resource=resource, operation=operation,
                                     designations=designations, anchor=settings.anchor, subject=subject,
                                     require_anchor=settings.require_anchor, chains=config.chains,
                                     load=self.load, revoked=config.revocations, diagnose=detailed)

        return self.remembered(
            token, ("capability" if not detailed else "explain capability", resource, operation, designations,
                    subject),
            compute,
            shared=not detailed,
        )

    def capability_row(self, token: str | None, resource: str | None, operation: str | None,
                       designations: tuple[tuple[str, str | None], ...], subject: str | None) -> bool:
        """capability() for one row of a designation policy's per-row
        fallback. Rows repeat values, so within one statement (one clock,
        one configuration) the answer is kept for each set of designations,
        denials included; across statements only approvals are
        (capability())."""
        key = ("capability row", resource, operation, designations, subject,
               None if token is None else self.digest(token), self.statement_us, self.config.version)
        hit = self.runtime.results.get(key)
        if hit is not None:
            return hit[0]
        valid = self.capability(token, resource, operation, designations, subject).valid
        self.runtime.results.put(key, (valid, float("inf")), text_size(key[:5]) + 100)
        return valid

    def is_capability(self, token: str | None) -> bool:
        """Whether the token is a capability token (its authority block has
        Hessra's capability check), read from its unverified structure: this
        only picks the policy, and either path verifies the token. Without
        verifying here, an authorization token's decision can still come
        from another backend (shared decisions). False for an unreadable
        token. Kept by token digest (bounded)."""
        if token is None:
            return False
        kinds = self.runtime.token_kinds
        digest = self.digest(token)
        kind = kinds.get(digest)
        if kind is None:
            kind = self._shared_kind(digest)
            if kind is None:
                with imports_without_gc():
                    from ..core.capability import is_capability_token
                    from ..core.datalog import decode
                    from ..core.encoding import decode_token

                try:
                    kind = is_capability_token(decode(decode_token(token)))
                except Exception:  # noqa: BLE001 (unreadable: the verifier reports it)
                    kind = False
                self.kind_read = kind
            if len(kinds) >= TOKEN_KINDS_MAX:
                kinds.clear()
            kinds[digest] = kind
        return kind

    def authorized(self, token: str | None, subject: str | None, resource: str | None,
                   operation: str | None) -> bool:
        """authorized(): a capability token verified as a capability (the
        anchor supplied, the subject checked only when set), any other token
        as verify_token does."""
        if self.is_capability(token):
            return self.capability(token, resource, operation, (), subject).valid
        return self.decide(token, subject=subject, resource=resource, operation=operation).valid

    def share_kind(self, token: str) -> None:
        """Tell the database's other backends which kind this token is,
        once a decision about it was positive (the shared table holds only
        what the verifier allowed: tokens that are merely readable, or
        garbage, would evict other backends' decisions), if this call read
        the kind from the token (once per backend and token)."""
        kind = self.kind_read
        if kind is None:
            return
        self.kind_read = None
        if self.runtime.shared is not None:
            self.runtime.shared.record(_kind_digest(kind, self.digest(token)), float("inf"))

    def _shared_kind(self, token_digest: bytes) -> bool | None:
        """The kind another backend of the database read (a pure function
        of the token's bytes, kept in the shared decision table): a first
        call then needs neither the Datalog reader nor the token's bytes
        decoded when its decision is shared too. None: not known there."""
        shared = self.runtime.shared
        if shared is None:
            return None
        for kind in (False, True):
            if shared.held_until(_kind_digest(kind, token_digest), self.now) is not None:
                return kind
        return None

    def capability_rows(self, token: str | None, resource: str | None, operation: str | None,
                        row_labels: tuple[str, ...], fixed: tuple[tuple[str, str | None], ...],
                        subject: str | None) -> Any:
        """The RowSets of a designation policy for this statement (computed
        once per statement, kept until the token's expiry)."""
        from ..core.capability import row_sets

        config = self.config
        settings = config.capability
        return self.per_statement(
            token, ("capability rows", resource, operation, row_labels, fixed, subject),
            lambda: row_sets(token, config.keys, now=self.now, resource=resource, operation=operation,
                             row_labels=row_labels, fixed=fixed, anchor=settings.anchor, subject=subject,
                             require_anchor=settings.require_anchor, chains=config.chains, load=self.load,
                             revoked=config.revocations))

    def identity(self, token: str | None, identity: str | None, domain: str | None = None,
                 ensure_subject_in_domain: bool = False) -> Decision:
        """Identity mode of spec §6.4; `identity` None is bearer mode."""
        config = self.config
        return self.remembered(
            token, ("identity" if identity is not None else "bearer", identity, domain, ensure_subject_in_domain),
            lambda: _verifier().verify_identity(token, config.keys, now=self.now, identity=identity, domain=domain,
                                                ensure_subject_in_domain=ensure_subject_in_domain, load=self.load,
                                                revoked=config.revocations),
            shared=True,
        )

    def token_identity(self, token: str | None, domain: str | None = None) -> str | None:
        config = self.config
        return _verifier().proven_identity(token, config.keys, now=self.now, domain=domain, load=self.load,
                                           revoked=config.revocations)

    def identity_scope(self, token: str | None) -> list[str | None]:
        """["ok", identity or NULL, "t" (it also proves every descendant
        identity:...) / "f" (only itself) / "x" (only itself, and other
        restrictions can't be described: fewer rows than verify_identity
        would show, never more), revoked identities below it...] for the
        owner-column policy helpers."""
        return self.per_statement(token, ("identity_scope",), lambda: self._identity_scope(token))

    def _identity_scope(self, token: str | None) -> list[str | None]:
        config = self.config
        scope = _verifier().identity_scope(token, config.keys, now=self.now, load=self.load,
                                           revoked=config.revocations)
        flag = ("t" if scope.descendants else "f") if scope.exact else "x"
        if scope.identity is None:
            return ["ok", None, flag]
        below = sorted(r for r in config.revocations.identities if r.startswith(scope.identity + ":"))
        return ["ok", scope.identity, flag, *below]

    def resources(self, token: str | None, subject: str | None, operation: str | None) -> list[str | None]:
        """["ok", resource...]: every resource verify_token accepts for this
        token, subject and operation."""
        config = self.config
        return self.per_statement(
            token, ("authorized_resources", subject, operation),
            lambda: ["ok", *_verifier().authorized_resources(token, config.keys, now=self.now, subject=subject,
                                                             operation=operation, load=self.load,
                                                             revoked=config.revocations, chains=config.chains)])


RUNTIME = Runtime()


# -- errors and outcomes -------------------------------------------------------

def error_outcome(error: HessraError) -> str:
    """The JSON error outcome that hessra_authz._raise() turns into an ERROR."""
    message = f"hessra_authz: {error}"
    hint = error.hint
    import json  # errors are rare: keep json off the first call's imports

    return json.dumps({"error": message, "hint": hint, "detail": error.detail, "sqlstate": error.sqlstate})


def internal_error(runtime: Runtime, error: BaseException) -> None:
    """Count an unexpected exception; warn (once per class per backend,
    without traceback or token) so an operator notices."""
    name = type(error).__name__
    runtime.internal_errors[name] = runtime.internal_errors.get(name, 0) + 1
    if runtime.internal_errors[name] == 1:
        try:
            import plpy  # type: ignore[import-not-found]

            plpy.warning(f"hessra_authz: internal error ({name}) while verifying a token; the token was denied")
        except Exception:  # outside PostgreSQL, or the warning itself failed: counting is enough
            pass
