"""Vendor: the challenge ids a payment was accepted under (single use).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vendor_used_challenges",
        sa.Column("challenge_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("challenge_id", name=op.f("pk_vendor_used_challenges")),
    )
    op.create_index(
        op.f("ix_vendor_used_challenges_expires_at"),
        "vendor_used_challenges",
        ["expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_vendor_used_challenges_expires_at"), table_name="vendor_used_challenges")
    op.drop_table("vendor_used_challenges")
