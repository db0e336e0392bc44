"""``hessra-pg token mint|attest|sign|restrict|inspect|verify``: authorization
tokens (spec §2-§5)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from hessra_pg.core.encoding import decode_token, encode_token_standard
from hessra_pg.errors import HessraError
from hessra_pg.tokens.inspect import TokenInfo, inspect_token
from hessra_pg.tokens.mint import attest_service, mint_authorization, restrict_prefix, sign_off
from hessra_pg.core.verifier import verify

from .common import (
    guarded,
    EXIT_OK,
    CliInputError,
    add_chain_arguments,
    add_json_argument,
    add_now_argument,
    add_root_key_arguments,
    add_signer_arguments,
    add_time_arguments,
    add_token_argument,
    biscuit_errors,
    chain_from_args,
    command_parser,
    format_info,
    info_dict,
    key_id,
    now,
    nodes_arg,
    print_json,
    private_key_file,
    public_key_arg,
    read_token,
    report_decision,
    root_key,
    root_keys_for,
    signing_keypair,
    token_time,
    warn,
)

_NOT_VERIFIED = "token does not verify with the root public key (or is not a Biscuit)"


def register(subparsers: Any) -> None:
    """Add the ``token`` subcommands."""
    token = subparsers.add_parser(
        "token",
        help="mint, attenuate, inspect and verify authorization tokens",
        description="Hessra authorization tokens: mint them, append service-chain attestations, "
                    "multi-party sign-offs and prefix restrictions, inspect and verify them offline. "
                    "Exit status: 0 success/valid, 1 denied, 2 bad input.",
    )
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)

    mint = command_parser(
        actions, "mint",
        help="mint an authorization token",
        description=(
            "Mint a Hessra authorization token (the newest format) that grants OPERATION on RESOURCE\n"
            "to SUBJECT, signed with the authority's private key. Prints the token (URL-safe base64)."
        ),
        examples=(
            "  hessra-pg token mint --key root.pem \\\n"
            "      --subject alice --resource orders --operation read\n"
            "  hessra-pg token mint --key root.pem \\\n"
            "      --subject alice --resource orders --operation read \\\n"
            "      --chain-node auth_service=auth_service.pub.pem \\\n"
            "      --chain-node payment_service=ed25519/78ef4255...\n"
            "  export HESSRA_PERSONAL_KEYPAIR_FILE=root.pem\n"
            "  hessra-pg token mint --subject alice --resource orders --operation read \\\n"
            "      --ttl 3600"
        ),
    )
    _add_request_arguments(mint, subject_required=True)
    add_time_arguments(mint)
    mint.add_argument("--domain", metavar="D", help="restrict the token to domain D (verifiers must pass --domain D)")
    mint.add_argument("--prefix-key", metavar="KEY",
                      help="require a prefix restriction signed by this key (alg/hex or public key file) "
                           "before the token is usable; see 'token restrict'")
    add_chain_arguments(mint, purpose="nodes that must attest the token")
    mint.add_argument("--multi-party", action="append", metavar="COMPONENT=KEY",
                      help="require a sign-off from this party (repeat); KEY is alg/hex or a public key file; "
                           "see 'token sign'")
    mint.add_argument("--root-key-id", type=key_id, metavar="N",
                      help="record root key id N in the token (the kid of hessra_authz.add_key)")
    mint.add_argument("--standard-base64", action="store_true",
                      help="print in the standard base64 alphabet (+/), only for the legacy hessra-postgres "
                           "C extension")
    add_signer_arguments(mint)
    mint.set_defaults(func=guarded(_mint))

    attest = command_parser(
        actions, "attest",
        help="append a service-chain attestation",
        description=(
            "Append a service-chain attestation, service(SERVICE), signed with a chain node's private\n"
            "key. Verifiers count it only if SERVICE equals the resource they check, which is why it\n"
            "defaults to the token's resource. Prints the new token."
        ),
        examples="  hessra-pg token attest \"$TOKEN\" --node-key auth_service.pem \\\n      --root-key root.pub.pem",
    )
    add_token_argument(attest)
    attest.add_argument("--node-key", required=True, metavar="FILE", help="the node's private key file (PKCS#8 PEM)")
    attest.add_argument("--service", metavar="SERVICE", help="the attested service (default: the token's resource)")
    add_root_key_arguments(attest)
    attest.set_defaults(func=guarded(_attest))

    sign = command_parser(
        actions, "sign",
        help="append a multi-party sign-off",
        description=(
            "Append a multi-party sign-off, namespace(NAMESPACE), signed with a party's private key.\n"
            "NAMESPACE defaults to the component the token names for that key. Prints the new token."
        ),
        examples="  hessra-pg token sign \"$TOKEN\" --party-key approval.pem \\\n      --root-key root.pub.pem",
    )
    add_token_argument(sign)
    sign.add_argument("--party-key", required=True, metavar="FILE", help="the party's private key file (PKCS#8 PEM)")
    sign.add_argument("--namespace", metavar="N",
                      help="the party's component (default: the one the token requires for this key)")
    add_root_key_arguments(sign)
    sign.set_defaults(func=guarded(_sign))

    restrict = command_parser(
        actions, "restrict",
        help="append a prefix restriction",
        description=(
            "Append a prefix restriction (check if prefix(P); prefix_added(true);) signed with the\n"
            "prefix key named at mint time (--prefix-key). Verifiers must then pass --prefix P\n"
            "(exact match; the application checks that the path it serves starts with P).\n"
            "Prints the new token."
        ),
        examples="  hessra-pg token restrict \"$TOKEN\" --prefix tenant/1/ \\\n"
                 "      --prefix-key prefix.pem --root-key root.pub.pem",
    )
    add_token_argument(restrict)
    restrict.add_argument("--prefix", required=True, metavar="P", help="the prefix")
    restrict.add_argument("--prefix-key", required=True, metavar="FILE",
                          help="the prefix attenuator's private key file (PKCS#8 PEM)")
    add_root_key_arguments(restrict)
    restrict.set_defaults(func=guarded(_restrict))

    inspect = command_parser(
        actions, "inspect",
        help="show what a token is and grants",
        description=(
            "Describe a token: kind, subject/resource/operation, expiry, domain, service-chain nodes\n"
            "(attested or not), multi-party signers (signed or pending), prefix, revocation ids and\n"
            "every block's external key and Datalog. For a capability token (see 'hessra-pg cap'):\n"
            "its anchor, the designations it requires and where (authority, amendment, attestation,\n"
            "trusting which key), latent or not and activated or not, and which key attested what.\n"
            "With a root key the signatures are checked first (and attestation and activation status\n"
            "is known); without one the token is only parsed."
        ),
        examples="  hessra-pg token inspect - --root-key root.pub.pem < token.txt\n"
                 "  hessra-pg token inspect \"$CAP_TOKEN\" --root-key root.pub.pem --json",
    )
    add_token_argument(inspect)
    add_root_key_arguments(inspect, optional=True)
    add_json_argument(inspect)
    inspect.set_defaults(func=guarded(_inspect))

    check = command_parser(
        actions, "verify",
        help="verify a token offline, as hessra_authz.verify_token does",
        description=(
            "Verify a token for SUBJECT, RESOURCE and OPERATION with the same verifier the database\n"
            "uses. Prints 'valid' (exit 0) or 'denied: <reason> (<detail>)' (exit 1); reasons are\n"
            "those of hessra_authz.explain. With a service chain, every node before --component\n"
            "must have attested (all nodes without --component).\n\n"
            "A token that cannot be read or whose signature does not verify is a denial too\n"
            "(bad_token, bad_signature, ...); unusable keys, chains or options exit 2."
        ),
        examples=(
            "  hessra-pg token verify \"$TOKEN\" --root-key root.pub.pem \\\n"
            "      --subject alice --resource orders --operation read\n"
            "  hessra-pg token verify - --chain-json chain.json \\\n"
            "      --component payment_service \\\n"
            "      --subject alice --resource orders --operation read --json < token.txt"
        ),
    )
    add_token_argument(check)
    _add_request_arguments(check, subject_required=False)
    check.add_argument("--domain", metavar="D", help="the verifier's domain (for domain-restricted tokens)")
    check.add_argument("--prefix", metavar="P", help="the verifier's prefix (for prefix-restricted tokens)")
    add_chain_arguments(check, purpose="whose attestations to check")
    check.add_argument("--component", metavar="C",
                       help="'I am this chain node': require attestations only from the nodes before C")
    check.add_argument("--capability", action="store_true",
                       help="do not check the subject: whoever holds the token (no --subject)")
    add_now_argument(check)
    add_root_key_arguments(check)
    add_json_argument(check)
    check.set_defaults(func=guarded(_verify))


def _add_request_arguments(parser: argparse.ArgumentParser, *, subject_required: bool) -> None:
    group = parser.add_argument_group("request")
    group.add_argument("--subject", required=subject_required, metavar="S",
                       help="who the token is for" + ("" if subject_required else " (required unless --capability)"))
    group.add_argument("--resource", required=True, metavar="R", help="the resource, e.g. a table name")
    group.add_argument("--operation", required=True, metavar="O", help="the operation, e.g. read")


# -- handlers --------------------------------------------------------------

def _mint(args: argparse.Namespace) -> int:
    signer = signing_keypair(args)
    chain = chain_from_args(args) or ()
    parties = nodes_arg(args.multi_party, "--multi-party")
    prefix_key = public_key_arg(args.prefix_key, "--prefix-key") if args.prefix_key else None
    with biscuit_errors("could not build the token"):
        token = mint_authorization(
            signer, args.subject, args.resource, args.operation,
            time_config=token_time(args), domain=args.domain, prefix_key=prefix_key,
            service_chain=chain, multi_party=parties, root_key_id=args.root_key_id,
        )
    print(encode_token_standard(decode_token(token)) if args.standard_base64 else token)
    return EXIT_OK


def _inspect_verified(token: str, key: str) -> TokenInfo:
    with biscuit_errors(_NOT_VERIFIED):
        return inspect_token(token, key)


def _attest(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    node = private_key_file(args.node_key, "--node-key")
    info = _inspect_verified(token, key)
    service = args.service if args.service is not None else info.resource
    if service is None:
        raise CliInputError("the token names no resource: pass --service")
    node_key = str(node.public_key)
    components = [n["component"] for n in info.service_chain if n["public_key"] == node_key]
    if not info.service_chain:
        warn("the token has no service chain; this attestation will not be checked by anyone")
    elif not components:
        warn(f"--node-key ({node_key}) is not a node of the token's service chain; the attestation will not count")
    if info.resource is not None and service != info.resource:
        warn(f"verifiers count attestations of the token's resource {info.resource!r}, not {service!r}")
    with biscuit_errors(_NOT_VERIFIED):
        print(attest_service(token, key, service, node))
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    party = private_key_file(args.party_key, "--party-key")
    info = _inspect_verified(token, key)
    party_key = str(party.public_key)
    components = [p["component"] for p in info.multi_party if p["public_key"] == party_key]
    namespace = args.namespace
    if namespace is None:
        if not components:
            raise CliInputError(
                f"the token requires no sign-off from --party-key ({party_key}); pass --namespace to sign anyway"
            )
        namespace = components[0]
    elif namespace not in components:
        warn(f"the token requires no sign-off for {namespace!r} with this key; it will not count")
    with biscuit_errors(_NOT_VERIFIED):
        print(sign_off(token, key, namespace, party))
    return EXIT_OK


def _restrict(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    prefix_key = private_key_file(args.prefix_key, "--prefix-key")
    with biscuit_errors(_NOT_VERIFIED):
        print(restrict_prefix(token, key, args.prefix, prefix_key))
    return EXIT_OK


def inspect_command(args: argparse.Namespace) -> int:
    """`token inspect` and `identity inspect`."""
    token = read_token(args.token)
    key = root_key(args, required=False)
    with biscuit_errors(_NOT_VERIFIED if key else "token is not a valid Biscuit"):
        info = inspect_token(token, key)
    if args.json:
        print_json(info_dict(info))
    else:
        print(format_info(info))
    return EXIT_OK


_inspect = inspect_command


def _verify(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    if args.capability and args.subject is not None:
        raise CliInputError("--capability checks no subject: drop --subject")
    if not args.capability and args.subject is None:
        raise CliInputError("--subject is required (or --capability to accept any holder)")
    chain = chain_from_args(args)
    if args.component is not None and chain is None:
        raise CliInputError("--component needs the chain: pass --chain-json or --chain-node")
    if args.domain is None and args.prefix is None and _is_capability(token):
        # A hessra-cap capability: decided as the database decides it
        # (authorized()), with no designation and no anchor supplied.
        from hessra_pg.core.capability import verify_capability

        decision = verify_capability(token, root_keys_for(token, key), now=now(args), resource=args.resource,
                                     operation=args.operation, subject=args.subject,
                                     chains=None if chain is None else {args.resource: chain})
        if decision.reason.startswith(("designation_", "anchor_")):
            warn("this is a capability token and no designation or anchor is supplied here: "
                 "`hessra-pg cap verify` takes them (--designation LABEL=VALUE, --anchor)")
        return report_decision(decision, args.json)
    decision = verify(
        token, root_keys_for(token, key), now=now(args),
        subject=args.subject, resource=args.resource, operation=args.operation,
        domain=args.domain, prefix=args.prefix, chain=chain, component=args.component,
        capability=args.capability,
    )
    if chain is None:
        warn_unchecked_chain(token)
    return report_decision(decision, args.json)


def _is_capability(token: str) -> bool:
    """Whether the token's authority block is a hessra-cap capability's
    (read from its protobuf blocks; False for an unreadable token)."""
    from hessra_pg.core.capability import is_capability_token
    from hessra_pg.core.datalog import decode

    try:
        return is_capability_token(decode(decode_token(token)))
    except Exception:  # noqa: BLE001 (an unreadable token is verify()'s to report)
        return False


def warn_unchecked_chain(token: str) -> None:
    """A token minted for a service chain verified without its chain: Hessra's
    verifier accepts it, a database that knows the chain does not."""
    with contextlib.suppress(HessraError):
        declared = inspect_token(token).service_chain
        if declared:
            warn("the token declares a service chain (" + " -> ".join(node["component"] for node in declared)
                 + ") and none was checked: pass --chain-json or --chain-node (a database with that chain "
                 "registered under the resource's name enforces it)")
