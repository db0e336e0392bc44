"""Helpers shared by the ``keys``, ``token`` and ``identity`` subcommands.

Conventions every command follows:

- exit status 0 = success / valid, 1 = denial (a token that does not verify,
  a refused delegation), 2 = usage or input error (argparse's own code);
- an input error is one line on stderr, ``hessra-pg: error: ...`` (raised as
  a :class:`~hessra_pg.errors.HessraError`, printed by ``hessra_pg.cli.main``),
  and never contains a token;
- TOKEN arguments may be ``-`` to read the token from standard input;
- private keys come only from files or environment variables, never from
  the command line, and are never printed unless explicitly exported.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import biscuit_auth

from hessra_pg.core.encoding import decode_token
from hessra_pg.errors import CliInputError, ConfigurationError, HessraError, KeyFormatError, TokenFormatError
from hessra_pg.extras import missing_extra
from hessra_pg.tokens.inspect import TokenInfo
from hessra_pg.core.keys import (
    keypair_from,
    keypair_from_env,
    public_key_from,
    public_key_from_env,
    read_key_file,
    split_alg_hex,
)
from hessra_pg.tokens.mint import DEFAULT_DURATION, TokenTime
from hessra_pg.core.shape import read_shape
from hessra_pg.core.verifier import BISCUIT_ERRORS, ChainNode, Decision, RootKey, parse_chain

EXIT_OK = 0
EXIT_DENIED = 1
DEFAULT_ENV_PREFIX = "HESSRA"


# -- handler guard ---------------------------------------------------------

EXIT_BROKEN_PIPE = 141  # as a shell reports SIGPIPE
DEBUG_ENV = "HESSRA_PG_DEBUG"
Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler) -> Handler:
    """Keep the one-line error promise even when a library fails in a way
    it should not (an unexpected exception while parsing a hostile token):
    report the exception type, never its text (it might quote the input).
    Set HESSRA_PG_DEBUG=1 to get the traceback. A closed stdout (`| head`)
    ends the command quietly."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (HessraError, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            return broken_pipe()
        except Exception as error:
            if isinstance(error, ImportError):
                # An optional library that is not installed (pglast for
                # doctor, ...): say which extra brings it.
                missing = missing_extra(error, f"hessra-pg {getattr(args, 'command', None) or 'command'}")
                if missing is not None:
                    raise missing from None
            if os.environ.get(DEBUG_ENV):
                raise
            raise HessraError(
                f"unexpected {type(error).__name__} while processing the input "
                f"(a hessra-pg bug; set {DEBUG_ENV}=1 for the traceback)"
            ) from None

    return run


# -- argparse helpers ------------------------------------------------------

