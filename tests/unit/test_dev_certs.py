"""hessra_pg.dev.certs: the CA signs a loopback server certificate and SAN
client certificates that Python's ssl module accepts for mutual TLS."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from hessra_pg.dev.certs import make_ca


def test_mutual_tls_on_loopback_with_san_names(tmp_path):
    ca = make_ca(tmp_path)
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"], server=True)
    client = ca.issue("billing", uris=["urn:hessra:billing"], dns=["billing.internal"])
    assert oct(client.key.stat().st_mode & 0o777) == "0o600"

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.cert, server.key)
    server_context.load_verify_locations(ca.cert)
    server_context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {}

    def serve():
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(ca.cert))
    client_context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(timeout=10)
    listener.close()
    assert ("URI", "urn:hessra:billing") in seen["peer"]["subjectAltName"]
    assert ("DNS", "billing.internal") in seen["peer"]["subjectAltName"]


def test_names_are_plain(tmp_path):
    with pytest.raises(ValueError):
        make_ca(tmp_path).issue("../x")
