"""Alembic operations for hessra_authz; importing this package registers them
(``op.create_hessra_extension``, ``op.create_hessra_policies``, ``op.add_hessra_key``, ...)
and their autogenerate renderers."""

from hessra_pg.extras import needs_extra

with needs_extra("hessra_pg.alembic"):
    from . import render as _render  # noqa: F401  (registers the renderers)
    from .operations import *  # noqa: F401,F403  (the public names are operations.__all__)
    from .operations import __all__  # noqa: F401