class HelpFormatter(argparse.HelpFormatter):
    """Fills description paragraphs (separated by blank lines) to the
    terminal width, and keeps paragraphs with indented lines (the examples)
    as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith("  ") for line in paragraph.splitlines()):
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width,
                                                initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(paragraphs)


def command_parser(subparsers: Any, name: str, *, help: str, description: str,
                   examples: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with our formatter and an optional examples epilog."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"examples:\n{examples}" if examples else None,
        formatter_class=HelpFormatter,
    )
    return parser


def _int_arg(minimum: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {value}")
        return value

    return parse


positive_seconds = _int_arg(1, "seconds")
unix_time = _int_arg(0, "Unix time")
key_id = _int_arg(0, "root key id")


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", metavar="TOKEN",
                        help="the token (base64, either alphabet), or - to read it from standard input")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_root_key_arguments(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    group = parser.add_argument_group("root public key")
    fallback = "without any, signatures are not checked" if optional else "one is required"
    group.add_argument(
        "--root-key", metavar="FILE_OR_KEY",
        help="the authority's public key: a PEM file, or the key as PEM or alg/hex text "
             f"(default: $HESSRA_PUBLIC_KEY or the file $HESSRA_PUBLIC_KEY_FILE; {fallback})",
    )
    group.add_argument("--root-key-env", metavar="PREFIX", default=DEFAULT_ENV_PREFIX,
                       help="read $PREFIX_PUBLIC_KEY / $PREFIX_PUBLIC_KEY_FILE instead (default: %(default)s)")


def add_signer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("signing key (the authority's private key)")
    group.add_argument("--key", metavar="FILE",
                       help="PKCS#8 PEM private key file (Ed25519 or P-256); default: "
                            "$HESSRA_PERSONAL_KEYPAIR (base64 PEM) or the file named by $HESSRA_PERSONAL_KEYPAIR_FILE")
    group.add_argument("--key-env", metavar="PREFIX", default=DEFAULT_ENV_PREFIX,
                       help="read $PREFIX_PERSONAL_KEYPAIR / $PREFIX_PERSONAL_KEYPAIR_FILE instead "
                            "(default: %(default)s)")


def add_time_arguments(parser: argparse.ArgumentParser, *, what: str = "the token") -> None:
    parser.add_argument("--ttl", type=positive_seconds, default=DEFAULT_DURATION, metavar="SECONDS",
                        help=f"how long {what} is valid, from --start (default: %(default)s)")
    parser.add_argument("--start", type=unix_time, metavar="UNIX",
                        help="Unix time the validity period starts at (default: now)")


def add_now_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", type=unix_time, metavar="UNIX",
                        help="verify as of this Unix time (default: the current time)")


def add_chain_arguments(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    group = parser.add_argument_group(f"service chain ({purpose})").add_mutually_exclusive_group()
    group.add_argument("--chain-json", metavar="FILE",
                       help='the chain as a JSON array [{"component": ..., "public_key": "ed25519/<hex>"}, ...] '
                            "in chain order")
    group.add_argument("--chain-node", action="append", metavar="COMPONENT=KEY",
                       help="one node of the chain (repeat, in chain order); KEY is alg/hex or a public key file")


# -- inputs ----------------------------------------------------------------

def read_token(value: str) -> str:
    """The token given as TOKEN, or read from stdin for ``-`` (stripped)."""
    if value == "-":
        try:
            value = sys.stdin.read()
        except (OSError, UnicodeDecodeError):
            raise TokenFormatError("could not read a token from standard input") from None
    value = value.strip()
    if not value:
        raise TokenFormatError("token is empty")
    return value


def _key_text(value: str, option: str) -> tuple[str, bool]:
    """The key text of FILE_OR_KEY and whether it came from a file."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise CliInputError(f"{option}: private keys are read only from files or environment variables")
        return text, False
    if split_alg_hex(text) is not None:
        return text, False
    if text and os.path.isfile(value):
        return read_key_file(value), True
    # The value is not echoed: it might be a token passed by mistake.
    raise CliInputError(f"{option}: not an existing key file, nor a PEM or 'alg/hex' public key")


def public_key_arg(value: str, option: str) -> str:
    """A public key given as a file or inline PEM / alg/hex, canonical
    `alg/hex`. A private key *file* stands for its public key."""
    text, from_file = _key_text(value, option)
    try:
        if from_file and "-----BEGIN PRIVATE KEY-----" in text:
            return str(keypair_from(text).public_key)
        return str(public_key_from(text))
    except KeyFormatError as error:
        raise KeyFormatError(f"{option}: {error}") from None


def private_key_file(path: str, option: str) -> biscuit_auth.KeyPair:
    """A key pair from a PKCS#8 PEM file."""
    try:
        return keypair_from(read_key_file(path))
    except KeyFormatError as error:
        raise KeyFormatError(f"{option}: {error}") from None


