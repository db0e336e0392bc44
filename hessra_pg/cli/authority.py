"""``hessra-pg authority serve|rotate-key``: a local Hessra authority for
development, tests and small self-hosted setups (hessra_pg.authority).

Not a hardened authority: one process, no rate limits, no audit store, the
signing key in a file.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from typing import Any

from hessra_pg.errors import CliInputError

from .common import EXIT_OK, command_parser, guarded, positive_seconds, warn

_NOT_HARDENED = ("For development, tests and small self-hosted setups: it is no replacement for a hardened "
                 "authority (one process, no rate limits, no audit store, the signing key in a file).")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"interval must be a number of seconds, got {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("interval must be between 0.05 and 3600 seconds")
    return value


def register(subparsers: Any) -> None:
    """Add ``authority`` and its actions."""
    authority = subparsers.add_parser(
        "authority",
        help="a local Hessra authority (HTTPS) for development and tests; not a hardened authority",
        description="A local Hessra authority that Hessra's own clients can talk to: it issues tokens from a "
                    "policy directory (clients.toml, resources.toml) over HTTPS with client certificates "
                    "or identity tokens. " + _NOT_HARDENED,
    )
    actions = authority.add_subparsers(dest="action", metavar="ACTION", required=True)

    serve = command_parser(
        actions, "serve",
        help="serve the Hessra authority API over HTTPS",
        description=(
            "Serve Hessra's authority API (GET /public_key, /ca_cert; POST /request_token, "
            "/request_identity_token, /refresh_identity_token, /mint_identity_token, /sign_token, "
            "/verify_token, /verify_service_chain_token) over HTTPS (TLS 1.2+, HTTP/1.1) on --host:--port, "
            "issuing tokens signed with --key as the policy directory allows (the files 'hessra-pg policy "
            "validate' checks; a directory with problems is refused). Client certificates are optional at "
            "the TLS layer and verified against the policy's [cacerts] and --client-ca; token requests "
            "need one, or an identity token as 'Authorization: Bearer'.\n\n"
            "Prints the URL on stdout once listening (logs go to stderr; they never hold a token or a "
            "private key). Runs until interrupted (SIGINT, SIGTERM). Every --reload-interval seconds it "
            "reloads what changed: the policy directory (kept as it was if the new one has problems), the "
            "signing key ('authority rotate-key' replaces it) and the TLS files.\n\n" + _NOT_HARDENED
        ),
        examples=(
            "  hessra-pg keys generate --out root.pem\n"
            "  hessra-pg authority serve --policy-dir policy/ --key root.pem \\\n"
            "      --tls-cert server.pem --tls-key server.key --client-ca ca.pem --port 8443\n"
            "  hessra-pg authority rotate-key --key root.pem     # the running authority follows"
        ),
    )
    serve.add_argument("--policy-dir", required=True, metavar="DIR",
                       help="the policy directory: resources.toml and clients.toml")
    serve.add_argument("--key", required=True, metavar="FILE",
                       help="the signing key, a PKCS#8 PEM file (Ed25519 or P-256), 0600; watched")
    serve.add_argument("--tls-cert", required=True, metavar="FILE", help="the server certificate (PEM, chain allowed)")
    serve.add_argument("--tls-key", required=True, metavar="FILE", help="the server certificate's private key (PEM)")
    serve.add_argument("--client-ca", metavar="FILE",
                       help="CA certificates (PEM) for client certificates, besides the policy's [cacerts]")
    serve.add_argument("--tls-ca", metavar="FILE",
                       help="the CA certificate served on GET /ca_cert (default: the last certificate of "
                            "--tls-cert's chain, if it has more than one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8443, help="port (default: %(default)s; 0: a free one)")
    serve.add_argument("--token-ttl", type=positive_seconds, default=300, metavar="SECONDS",
                       help="lifetime of authorization and capability tokens (default: %(default)s)")
    serve.add_argument("--identity-ttl", type=positive_seconds, default=3600, metavar="SECONDS",
                       help="lifetime of identity tokens, and the longest a realm may ask for (default: %(default)s)")
    serve.add_argument("--signoff-key", action="append", default=[], metavar="COMPONENT=FILE",
                       help="sign multi-party tokens off as COMPONENT with this private key file (repeat)")
    serve.add_argument("--trusted-root", action="append", default=[], metavar="FILE_OR_KEY",
                       help="another authority's public key: /sign_token accepts its tokens (repeat)")
    serve.add_argument("--advertise", metavar="HOST:PORT",
                       help="the address clients reach this authority at, for pending_signoffs "
                            "(default: --host:--port)")
    serve.add_argument("--reload-interval", type=_interval, default=1.0, metavar="SECONDS",
                       help="how often to look for changed files (default: %(default)s)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                       help="(default: %(default)s)")
    serve.set_defaults(func=guarded(_serve))

    rotate = command_parser(
        actions, "rotate-key",
        help="replace the signing key; a running authority follows",
        description=(
            "Generate a new signing key and put it in place of --key FILE atomically (a 0600 file renamed "
            "over it), the same algorithm unless --algorithm says otherwise. The old key's public key is "
            "kept in FILE.retired/<unix time>.pub.pem (the old private key is not kept): a running "
            "authority serving FILE signs with the new key within its --reload-interval and still "
            "accepts identity tokens of the old key until they expire. Prints the new public key "
            "(alg/hex) on stdout: register it in the database (hessra_authz.add_key) before or right "
            "after rotating, and retire the old one once its tokens have expired."
        ),
        examples="  hessra-pg authority rotate-key --key root.pem",
    )
    rotate.add_argument("--key", required=True, metavar="FILE", help="the signing key file of the authority")
    rotate.add_argument("--algorithm", choices=["ed25519", "secp256r1"],
                        help="the new key's algorithm (default: the old key's)")
    rotate.set_defaults(func=guarded(_rotate))


def _signoff_keys(values: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for value in values:
        component, sep, path = value.partition("=")
        if not sep or not component.strip() or not path.strip():
            raise CliInputError("--signoff-key must be COMPONENT=FILE")
        if component.strip() in keys:
            raise CliInputError(f"--signoff-key: component {component.strip()!r} given twice")
        keys[component.strip()] = path.strip()
    return keys


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    from hessra_pg.authority import Authority, AuthorityConfig

    from .common import public_key_arg

    log = logging.getLogger("hessra_pg.authority")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s hessra-pg authority: %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(args.log_level.upper())
    log.propagate = False

    config = AuthorityConfig(
        policy_dir=args.policy_dir, key_file=args.key, tls_cert=args.tls_cert, tls_key=args.tls_key,
        client_ca=args.client_ca, tls_ca=args.tls_ca, host=args.host, port=args.port,
        token_ttl=args.token_ttl, identity_ttl=args.identity_ttl, signoff_keys=_signoff_keys(args.signoff_key),
        trusted_roots=[public_key_arg(value, "--trusted-root") for value in args.trusted_root],
        advertise=args.advertise, reload_interval=args.reload_interval,
    )
    authority = Authority(config)
    if not _loopback(args.host):
        warn(f"listening on {args.host}, not loopback. {_NOT_HARDENED}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        authority.start()
        log.info("serving https://%s (signing key %s, key id %d); policy %s: %d client(s), %d resource(s)",
                 authority.address, authority.public_key, authority.key_id, config.policy_dir,
                 len(authority.policy.clients),
                 len(authority.policy.resources))
        print(f"https://{authority.address}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        authority.close()
        log.info("stopped")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    from hessra_pg.authority.keys import retired_directory, rotate_key

    pair = rotate_key(args.key, algorithm=args.algorithm)
    print(pair.public_key)
    print(f"hessra-pg: {args.key} has a new key; the old public key is in {retired_directory(args.key)}/. "
          "A running authority serving it switches within its --reload-interval.", file=sys.stderr)
    return EXIT_OK
