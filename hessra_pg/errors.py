"""Exception classes. Every error raised to a user is one of these, with an
actionable message that never contains a token."""


class HessraError(Exception):
    """Base class of every hessra_pg error.

    Inside the database an error becomes an ERROR with this SQLSTATE, the
    message, `hint`, and `detail` (shown to key administrators only: it may
    name configuration an application role has no business seeing).
    """

    sqlstate = "22023"  # invalid_parameter_value

    def __init__(self, *args: object, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(*args)
        self.detail = detail
        self.hint = hint


class KeyFormatError(HessraError, ValueError):
    """A public or private key could not be parsed."""


class TokenFormatError(HessraError, ValueError):
    """A token is not valid base64 or not a Biscuit (never includes the token)."""


class TokenShapeError(TokenFormatError):
    """A token exceeds the size or shape limits that keep verification bounded."""


class ConfigurationError(HessraError):
    """The verifier's configuration (keys, chains) is missing or invalid."""


class StaleSnapshotError(ConfigurationError):
    """The statement's snapshot predates a configuration change that has
    committed (and that this database's backends already enforce)."""

    sqlstate = "40001"  # serialization_failure: the application retries
