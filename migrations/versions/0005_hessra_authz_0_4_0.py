"""hessra_authz 0.4.0: capability tokens (issue 13)

``ALTER EXTENSION hessra_authz UPDATE TO '0.4.0'`` keeps keys, chains,
revocations and every policy; it adds the capability-token functions
(``verify_capability``, ``capability_rows``, ``designation_values`` and the
other designation predicates, ``set_anchor``, ``set_capability_options``)
and makes ``authorized``/``explain`` understand capability tokens.
Downgrade runs the 0.4.0 -> 0.3.0 script, which refuses while a policy
still uses a 0.4.0 function (drop those policies first). Install the new
files on the database host first (``hessra-pg install``).

Revision ID: 0005_hessra_authz_0_4_0
Revises: 0004_hessra_authz_0_3_0
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

import hessra_pg.alembic  # noqa: F401  (registers op.update_hessra_extension)

revision: str = "0005_hessra_authz_0_4_0"
down_revision: str | Sequence[str] | None = "0004_hessra_authz_0_3_0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.update_hessra_extension("0.4.0", from_version="0.3.0")


def downgrade() -> None:
    op.update_hessra_extension("0.3.0", from_version="0.4.0")
