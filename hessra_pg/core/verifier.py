"""Pure verification decisions for Hessra tokens, shared by the server side
(PL/Python, through hessra_pg.plpython) and the client side (CLI, tests).

The authorizer is the "compat" one of spec §2.3: the newest Hessra facts with
the G1/G2 policy instead of `allow if true`, so G3 tokens verify exactly as
Hessra's SDK verifies them while old G1/G2 tokens can't be used for another
subject, resource or operation. Time is an integer fact (never set_time).
Nothing here touches a database; callers pass the keys, chains and time.
"""

from __future__ import annotations

from ..errors import (
    ConfigurationError,
    NoActiveKeyError,
    TokenFormatError,
    TokenShapeError,
    UnknownComponentError,
)
from .biscuit import biscuit_auth, errors as biscuit_errors
from .encoding import decode_token
from .keys import parse_public_key
from .lru import ByteBoundedLRU, text_size
from .record import Record
from .records import (  # noqa: F401 (re-exported: the verifier's names for its values)
    NO_REVOCATIONS,
    REASONS,
    REDACTED_DETAIL,
    ChainNode,
    Decision,
    Revocations,
    RootKey,
    TokenRejected,
    VerifiedToken,
    parse_chain,
)
from .shape import check_shape, read_shape

TYPE_CHECKING = False
if TYPE_CHECKING:  # the core stays off typing at run time (first-call imports)
    from typing import Any, Callable, Iterable, Mapping, Sequence

#: Biscuit's default max_time (1 ms) denies valid tokens on a busy machine
#: (design §3). The shape limits bound the work; this is only a backstop.
RUN_LIMIT_SECONDS = 1
RUN_LIMIT_FACTS = 1000
RUN_LIMIT_ITERATIONS = 100

_POLICY = "allow if subject($sub), resource($res), operation($op), right($sub, $res, $op);"
_RIGHTS_QUERY = "data($s, $r, $o) <- right($s, $r, $o)"


def __getattr__(name: str) -> Any:
    """Names that load biscuit-python or datetime, made when first read
    (hessra_pg.core.biscuit): BISCUIT_ERRORS, every exception
    biscuit-python raises for a bad token or a failed check; RUN_LIMIT_TIME,
    the authorizers' max_time."""
    if name == "BISCUIT_ERRORS":
        return biscuit_errors()
    if name == "RUN_LIMIT_TIME":
        return _run_limit_time()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run_limit_time() -> Any:
    # datetime.py costs ~1.5 ms in a new backend and only re-exports
    # _datetime; a backend needs it only when it builds an authorizer.
    try:
        from _datetime import timedelta
    except ImportError:  # pragma: no cover (other Pythons)
        from datetime import timedelta
    return timedelta(seconds=RUN_LIMIT_SECONDS)


# -- configuration ---------------------------------------------------------

def chain_nodes_required(nodes: Sequence[ChainNode], component: str | None) -> list[ChainNode]:
    """The nodes that must have attested for `component` (spec §3.3): every
    node strictly before it, or all nodes when component is None."""
    if component is None:
        return list(nodes)
    components = [node.component for node in nodes]
    if component not in components:
        raise UnknownComponentError(f"component {component!r} is not in the service chain",
                                    detail=f"components: {', '.join(components)}")
    return list(nodes[: components.index(component)])


# -- signature check -------------------------------------------------------

def load_token(token: str | None, keys: Iterable[RootKey], now: float) -> VerifiedToken:
    """Decode, bound and signature-check a token against the keys active at
    `now`, choosing by `root_key_id` when the token carries one.

    Raises TokenRejected for anything wrong with the token, and
    ConfigurationError when no key is active at all.
    """
    if token is None or (isinstance(token, str) and not token.strip()):
        raise TokenRejected("no_token", "no token was given")
    try:
        data = decode_token(token)
        shape = read_shape(data)
        check_shape(shape)
    except TokenShapeError as error:
        raise TokenRejected("too_complex", str(error)) from None
    except TokenFormatError as error:
        raise TokenRejected("bad_token", str(error)) from None

    all_keys = list(keys)
    active = [key for key in all_keys if key.active_at(now)]
    if not active:
        raise NoActiveKeyError(
            "no active key in hessra_authz.keys: add the authority's public key with hessra_authz.add_key()"
        )
    if shape.root_key_id is not None:
        candidates = [key for key in all_keys if key.kid == shape.root_key_id]
        if not candidates:
            raise TokenRejected("unknown_key", f"token names root key id {shape.root_key_id}, which is not registered")
        candidates = [key for key in candidates if key.active_at(now)]
        if not candidates:
            raise TokenRejected("key_inactive", f"root key {shape.root_key_id} is not active at this time")
    else:
        # Newest first: after a rotation most tokens are signed by the new key.
        candidates = sorted(active, key=lambda key: key.kid, reverse=True)

    for key in candidates:
        try:
            biscuit = biscuit_auth.Biscuit.from_bytes(data, parse_public_key(key.public_key))
        except biscuit_errors():
            continue
        sources = tuple(biscuit.block_source(i) for i in range(biscuit.block_count()))
        expires_at, expiry_known = _time_checks(sources)
        return VerifiedToken(
            biscuit=biscuit,
            key=key,
            expires_at=expires_at,
            revocation_ids=tuple(biscuit.revocation_ids),
            block_sources=sources,
            expiry_known=expiry_known,
            weight=estimated_weight(data, sources),
            data=data,
        )
    if shape.root_key_id is not None:
        raise TokenRejected("bad_signature", f"signature does not verify with root key {shape.root_key_id}")
    raise TokenRejected("bad_signature", "signature does not verify with any active root key")


