"""Alembic operations for hessra_authz; importing this package registers them
(``op.create_hessra_extension``, ``op.create_hessra_policies``, ``op.add_hessra_key``, ...),
their autogenerate renderers, and the autogenerate comparator for policies
declared with :func:`register_policies` or ``Table.info["hessra_policies"]``."""

from hessra_pg.extras import needs_extra

with needs_extra("hessra_pg.alembic"):
    from . import compare as _compare  # noqa: F401  (registers the policy comparator)
    from . import render as _render  # noqa: F401  (registers the renderers)
    from .compare import declared_policies, register_policies
    from .operations import *  # noqa: F401,F403  (the public names are operations.__all__)
    from .operations import __all__ as _operations_all

__all__ = [*_operations_all, "declared_policies", "register_policies"]
