"""Token text <-> bytes.

Hessra emitted STANDARD base64 before 2025-05-14 and URL-safe base64 since
(spec §1.3); biscuit-python reads only the URL-safe alphabet. We accept both,
padded or not, and always emit URL-safe with padding.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..errors import TokenFormatError, TokenShapeError

#: Largest token accepted, in characters of base64 text. Real Hessra tokens
#: are 0.5-5 KiB; a service chain with ten attestations stays under 8 KiB.
MAX_TOKEN_CHARS = 32 * 1024

_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def decode_token(token: str) -> bytes:
    """Return the raw Biscuit bytes of a token in either base64 alphabet.

    Raises TokenFormatError (never echoing the token) if it is empty, too
    large or not base64.
    """
    if not isinstance(token, str):
        raise TokenFormatError("token must be text")
    if len(token) > MAX_TOKEN_CHARS + 64:
        raise TokenShapeError(f"token is larger than {MAX_TOKEN_CHARS} characters")
    text = token.strip()
    if not text:
        raise TokenFormatError("token is empty")
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenShapeError(f"token is larger than {MAX_TOKEN_CHARS} characters")
    if not _BASE64_TEXT.fullmatch(text):
        raise TokenFormatError("token is not base64 text")
    # bytes.translate and a2b_base64 are single C passes (this runs on every
    # cold verification).
    raw = text.encode("ascii").rstrip(b"=").translate(_URLSAFE_TO_STANDARD)
    if len(raw) % 4 == 1:
        raise TokenFormatError("token is truncated (invalid base64 length)")
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise TokenFormatError("token is not valid base64") from None


def encode_token(data: bytes) -> str:
    """URL-safe base64 with padding, as Hessra's current SDK emits."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def encode_token_standard(data: bytes) -> str:
    """STANDARD base64, only for the legacy hessra-postgres C extension."""
    return base64.b64encode(data).decode("ascii")
