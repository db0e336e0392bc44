"""How the authority demo's service talks to the authority.

With Hessra's own client, hessra_py (a test dependency: ``pip install
'hessra-pg[test]'``, which ``make bootstrap`` does), over mTLS; without it,
plain HTTPS requests with the standard library to the same endpoints with
the same JSON bodies (``POST /request_token``, ``/request_identity_token``).
Both answer through :class:`ServiceClient`, and a refusal is an
:class:`AuthorityRefusal` with the HTTP status and the authority's
``response_msg`` (never a token: refusals carry none).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import HessraError

if TYPE_CHECKING:
    from ..authority.sandbox import LocalAuthority
    from .certs import IssuedCertificate

__all__ = ["AuthorityRefusal", "IdentityToken", "ServiceClient", "hessra_py_available", "service_client"]

# hessra_py 0.2.1 words a non-2xx answer as
# 'Invalid response: HTTP error: 403 Forbidden - {"response_msg": "..."}'.
_HTTP_ERROR = re.compile(r"HTTP error: (\d{3})\b[^{]*(\{.*\})?", re.DOTALL)


class AuthorityRefusal(HessraError):
    """The authority answered a request with an error status."""

    sqlstate = "28000"  # invalid_authorization_specification: the authority refused

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status if status is not None else '?'}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class IdentityToken:
    """``/request_identity_token``'s answer (the token is never printed)."""

    token: str
    identity: str
    expires_in: int


class ServiceClient(Protocol):
    """What the demo's service asks the authority."""

    via: str
    """How it asks, in a few words (for the narration)."""

    def request_token(self, resource: str, operation: str) -> str: ...

    def request_identity_token(self) -> IdentityToken: ...

    def request_token_with_identity(self, resource: str, operation: str, identity_token: str) -> str: ...


def hessra_py_available() -> bool:
    """True when Hessra's Python client can be imported."""
    try:
        import hessra_py  # noqa: F401
    except ImportError:
        return False
    return True


def service_client(authority: LocalAuthority, certificate: IssuedCertificate | None) -> ServiceClient:
    """Hessra's client when installed, else plain HTTPS, for `certificate`'s holder."""
    if hessra_py_available():
        return HessraPyClient(authority, certificate)
    return HttpsClient(authority, certificate)


class HessraPyClient:
    """hessra_py.HessraClient: server CA, client certificate (mTLS), setup_new()."""

    via = "hessra_py (Hessra's own client)"

    def __init__(self, authority: LocalAuthority, certificate: IssuedCertificate | None) -> None:
        self._authority = authority
        self._client = self._call(authority.hessra_py_client, certificate)

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        import hessra_py

        try:
            return method(*args)
        except hessra_py.HessraPyException as error:
            raise _refusal(str(error)) from None

    def request_token(self, resource: str, operation: str) -> str:
        return str(self._call(self._client.request_token_simple, resource, operation))

    def request_identity_token(self) -> IdentityToken:
        answer = self._call(self._client.request_identity_token, None)
        return IdentityToken(answer.token, answer.identity, int(answer.expires_in))

    def request_token_with_identity(self, resource: str, operation: str, identity_token: str) -> str:
        # A client with no certificate: the identity token alone says who asks.
        anonymous = self._call(self._authority.hessra_py_client, None)
        return str(self._call(anonymous.request_token_with_identity, resource, operation, identity_token))


def _refusal(text: str) -> AuthorityRefusal:
    """hessra_py's error text as (status, the authority's response_msg)."""
    found = _HTTP_ERROR.search(text)
    if found is None:  # not an HTTP answer (TLS, connection): its first line
        return AuthorityRefusal(None, text.splitlines()[0][:200] if text else "no detail")
    message = ""
    if found.group(2):
        try:
            message = str(json.loads(found.group(2)).get("response_msg", ""))
        except (ValueError, AttributeError):
            message = ""
    return AuthorityRefusal(int(found.group(1)), message)


class HttpsClient:
    """The same requests with Python's http.client (no hessra_py)."""

    via = "plain HTTPS requests (Python's http.client)"

    def __init__(self, authority: LocalAuthority, certificate: IssuedCertificate | None) -> None:
        self._authority = authority
        self._certificate = certificate

    def _post(self, path: str, body: dict[str, Any], *, bearer: str | None = None,
              certificate: IssuedCertificate | None = None) -> dict[str, Any]:
        status, answer = self._authority.request("POST", path, body, certificate=certificate, bearer=bearer)
        if not 200 <= status < 300 or not isinstance(answer, dict):
            message = answer.get("response_msg", "") if isinstance(answer, dict) else ""
            raise AuthorityRefusal(status, str(message))
        return answer

    def request_token(self, resource: str, operation: str) -> str:
        answer = self._post("/request_token", {"resource": resource, "operation": operation},
                            certificate=self._certificate)
        return str(answer["token"])

    def request_identity_token(self) -> IdentityToken:
        answer = self._post("/request_identity_token", {"identifier": None}, certificate=self._certificate)
        return IdentityToken(str(answer["token"]), str(answer["identity"]), int(answer["expires_in"]))

    def request_token_with_identity(self, resource: str, operation: str, identity_token: str) -> str:
        answer = self._post("/request_token", {"resource": resource, "operation": operation}, bearer=identity_token)
        return str(answer["token"])
