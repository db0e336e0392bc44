"""Alembic operations for hessra_authz; importing this package registers them
(``op.create_hessra_extension``, ``op.create_hessra_policies``, ``op.add_hessra_key``, ...)
and their autogenerate renderers."""

from . import render as _render  # noqa: F401  (registers the renderers)
from .operations import (
    AddHessraKeyOp,
    CreateHessraExtensionOp,
    CreateHessraPoliciesOp,
    DeleteHessraKeyOp,
    DropHessraExtensionOp,
    DropHessraPoliciesOp,
    DropHessraServiceChainOp,
    HessraOperation,
    RetireHessraKeyOp,
    SetHessraServiceChainOp,
    UnretireHessraKeyOp,
    UpdateHessraExtensionOp,
    run_sql,
)

__all__ = [
    "AddHessraKeyOp",
    "CreateHessraExtensionOp",
    "CreateHessraPoliciesOp",
    "DeleteHessraKeyOp",
    "DropHessraExtensionOp",
    "DropHessraPoliciesOp",
    "DropHessraServiceChainOp",
    "HessraOperation",
    "RetireHessraKeyOp",
    "SetHessraServiceChainOp",
    "UnretireHessraKeyOp",
    "UpdateHessraExtensionOp",
    "run_sql",
]
