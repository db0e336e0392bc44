"""``hessra-pg keys generate`` and ``hessra-pg keys show``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import biscuit_auth

from hessra_pg.errors import KeyFormatError
from hessra_pg.core.keys import (
    generate_keypair,
    key_algorithm,
    keypair_from_env,
    parse_public_key,
    private_key_pem,
    public_key_from_env,
    public_key_pem,
)

from .common import (
    guarded,
    DEFAULT_ENV_PREFIX,
    EXIT_OK,
    CliInputError,
    add_json_argument,
    command_parser,
    print_json,
    public_key_arg,
)

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def register(subparsers: Any) -> None:
    """Add ``keys generate`` and ``keys show``."""
    keys = subparsers.add_parser(
        "keys",
        help="generate key pairs and show public keys",
        description="Generate Ed25519 or P-256 key pairs for signing tokens, and show public keys "
                    "in the forms hessra_authz.add_key() and service chains take.",
    )
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)

    gen = command_parser(
        actions, "generate",
        help="generate a key pair (private key to a 0600 file)",
        description=(
            "Generate a key pair. The private key is written as PKCS#8 PEM to --out with mode 0600,\n"
            "the public key as SPKI PEM to --public-out. Standard output gets only the public key in\n"
            "'alg/hex' form, so PUB=$(hessra-pg keys generate --out k.pem) works. The private key is\n"
            "printed only with --print-private (then it is the only thing on standard output).\n"
            "Existing files are never overwritten without --force."
        ),
        examples=(
            "  hessra-pg keys generate --algorithm secp256r1 \\\n"
            "      --out root.pem --public-out root.pub.pem\n"
            "  hessra-pg keys generate --out auth_service.pem"
        ),
    )
    gen.add_argument("--algorithm", choices=("ed25519", "secp256r1"), default="ed25519",
                     help="key type: ed25519 or secp256r1 (P-256) (default: %(default)s)")
    gen.add_argument("--out", metavar="PRIVATE.pem", help="write the private key (PKCS#8 PEM, mode 0600) here")
    gen.add_argument("--public-out", metavar="PUBLIC.pem", help="write the public key (SPKI PEM) here")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    gen.add_argument("--print-private", action="store_true",
                     help="print the private key PEM to standard output (and the public key to stderr)")
    gen.set_defaults(func=guarded(_generate))

    show = command_parser(
        actions, "show",
        help="show a public key as alg/hex and PEM",
        description=(
            "Show a public key as 'alg/hex' and SPKI PEM. KEY is a public or private key file, or a\n"
            "public key given inline (PEM or alg/hex, e.g. to convert it to PEM). For a private key\n"
            "file only its public key is shown. Without KEY, the keys configured in the environment\n"
            "are shown ($PREFIX_PUBLIC_KEY[_FILE], $PREFIX_PERSONAL_KEYPAIR[_FILE], PREFIX = --env)."
        ),
        examples=(
            "  hessra-pg keys show root.pem\n"
            "  hessra-pg keys show \"$PUB\"          # alg/hex -> PEM\n"
            "  hessra-pg keys show --env HESSRA --json"
        ),
    )
    source = show.add_mutually_exclusive_group()
    source.add_argument("key", nargs="?", metavar="KEY", help="key file, or a public key as PEM or alg/hex")
    source.add_argument("--env", metavar="PREFIX",
                        help=f"show the keys of $PREFIX_PUBLIC_KEY... (the default, with {DEFAULT_ENV_PREFIX})")
    add_json_argument(show)
    show.set_defaults(func=guarded(_show))


# -- generate --------------------------------------------------------------

def _write_file(path: str, text: str, mode: int, force: bool) -> None:
    """Write atomically with exactly `mode`; refuse an existing file unless force."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if not force:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(text)
            return
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".hessra-key-")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(text)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except FileExistsError:
        raise CliInputError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as error:
        raise CliInputError(f"cannot write {path}: {error.strerror}") from None