def signing_keypair(args: argparse.Namespace) -> biscuit_auth.KeyPair:
    """The signing key from --key FILE or $PREFIX_PERSONAL_KEYPAIR[_FILE]."""
    if args.key:
        return private_key_file(args.key, "--key")
    prefix = args.key_env
    try:
        pair = keypair_from_env(prefix)
    except KeyFormatError as error:
        raise KeyFormatError(f"${prefix}_PERSONAL_KEYPAIR: {error}") from None
    if pair is None:
        raise ConfigurationError(
            f"no signing key: pass --key FILE or set {prefix}_PERSONAL_KEYPAIR (base64 PEM) "
            f"or {prefix}_PERSONAL_KEYPAIR_FILE"
        )
    return pair


def root_key(args: argparse.Namespace, *, required: bool = True) -> str | None:
    """The root public key (canonical alg/hex) from --root-key or the
    environment; None only when not required and not configured."""
    if args.root_key:
        return public_key_arg(args.root_key, "--root-key")
    prefix = args.root_key_env
    try:
        key = public_key_from_env(prefix)
    except KeyFormatError as error:
        raise KeyFormatError(f"${prefix}_PUBLIC_KEY: {error}") from None
    if key is None:
        if not required:
            return None
        raise ConfigurationError(
            f"no root public key: pass --root-key FILE_OR_KEY or set {prefix}_PUBLIC_KEY "
            f"or {prefix}_PUBLIC_KEY_FILE"
        )
    return str(key)


def root_keys_for(token: str, key: str) -> list[RootKey]:
    """The one key the user gave, registered under the token's own
    root_key_id (if any) so that it is the key the verifier tries."""
    kid = 0
    with contextlib.suppress(Exception):  # a bad token is reported by verify()
        found = read_shape(decode_token(token)).root_key_id
        kid = found if found is not None else 0
    return [RootKey(kid, key)]


def parse_node(value: str, option: str) -> ChainNode:
    """`component=KEY` -> ChainNode (KEY: alg/hex, PEM or a key file)."""
    component, sep, key = value.partition("=")
    component = component.strip()
    if not sep or not component or not key.strip():
        raise CliInputError(f"{option} must be COMPONENT=KEY (KEY: 'ed25519/<hex>', 'secp256r1/<hex>' or a key file)")
    return ChainNode(component, public_key_arg(key, f"{option} {component}"))


def nodes_arg(values: Sequence[str] | None, option: str) -> tuple[ChainNode, ...]:
    nodes = tuple(parse_node(value, option) for value in values or ())
    seen: set[str] = set()
    for node in nodes:
        if node.component in seen:
            raise CliInputError(f"{option}: component {node.component!r} appears twice")
        seen.add(node.component)
    return nodes


