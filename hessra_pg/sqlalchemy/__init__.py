from hessra_pg.context import hessra_context
from hessra_pg.extras import needs_extra

with needs_extra("hessra_pg.sqlalchemy"):
    from hessra_pg.sqlalchemy.hooks import clear_hessra_context, install_hessra, set_hessra_context

__all__ = ["clear_hessra_context", "hessra_context", "install_hessra", "set_hessra_context"]