def estimated_weight(data: bytes, sources: Sequence[str]) -> int:
    """Bytes a signature-checked token holds: the parsed Biscuit grows with
    its size and its statements, plus the printed Datalog kept beside it.
    Calibrated against RssAnon (biscuit-python 0.4.0): 2.8 KB for a plain
    400-character token (estimate 3.8), 115 KB for a 32 KiB token of
    appended facts (132), 274 KB for 800 authority facts (282)."""
    return 2048 + 3 * len(data) + sum(2 * len(source) + 200 * source.count(";") for source in sources)


_TIME_CHECK_HEAD = "check if time($"


def time_check_limit(line: str) -> int | None:
    """N if `line` is exactly `check if time($v), $v < N;` (a whole printed
    line, so a string term that merely contains this text, say an operation
    name, can't pose as a time check), else None."""
    if not line.startswith(_TIME_CHECK_HEAD) or not line.endswith(";"):
        return None
    variable, separator, rest = line[len(_TIME_CHECK_HEAD):-1].partition("), $")
    if not separator or not variable.replace("_", "a").isalnum() or not rest.startswith(variable + " < "):
        return None
    number = rest[len(variable) + 3:]
    digits = number[1:] if number.startswith("-") else number
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(number)


def time_check_limits(source: str) -> list[int]:
    """N of every `check if time($v), $v < N;` line of a printed block."""
    limits = []
    for line in source.split("\n"):
        limit = time_check_limit(line)
        if limit is not None:
            limits.append(limit)
    return limits


def _time_checks(sources: Iterable[str]) -> tuple[int | None, bool]:
    """(the minimum N of every `check if time($t), $t < N` line, or None;
    whether `time` appears only in such lines, so the token can't turn
    invalid before that expiry)."""
    values: list[int] = []
    known = True
    for source in sources:
        mentions = source.count("time(")
        if not mentions:
            continue
        found = time_check_limits(source)
        known = known and len(found) == mentions
        values.extend(found)
    return (min(values) if values else None), known


# -- authorization ---------------------------------------------------------

#: Parsed authorizers by (source, parameters, scope keys): parsing the
#: Datalog costs about as much as evaluating it, and a builder can build any
#: number of authorizers. Parameters include the time (whole seconds), so in
#: steady use the entries of one second serve every token checked in it.
#: Bounded by (estimated) bytes, not entries: parameters are caller-supplied
#: text of any length (a subject of megabytes must not be kept 256 times).
AUTHORIZER_CACHE_BYTES = 2 * 1024 * 1024
_builders = ByteBoundedLRU(AUTHORIZER_CACHE_BYTES)


def _authorizer(source: list[str], params: dict[str, Any],
                scope: dict[str, str] | None = None) -> biscuit_auth.AuthorizerBuilder:
    """An authorizer with our explicit, generous run limits (design §3).

    `scope` maps parameter names to public keys in canonical text form.
    """
    cache_key = (tuple(source), tuple(params.items()), tuple(scope.items()) if scope else ())
    builder = _builders.get(cache_key)
    if builder is not None:
        return builder
    builder = biscuit_auth.AuthorizerBuilder(
        "\n".join(source), params, {name: parse_public_key(key) for name, key in (scope or {}).items()})
    limits = builder.limits()
    limits.max_time = _run_limit_time()
    limits.max_facts = RUN_LIMIT_FACTS
    limits.max_iterations = RUN_LIMIT_ITERATIONS
    builder.set_limits(limits)
    # The parsed builder holds the source and every parameter (Rust side):
    # measured 3.7 KB for the common authorizer (estimate 6.0).
    _builders.put(cache_key, builder, 2048 + 3 * text_size(cache_key))
    return builder