def chain_from_args(args: argparse.Namespace) -> tuple[ChainNode, ...] | None:
    """The chain of --chain-json FILE or --chain-node ...; None if neither."""
    if args.chain_json:
        try:
            with open(args.chain_json, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as error:
            raise ConfigurationError(f"cannot read --chain-json {args.chain_json}: {error.strerror}") from None
        except (ValueError, UnicodeDecodeError) as error:
            raise ConfigurationError(f"--chain-json {args.chain_json} is not valid JSON: {error}") from None
        return parse_chain(data)
    if args.chain_node:
        return nodes_arg(args.chain_node, "--chain-node")
    return None


def token_time(args: argparse.Namespace) -> TokenTime:
    return TokenTime(start=args.start, duration=args.ttl)


def now(args: argparse.Namespace) -> float:
    return float(args.now) if args.now is not None else time.time()


@contextlib.contextmanager
def biscuit_errors(message: str) -> Iterator[None]:
    """Turn biscuit's exceptions into a one-line TokenFormatError (their text
    is not shown: it says little and must never risk echoing a token)."""
    try:
        yield
    except HessraError:
        raise
    except BISCUIT_ERRORS:
        raise TokenFormatError(message) from None


# -- outputs ---------------------------------------------------------------

def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def iso_time(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def report_decision(decision: Decision, as_json: bool) -> int:
    """Print a verification result; exit 0 if valid, 1 if denied."""
    if as_json:
        print_json(decision.as_dict())
    elif decision.valid:
        print("valid")
    else:
        print(f"denied: {decision.reason}" + (f" ({decision.detail})" if decision.detail else ""))
    return EXIT_OK if decision.valid else EXIT_DENIED


def broken_pipe() -> int:
    """`hessra-pg ... | head`: the reader went away. Say nothing more (stdout
    now goes to /dev/null, so Python's flush at exit can't fail again)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def warn(message: str) -> None:
    print(f"hessra-pg: warning: {message}", file=sys.stderr)


def info_dict(info: TokenInfo) -> dict[str, Any]:
    data = info.as_dict()
    data["expires_at_iso"] = iso_time(info.expires_at) if info.expires_at is not None else None
    data["expired"] = info.expires_at is not None and time.time() >= info.expires_at
    return data


def _status(value: bool | None, yes: str, no: str) -> str:
    return "unknown (signatures not checked)" if value is None else (yes if value else no)


def format_info(info: TokenInfo) -> str:
    """The human `inspect` output."""
    lines = [f"kind:            {info.kind}"]
    lines.append("signatures:      " + ("verified with the root key" if info.verified
                                      else "not checked (give --root-key or set HESSRA_PUBLIC_KEY to check them)"))
    if info.root_key_id is not None:
        lines.append(f"root key id:     {info.root_key_id}")
    if info.kind == "identity":
        lines.append(f"subject:         {info.subject}")
        lines.append(f"identities:      {' -> '.join(info.identity_chain)}")
        lines.append(f"delegatable:     {'yes' if info.delegatable else 'no'}")
    else:
        lines.append(f"subject:         {info.subject if info.subject is not None else '-'}")
        lines.append(f"resource:        {info.resource if info.resource is not None else '-'}")
        lines.append(f"operation:       {info.operation if info.operation is not None else '-'}")
    if info.expires_at is None:
        lines.append("expires:         never (no time check)")
    else:
        expired = " (expired)" if time.time() >= info.expires_at else ""
        lines.append(f"expires:         {iso_time(info.expires_at)} ({info.expires_at}){expired}")
    if info.capability is not None:
        from .cap import capability_lines  # (cap imports this module)

        lines.extend(capability_lines(info.capability))
    else:
        lines.append(f"domain:          {info.domain if info.domain is not None else '-'}")
    # (a capability's service-chain, multi-party and prefix lines would all be '-')
    if info.kind != "identity" and (info.capability is None or info.service_chain or info.multi_party
                                    or info.prefix is not None):
        lines.append(f"prefix:          {info.prefix if info.prefix is not None else '-'}")
        if info.service_chain:
            lines.append("service chain:")
            width = max(len(node["component"]) for node in info.service_chain)
            for node in info.service_chain:
                lines.append(f"  {node['component']:<{width}}  {node['public_key']}  "
                             + _status(node["attested"], "attested", "not attested"))
            lines.append("                 (checked only where a verifier passes the chain: `token verify "
                         "--chain-json`, verify_service_chain, or a chain registered under the resource's name)")
        else:
            lines.append("service chain:   -")
        if info.multi_party:
            lines.append("multi-party:")
            width = max(len(party["component"]) for party in info.multi_party)
            for party in info.multi_party:
                lines.append(f"  {party['component']:<{width}}  {party['public_key']}  "
                             + _status(party["signed"], "signed", "pending"))
        else:
            lines.append("multi-party:     -")
    lines.append("revocation ids:")
    lines.extend(f"  {rid}" for rid in info.revocation_ids)
    lines.append("blocks:")
    for block in info.blocks:
        if block.index == 0:
            origin = "authority"
        elif block.external_key:
            origin = f"external key {block.external_key}"
        else:
            origin = "first-party" if info.verified else "external key not checked"
        lines.append(f"  block {block.index} ({origin}):")
        lines.extend(f"    {line}" for line in block.source.splitlines() if line.strip())
    return "\n".join(lines)
