"""Token text <-> bytes.

Hessra emitted STANDARD base64 before 2025-05-14 and URL-safe base64 since
(spec §1.3); biscuit-python reads only the URL-safe alphabet. We accept both,
padded or not, and always emit URL-safe with padding.
"""

from __future__ import annotations

import binascii

from ..errors import TokenFormatError, TokenShapeError

#: Largest token accepted, in characters of base64 text. Real Hessra tokens
#: are 0.5-5 KiB; a service chain with ten attestations stays under 8 KiB.
MAX_TOKEN_CHARS = 32 * 1024

#: Deleting every base64 letter (either alphabet) leaves nothing of a valid token.
_BASE64_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
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
    # bytes.translate and a2b_base64 are single C passes (this runs on every
    # cold verification).
    if not text.isascii():
        raise TokenFormatError("token is not base64 text")
    data = text.encode("ascii")
    unpadded = data.rstrip(b"=")
    if len(data) - len(unpadded) > 2 or not unpadded or unpadded.translate(None, _BASE64_LETTERS):
        raise TokenFormatError("token is not base64 text")
    raw = unpadded.translate(_URLSAFE_TO_STANDARD)
    if len(raw) % 4 == 1:
        raise TokenFormatError("token is truncated (invalid base64 length)")
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise TokenFormatError("token is not valid base64") from None


_STANDARD_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def encode_token(data: bytes) -> str:
    """URL-safe base64 with padding, as Hessra's current SDK emits."""
    return binascii.b2a_base64(data, newline=False).translate(_STANDARD_TO_URLSAFE).decode("ascii")


def encode_token_standard(data: bytes) -> str:
    """STANDARD base64, only for the legacy hessra-postgres C extension."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")
