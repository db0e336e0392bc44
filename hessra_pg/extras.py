"""Optional dependencies: which ``pip install 'hessra-pg[extra]'`` brings which library.

The core install (biscuit-python, psycopg) runs the verifier, token tools,
policy generation, ``hessra-pg install``, ``hessra_pg.psycopg`` and the CLI.
The rest comes with extras; code that needs one imports it inside
:func:`needs_extra`, so a missing library becomes a
:class:`MissingExtraError` (an ``ImportError`` and a ``HessraError``, which
the CLI prints as one line) naming the extra to install::

    with needs_extra("hessra_pg.sqlalchemy"):
        import sqlalchemy
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hessra_pg.errors import MissingExtraError

__all__ = ["EXTRAS", "MissingExtraError", "missing_extra", "needs_extra"]

EXTRAS: dict[str, tuple[str, str]] = {
    # top-level module: (distribution, extra that installs it)
    "sqlalchemy": ("SQLAlchemy", "sqlalchemy"),
    "greenlet": ("greenlet (SQLAlchemy's asyncio support)", "sqlalchemy-asyncio"),
    "alembic": ("Alembic", "alembic"),
    "psycopg_pool": ("psycopg-pool", "pool"),
    "pytest": ("pytest", "testing"),
    "testcontainers": ("testcontainers", "testing"),
    "docker": ("docker (with testcontainers)", "testing"),
    "pglast": ("pglast", "doctor"),
}
"""Each optional library, by the module name an ``ImportError`` reports."""


def missing_extra(error: ImportError, feature: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for ``error`` if it is about an optional
    library (see :data:`EXTRAS`), else None (a real bug: let it propagate)."""
    if isinstance(error, MissingExtraError):
        return error
    module = (error.name or "").partition(".")[0]
    if module not in EXTRAS:
        return None
    dist, extra = EXTRAS[module]
    return MissingExtraError(
        f"{feature} needs {dist}, which is not installed: pip install 'hessra-pg[{extra}]'",
        module=module, extra=extra,
    )


@contextmanager
def needs_extra(feature: str) -> Iterator[None]:
    """Turn the ``ImportError`` of an optional library imported inside the
    block into a :class:`MissingExtraError` about ``feature``."""
    try:
        yield
    except ImportError as error:
        converted = missing_extra(error, feature)
        if converted is None or converted is error:
            raise
        raise converted from error
