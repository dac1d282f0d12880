"""PayWord: the commitments the broker admitted within each user's credit limit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payword_admitted",
        sa.Column("commitment_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("admitted_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["payword_users.user_id"],
            name=op.f("fk_payword_admitted_user_id_payword_users"),
        ),
        sa.PrimaryKeyConstraint("commitment_id", name=op.f("pk_payword_admitted")),
    )
    op.create_index(op.f("ix_payword_admitted_user_id"), "payword_admitted", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_payword_admitted_user_id"), table_name="payword_admitted")
    op.drop_table("payword_admitted")
