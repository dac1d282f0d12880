"""Vendor: when the payment under a used challenge id was accepted (one delivery at once),
and for hll online the tag of the request that paid under it (a resend, not a reuse).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vendor_used_challenges") as batch:
        batch.add_column(sa.Column("used_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("request", sa.LargeBinary(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vendor_used_challenges") as batch:
        batch.drop_column("request")
        batch.drop_column("used_at")
