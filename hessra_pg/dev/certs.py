"""Throwaway X.509 certificates for local authorities and tests: a CA, a
server certificate for loopback (DNS localhost and IP 127.0.0.1 SANs: Hessra's
client verifies the host name) and client certificates with SAN URIs or DNS
names (how an authority's clients.toml names its clients). Made with the
`openssl` command on the fly; never committed, never for production.

    from hessra_pg.dev.certs import make_ca

    ca = make_ca(directory)
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"], server=True)
    client = ca.issue("billing", uris=["urn:hessra:billing"])
    server.cert, server.key, ca.cert  # paths of PEM files
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import ClusterError

__all__ = ["CertificateAuthority", "IssuedCertificate", "make_ca"]

#: Long enough for any test run, short enough to be useless if one leaks.
DAYS = 2


class IssuedCertificate:
    """A certificate and its private key, as PEM files."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key

    def __repr__(self) -> str:
        return f"IssuedCertificate({self.cert.name})"


class CertificateAuthority(IssuedCertificate):
    """A self-signed CA whose certificates `issue` signs."""

    def issue(self, name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (), uris: Sequence[str] = (),
              server: bool = False) -> IssuedCertificate:
        """A certificate for `name` (its CN and file names) with these
        subject alternative names, for TLS servers (`server`) or clients."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"certificate name {name!r}: letters, digits, - and _ only")
        directory = self.cert.parent
        key, request, cert, extensions = (directory / f"{name}{suffix}"
                                          for suffix in (".key", ".csr", ".pem", ".ext"))
        names = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips] + [f"URI:{u}" for u in uris]
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
        if names:
            lines.append("subjectAltName=" + ",".join(names))
        extensions.write_text("\n".join(lines) + "\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", request, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                 "-days", str(DAYS), "-sha256", "-extfile", extensions, "-out", cert)
        request.unlink()
        extensions.unlink()
        key.chmod(0o600)
        return IssuedCertificate(cert, key)


def make_ca(directory: str | Path, name: str = "hessra-test-ca") -> CertificateAuthority:
    """A new CA in `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
             "-out", cert, "-days", str(DAYS), "-sha256", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    key.chmod(0o600)
    return CertificateAuthority(cert, key)


def _openssl(*args: object) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise ClusterError("the openssl command is needed to make test certificates: apt-get install openssl")
    done = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
