"""The local authority as a running thing: its configuration, the policy,
keys and TLS context in force, reloading them when their files change,
and the server's lifecycle (the HTTP side is hessra_pg.authority.handler).

For development, tests and small self-hosted setups; not a hardened
authority (no rate limits, no audit store, no HSM, one process).

- TLS 1.2 or newer, HTTP/1.1 (what Hessra's client speaks). The handshake
  runs in the connection's own thread, with the TLS context in force at
  that moment, so a slow client holds up nobody and a reloaded [cacerts]
  applies to the next connection.
- Client certificates are optional at the TLS layer (CERT_OPTIONAL: the
  SDK fetches the public key without one) and verified against the
  policy's [cacerts] plus --client-ca; the HTTP layer refuses token
  requests without an identity (401).
- A watcher thread reloads the policy directory, the signing key and the
  TLS files when they change (every `reload_interval` seconds); a policy
  with problems is refused (logged) and the previous one kept.

Endpoints and bodies: docs/authority.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import biscuit_auth

from ..errors import ConfigurationError, HessraError, RepositoryReadError
from ..repository.checker import CLIENTS_FILE, RESOURCES_FILE, RepositoryProblemsError
from .handler import HTTPSServer
from .issuer import DEFAULT_IDENTITY_TTL, DEFAULT_TOKEN_TTL, Issuer, Settings
from .keys import KeyStore
from .policy import Policy, load_policy

__all__ = ["Authority", "AuthorityConfig", "serve_authority"]

log = logging.getLogger("hessra_pg.authority")


@dataclass
class AuthorityConfig:
    """How to run an authority (``hessra-pg authority serve`` options)."""

    policy_dir: str | Path
    key_file: str | Path
    tls_cert: str | Path
    tls_key: str | Path
    #: more CAs for client certificates, besides the policy's [cacerts]
    client_ca: str | Path | None = None
    #: the CA certificate served on /ca_cert (default: the last certificate
    #: of tls_cert's chain, if it holds more than one)
    tls_ca: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 8443
    token_ttl: int = DEFAULT_TOKEN_TTL
    identity_ttl: int = DEFAULT_IDENTITY_TTL
    #: component -> private key file (or key pair): sign-offs this authority makes
    signoff_keys: Mapping[str, str | Path | biscuit_auth.KeyPair] = field(default_factory=dict)
    #: root public keys (alg/hex or PEM) of other authorities, for /sign_token
    trusted_roots: Sequence[str] = ()
    #: HOST:PORT clients reach this authority at, for pending_signoffs
    #: (default: host:port as bound)
    advertise: str | None = None
    reload_interval: float = 1.0
    #: how long tokens of a rotated-out key still verify here (default:
    #: the longer token lifetime plus a minute)
    retired_key_window: int | None = None


def _read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text("ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a PEM text file"
        raise ConfigurationError(f"cannot read {what} {path}: {reason}") from None


_CERT_END = "-----END CERTIFICATE-----"


def _certificates(text: str) -> list[str]:
    blocks = []
    for part in text.split(_CERT_END)[:-1]:
        start = part.find("-----BEGIN CERTIFICATE-----")
        if start != -1:
            blocks.append(part[start:] + _CERT_END + "\n")
    return blocks


def _file_digest(paths: Sequence[str | Path | None]) -> bytes:
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"\0missing")
        digest.update(b"\0\0")
    return digest.digest()


class Authority:
    """A running local authority: policy, keys, TLS, the HTTPS server and
    its watcher. Construct it (binds the port, loads and checks everything;
    errors are HessraError), then `serve_forever()` or `start()` it in a
    thread; `close()` stops it."""

    def __init__(self, config: AuthorityConfig) -> None:
        self.config = config
        self.policy_dir = Path(config.policy_dir)
        if not self.policy_dir.is_dir():
            raise RepositoryReadError(f"{self.policy_dir}: not a directory (the policy directory holds "
                                      f"{RESOURCES_FILE} and {CLIENTS_FILE})")
        for value, what in ((config.token_ttl, "token lifetime"), (config.identity_ttl, "identity token lifetime")):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"the {what} must be a positive number of seconds")
        self._policy_files = [self.policy_dir / RESOURCES_FILE, self.policy_dir / CLIENTS_FILE]
        self._policy_digest = _file_digest(self._policy_files)
        self.policy: Policy = load_policy(self.policy_dir)
        self._warn_unnamed(self.policy)
        window = config.retired_key_window
        if window is None:
            window = max(config.token_ttl, config.identity_ttl) + 60
        self.keys = KeyStore(config.key_file, retired_for=window)
        signoff = {component: value if isinstance(value, biscuit_auth.KeyPair) else _signoff_key(component, value)
                   for component, value in config.signoff_keys.items()}
        from ..core.keys import canonical_public_key

        try:
            trusted = tuple(canonical_public_key(key) for key in config.trusted_roots)
        except ValueError as error:
            raise ConfigurationError(f"a trusted root key: {error}") from None
        self._tls_files = [config.tls_cert, config.tls_key, config.client_ca, config.tls_ca]
        self._tls_digest = _file_digest(self._tls_files)
        self._tls = self._tls_context(self.policy)
        self.ca_cert_pem = self._ca_cert()

        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        server_class = type("HTTPSServer", (HTTPSServer,), {"address_family": family})
        try:
            self.server: HTTPSServer = server_class((config.host, config.port), self)
        except OSError as error:
            raise ConfigurationError(f"cannot listen on {config.host}:{config.port}: "
                                     f"{error.strerror or error}") from None
        self.host = config.host
        self.port = self.server.server_address[1]
        self.issuer = Issuer(self.keys, Settings(
            token_ttl=config.token_ttl, identity_ttl=config.identity_ttl, signoff_keys=signoff,
            trusted_roots=trusted, address=config.advertise or f"{self.host}:{self.port}"))
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._serving = False

    # -- what it serves ----------------------------------------------------

    @property
    def address(self) -> str:
        """HOST:PORT."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def public_key(self) -> str:
        """The signing key's public key, alg/hex."""
        return self.keys.public_key

    @property
    def public_key_pem(self) -> str:
        return self.keys.public_key_pem

    @property
    def key_id(self) -> int:
        """The signing key's id: the root_key_id of the tokens it signs."""
        return self.keys.signing_key()[1]

    def published_key(self) -> tuple[str, int]:
        """GET /public_key's key (PEM) and its id, read together."""
        return self.keys.published()

    def _ca_cert(self) -> str | None:
        if self.config.tls_ca is not None:
            found = _certificates(_read_text(self.config.tls_ca, "--tls-ca"))
            if not found:
                raise ConfigurationError(f"--tls-ca {self.config.tls_ca}: no PEM certificate in it")
            return "".join(found)
        chain = _certificates(_read_text(self.config.tls_cert, "--tls-cert"))
        return chain[-1] if len(chain) > 1 else None

    def _tls_context(self, policy: Policy) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        except (ssl.SSLError, OSError) as error:
            raise ConfigurationError(f"cannot load --tls-cert {self.config.tls_cert} / --tls-key "
                                     f"{self.config.tls_key}: {getattr(error, 'strerror', None) or error}") from None
        authorities = [policy.cacerts or ""]
        if self.config.client_ca is not None:
            authorities.append(_read_text(self.config.client_ca, "--client-ca"))
        cadata = "\n".join(text.strip() for text in authorities if text.strip())
        if cadata:
            try:
                context.load_verify_locations(cadata=cadata)
            except (ssl.SSLError, ValueError):
                raise ConfigurationError("the client CA certificates ([cacerts], --client-ca) do not parse") from None
            context.verify_mode = ssl.CERT_OPTIONAL
        else:
            log.warning("no client CA ([cacerts] in the policy, or --client-ca): client certificates are "
                        "not accepted; only identity tokens identify callers")
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        return context

    def tls_context(self) -> ssl.SSLContext:
        return self._tls

    @staticmethod
    def _warn_unnamed(policy: Policy) -> None:
        for name in policy.unnamed:
            log.warning("client %r has no identifier: no certificate or identity token can act as it", name)

    # -- reloading ---------------------------------------------------------

    def check_for_changes(self) -> None:
        """Reload what changed: the policy directory (refused, and the
        previous policy kept, if it has problems), the signing key, the TLS
        files. The watcher calls this every reload_interval seconds."""
        with self._reload_lock:
            self.keys.refresh()
            policy_digest = _file_digest(self._policy_files)
            tls_digest = _file_digest(self._tls_files)
            policy = self.policy
            if policy_digest != self._policy_digest:
                self._policy_digest = policy_digest
                try:
                    policy = load_policy(self.policy_dir)
                except RepositoryProblemsError as error:
                    log.error("policy not reloaded, the previous one stays: %d problem(s)", len(error.problems))
                    for problem in error.problems:
                        log.error("  %s", problem)
                    return
                except HessraError as error:
                    log.error("policy not reloaded, the previous one stays: %s", error)
                    return
                self._warn_unnamed(policy)
            if policy.cacerts != self.policy.cacerts or tls_digest != self._tls_digest:
                self._tls_digest = tls_digest
                try:
                    self._tls, self.ca_cert_pem = self._tls_context(policy), self._ca_cert()
                    log.info("TLS settings reloaded")
                except HessraError as error:
                    log.error("TLS settings not reloaded, the previous ones stay: %s", error)
            if policy is not self.policy:
                self.policy = policy
                log.info("policy reloaded: %d client(s), %d resource(s)", len(policy.clients), len(policy.resources))

    def _watch(self) -> None:
        while not self._stop.wait(self.config.reload_interval):
            try:
                self.check_for_changes()
            except Exception as error:  # noqa: BLE001 - the watcher must keep going
                log.error("reload check failed: %s", type(error).__name__)

    # -- running -----------------------------------------------------------

    def _start_watcher(self) -> None:
        if self.config.reload_interval > 0:
            watcher = threading.Thread(target=self._watch, name="hessra-authority-watch", daemon=True)
            watcher.start()
            self._threads.append(watcher)

    def serve_forever(self) -> None:
        """Serve in this thread until close() (from another thread)."""
        self._start_watcher()
        self._serving = True
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> "Authority":
        """Serve in a background thread; returns self."""
        self._start_watcher()
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="hessra-authority", daemon=True)
        self._serving = True
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        if self._serving:  # (shutdown() waits for a serve_forever loop to end)
            self.server.shutdown()
            self._serving = False
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "Authority":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signoff_key(component: str, path: str | Path) -> biscuit_auth.KeyPair:
    from ..core.keys import keypair_from

    try:
        return keypair_from(_read_text(path, f"sign-off key of {component!r}"))
    except ValueError as error:
        raise ConfigurationError(f"sign-off key of {component!r} ({path}): {error}") from None


@contextlib.contextmanager
def serve_authority(config: AuthorityConfig | None = None, **options: Any) -> Iterator[Authority]:
    """Run an authority in a background thread for the duration of a
    ``with`` block (port 0 picks a free port: read ``authority.port``)::

        with serve_authority(policy_dir="policy", key_file="root.pem", tls_cert="server.pem",
                             tls_key="server.key", client_ca="ca.pem", port=0) as authority:
            authority.host, authority.port, authority.public_key_pem, authority.ca_cert_pem
    """
    authority = Authority(config if config is not None else AuthorityConfig(**options))
    try:
        yield authority.start()
    finally:
        authority.close()
