"""hessra_authz 0.3.0: the security release (issue 11)

``ALTER EXTENSION hessra_authz UPDATE TO '0.3.0'`` keeps keys, chains,
revocations and every policy (the public functions keep their signatures).
It closes what an adversarial review of 0.2.0 found (docs/security.md):
session settings no longer reach the verifier, snapshots older than the
enforced configuration are refused, configuration triggers fire always.
Downgrade runs the 0.3.0 -> 0.2.0 script (only to roll back a failed
upgrade: 0.2.0 has those holes). Install the new files on the database host
first (``hessra-pg install``).

Revision ID: 0004_hessra_authz_0_3_0
Revises: 0003_hessra_authz_0_2_0
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import hessra_pg.alembic  # noqa: F401  (registers op.update_hessra_extension)

revision: str = "0004_hessra_authz_0_3_0"
down_revision: str | Sequence[str] | None = "0003_hessra_authz_0_2_0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.update_hessra_extension("0.3.0", from_version="0.2.0")


def downgrade() -> None:
    op.update_hessra_extension("0.2.0", from_version="0.3.0")