def authorize(
    verified: VerifiedToken,
    *,
    now: int,
    subject: str | None,
    resource: str,
    operation: str,
    domain: str | None = None,
    prefix: str | None = None,
    chain: Sequence[ChainNode] | None = None,
    component: str | None = None,
    capability: bool = False,
    diagnose: bool = True,
) -> Decision:
    """Run the compat authorizer on a signature-checked token.

    `capability=True` does not check the subject (verify_capability).
    With `chain`, the nodes before `component` must have attested (§3.3);
    an unknown component raises ConfigurationError. `diagnose=False` skips
    working out why a denied token is denied (reason "denied"): the
    diagnosis queries the authorizer again, and yes/no callers don't need it.
    """
    required = chain_nodes_required(chain, component) if chain is not None else []
    source = ["time({now}); resource({resource}); operation({operation});"]
    params: dict[str, Any] = {"now": now, "resource": resource, "operation": operation}
    scope: dict[str, str] = {}
    if capability:
        source.append("subject($sub) <- right($sub, {resource}, {operation});")
    else:
        source.append("subject({subject});")
        params["subject"] = subject
    if domain is not None:
        source.append("domain({domain});")
        params["domain"] = domain
    if prefix is not None:
        source.append("prefix({prefix});")
        params["prefix"] = prefix
    for index, node in enumerate(required):
        source.append(f"check if node({{resource}}, {{component{index}}}) trusting authority, {{node_key{index}}};")
        params[f"component{index}"] = node.component
        scope[f"node_key{index}"] = node.public_key
    source.append(_POLICY)

    builder = _authorizer(source, params, scope)
    decision = verified.decision
    authorizer = builder.build(verified.biscuit)
    try:
        authorizer.authorize()
        return decision(True, "ok")
    except biscuit_errors() as error:
        message = str(error)
    if not diagnose:
        return decision(False, "denied", "not diagnosed")
    from .diagnosis import Failure, authorization_reason

    def granted() -> list[tuple[object, ...]]:
        try:
            return [tuple(fact.terms) for fact in authorizer.query(biscuit_auth.Rule(_RIGHTS_QUERY))]
        except biscuit_errors():
            return []

    reason, detail = authorization_reason(
        Failure(message), now=now, expires_at=verified.expires_at, rights=granted, subject=subject,
        resource=resource, operation=operation, required_components=[node.component for node in required],
        capability=capability)
    return decision(False, reason, detail)


def verify(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    subject: str | None,
    resource: str | None,
    operation: str | None,
    domain: str | None = None,
    prefix: str | None = None,
    chain: Sequence[ChainNode] | None = None,
    component: str | None = None,
    capability: bool = False,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
    diagnose: bool = True,
    chains: Mapping[str, Any] | None = None,
) -> Decision:
    """Verify a token end to end; a token problem is a Decision, never an
    exception. Configuration problems raise ConfigurationError.

    `now` is the Unix time (a float keeps key windows exact; Datalog gets
    the integer part). `load` replaces load_token(token, keys, now), e.g.
    with a cached one (hessra_pg.plpython.runtime). `diagnose=False`: see
    authorize(). `chains`: the service chains this database knows, by name
    (a tuple of ChainNode, or the ConfigurationError of an invalid one);
    without an explicit `chain`, a chain named like the resource is
    enforced in full (every node must have attested): a token minted for a
    service chain can't skip it where the chain is known.
    """
    if chain is None and chains and resource is not None:
        chain, component = enforced_chain(chains, resource), None
    if chain is not None:
        chain_nodes_required(chain, component)  # an unknown component is loud even with no token
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected as rejected:
        return Decision(False, rejected.reason, detail=rejected.detail)
    if resource is None or operation is None or (not capability and subject is None):
        return verified.decision(False, "denied", "subject, resource and operation are required")
    detail = revoked.revoked_block(verified)
    if detail is None and revoked.identities:
        if subject is not None and revoked.covers_identity(subject):
            detail = "the subject is a revoked identity"
        elif capability and any(revoked.covers_identity(holder)
                                for holder in rights_holders(verified, resource, operation)):
            # Whoever presents a capability acts for the identities it grants
            # the right to: revoking one of them revokes the capability.
            detail = "the token grants this right to a revoked identity"
    if detail is not None:
        return verified.decision(False, "revoked", detail)
    return authorize(
        verified,
        now=int(now),
        subject=subject,
        resource=resource,
        operation=operation,
        domain=domain,
        prefix=prefix,
        chain=chain,
        component=component,
        capability=capability,
        diagnose=diagnose,
    )


