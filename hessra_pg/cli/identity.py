"""``hessra-pg identity create|delegate|jit|verify|inspect``: identity tokens
(spec §6)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hessra_pg.tokens.identity import JIT_SECONDS, DelegationError, delegate_identity, jit_identity, mint_identity
from hessra_pg.core.verifier import verify_identity

from .common import (
    guarded,
    EXIT_DENIED,
    EXIT_OK,
    add_json_argument,
    add_now_argument,
    add_root_key_arguments,
    add_signer_arguments,
    add_time_arguments,
    add_token_argument,
    biscuit_errors,
    command_parser,
    key_id,
    now,
    positive_seconds,
    read_token,
    report_decision,
    root_key,
    root_keys_for,
    signing_keypair,
    token_time,
    unix_time,
)
from .token import inspect_command

_NOT_VERIFIED = "token does not verify with the root public key (or is not a Biscuit)"


def register(subparsers: Any) -> None:
    """Add the ``identity`` subcommands."""
    identity = subparsers.add_parser(
        "identity",
        help="create, delegate, inspect and verify identity tokens",
        description="Hessra identity tokens prove who the holder is. Identities are URIs with ':' "
                    "as the hierarchy separator (urn:hessra:alice -> urn:hessra:alice:laptop). "
                    "Exit status: 0 success/valid, 1 denied or delegation refused, 2 bad input.",
    )
    actions = identity.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = command_parser(
        actions, "create",
        help="create an identity token",
        description=(
            "Create an identity token for SUBJECT, signed with the authority's private key. By default\n"
            "it is delegatable: it proves SUBJECT and every descendant (SUBJECT:...), which the holder\n"
            "can hand out with 'identity delegate'. Prints the token."
        ),
        examples="  hessra-pg identity create --key root.pem --subject urn:hessra:alice \\\n      --ttl 3600",
    )
    create.add_argument("--subject", required=True, metavar="S", help="the identity, e.g. urn:hessra:alice")
    add_time_arguments(create)
    create.add_argument("--non-delegatable", action="store_true",
                        help="prove exactly SUBJECT, not its descendants (no delegation possible)")
    create.add_argument("--domain", metavar="D", help="restrict the token to domain D (verifiers must pass --domain D)")
    create.add_argument("--root-key-id", type=key_id, metavar="N",
                        help="record root key id N in the token (the kid of hessra_authz.add_key)")
    add_signer_arguments(create)
    create.set_defaults(func=guarded(_create))

    delegate = command_parser(
        actions, "delegate",
        help="delegate an identity token to a descendant identity",
        description=(
            "Narrow an identity token to IDENTITY, a descendant of the identity it proves\n"
            "(urn:hessra:alice -> urn:hessra:alice:laptop). The block is signed by a fresh throw-away\n"
            "key: no key is needed, only the root public key to check the token. A delegation nobody\n"
            "could use (lateral, to a non-descendant, from a non-delegatable token) is refused with\n"
            "exit status 1. Prints the new token."
        ),
        examples="  hessra-pg identity delegate \"$ID_TOKEN\" --identity urn:hessra:alice:laptop \\\n"
                 "      --root-key root.pub.pem",
    )
    add_token_argument(delegate)
    delegate.add_argument("--identity", required=True, metavar="ID", help="the identity to delegate to")
    add_time_arguments(delegate, what="the delegation")
    delegate.add_argument("--domain", metavar="D", help="the domain of a domain-restricted token")
    add_root_key_arguments(delegate)
    delegate.set_defaults(func=guarded(_delegate))

    jit = command_parser(
        actions, "jit",
        help="make a just-in-time copy valid for a few seconds",
        description=(
            "Append a block that expires the token SECONDS from now, for handing it to a service\n"
            "that should only be able to use it right away. Prints the new token."
        ),
        examples="  hessra-pg identity jit \"$ID_TOKEN\" --seconds 5 --root-key root.pub.pem",
    )
    add_token_argument(jit)
    jit.add_argument("--seconds", type=positive_seconds, default=JIT_SECONDS, metavar="N",
                     help="lifetime of the copy (default: %(default)s)")
    jit.add_argument("--start", type=unix_time, metavar="UNIX", help="count from this Unix time (default: now)")
    add_root_key_arguments(jit)
    jit.set_defaults(func=guarded(_jit))

    check = command_parser(
        actions, "verify",
        help="verify an identity token for an identity, or as a bearer token",
        description=(
            "Verify that the token proves IDENTITY (--identity), or that it is a valid token of its\n"
            "own root subject for whoever holds it (--bearer; a delegated token fails this).\n"
            "Prints 'valid' (exit 0) or 'denied: <reason> (<detail>)' (exit 1)."
        ),
        examples=(
            "  hessra-pg identity verify \"$ID_TOKEN\" --identity urn:hessra:alice:laptop \\\n"
            "      --root-key root.pub.pem\n"
            "  hessra-pg identity verify - --bearer --json < id_token.txt"
        ),
    )
    add_token_argument(check)
    who = check.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", metavar="ID", help="the identity the holder claims")
    who.add_argument("--bearer", action="store_true", help="no identity: the token's own root subject")
    check.add_argument("--domain", metavar="D", help="the verifier's domain")
    check.add_argument("--ensure-subject-in-domain", action="store_true",
                       help="also require the token to bind its subject to the domain (domain-restricted tokens)")
    add_now_argument(check)
    add_root_key_arguments(check)
    add_json_argument(check)
    check.set_defaults(func=guarded(_verify))

    inspect = command_parser(
        actions, "inspect",
        help="show what an identity token proves",
        description=(
            "Describe a token: subject, delegation chain, delegatable or not, expiry, domain,\n"
            "revocation ids and every block's external key and Datalog. With a root key the\n"
            "signatures are checked first; without one the token is only parsed."
        ),
        examples="  hessra-pg identity inspect \"$ID_TOKEN\" --root-key root.pub.pem --json",
    )
    add_token_argument(inspect)
    add_root_key_arguments(inspect, optional=True)
    add_json_argument(inspect)
    inspect.set_defaults(func=guarded(inspect_command))


def _create(args: argparse.Namespace) -> int:
    signer = signing_keypair(args)
    with biscuit_errors("could not build the token"):
        print(mint_identity(signer, args.subject, time_config=token_time(args),
                            delegatable=not args.non_delegatable, domain=args.domain,
                            root_key_id=args.root_key_id))
    return EXIT_OK


def _delegate(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    try:
        with biscuit_errors(_NOT_VERIFIED):
            delegated = delegate_identity(token, key, args.identity, time_config=token_time(args),
                                          domain=args.domain)
    except DelegationError as refused:
        # A refusal of the request, not bad input: exit 1 like a denial.
        print(f"hessra-pg: {refused}", file=sys.stderr)
        return EXIT_DENIED
    print(delegated)
    return EXIT_OK


def _jit(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    with biscuit_errors(_NOT_VERIFIED):
        print(jit_identity(token, key, seconds=args.seconds, start=args.start))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    token, key = read_token(args.token), root_key(args)
    assert key is not None
    decision = verify_identity(
        token, root_keys_for(token, key), now=now(args),
        identity=None if args.bearer else args.identity,
        domain=args.domain, ensure_subject_in_domain=args.ensure_subject_in_domain,
    )
    return report_decision(decision, args.json)

