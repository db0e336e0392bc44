"""Autogenerate renderers: each hessra operation is written into a revision
file as the ``op.<name>(...)`` call that recreates it, with
``import hessra_pg.alembic`` added to the file's imports (that import
registers the operations when the revision runs)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import renderers

from .operations import OPERATIONS, HessraOperation

IMPORT = "import hessra_pg.alembic"


def render_operation(autogen_context: Any, operation: HessraOperation) -> str:
    """``op.create_hessra_policies('orders', mode='row', ...)``: Python
    literals only (strings, numbers, booleans, lists, dicts)."""
    if autogen_context is not None and getattr(autogen_context, "imports", None) is not None:
        autogen_context.imports.add(IMPORT)
    prefix = "op."
    if autogen_context is not None and getattr(autogen_context, "opts", None):
        prefix = autogen_context.opts.get("alembic_module_prefix", prefix) or prefix
    args, kwargs = operation.arguments()
    parts = [repr(value) for value in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{prefix}{operation.op_name}({', '.join(parts)})"


for _op in OPERATIONS:
    renderers.dispatch_for(_op)(render_operation)