def _generate(args: argparse.Namespace) -> int:
    if not args.out and not args.print_private:
        raise CliInputError("nowhere to keep the private key: pass --out FILE (or --print-private to print it)")
    targets = [path for path in (args.out, args.public_out) if path]
    if len(targets) == 2 and os.path.abspath(targets[0]) == os.path.abspath(targets[1]):
        raise CliInputError("--out and --public-out must be different files")
    if not args.force:
        for path in targets:
            if os.path.lexists(path):
                raise CliInputError(f"{path} exists; pass --force to overwrite it")
    pair = generate_keypair(args.algorithm)
    public = str(pair.public_key)
    if args.out:
        _write_file(args.out, private_key_pem(pair), PRIVATE_MODE, args.force)
        print(f"private key: {args.out} (mode 0600)", file=sys.stderr)
    if args.public_out:
        _write_file(args.public_out, public_key_pem(pair.public_key), PUBLIC_MODE, args.force)
        print(f"public key: {args.public_out}", file=sys.stderr)
    if args.print_private:
        print(f"public key: {public}", file=sys.stderr)
        sys.stdout.write(private_key_pem(pair))
    else:
        print(public)
    return EXIT_OK


# -- show ------------------------------------------------------------------

def _entry(source: str, kind: str, key: biscuit_auth.PublicKey) -> dict[str, str]:
    return {
        "source": source,
        "kind": kind,
        "algorithm": key_algorithm(key),
        "public_key": str(key),
        "pem": public_key_pem(key),
    }


def _file_entry(value: str) -> dict[str, str]:
    is_private = False
    if os.path.isfile(value):
        try:
            with open(value, encoding="ascii", errors="replace") as handle:
                is_private = "-----BEGIN PRIVATE KEY-----" in handle.read(8192)
        except OSError:
            pass  # public_key_arg reports it
    canonical = public_key_arg(value, "KEY")
    source = value if os.path.isfile(value) else "argument"
    return _entry(source, "private" if is_private else "public", parse_public_key(canonical))


def _env_name(prefix: str, name: str) -> str:
    if os.environ.get(f"{prefix}_{name}"):
        return f"{prefix}_{name}"
    return f"{prefix}_{name}_FILE ({os.environ.get(f'{prefix}_{name}_FILE', '')})"


def _show(args: argparse.Namespace) -> int:
    if args.key is not None:
        entry = _file_entry(args.key)
        if args.json:
            print_json(entry)
        else:
            _print_entry(entry)
        return EXIT_OK

    prefix = args.env or DEFAULT_ENV_PREFIX
    shown: dict[str, dict[str, str] | None] = {"public_key": None, "personal_keypair": None}
    try:
        public = public_key_from_env(prefix)
    except KeyFormatError as error:
        raise KeyFormatError(f"{_env_name(prefix, 'PUBLIC_KEY')}: {error}") from None
    if public is not None:
        shown["public_key"] = _entry(_env_name(prefix, "PUBLIC_KEY"), "public", public)
    try:
        pair = keypair_from_env(prefix)
    except KeyFormatError as error:
        raise KeyFormatError(f"{_env_name(prefix, 'PERSONAL_KEYPAIR')}: {error}") from None
    if pair is not None:
        shown["personal_keypair"] = _entry(_env_name(prefix, "PERSONAL_KEYPAIR"), "private", pair.public_key)
    if public is None and pair is None:
        raise CliInputError(
            f"no key given and none in the environment: pass KEY, or set {prefix}_PUBLIC_KEY[_FILE] "
            f"or {prefix}_PERSONAL_KEYPAIR[_FILE]"
        )
    if args.json:
        print_json(shown)
        return EXIT_OK
    for position, entry in enumerate(value for value in shown.values() if value is not None):
        if position:
            print()
        _print_entry(entry)
    return EXIT_OK


def _print_entry(entry: dict[str, str]) -> None:
    note = " (a private key: only its public key is shown)" if entry["kind"] == "private" else ""
    print(f"source:     {entry['source']}{note}")
    print(f"algorithm:  {entry['algorithm']}")
    print(f"public key: {entry['public_key']}")
    sys.stdout.write(entry["pem"])

