"""``hessra-pg cap mint|designate|attest|activate|verify``: Hessra capability
tokens, the hessra-cap model (spec hessra-capability-tokens.md).

The Python API behind each command is hessra_pg.tokens.capability (minting
and amending) and hessra_pg.core.capability.verify_capability (the
database's policy). `token inspect` describes capability tokens too.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from hessra_pg.tokens.capability import (
    ANCHOR_LABEL,
    FACET_LABEL,
    CapabilityInfo,
    activate,
    attest,
    capability_info,
    designate,
    mint_capability,
)
from hessra_pg.tokens.mint import DEFAULT_DURATION, TokenTime

from .common import (
    EXIT_OK,
    CliInputError,
    add_json_argument,
    add_now_argument,
    add_root_key_arguments,
    add_signer_arguments,
    add_time_arguments,
    add_token_argument,
    biscuit_errors,
    command_parser,
    guarded,
    iso_time,
    key_id,
    now,
    positive_seconds,
    private_key_file,
    public_key_arg,
    read_token,
    report_decision,
    root_key,
    root_keys_for,
    signing_keypair,
    unix_time,
    warn,
)

_NOT_VERIFIED = "token does not verify with the root public key (or is not a Biscuit)"
_RESERVED = (ANCHOR_LABEL, FACET_LABEL)


def register(subparsers: Any) -> None:
    """Add the ``cap`` subcommands."""
    cap = subparsers.add_parser(
        "cap",
        help="mint, designate, attest, activate and verify capability tokens (hessra-cap)",
        description="Hessra capability tokens (the hessra-cap model): a right that whoever holds the token "
                    "may use, narrowed by designations (check if designation(LABEL, VALUE)) that the "
                    "verifier satisfies, optionally bound to an anchor (the verifier's own name) and "
                    "latent until an activator signs an activation. 'token inspect' shows their "
                    "designations, anchor, latent state and attestations. "
                    "Exit status: 0 success/valid, 1 denied, 2 bad input.",
    )
    actions = cap.add_subparsers(dest="action", metavar="ACTION", required=True)

    mint = command_parser(
        actions, "mint",
        help="mint a capability token",
        description=(
            "Mint a capability token granting OPERATION on RESOURCE, signed with the authority's private\n"
            "key, in the exact shape of hessra-cap-token 2.x. SUBJECT is recorded in the right for\n"
            "auditing: verifiers do not check who presents the token. Prints the token (URL-safe\n"
            "base64).\n\n"
            "--designation LABEL=VALUE requires the verifier to supply designation(LABEL, VALUE) (a\n"
            "tenant, a user, a row). --anchor A binds the token to the verifier named A (the database's\n"
            "configured anchor). --designation-trusting KEY:LABEL=VALUE requires an attestation of\n"
            "designation(LABEL, VALUE) signed by KEY ('cap attest'). --latent KEY makes the token inert\n"
            "until the activator KEY appends an activation ('cap activate')."
        ),
        examples=(
            "  hessra-pg cap mint --key root.pem \\\n"
            "      --subject alice --resource orders --operation read \\\n"
            "      --designation tenant_id=acme --anchor db:main --ttl 3600\n"
            "  hessra-pg cap mint --key root.pem \\\n"
            "      --subject agent --resource orders --operation read \\\n"
            "      --anchor db:main --latent activator.pub.pem --ttl 3600\n"
            "  hessra-pg cap mint --key root.pem \\\n"
            "      --subject alice --resource orders --operation read \\\n"
            "      --designation-trusting ed25519/cae69b69...:tenant_id=acme"
        ),
    )
    request = mint.add_argument_group("request")
    request.add_argument("--subject", required=True, metavar="S", help="whom the capability is minted for")
    request.add_argument("--resource", required=True, metavar="R", help="the resource, e.g. a table name")
    request.add_argument("--operation", required=True, metavar="O", help="the operation, e.g. read")
    _add_designation_arguments(mint, trusting="--designation-trusting")
    mint.add_argument("--anchor", metavar="A",
                      help="bind the token to the verifier named A: designation(\"anchor\", A), which only the "
                           "database's configured anchor supplies")
    mint.add_argument("--latent", metavar="ACTIVATOR_KEY",
                      help="make the token latent until the activator (alg/hex or public key file) activates it")
    add_time_arguments(mint)
    mint.add_argument("--root-key-id", type=key_id, metavar="N",
                      help="record root key id N in the token (the kid of hessra_authz.add_key)")
    add_signer_arguments(mint)
    mint.set_defaults(func=guarded(_mint))

    narrow = command_parser(
        actions, "designate",
        help="narrow a capability with more designations (any holder, no key)",
        description=(
            "Append a keyless first-party block of constraints: each --designation LABEL=VALUE adds\n"
            "check if designation(LABEL, VALUE), each --designation-trusting KEY:LABEL=VALUE requires\n"
            "an attestation by KEY, and --ttl makes the copy expire sooner. Any holder can do this:\n"
            "it only narrows the token. Only the root public key is needed, to check the token first.\n"
            "Prints the new token."
        ),
        examples=(
            "  hessra-pg cap designate \"$TOKEN\" --designation tenant_id=acme \\\n"
            "      --designation user=alice --root-key root.pub.pem\n"
            "  hessra-pg cap designate - --designation tenant_id=acme --ttl 60 < token.txt"
        ),
    )
    add_token_argument(narrow)
    _add_designation_arguments(narrow, trusting="--designation-trusting")
    _add_window_arguments(narrow, default=None, what="the narrowed copy")
    add_root_key_arguments(narrow)
    narrow.set_defaults(func=guarded(_designate))

    vouch = command_parser(
        actions, "attest",
        help="vouch for designations with an attester's key",
        description=(
            "Append a third-party block signed by the attester's private key carrying the facts\n"
            "designation(LABEL, VALUE) of each --designation (--facet ID completes a facet:\n"
            "designation(\"facet\", ID)). They satisfy the token's checks that trust this key\n"
            "(cap mint --designation-trusting KEY:LABEL=VALUE), and nothing else. --require and\n"
            "--require-trusting add constraints to the block, --ttl an expiry. Prints the new token."
        ),
        examples=(
            "  hessra-pg cap attest \"$TOKEN\" --attester-key attester.pem \\\n"
            "      --designation tenant_id=acme --root-key root.pub.pem\n"
            "  hessra-pg cap attest \"$ACTIVATED\" --attester-key activator.pem --facet F-1 \\\n"
            "      --root-key root.pub.pem"
        ),
    )
    add_token_argument(vouch)
    vouch.add_argument("--attester-key", required=True, metavar="FILE",
                       help="the attester's private key file (PKCS#8 PEM)")
    facts = vouch.add_argument_group("attested facts")
    facts.add_argument("--designation", action="append", default=[], metavar="LABEL=VALUE",
                       help="vouch for designation(LABEL, VALUE) (repeat)")
    facts.add_argument("--facet", metavar="ID", help="complete a facet: vouch for designation(\"facet\", ID)")
    constraints = vouch.add_argument_group("constraints of the attested block")
    constraints.add_argument("--require", action="append", default=[], metavar="LABEL=VALUE",
                             help="add check if designation(LABEL, VALUE) (repeat)")
    constraints.add_argument("--require-trusting", action="append", default=[], metavar="KEY:LABEL=VALUE",
                             help="add check if designation(LABEL, VALUE) trusting KEY (repeat)")
    _add_window_arguments(vouch, default=None, what="the attested copy")
    add_root_key_arguments(vouch)
    vouch.set_defaults(func=guarded(_attest))

    wake = command_parser(
        actions, "activate",
        help="activate a latent capability with the activator's key",
        description=(
            "Append the activation of a latent token (hessra-cap mechanism::activate): a third-party\n"
            "block signed by the activator's private key with activation(NOW) and an activation\n"
            "window of --ttl seconds. With --facet ID the activated token also needs the facet\n"
            "completed by the activator ('cap attest --facet ID'). Only the key named by\n"
            "'cap mint --latent' activates the token. Prints the new token."
        ),
        examples=(
            "  hessra-pg cap activate \"$LATENT\" --activator-key activator.pem \\\n"
            "      --ttl 300 --root-key root.pub.pem\n"
            "  hessra-pg cap activate - --activator-key activator.pem --facet F-1 < latent.txt"
        ),
    )
    add_token_argument(wake)
    wake.add_argument("--activator-key", required=True, metavar="FILE",
                      help="the activator's private key file (PKCS#8 PEM)")
    wake.add_argument("--facet", metavar="ID",
                      help="pin a facet: the activated token needs designation(\"facet\", ID) attested by "
                           "the activator")
    _add_window_arguments(wake, default=DEFAULT_DURATION, what="the activation")
    add_root_key_arguments(wake)
    wake.set_defaults(func=guarded(_activate))

    check = command_parser(
        actions, "verify",
        help="verify a capability offline, as hessra_authz.verify_capability does",
        description=(
            "Verify a capability for RESOURCE and OPERATION with the database's policy (rules P, A,\n"
            "R, T and F of the capability spec): the verifier supplies designation(LABEL, VALUE) for\n"
            "each --designation, designation(\"anchor\", A) for --anchor A (in the database the\n"
            "anchor comes only from hessra_authz.set_anchor), and never an activation or a facet: a\n"
            "latent token needs its activator's activation. With --subject, the token's right must\n"
            "name that subject. Prints 'valid' (exit 0) or 'denied: <reason> (<detail>)' (exit 1).\n\n"
            "The labels 'anchor' and 'facet' are reserved and a label may be given once: such\n"
            "input exits 2, as do unusable keys."
        ),
        examples=(
            "  hessra-pg cap verify \"$TOKEN\" --root-key root.pub.pem \\\n"
            "      --resource orders --operation read \\\n"
            "      --designation tenant_id=acme --anchor db:main\n"
            "  hessra-pg cap verify - --resource orders --operation read \\\n"
            "      --subject alice --json < token.txt"
        ),
    )
    add_token_argument(check)
    request = check.add_argument_group("request")
    request.add_argument("--resource", required=True, metavar="R", help="the resource, e.g. a table name")
    request.add_argument("--operation", required=True, metavar="O", help="the operation, e.g. read")
    request.add_argument("--subject", metavar="S", help="also require the right to name this subject")
    request.add_argument("--designation", action="append", default=[], metavar="LABEL=VALUE",
                         help="a designation the verifier supplies (repeat; each label once)")
    request.add_argument("--anchor", metavar="A", help="the verifier's anchor (the database's configured one)")
    request.add_argument("--require-anchor", action="store_true",
                         help="deny tokens whose authority block is not bound to --anchor")
    add_now_argument(check)
    add_root_key_arguments(check)
    add_json_argument(check)
    check.set_defaults(func=guarded(_verify))


def _add_designation_arguments(parser: argparse.ArgumentParser, *, trusting: str) -> None:
    group = parser.add_argument_group("designations")
    group.add_argument("--designation", action="append", default=[], metavar="LABEL=VALUE",
                       help="require designation(LABEL, VALUE) from the verifier (repeat)")
    group.add_argument(trusting, action="append", default=[], metavar="KEY:LABEL=VALUE",
                       help="require designation(LABEL, VALUE) attested by KEY (alg/hex or a public key "
                            "file; repeat)")


def _add_window_arguments(parser: argparse.ArgumentParser, *, default: int | None, what: str) -> None:
    shown = "no expiry of its own" if default is None else "%(default)s"
    parser.add_argument("--ttl", type=positive_seconds, default=default, metavar="SECONDS",
                        help=f"how long {what} is valid, from --start (default: {shown})")
    parser.add_argument("--start", type=unix_time, metavar="UNIX",
                        help="Unix time to count from (default: now)")


# -- parsing -----------------------------------------------------------------

def parse_designation(value: str, option: str) -> tuple[str, str]:
    """`LABEL=VALUE` -> (label, value); VALUE may be empty or contain '='."""
    label, sep, text = value.partition("=")
    if not sep or not label:
        # The value is not echoed: it might be a token passed by mistake.
        raise CliInputError(f"{option} must be LABEL=VALUE")
    return label, text


def designations_arg(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    return [parse_designation(value, option) for value in values]


def parse_trusting(value: str, option: str) -> tuple[str, str, str]:
    """`KEY:LABEL=VALUE` -> (canonical key, label, value). KEY is alg/hex or
    a public key file (whose name has no ':')."""
    key, sep, rest = value.partition(":")
    label, eq, text = rest.partition("=")
    if not sep or not key or not eq or not label:
        raise CliInputError(f"{option} must be KEY:LABEL=VALUE (KEY: 'ed25519/<hex>', 'secp256r1/<hex>' "
                            "or a public key file)")
    return public_key_arg(key, option), label, text


def trusting_arg(values: Sequence[str], option: str) -> list[tuple[str, str, str]]:
    return [parse_trusting(value, option) for value in values]


def _warn_conflicts(pairs: Sequence[tuple[str, str]], option: str) -> None:
    values: dict[str, str] = {}
    for label, value in pairs:
        if values.setdefault(label, value) != value:
            warn(f"{option}: label {label!r} is required with two values; no verifier that supplies one "
                 "value per label (as the database does) can satisfy both")


# -- handlers ------------------------------------------------------------------

def _mint(args: argparse.Namespace) -> int:
    designations = designations_arg(args.designation, "--designation")
    for label, _ in designations:
        if label == ANCHOR_LABEL:
            raise CliInputError("--designation: use --anchor A for the anchor")
    if any(label == FACET_LABEL for label, _ in designations):
        warn("--designation facet=...: a database never supplies a facet (Hessra's engine keeps them in its "
             "own ledger); hessra-pg will never accept this token")
    _warn_conflicts(designations, "--designation")
    trusting = trusting_arg(args.designation_trusting, "--designation-trusting")
    latent = public_key_arg(args.latent, "--latent") if args.latent is not None else None
    if args.anchor is not None and not args.anchor:
        raise CliInputError("--anchor must not be empty")
    signer = signing_keypair(args)
    with biscuit_errors("could not build the token"):
        print(mint_capability(
            signer, args.subject, args.resource, args.operation,
            designations=designations, trusting=trusting, anchor=args.anchor, latent=latent,
            time_config=TokenTime(start=args.start, duration=args.ttl), root_key_id=args.root_key_id,
        ))
    return EXIT_OK


def _checked_info(token: str, key: str) -> CapabilityInfo:
    with biscuit_errors(_NOT_VERIFIED):
        info = capability_info(token, key)
    if not info.capability:
        warn("the token is not a capability token (no 'check if resource($res), operation($op), "
             "right($sub, $res, $op)' in its authority block)")
    return info


def _designate(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    designations = designations_arg(args.designation, "--designation")
    trusting = trusting_arg(args.designation_trusting, "--designation-trusting")
    if not designations and not trusting and args.ttl is None:
        raise CliInputError("nothing to add: pass --designation, --designation-trusting or --ttl")
    _checked_info(token, key)
    with biscuit_errors(_NOT_VERIFIED):
        print(designate(token, key, designations, trusting=trusting, valid_for=args.ttl, now=args.start))
    return EXIT_OK


def _attest(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    facts = designations_arg(args.designation, "--designation")
    if args.facet is not None:
        facts.append((FACET_LABEL, args.facet))
    required = designations_arg(args.require, "--require")
    trusting = trusting_arg(args.require_trusting, "--require-trusting")
    if not facts and not required and not trusting and args.ttl is None:
        raise CliInputError("nothing to attest: pass --designation, --facet, --require, --require-trusting "
                            "or --ttl")
    signer = private_key_file(args.attester_key, "--attester-key")
    info = _checked_info(token, key)
    signer_key = str(signer.public_key)
    expected = {(check.label, check.value) for check in info.designations if check.trusting == signer_key}
    for label, value in facts:
        if (label, value) not in expected:
            warn(f"the token asks --attester-key ({signer_key}) for no designation({label!r}, <this value>); "
                 "this attestation of it satisfies none of its checks")
    with biscuit_errors(_NOT_VERIFIED):
        print(attest(token, key, signer, designations=facts, constraints=required, trusting=trusting,
                     valid_for=args.ttl, now=args.start))
    return EXIT_OK


def _activate(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    activator = private_key_file(args.activator_key, "--activator-key")
    info = _checked_info(token, key)
    activator_key = str(activator.public_key)
    if info.latent is None:
        warn("the token is not latent; an activation changes nothing")
    elif info.latent != activator_key:
        warn(f"--activator-key ({activator_key}) is not the token's activator ({info.latent}); "
             "this activation will not count")
    elif info.activated:
        warn("the token is already activated")
    with biscuit_errors(_NOT_VERIFIED):
        print(activate(token, key, activator, valid_for=args.ttl, facet=args.facet, now=args.start))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from hessra_pg.core.capability import verify_capability

    token, key = read_token(args.token), root_key(args)
    assert key is not None
    designations = designations_arg(args.designation, "--designation")
    seen: set[str] = set()
    for label, _ in designations:
        if label == ANCHOR_LABEL:
            raise CliInputError("--designation: the label 'anchor' is reserved; pass --anchor A")
        if label == FACET_LABEL:
            raise CliInputError("--designation: the label 'facet' is reserved (a database never supplies facets)")
        if label in seen:
            raise CliInputError(f"--designation: label {label!r} is given twice (each label once)")
        seen.add(label)
    if args.require_anchor and args.anchor is None:
        raise CliInputError("--require-anchor needs --anchor")
    decision = verify_capability(
        token, root_keys_for(token, key), now=now(args), resource=args.resource, operation=args.operation,
        designations=designations, anchor=args.anchor, subject=args.subject, require_anchor=args.require_anchor,
    )
    return report_decision(decision, args.json)


# -- inspect output ----------------------------------------------------------------

def _quoted(value: str) -> str:
    """A value shown unambiguously (quotes and control characters escaped)."""
    return json.dumps(value, ensure_ascii=False)


def _status(value: bool | None, yes: str, no: str) -> str:
    return "unknown (signatures not checked)" if value is None else (yes if value else no)


def capability_lines(data: dict[str, Any]) -> list[str]:
    """The capability part of `token inspect` (CapabilityInfo.as_dict())."""
    lines = [f"anchor:          {_quoted(data['anchor']) if data['anchor'] is not None else '-'}"]
    if data["namespace"] is not None:
        lines.append(f"namespace:       {_quoted(data['namespace'])} (hessra-cap-token 1.0; 2.x verifiers and "
                     "the database never supply it)")
    if data["latent"] is None:
        lines.append("latent:          no")
    else:
        lines.append(f"latent:          yes, activator {data['latent']}")
        if data["activated"]:
            at = data["activated_at"]
            when = f" at {iso_time(at)} ({at})" if at is not None else ""
            lines.append(f"activated:       yes, block {data['activation_block']}{when}")
        else:
            lines.append("activated:       " + _status(data["activated"], "yes", "no (inert until the activator "
                                                                                "signs an activation)"))
    if data["designations"]:
        lines.append("designations:")
        for check in data["designations"]:
            if check["where"] == "authority":
                where = "authority"
            elif check["where"] == "amendment":
                where = f"amendment, block {check['block']}"
            else:
                where = f"attestation, block {check['block']}"
            line = f"  {check['label']} = {_quoted(check['value'])}  ({where})"
            if check["trusting"] is not None:
                line += f"  trusting {check['trusting']}: " + _status(check["attested"], "attested", "not attested")
            lines.append(line)
    else:
        lines.append("designations:    -")
    if data["attestations"]:
        claimed = "" if data["verified"] else "    (keys as the blocks claim them: signatures not checked)"
        lines.append("attestations:" + claimed)
        for item in data["attestations"]:
            vouched = [f"activation({item['activation'] if item['activation'] is not None else '?'})"
                       ] if item["activates"] else []
            vouched += [f"{d['label']} = {_quoted(d['value'])}" for d in item["designations"]]
            if item["expires_at"] is not None:
                vouched.append(f"until {iso_time(item['expires_at'])}")
            named = "" if item["named"] else "  (a key the token does not name: counts for nothing)"
            lines.append(f"  block {item['block']}  {item['key']}  {', '.join(vouched) or '-'}{named}")
    else:
        lines.append("attestations:    -")
    if data["other_checks"]:
        lines.append("other checks:")
        lines.extend(f"  block {check['block']}: {check['source']}" for check in data["other_checks"])
    return lines
