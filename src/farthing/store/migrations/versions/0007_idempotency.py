"""Vendor: the Idempotency-Key of paid requests with a body, and the answer each got.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vendor_idempotency",
        sa.Column("key_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("request_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("headers", sa.LargeBinary(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_digest", name=op.f("pk_vendor_idempotency")),
    )
    op.create_index(
        op.f("ix_vendor_idempotency_expires_at"), "vendor_idempotency", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_vendor_idempotency_expires_at"), table_name="vendor_idempotency")
    op.drop_table("vendor_idempotency")
