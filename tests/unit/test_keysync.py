"""hessra_pg.admin.keysync without a database: durations, authority
addresses, the /public_key response, timeouts and the backoff."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from hessra_pg.admin.keysync import (
    DEFAULT_GRACE,
    Authority,
    AuthorityError,
    _read_response,
    backoff_delays,
    fetch_authority_key,
    format_duration,
    parse_authority,
    parse_duration,
)
from hessra_pg.core.keys import generate_keypair, public_key_pem
from hessra_pg.dev.certs import make_ca


@pytest.mark.parametrize(("text", "seconds"), [
    ("24h5m", 86700), ("90s", 90), ("300", 300), ("0.2s", 0.2), ("1.5h", 5400), ("2d", 172800),
    ("500ms", 0.5), ("1h30m", 5400), ("1w", 604800), (" 5M ", 300),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "-1", "0", "0s", "5m3", "h", "1e3", "inf", "nan", "5 m x",
                                  "99999999999d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    assert format_duration(DEFAULT_GRACE) == "24h5m"
    assert DEFAULT_GRACE > timedelta(hours=24) + timedelta(minutes=4)  # a day of tokens plus skew
    for text in ("24h5m", "90s", "0.2s", "1h30m", "48h", "1s"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize(("address", "expected"), [
    ("localhost", ("localhost", 443)), ("localhost:8443", ("localhost", 8443)),
    ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::1]:8443", ("::1", 8443)), ("[::1]", ("::1", 443)),
    ("https://authority.example:9/", ("authority.example", 9)),
])
def test_parse_authority(address: str, expected: tuple[str, int]) -> None:
    assert parse_authority(address) == expected


@pytest.mark.parametrize(("address", "message"), [
    ("h:0", "port must be 1-65535"), ("h:x", "port must be 1-65535"), ("h:70000", "port must be 1-65535"),
    ("::1", "in brackets"), ("http://h", "https only"), ("h/path", "HOST[:PORT]"), ("", "HOST[:PORT]"),
    ("user@h", "HOST[:PORT]"), ("[::1", "[IPv6]:PORT"), (":443", "HOST[:PORT]"),
])
def test_parse_authority_refuses(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_authority(address)


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_read_response() -> None:
    pair = generate_keypair("secp256r1")
    pem = public_key_pem(pair.public_key)
    assert _read_response(_body(response_msg="ok", public_key=pem), "h:1") == (str(pair.public_key), None)
    # alg/hex is accepted as well; extra fields are ignored; kid / root_key_id are read.
    assert _read_response(_body(response_msg="", public_key=str(pair.public_key), x=1, kid=3), "h:1") == (
        str(pair.public_key), 3)
    assert _read_response(_body(response_msg="", public_key=pem, root_key_id=4, kid=4), "h:1")[1] == 4
    assert _read_response(_body(response_msg="", public_key=pem, kid=None), "h:1")[1] is None


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not JSON"), (b"\xff\xfe\x00", "not JSON"), (b"null", "not an object"),
    (_body(public_key="ed25519/" + "ab" * 32), "no 'response_msg' field"),
    (_body(response_msg=None, public_key="ed25519/" + "ab" * 32), "a non-string 'response_msg' field"),
    (_body(response_msg="ok"), "no 'public_key' field"),
    (_body(response_msg="ok", public_key=""), "not a usable public key: public key is empty"),
    (_body(response_msg="ok", public_key="ed25519/abc"), "ed25519 public key must be 64 hex digits"),
    (_body(response_msg="ok", public_key=str(generate_keypair().public_key), kid=1.5),
     "'kid' that is not a positive"),
])
def test_read_response_refuses(body: bytes, message: str) -> None:
    with pytest.raises(AuthorityError, match=message) as failure:
        _read_response(body, "h:1")
    assert failure.value.kind == "format"
    assert "\n" not in str(failure.value) and "abab" not in str(failure.value)


def test_backoff_grows_and_is_capped() -> None:
    delay = backoff_delays(timedelta(minutes=5))
    values = [delay(n) for n in range(1, 12)]
    assert 4.5 <= values[0] <= 5.5 and 9 <= values[1] <= 11
    assert all(value <= 300 * 1.1 for value in values) and values[-1] >= 300 * 0.9
    short = backoff_delays(timedelta(seconds=0.2))
    assert 0.18 <= short(1) <= 0.22 and short(2) > short(1) * 1.5
    assert short(40) <= 330  # never more than max(interval, 5 min) (+10 %)
    hourly = backoff_delays(timedelta(hours=1))
    assert hourly(1) <= 5.5 and 3240 <= hourly(30) <= 3960  # up to the interval when it is longer


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def test_a_silent_authority_times_out(ca) -> None:
    """Accepts the connection, never answers the TLS handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(AuthorityError, match=f"the authority at 127.0.0.1:{port} did not answer within 0.3 s") \
                as failure:
            fetch_authority_key(f"127.0.0.1:{port}", str(ca.cert), timeout=0.3)
    assert failure.value.kind == "connection"


def test_authority_configuration_errors(ca, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Authority("http://x", str(ca.cert))
    with pytest.raises(AuthorityError, match="cannot read the CA file"):
        Authority("localhost", str(tmp_path / "none.pem")).check()
    with pytest.raises(AuthorityError, match="--mtls-cert and --mtls-key go together"):
        Authority("localhost", str(ca.cert), mtls_cert=str(ca.cert)).check()
    with pytest.raises(AuthorityError, match="cannot read the client certificate"):
        Authority("localhost", str(ca.cert), mtls_cert=str(tmp_path / "c"), mtls_key=str(tmp_path / "k")).check()
    Authority("localhost", str(ca.cert)).check()
    assert Authority("[::1]:8443", str(ca.cert)).host_port == "[::1]:8443"