def enforced_chain(chains: Mapping[str, Any], resource: str) -> tuple[ChainNode, ...] | None:
    """The configured service chain named `resource`, if any (raising the
    ConfigurationError of an invalid one)."""
    configured = chains.get(resource)
    if isinstance(configured, ConfigurationError):
        raise configured
    return configured


def rights_holders(verified: VerifiedToken, resource: str, operation: str) -> list[str]:
    """The subjects the token's authority grants `operation` on `resource`."""
    authorizer = _authorizer(["allow if true;"], {}).build(verified.biscuit)  # our run limits, not 1 ms
    try:
        rights = authorizer.query(biscuit_auth.Rule(_RIGHTS_QUERY))
    except biscuit_errors():
        return []
    return [fact.terms[0] for fact in rights
            if fact.terms[1:] == [resource, operation] and isinstance(fact.terms[0], str)]


# -- identity tokens (spec §6.4) --------------------------------------------

_IDENTITY_POLICY = "allow if subject($s);"
_DOMAIN_MEMBER_POLICY = "allow if subject($d, $s), domain($d), subject($s);"


def authorize_identity(
    verified: VerifiedToken,
    *,
    now: int,
    identity: str | None,
    domain: str | None = None,
    ensure_subject_in_domain: bool = False,
) -> Decision:
    """Identity verification of spec §6.4: `identity=None` is bearer mode
    (the actor is the token's own root subject, so a delegated token fails).

    Hessra's policy is `allow if true`; ours requires a `subject(...)` fact,
    which every identity token has, so that an old authorization token (whose
    only check is its expiry) is not accepted as proof of any identity.
    """
    source = ["time({now});"]
    params: dict[str, Any] = {"now": now}
    if identity is None:
        source.append("actor($a) <- subject($a);")
    else:
        source.append("actor({identity});")
        params["identity"] = identity
    if domain is not None:
        source.append("domain({domain});")
        params["domain"] = domain
    source.append(_DOMAIN_MEMBER_POLICY if ensure_subject_in_domain else _IDENTITY_POLICY)
    builder = _authorizer(source, params)
    decision = verified.decision
    try:
        builder.build(verified.biscuit).authorize()
        return decision(True, "ok")
    except biscuit_errors() as error:
        message = str(error)
    from .diagnosis import Failure, identity_reason

    return decision(False, *identity_reason(Failure(message), now=now, expires_at=verified.expires_at,
                                            ensure_subject_in_domain=ensure_subject_in_domain))


def verify_identity(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    identity: str | None,
    domain: str | None = None,
    ensure_subject_in_domain: bool = False,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
) -> Decision:
    """Verify an identity token for `identity` (None: bearer mode)."""
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected as rejected:
        return Decision(False, rejected.reason, detail=rejected.detail)
    detail = _revoked_identity_token(verified, revoked, identity)
    if detail is not None:
        return verified.decision(False, "revoked", detail)
    return authorize_identity(verified, now=int(now), identity=identity, domain=domain,
                              ensure_subject_in_domain=ensure_subject_in_domain)


def _revoked_identity_token(verified: VerifiedToken, revoked: Revocations, identity: str | None) -> str | None:
    """Why an identity token is revoked for `identity`, or None."""
    detail = revoked.revoked_block(verified)
    if detail is None and revoked.identities:
        if identity is not None and revoked.covers_identity(identity):
            detail = "the identity is revoked"
        elif any(revoked.covers_identity(chained) for chained in identity_candidates(verified)):
            detail = "an identity in the token's delegation chain is revoked"
    return detail


_DELEGATION_PREFIX = 'check if actor($a), $a == "'
_DELEGATION_MIDDLE = '" || $a.starts_with("'
_DELEGATION_SUFFIX = '" + ":");'


def _delegated_identity(source: str) -> str | None:
    """X from a block holding exactly the delegation check of spec §6.2.

    Biscuit prints strings without escaping quotes, so X is recovered from
    the check's fixed shape (X appears twice, at known offsets) rather than
    by a regex. A wrong guess is harmless: the caller verifies it.
    """
    start = source.find(_DELEGATION_PREFIX)
    while start != -1:
        begin = start + len(_DELEGATION_PREFIX)
        end = source.find(_DELEGATION_SUFFIX, begin)
        while end != -1:
            inner = source[begin:end]
            size, odd = divmod(len(inner) - len(_DELEGATION_MIDDLE), 2)
            if size >= 0 and not odd and inner[size:size + len(_DELEGATION_MIDDLE)] == _DELEGATION_MIDDLE \
                    and inner[:size] == inner[size + len(_DELEGATION_MIDDLE):]:
                return inner[:size]
            end = source.find(_DELEGATION_SUFFIX, end + 1)
        start = source.find(_DELEGATION_PREFIX, start + 1)
    return None


