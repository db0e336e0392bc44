"""Every exception hessra_pg raises, in one place, each with its SQLSTATE.

Every error a user sees is one of these, with an actionable message that
never contains a token. Inside the database an error becomes an ERROR with
the class's SQLSTATE, its message, its hint, and its detail (shown to key
administrators only: it may name configuration an application role has no
business seeing). Token problems are never errors: verifications answer
false (hessra_pg.core.verifier.TokenRejected is internal). Two subclasses
live next to the data they format: ClusterAccessError (hessra_pg.dev.cluster)
and RepositoryProblemsError (hessra_pg.repository.checker).
"""

from __future__ import annotations


class HessraError(Exception):
    """Base class of every hessra_pg error."""

    #: The SQLSTATE this error carries through SQL (class 22: data
    #: exception, 55: prerequisite state, 42: undefined object, XX: internal).
    sqlstate = "XX000"  # internal_error: nothing more specific applies
    #: What to do about it; an instance may give a more specific one.
    hint: str | None = None

    def __init__(self, *args: object, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(*args)
        self.detail = detail
        if hint is not None:
            self.hint = hint


class ArgumentError(HessraError, ValueError):
    """An argument can't be used: NULL where a value is needed, a component
    that is not in the chain."""

    sqlstate = "22023"  # invalid_parameter_value


class KeyFormatError(HessraError, ValueError):
    """A public or private key could not be parsed."""

    sqlstate = "22023"  # invalid_parameter_value
    hint = "Keys are PEM (SPKI, P-256 or Ed25519) or 'ed25519/<64 hex>' / 'secp256r1/<66 hex>'."


class TokenFormatError(HessraError, ValueError):
    """A token is not valid base64 or not a Biscuit (never includes the token)."""

    sqlstate = "22023"  # invalid_parameter_value


class TokenShapeError(TokenFormatError):
    """A token exceeds the size or shape limits that keep verification bounded."""

    sqlstate = "54000"  # program_limit_exceeded


class ConfigurationError(HessraError):
    """The verifier's configuration (keys, chains) is missing or invalid."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class NoActiveKeyError(ConfigurationError):
    """No key in hessra_authz.keys is active at this time."""

    hint = "Add the authority's public key: SELECT hessra_authz.add_key('<PEM or alg/hex>');"


class UnknownChainError(ConfigurationError):
    """A service chain named by the caller is not registered."""

    sqlstate = "42704"  # undefined_object
    hint = "Register it with hessra_authz.set_service_chain(name, nodes)."


class UnknownComponentError(ConfigurationError):
    """The component passed is not a node of the service chain."""

    sqlstate = "22023"  # invalid_parameter_value
    hint = "Pass one of the chain's components, or NULL to require every node."


class ChainFormatError(ConfigurationError, ValueError):
    """Service chain nodes are not a JSON array of {component, public_key}."""

    sqlstate = "22023"  # invalid_parameter_value
    hint = 'Nodes are a JSON array of {"component": ..., "public_key": "ed25519/<hex>"} objects in chain order.'


class StaleSnapshotError(ConfigurationError):
    """The statement's snapshot predates a configuration change that has
    committed (and that this database's backends already enforce)."""

    sqlstate = "40001"  # serialization_failure: the application retries


class InternalError(HessraError):
    """Something failed that should not have: a bug to report."""

    sqlstate = "XX000"


# -- client side (never reach SQL; SQLSTATEs for one consistent table) --------

class MissingExtraError(HessraError, ImportError):
    """An optional library is not installed; the message names the extra
    that brings it (hessra_pg.extras)."""

    sqlstate = "0A000"  # feature_not_supported

    def __init__(self, message: str, *, module: str, extra: str) -> None:
        super().__init__(message)
        self.name = module
        self.extra = extra


class DoctorRequirementError(MissingExtraError):
    """A library doctor needs is not installed (exit status 2, like the
    CLI's other configuration errors)."""


class ArgumentFormatError(HessraError, ValueError):
    """Base of the client-side "this input can't be used" errors."""

    sqlstate = "22023"  # invalid_parameter_value


class PolicySpecError(ArgumentFormatError):
    """A policy spec is incomplete or contradictory."""


class PolicyExpressionError(ArgumentFormatError):
    """A policy expression PostgreSQL's parser (pglast) does not accept as
    one scalar expression."""


class CliInputError(ArgumentFormatError):
    """A command-line argument or input is unusable (exit status 2)."""


class DelegationError(ArgumentFormatError):
    """A delegation was refused because nobody could use its result."""


class RepositoryReadError(ConfigurationError):
    """A policy repository file or directory cannot be read at all."""

    sqlstate = "58030"  # io_error


class InstallError(HessraError):
    """Installing into PostgreSQL failed; the message says what to do about it."""

    sqlstate = "58000"  # system_error


class ClusterError(HessraError):
    """A local PostgreSQL cluster could not be created, started or reached
    (ClusterAccessError, next to the checks it reports, in hessra_pg.dev.cluster)."""

    sqlstate = "58000"  # system_error


class DoctorConnectionError(HessraError):
    """The database could not be reached (exit status 2)."""

    sqlstate = "08000"  # connection_exception


class ChainsDatabaseError(HessraError):
    """The database refused to read or write service chains."""

    sqlstate = "08000"  # connection_exception


class TokenSpecError(ArgumentFormatError):
    """A test token description (hessra_pg.policytest) can't be minted: a
    missing or unknown field, a field that doesn't apply to its kind."""


class PolicyTestFileError(ArgumentFormatError):
    """A policy test file (CASES.toml) can't be used; the message names
    every problem with its case and field (exit status 2)."""


class PolicyTestRunError(HessraError):
    """A policy test run can't start or go on: no connection, the test key
    can't be registered, a setup statement failed (exit status 2)."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class SqlHelpersError(HessraError):
    """The hessra_test SQL helpers can't be installed or dropped: not asked
    for a test database, already there, or refused by the database."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


class HessraContextError(HessraError, RuntimeError):
    """The token context can't be applied safely where it was asked for."""

    sqlstate = "55000"  # object_not_in_prerequisite_state


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (a database error's DETAIL
    and HINT follow on other lines), or its type's name when it has none:
    what a one-line report shows."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
