from hessra_pg.context import hessra_context
from hessra_pg.psycopg.pool import hessra_pool_kwargs, hessra_pool_kwargs_async, reset_hessra, reset_hessra_async
from hessra_pg.psycopg.transaction import hessra_transaction, hessra_transaction_async

__all__ = [
    "hessra_context",
    "hessra_pool_kwargs",
    "hessra_pool_kwargs_async",
    "hessra_transaction",
    "hessra_transaction_async",
    "reset_hessra",
    "reset_hessra_async",
]
