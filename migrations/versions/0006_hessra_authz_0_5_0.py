"""hessra_authz 0.5.0: per-row calls and Citus mode (issue 15)

``ALTER EXTENSION hessra_authz UPDATE TO '0.5.0'`` keeps keys, chains,
revocations and every policy. Downgrade runs the 0.5.0 -> 0.4.0 script.
Install the new files on the database host first (``hessra-pg install``).

Revision ID: 0006_hessra_authz_0_5_0
Revises: 0005_hessra_authz_0_4_0
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import hessra_pg.alembic  # noqa: F401  (registers op.update_hessra_extension)

revision: str = "0006_hessra_authz_0_5_0"
down_revision: str | Sequence[str] | None = "0005_hessra_authz_0_4_0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.update_hessra_extension("0.5.0", from_version="0.4.0")


def downgrade() -> None:
    op.update_hessra_extension("0.4.0", from_version="0.5.0")
