"""Exception classes. Every error raised to a user is one of these, with an
actionable message that never contains a token."""


class HessraError(Exception):
    """Base class of every hessra_pg error."""


class KeyFormatError(HessraError, ValueError):
    """A public or private key could not be parsed."""


class TokenFormatError(HessraError, ValueError):
    """A token is not valid base64 or not a Biscuit (never includes the token)."""


class TokenShapeError(TokenFormatError):
    """A token exceeds the size or shape limits that keep verification bounded."""


class ConfigurationError(HessraError):
    """The verifier's configuration (keys, chains) is missing or invalid."""
