"""SZM: the lookup id of each card's short printed code.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "szm_card_lookups",
        sa.Column("lookup_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("card_id", sa.LargeBinary(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"],
            ["szm_cards.card_id"],
            name=op.f("fk_szm_card_lookups_card_id_szm_cards"),
        ),
        sa.PrimaryKeyConstraint("lookup_id", name=op.f("pk_szm_card_lookups")),
        sa.UniqueConstraint("card_id", name=op.f("uq_szm_card_lookups_card_id")),
    )


def downgrade() -> None:
    op.drop_table("szm_card_lookups")
