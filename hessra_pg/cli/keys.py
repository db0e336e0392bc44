"""``hessra-pg keys generate``, ``keys show`` and ``keys sync``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

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
    EXIT_DENIED,
    EXIT_OK,
    CliInputError,
    add_json_argument,
    command_parser,
    print_json,
    public_key_arg,
)

if TYPE_CHECKING:
    from hessra_pg.admin.keysync import KeySync

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def register(subparsers: Any) -> None:
    """Add ``keys generate``, ``keys show`` and ``keys sync``."""
    keys = subparsers.add_parser(
        "keys",
        help="generate key pairs, show public keys, follow the authority's key",
        description="Generate Ed25519 or P-256 key pairs for signing tokens, show public keys "
                    "in the forms hessra_authz.add_key() and service chains take, and keep the "
                    "database's keys in line with a Hessra authority's (keys sync).",
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

    _register_sync(actions)


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



# -- sync ------------------------------------------------------------------

def _duration_arg(what: str) -> Any:
    def parse(text: str) -> timedelta:
        from hessra_pg.admin.keysync import parse_duration

        try:
            return parse_duration(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{what}: {error}") from None

    return parse


def _authority_arg(text: str) -> str:
    from hessra_pg.admin.keysync import parse_authority

    try:
        parse_authority(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a number, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"seconds must be above 0 and at most 600, got {text!r}")
    return value


def add_authority_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """--authority, --ca, --mtls-cert, --mtls-key, --authority-timeout (also doctor's)."""
    group = parser.add_argument_group("the authority")
    group.add_argument("--authority", metavar="HOST[:PORT]", required=required, type=_authority_arg,
                       help="the Hessra authority, reached over HTTPS (port 443 by default): its GET "
                            "/public_key is the key to compare with")
    group.add_argument("--ca", metavar="FILE", required=required,
                       help="PEM CA certificate that signed the authority's server certificate: the only one "
                            "trusted; the host name is verified (an IP address needs an IP SAN)")
    group.add_argument("--mtls-cert", metavar="FILE", help="client certificate (PEM), if the authority wants one")
    group.add_argument("--mtls-key", metavar="FILE", help="its private key (PEM)")
    group.add_argument("--authority-timeout", metavar="SECONDS", type=_timeout_arg, default=None,
                       help="connect and read timeout of the request (default: 10)")


def authority_from_args(args: argparse.Namespace) -> Any:
    """The Authority of --authority/--ca/--mtls-*, its files checked now
    (AuthorityError, exit status 2, if they can't be used)."""
    from hessra_pg.admin.keysync import DEFAULT_TIMEOUT, Authority

    if not args.ca:
        raise CliInputError("--authority needs --ca FILE: the CA that signed the authority's certificate")
    authority = Authority(args.authority, args.ca, mtls_cert=args.mtls_cert, mtls_key=args.mtls_key,
                          timeout=args.authority_timeout or DEFAULT_TIMEOUT)
    authority.check()
    return authority


def _register_sync(actions: Any) -> None:
    from hessra_pg.admin.keysync import DEFAULT_GRACE, DEFAULT_INTERVAL, format_duration

    sync = command_parser(
        actions, "sync",
        help="register the authority's current public key; retire the previous one after a grace",
        description=(
            "Fetch the Hessra authority's public key (GET https://HOST:PORT/public_key, the server "
            "certificate verified against --ca only, host name included) and bring hessra_authz.keys in "
            "line with it. When the key is new to the database it is registered (hessra_authz.add_key: the "
            "next free kid, or the authority's own when its response names one in root_key_id or kid) and "
            "the previous newest active key stops verifying at now + --grace (hessra_authz.retire_key; a key "
            "that already ends sooner keeps its end). Other keys are left alone. Everything happens in one "
            "transaction: on any failure nothing changes. A second run changes nothing.\n\n"
            f"--grace (default {format_duration(DEFAULT_GRACE)}) must be longer than the longest lifetime of "
            "a token the authority issues plus clock skew: a token signed just before the rotation must "
            "still verify until it expires.\n\n"
            "Prints one line per change, or 'nothing changed'. --dry-run does the same in a transaction "
            "that is rolled back. --watch keeps running: it syncs every --interval, retries failures with "
            "exponential backoff (up to 5 min, or the interval if longer) and stops on SIGTERM or Ctrl-C.\n\n"
            "Run it beside the database (a systemd timer, cron, a sidecar, or --watch): no network call "
            "ever happens inside a query. The role needs key administration (hessra_admin, or "
            "hessra_authz.grant_admin()).\n\n"
            "Exit status: 0 when the database is in line with the authority; 1 when the authority's key is "
            "registered but retired or not yet valid, or under another kid than the authority names (a "
            "person decides: nothing changed); 2 when the authority, the TLS connection, its response or "
            "the database fails (nothing changed), or for bad arguments."
        ),
        examples=(
            "  hessra-pg keys sync --authority authority.internal:8443 --ca hessra-ca.pem \\\n"
            "      --dsn 'host=db dbname=shop user=key_admin' --dry-run\n"
            "  hessra-pg keys sync --authority authority.internal:8443 --ca hessra-ca.pem \\\n"
            "      --mtls-cert db-sync.pem --mtls-key db-sync.key --dsn 'host=db dbname=shop user=key_admin' \\\n"
            "      --watch --interval 5m"
        ),
    )
    add_authority_arguments(sync, required=True)
    sync.add_argument("--dsn", default="", metavar="DSN",
                      help="libpq connection string or URI of a role that administers keys "
                           "(default: the PG* environment variables)")
    sync.add_argument("--grace", metavar="DURATION", type=_duration_arg("--grace"), default=DEFAULT_GRACE,
                      help="how long the previous key keeps verifying after a new one is registered: longer "
                           "than the longest token lifetime plus clock skew (24h5m, 90m, 2d, 3600; "
                           f"default: {format_duration(DEFAULT_GRACE)})")
    sync.add_argument("--dry-run", action="store_true",
                      help="show what would change: do it in a transaction, then roll it back")
    sync.add_argument("--watch", action="store_true",
                      help="keep running: sync every --interval until SIGTERM or Ctrl-C")
    sync.add_argument("--interval", metavar="DURATION", type=_duration_arg("--interval"), default=None,
                      help=f"with --watch: time between syncs (default: {format_duration(DEFAULT_INTERVAL)})")
    sync.set_defaults(func=guarded(_sync))


def _error(message: object) -> None:
    print(f"hessra-pg: error: {message}", file=sys.stderr, flush=True)


def _sync(args: argparse.Namespace) -> int:
    from hessra_pg.admin.keysync import DEFAULT_INTERVAL, KeySync, KeySyncConflict

    if args.interval is not None and not args.watch:
        raise CliInputError("--interval goes with --watch")
    if args.watch and args.dry_run:
        raise CliInputError("--dry-run makes one pass: it does not go with --watch")
    authority = authority_from_args(args)
    sync = KeySync(authority, args.dsn, grace=args.grace)
    if args.watch:
        return _watch(sync, args.interval or DEFAULT_INTERVAL)
    try:
        changes = sync.run(dry_run=args.dry_run)
    except KeySyncConflict as error:
        _error(error)
        return EXIT_DENIED
    for change in changes:
        print(change.line(dry_run=args.dry_run))
    if not changes:
        print(f"nothing changed: the authority's key ({authority.host_port}) is registered and active")
    elif args.dry_run:
        print("dry run: rolled back, nothing written")
    return EXIT_OK


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def _watch(sync: KeySync, interval: timedelta) -> int:
    from hessra_pg.admin.keysync import format_duration

    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    print(f"hessra-pg: keys sync: following {sync.authority.host_port} every {format_duration(interval)} "
          "(SIGTERM or Ctrl-C stops)", file=sys.stderr, flush=True)

    def changed(changes: list[Any]) -> None:
        for change in changes:
            print(change.line(), flush=True)

    def unchanged() -> None:
        print(f"nothing changed: the authority's key ({sync.authority.host_port}) is registered and active",
              flush=True)

    try:
        sync.watch(interval=interval, stop=stop, on_changes=changed, on_unchanged=unchanged,
                   on_error=lambda error, wait: _error(f"{error} (retrying in {_seconds(wait)})"))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("hessra-pg: keys sync: stopped", file=sys.stderr, flush=True)
    return EXIT_OK
