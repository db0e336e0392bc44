"""hessra_authz 0.2.0: the verifier's fast path and the shared decision table

``ALTER EXTENSION hessra_authz UPDATE TO '0.2.0'`` keeps keys, chains,
revocations and every policy (they use the public functions, whose
signatures don't change). Downgrade runs the 0.2.0 -> 0.1.0 script. Install
the new files on the database host first (``hessra-pg install``).

Revision ID: 0003_hessra_authz_0_2_0
Revises: 0002_demo_schema
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import hessra_pg.alembic  # noqa: F401  (registers op.update_hessra_extension)

revision: str = "0003_hessra_authz_0_2_0"
down_revision: str | Sequence[str] | None = "0002_demo_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.update_hessra_extension("0.2.0", from_version="0.1.0")


def downgrade() -> None:
    op.update_hessra_extension("0.1.0", from_version="0.2.0")
