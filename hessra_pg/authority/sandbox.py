"""A throwaway local authority for tests and demos: certificates made on the
fly (hessra_pg.dev.certs, openssl), a fresh signing key, a policy directory,
and ``hessra-pg authority serve`` running in a child process on a free
loopback port.

    from hessra_pg.authority.sandbox import local_authority

    with local_authority(tmp_path, clients_toml=CLIENTS, resources_toml=RESOURCES) as sandbox:
        cert = sandbox.client_certificate("billing", uris=["urn:example:billing"])
        client = sandbox.hessra_py_client(cert)          # Hessra's own client, set up
        token = client.request_token_simple("orders", "read")
        sandbox.host, sandbox.port, sandbox.ca_pem, sandbox.public_key_pem
        sandbox.request("POST", "/mint_identity_token", {...}, certificate=cert)  # (status, JSON)

A child process, not a thread: hessra_py keeps Python's GIL while it waits
for an answer, so a server in the same process would never answer it. The
CA signs the server certificate (DNS localhost, IP 127.0.0.1) and the
client certificates, and is given as --client-ca (the policy needs no
[cacerts]) and --tls-ca. The child's log lines are kept in ``logs``;
``write_policy`` and ``rotate_key`` wait until the child has reloaded.
Nothing here is for production.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..core.keys import canonical_public_key, generate_keypair, private_key_pem
from ..dev.certs import CertificateAuthority, IssuedCertificate, make_ca
from ..errors import ConfigurationError
from ..repository.checker import CLIENTS_FILE, RESOURCES_FILE
from .keys import rotate_key

__all__ = ["LocalAuthority", "local_authority", "wait_until"]

START_TIMEOUT = 30.0


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class LocalAuthority:
    """A running sandbox authority (a child process) and its files."""

    def __init__(self, process: subprocess.Popen[str], ca: CertificateAuthority, directory: Path,
                 key_file: Path, policy_dir: Path, url: str, logs: list[str]) -> None:
        self.process = process
        self.ca = ca
        self.directory = directory
        self.key_file = key_file
        self.policy_dir = policy_dir
        self.url = url
        self.host, _, port = url.removeprefix("https://").rpartition(":")
        self.port = int(port)
        #: the child's log lines (stderr), as they come
        self.logs = logs

    @property
    def ca_pem(self) -> str:
        """The CA certificate (PEM) that signed the server's: a client's server_ca."""
        return self.ca.cert.read_text()

    @property
    def public_key_pem(self) -> str:
        """The public key the authority serves now (GET /public_key)."""
        status, body = self.request("GET", "/public_key")
        if status != 200:
            raise ConfigurationError(f"GET /public_key answered {status}")
        return body["public_key"]

    @property
    def public_key(self) -> str:
        """The same, alg/hex."""
        return canonical_public_key(self.public_key_pem)

    def client_certificate(self, name: str, *, uris: Sequence[str] = (), dns: Sequence[str] = ()) -> IssuedCertificate:
        """A client certificate with these SANs, signed by the sandbox CA."""
        return self.ca.issue(name, uris=uris, dns=dns)

    # -- changing it ---------------------------------------------------------

    def wait_for_log(self, fragment: str, *, after: int = 0, timeout: float = 10.0) -> str:
        """The first log line from index `after` on that contains `fragment`."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.logs[after:] if fragment in line]
            return bool(found)

        if not wait_until(seen, timeout):
            raise ConfigurationError(f"the authority did not log {fragment!r} within {timeout} s")
        return found[0]

    def write_policy(self, *, clients_toml: str | None = None, resources_toml: str | None = None,
                     wait: bool = True) -> str | None:
        """Replace policy files (atomically); with `wait`, return once the
        authority has reloaded them (its log line) or refused them."""
        mark = len(self.logs)
        _write_policy(self.policy_dir, clients_toml, resources_toml)
        if not wait:
            return None
        return self.wait_for_log("policy ", after=mark)

    def rotate_key(self, *, algorithm: str | None = None, wait: bool = True) -> str:
        """`hessra-pg authority rotate-key`; with `wait`, return once the
        authority signs with the new key. The new public key, alg/hex."""
        mark = len(self.logs)
        pair = rotate_key(self.key_file, algorithm=algorithm)
        if wait:
            self.wait_for_log("signing key rotated", after=mark)
        return str(pair.public_key)

    # -- talking to it ---------------------------------------------------------

    def ssl_context(self, certificate: IssuedCertificate | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if certificate is not None:
            context.load_cert_chain(certificate.cert, certificate.key)
        return context

    def request(self, method: str, path: str, body: Any = None, *, certificate: IssuedCertificate | None = None,
                bearer: str | None = None, raw: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """One HTTPS request (Python's http.client): (status, parsed JSON or
        the text if it is not JSON). `body` is sent as JSON, `raw` as is."""
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.ssl_context(certificate),
                                                 timeout=10)
        sent = dict(headers or {})
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def hessra_py_client(self, certificate: IssuedCertificate | None = None, *, setup: bool = True) -> Any:
        """Hessra's own client (hessra_py, a test dependency) for this
        authority: server CA, mTLS with `certificate` if given, and the
        public key fetched (setup_new) unless `setup` is False."""
        import hessra_py

        builder = hessra_py.HessraClient.builder().base_url(self.host).port(self.port).server_ca(self.ca_pem)
        if certificate is not None:
            builder = builder.mtls_cert(certificate.cert.read_text()).mtls_key(certificate.key.read_text())
        client = builder.build()
        return client.setup_new() if setup else client


def _write_policy(directory: Path, clients_toml: str | None, resources_toml: str | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in ((CLIENTS_FILE, clients_toml), (RESOURCES_FILE, resources_toml)):
        if text is not None:
            temporary = directory / f".{name}.tmp"
            temporary.write_text(text)
            temporary.replace(directory / name)


def _pump(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def _option_arguments(options: Mapping[str, Any], directory: Path) -> list[str]:
    """AuthorityConfig-style keyword options as `authority serve` flags."""
    arguments: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "signoff_keys":
            for component, key in value.items():
                if not isinstance(key, (str, Path)):  # a key pair: to a 0600 file
                    path = directory / f"signoff-{component}.pem"
                    path.write_text(private_key_pem(key))
                    path.chmod(0o600)
                    key = path
                arguments += ["--signoff-key", f"{component}={key}"]
        elif name == "trusted_roots":
            for key in value:
                arguments += ["--trusted-root", str(key)]
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


@contextlib.contextmanager
def local_authority(directory: str | Path, *, clients_toml: str = "", resources_toml: str = "",
                    algorithm: str = "ed25519", reload_interval: float = 0.1,
                    **options: Any) -> Iterator[LocalAuthority]:
    """A sandbox authority in `directory` (certs/, policy/, authority-key.pem),
    serving on 127.0.0.1 and a free port until the block ends. `options`
    are `authority serve` options by their Python names (token_ttl,
    identity_ttl, signoff_keys={component: key pair or file},
    trusted_roots, advertise, log_level)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory / "certs")
    server = ca.issue("authority", dns=["localhost"], ips=["127.0.0.1"], server=True)
    key_file = directory / "authority-key.pem"
    key_file.write_text(private_key_pem(generate_keypair(algorithm)))
    key_file.chmod(0o600)
    policy_dir = directory / "policy"
    _write_policy(policy_dir, clients_toml, resources_toml)
    command = [sys.executable, "-m", "hessra_pg", "authority", "serve", "--policy-dir", str(policy_dir),
               "--key", str(key_file), "--tls-cert", str(server.cert), "--tls-key", str(server.key),
               "--client-ca", str(ca.cert), "--tls-ca", str(ca.cert), "--host", "127.0.0.1", "--port", "0",
               "--reload-interval", str(reload_interval), *_option_arguments(options, directory)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    logs: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    readers = [threading.Thread(target=_pump, args=(process.stderr, logs), daemon=True)]
    urls: list[str] = []
    readers.append(threading.Thread(target=_pump, args=(process.stdout, urls), daemon=True))
    for reader in readers:
        reader.start()
    try:
        if not wait_until(lambda: bool(urls) or process.poll() is not None, START_TIMEOUT) or not urls:
            wait_until(lambda: process.poll() is not None, 2)
            tail = " | ".join(logs[-5:]) or "no output"
            raise ConfigurationError(f"the sandbox authority did not start: {tail}")
        yield LocalAuthority(process, ca, directory, key_file, policy_dir, urls[0], logs)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for reader in readers:
            reader.join(timeout=5)
        for stream in (process.stdout, process.stderr):
            stream.close()
