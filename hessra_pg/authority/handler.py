"""HTTP for the local authority: Python's http.server on TLS sockets (the
ssl module), no HTTP or TLS parsing of our own. The endpoints, their JSON
bodies (hessra-api's structs, each answer with ``response_msg``) and the
access log; hessra_pg.authority.server runs it.

- HTTP/1.1 with keep-alive; no HTTP/0.9: even a malformed request line
  gets a status line and a JSON body.
- Request bodies: JSON objects with a Content-Length, at most MAX_BODY
  bytes; a body refused unread is drained (up to DRAIN_LIMIT) so the
  client reads the answer rather than a reset.
- Callers: ``Authorization: Bearer <identity token>`` if present, else the
  verified client certificate (its SANs); 401 without either.
- The access log has the client address, method, path (never a query
  string), status and who asked for what; never a token or a header value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .issuer import Caller, Refusal
from .policy import Policy

if TYPE_CHECKING:
    from .server import Authority

__all__ = ["DRAIN_LIMIT", "HTTPSServer", "MAX_BODY"]

log = logging.getLogger("hessra_pg.authority")

#: Request bodies are small JSON objects; a token is a few KiB.
MAX_BODY = 64 * 1024
#: A body refused unread (too large, unknown endpoint) is read and dropped up
#: to this size, so the client gets the answer (closing on unread data would
#: reset the connection under it); larger ones close the connection.
DRAIN_LIMIT = 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
DEBUG_ENV = "HESSRA_PG_DEBUG"


class HTTPSServer(ThreadingHTTPServer):
    """Accepts TCP, hands each connection to a thread that does the TLS
    handshake and then serves HTTP/1.1 on it."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], authority: "Authority") -> None:
        self.authority = authority
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            connection = self.authority.tls_context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.info("%s: TLS handshake failed (%s)", client_address[0],
                     getattr(error, "reason", None) or type(error).__name__)
            return
        try:
            _Handler(connection, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if os.environ.get(DEBUG_ENV):
            log.exception("error serving %s", client_address[0])
        else:
            log.error("error serving %s: %s (set %s=1 for the traceback)", client_address[0],
                      type(sys.exc_info()[1]).__name__, DEBUG_ENV)


Route = Callable[["_Handler"], dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: no HTTP/0.9 (answers without a status line): errors to malformed
    #: request lines get a status line, headers and the JSON body too
    default_request_version = "HTTP/1.0"
    server_version = "hessra-pg-authority"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: HTTPSServer

    # -- plumbing ----------------------------------------------------------

    @property
    def authority(self) -> "Authority":
        return self.server.authority

    def _reply(self, status: int, body: Mapping[str, Any], *, who: str = "-", close: bool = False) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        path = (self.path or "").split("?", 1)[0][:200]
        log.info("%s %s %s %d %s", self.client_address[0], self.command or "-", path or "-", status, who)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, headers too
        long, unsupported method), as JSON with response_msg."""
        try:
            short = self.responses[code][0]
        except KeyError:
            short = "error"
        self._reply(code, {"response_msg": message or short}, close=True)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _reply logs, without anything a client sent but the path

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.client_address[0], format % args)

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise Refusal(411, "send the request body with a Content-Length (no chunked encoding)")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise Refusal(411, "a JSON request body with a Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise Refusal(400, "bad Content-Length") from None
        if length < 0:
            raise Refusal(400, "bad Content-Length")
        if length > MAX_BODY:
            self._drain()
            raise Refusal(413, f"request body too large (at most {MAX_BODY} bytes)")
        raw = self.rfile.read(length)
        self._consumed = True
        if len(raw) != length:
            raise Refusal(400, "request body shorter than its Content-Length")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Refusal(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "request body must be a JSON object")
        return body

    def _drain(self) -> None:
        """Read and drop the request body, if it is small enough; the
        connection is reusable afterwards only then."""
        if self.headers.get("Transfer-Encoding"):
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if 0 <= length <= DRAIN_LIMIT:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)
            self._consumed = True

    @staticmethod
    def _text(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
        value = body.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise Refusal(400, f"field {name!r} must be a non-empty string")
        return value.strip()

    # -- who ---------------------------------------------------------------

    def _certificate_caller(self, policy: Policy) -> Caller | None:
        certificate = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        if not certificate:
            return None
        try:
            return self.authority.issuer.caller_from_certificate(policy, certificate.get("subjectAltName", ()))
        except Refusal:
            names = ", ".join(f"{kind}:{value}" for kind, value in certificate.get("subjectAltName", ()))
            log.info("%s: certificate names no client of the policy (%s)", self.client_address[0], names or "no SAN")
            raise

    def _caller(self, policy: Policy, *, bearer: bool = True) -> Caller:
        authorization = self.headers.get("Authorization")
        if bearer and authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Refusal(401, "Authorization must be 'Bearer <identity token>'")
            return self.authority.issuer.caller_from_identity_token(policy, value.strip())
        caller = self._certificate_caller(policy)
        if caller is None:
            how = "a client certificate (mTLS) or Authorization: Bearer <identity token>" if bearer \
                else "a client certificate (mTLS)"
            raise Refusal(401, f"who is asking? authenticate with {how}")
        return caller

    # -- dispatch ----------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path = (self.path or "").split("?", 1)[0].rstrip("/") or "/"
        routes = _GET if method == "GET" else _POST
        route = routes.get(path)
        self._who = "-"
        self._consumed = method == "GET"
        if route is None:
            # A body nobody read would be taken for the next request: drop it
            # (or close the connection after answering).
            if method == "POST":
                self._drain()
            other = _POST if method == "GET" else _GET
            if path in other:
                self._reply(405, {"response_msg": f"use {'POST' if method == 'GET' else 'GET'} for {path}"},
                            close=not self._consumed)
            else:
                self._reply(404, {"response_msg": "unknown endpoint"}, close=not self._consumed)
            return
        try:
            body = route(self)
        except Refusal as refusal:
            self._reply(refusal.status, {"response_msg": refusal.message}, who=self._who,
                        close=not self._consumed)
            return
        except Exception as error:  # noqa: BLE001 - a bug: answer, log its type only (never its text)
            if os.environ.get(DEBUG_ENV):
                log.exception("internal error")
            else:
                log.error("internal error: %s (set %s=1 for the traceback)", type(error).__name__, DEBUG_ENV)
            self._reply(500, {"response_msg": "internal error"}, who=self._who, close=True)
            return
        self._reply(200, body, who=self._who)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -- endpoints -----------------------------------------------------------

    def public_key(self) -> dict[str, Any]:
        # root_key_id: the kid its tokens carry, for keys sync to register it under
        # (hessra-api's PublicKeyResponse has no such field; its clients ignore it).
        pem, kid = self.authority.published_key()
        return {"response_msg": "public key", "public_key": pem, "root_key_id": kid}

    def ca_cert(self) -> dict[str, Any]:
        pem = self.authority.ca_cert_pem
        if pem is None:
            raise Refusal(404, "no CA certificate configured (--tls-ca)")
        return {"response_msg": "CA certificate", "ca_cert_pem": pem}

    def request_token(self) -> dict[str, Any]:
        body = self._body()
        resource, operation = self._text(body, "resource"), self._text(body, "operation")
        domain = self._text(body, "domain", optional=True)
        policy = self.authority.policy
        caller = self._caller(policy)
        self._who = f"{caller.describe()} {operation} {resource}"
        if domain is not None and caller.domain != domain:
            # (newer SDKs name the domain of a domain identity they present)
            raise Refusal(403, f"the caller is not a member of domain {domain}")
        assert resource is not None and operation is not None
        return self.authority.issuer.request_token(policy, caller, resource, operation)

    def request_identity_token(self) -> dict[str, Any]:
        body = self._body()
        identifier = self._text(body, "identifier", optional=True)
        policy = self.authority.policy
        caller = self._caller(policy, bearer=False)
        self._who = caller.describe()
        return self.authority.issuer.request_identity_token(policy, caller, identifier)

    def refresh_identity_token(self) -> dict[str, Any]:
        body = self._body()
        current = self._text(body, "current_token")
        identifier = self._text(body, "identifier", optional=True)
        policy = self.authority.policy
        caller = self._certificate_caller(policy)
        self._who = caller.describe() if caller else "identity token"
        assert current is not None
        return self.authority.issuer.refresh_identity_token(policy, caller, current, identifier)

    def mint_identity_token(self) -> dict[str, Any]:
        body = self._body()
        subject = self._text(body, "subject")
        duration = body.get("duration")
        if duration is not None and (type(duration) is not int or duration < 1):
            raise Refusal(400, "field 'duration' must be a positive number of seconds")
        policy = self.authority.policy
        caller = self._caller(policy, bearer=False)
        self._who = f"{caller.describe()} for {subject}"
        assert subject is not None
        return self.authority.issuer.mint_identity_token(policy, caller, subject, duration)

    def sign_token(self) -> dict[str, Any]:
        body = self._body()
        token = self._text(body, "token")
        resource, operation = self._text(body, "resource"), self._text(body, "operation")
        policy = self.authority.policy
        caller = self._caller(policy)
        self._who = f"{caller.describe()} sign-off {operation} {resource}"
        assert token is not None and resource is not None and operation is not None
        return self.authority.issuer.sign_token(policy, caller, token, resource, operation)

    def verify_token(self) -> dict[str, Any]:
        body = self._body()
        token, subject = self._text(body, "token"), self._text(body, "subject")
        resource, operation = self._text(body, "resource"), self._text(body, "operation")
        self._who = f"verify {operation} {resource}"
        assert token is not None and subject is not None and resource is not None and operation is not None
        return self.authority.issuer.verify_token(token, subject, resource, operation)

    def verify_service_chain_token(self) -> dict[str, Any]:
        body = self._body()
        token, subject = self._text(body, "token"), self._text(body, "subject")
        resource = self._text(body, "resource")
        component = self._text(body, "component", optional=True)
        self._who = f"verify chain {resource}"
        assert token is not None and subject is not None and resource is not None
        return self.authority.issuer.verify_service_chain_token(self.authority.policy, token, subject,
                                                                resource, component)


_GET: dict[str, Route] = {
    "/public_key": _Handler.public_key,
    "/ca_cert": _Handler.ca_cert,
}
_POST: dict[str, Route] = {
    "/request_token": _Handler.request_token,
    "/request_identity_token": _Handler.request_identity_token,
    "/refresh_identity_token": _Handler.refresh_identity_token,
    "/mint_identity_token": _Handler.mint_identity_token,
    "/sign_token": _Handler.sign_token,
    "/verify_token": _Handler.verify_token,
    "/verify_service_chain_token": _Handler.verify_service_chain_token,
}

