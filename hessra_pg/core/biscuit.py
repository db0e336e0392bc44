"""biscuit-python, imported when it is first used.

Loading its extension module costs ~1.2 ms in a new database backend, and a
backend whose first decisions come from the shared decision table
(hessra_pg.plpython.shared_decisions) never parses a token: the core names
`biscuit_auth` through this stand-in, which imports the module at the first
attribute read and then holds its namespace (later reads are plain
attribute lookups). `errors()` is the tuple of exceptions biscuit-python
raises for a bad token or a failed check.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import biscuit_auth  # noqa: F401 (the real module, for type checkers)

_ERROR_NAMES = (
    "AuthorizationError",
    "BiscuitBlockError",
    "BiscuitBuildError",
    "BiscuitSerializationError",
    "BiscuitValidationError",
    "DataLogError",
)


class _Module:
    """The biscuit_auth module, imported at the first attribute read."""

    def __getattr__(self, name: str) -> object:
        import biscuit_auth as module

        self.__dict__.update(vars(module))
        return getattr(module, name)


if not TYPE_CHECKING:
    biscuit_auth = _Module()

_errors: tuple[type[BaseException], ...] | None = None


def unverified_revocation_ids(data: bytes) -> tuple[str, ...]:
    """The revocation ids of a token's blocks (serialized bytes), read
    without checking its signature: what a revocation or an audit line names
    even for a token signed by a retired or unknown key. Raises biscuit-python's
    errors (errors()) for bytes that are no Biscuit."""
    from .encoding import encode_token

    return tuple(biscuit_auth.UnverifiedBiscuit.from_base64(encode_token(data)).revocation_ids)


def errors() -> tuple[type[BaseException], ...]:
    """Every exception biscuit-python raises for a bad token or a failed check."""
    global _errors
    if _errors is None:
        _errors = tuple(getattr(biscuit_auth, name) for name in _ERROR_NAMES)
    return _errors
