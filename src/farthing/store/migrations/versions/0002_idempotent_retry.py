"""Idempotent retry: what the vendor and the bank keep to serve a paid request again.

- ``szm_cards`` and ``vendor_payword_commitments``: ``last_request`` (the tag of the request
  whose payment moved ``spent`` last) and ``last_units`` (the units it took);
- ``vendor_hll_payments``: ``request`` (the tag of the request that carried it);
- ``hll_spends``: ``offer_digest`` (SHA-256 of the offer an online spend paid).

All nullable: rows written before this revision simply cannot be retried.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("szm_cards", "vendor_payword_commitments"):
        op.add_column(table, sa.Column("last_request", sa.LargeBinary(length=16), nullable=True))
        op.add_column(table, sa.Column("last_units", sa.BigInteger(), nullable=True))
    op.add_column(
        "vendor_hll_payments", sa.Column("request", sa.LargeBinary(length=16), nullable=True)
    )
    op.add_column("hll_spends", sa.Column("offer_digest", sa.LargeBinary(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("hll_spends", "offer_digest")
    op.drop_column("vendor_hll_payments", "request")
    for table in ("vendor_payword_commitments", "szm_cards"):
        op.drop_column(table, "last_units")
        op.drop_column(table, "last_request")