def identity_candidates(verified: VerifiedToken) -> list[str]:
    """The root subject (read with Datalog, exactly), then each delegated
    identity, in block order."""
    authorizer = _authorizer(["allow if true;"], {}).build(verified.biscuit)  # our run limits, not 1 ms
    try:
        subjects = [fact.terms[0] for fact in authorizer.query(biscuit_auth.Rule("data($s) <- subject($s)"))]
    except biscuit_errors():
        return []
    found = [subject for subject in subjects if isinstance(subject, str)][:1]
    for source in verified.block_sources[1:]:
        delegated = _delegated_identity(source)
        if delegated is not None:
            found.append(delegated)
    return found


class IdentityScope(Record):
    """What a valid identity token proves, as row policies use it: the most
    specific identity, whether every descendant (identity:...) too, and
    whether that description is exact."""

    __slots__ = ("identity", "descendants", "exact")

    def __init__(self, identity: str | None, descendants: bool = False, exact: bool = True) -> None:
        self.identity = identity
        self.descendants = descendants
        self.exact = exact


def identity_scope(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    domain: str | None = None,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
) -> IdentityScope:
    """The identities a valid identity token proves (spec §6.4).

    When every check of the token that mentions `actor` is one of Hessra's
    shapes (hessra_pg.core.datalog.actor_scope, read from the protobuf blocks),
    the identities it proves are exactly {identity} or {identity} plus its
    descendants: exact. Any other restriction on `actor` (an appended
    `!$a.starts_with(...)`, say) can't be described as such a set: then
    only the identity itself is described (verified exactly) and no
    descendant, a subset of what verify_identity accepts, never more.
    """
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected:
        return IdentityScope(None)
    if revoked.revoked_block(verified) is not None:
        return IdentityScope(None)
    from .datalog import actor_scope  # only identity scopes read the Datalog structure

    try:
        scope = actor_scope(verified.data) if verified.data else None
    except TokenFormatError:
        scope = None
    if scope is not None and scope.exact and scope.constrained:
        # Every recognized set is an ancestor-or-equal of the intersection:
        # revoking any identity of the delegation chain covers it.
        candidate, descendants, exact = scope.identity, scope.descendants, True
        if candidate is not None and revoked.covers_identity(candidate):
            return IdentityScope(None)
    else:
        candidates = identity_candidates(verified)
        candidate, descendants, exact = (candidates[-1] if candidates else None), False, False
        if candidate is not None and (revoked.covers_identity(candidate)
                                      or _revoked_identity_token(verified, revoked, None) is not None):
            return IdentityScope(None)
    if candidate is None or not authorize_identity(verified, now=int(now), identity=candidate, domain=domain).valid:
        return IdentityScope(None, exact=exact)
    return IdentityScope(candidate, descendants, exact)


def proven_identity(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    domain: str | None = None,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
) -> str | None:
    """The most specific identity a valid identity token proves (the last
    delegated one, or the root subject), or None."""
    return identity_scope(token, keys, now=now, domain=domain, load=load, revoked=revoked).identity


def authorized_resources(
    token: str | None,
    keys: Iterable[RootKey],
    *,
    now: float,
    subject: str | None,
    operation: str | None,
    load: Callable[[str | None, float], VerifiedToken] | None = None,
    revoked: Revocations = NO_REVOCATIONS,
    chains: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every resource for which verify(token, subject, resource, operation)
    is valid (with the same `chains`), sorted. The compat policy needs a `right(subject, resource,
    operation)` fact of the authority block, so those facts are the complete
    candidate list; each candidate then goes through the full verification.
    """
    if subject is None or operation is None:
        return []
    try:
        verified = load(token, now) if load is not None else load_token(token, keys, now)
    except TokenRejected:
        return []
    authorizer = _authorizer(["allow if true;"], {}).build(verified.biscuit)  # our run limits, not 1 ms
    try:
        rights = authorizer.query(biscuit_auth.Rule(_RIGHTS_QUERY))
    except biscuit_errors():
        return []
    candidates = sorted({
        fact.terms[1] for fact in rights
        if fact.terms[0] == subject and fact.terms[2] == operation and isinstance(fact.terms[1], str)
    })
    return [
        resource for resource in candidates
        if verify(token, keys, now=now, subject=subject, resource=resource, operation=operation,
                  load=lambda text, at: verified, revoked=revoked, chains=chains, diagnose=False).valid
    ]
