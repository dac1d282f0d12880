"""Initial schema: ledger, operators, merchants, HLL, SZM, PayWord, vendor outbox.

A frozen snapshot of ``farthing.store._schema`` at revision 0001 (it deliberately does not
import the live schema). tests/store/test_migrations.py checks that upgrading to head
yields exactly the live metadata on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A surrogate key: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('customer', 'merchant', 'card_float', 'prepaid_float', "
            "'revenue', 'cash', 'fees')",
            name=op.f("ck_accounts_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "ledger_txns",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_txns")),
        sa.UniqueConstraint("reference", name=op.f("uq_ledger_txns_reference")),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_operator_tokens_token_hash")),
    )
    op.create_table(
        "szm_batches",
        sa.Column("batch_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "protocol IN ('szm:chain', 'szm:prbg')", name=op.f("ck_szm_batches_protocol")
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_szm_batches")),
    )
    op.create_table(
        "szm_recognised",
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("recognised_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("currency", name=op.f("pk_szm_recognised")),
    )
    op.create_table(
        "vendor_deposit_batches",
        sa.Column("batch_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('hll', 'payword')", name=op.f("ck_vendor_deposit_batches_kind")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'done', 'failed')",
            name=op.f("ck_vendor_deposit_batches_state"),
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_vendor_deposit_batches")),
    )
    op.create_index(
        op.f("ix_vendor_deposit_batches_state_next_attempt_at"),
        "vendor_deposit_batches",
        ["state", "next_attempt_at"],
    )

    op.create_table(
        "vendor_hll_payments",
        sa.Column("card_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("offer", sa.LargeBinary(), nullable=False),
        sa.Column("purchase", sa.LargeBinary(), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_id", sa.LargeBinary(length=32), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "mode IN ('online', 'deferred')", name=op.f("ck_vendor_hll_payments_mode")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'batched', 'settled', 'rejected')",
            name=op.f("ck_vendor_hll_payments_state"),
        ),
        sa.CheckConstraint(
            "amount_units >= 1", name=op.f("ck_vendor_hll_payments_amount_units_min")
        ),
        sa.PrimaryKeyConstraint("card_id", "counter", name=op.f("pk_vendor_hll_payments")),
    )
    op.create_index(op.f("ix_vendor_hll_payments_batch_id"), "vendor_hll_payments", ["batch_id"])
    op.create_index(
        op.f("ix_vendor_hll_payments_card_id_state_mode_amount_units"),
        "vendor_hll_payments",
        ["card_id", "state", "mode", "amount_units"],
    )
    op.create_index(op.f("ix_vendor_hll_payments_state_at"), "vendor_hll_payments", ["state", "at"])

    op.create_table(
        "vendor_payword_commitments",
        sa.Column("commitment_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("commitment", sa.LargeBinary(), nullable=False),
        sa.Column("last_value", sa.LargeBinary(length=32), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_spent", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "redeemed_spent <= spent", name=op.f("ck_vendor_payword_commitments_redeemed_le_spent")
        ),
        sa.CheckConstraint(
            "spent <= length", name=op.f("ck_vendor_payword_commitments_within_length")
        ),
        sa.CheckConstraint("spent >= 0", name=op.f("ck_vendor_payword_commitments_spent_min")),
        sa.PrimaryKeyConstraint("commitment_id", name=op.f("pk_vendor_payword_commitments")),
    )
    op.create_table(
        "hll_cards",
        sa.Column("card_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("customer_account_id", ID, nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("loaded_units", sa.BigInteger(), nullable=False),
        sa.Column("spent_units", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'blocked')", name=op.f("ck_hll_cards_status")),
        sa.CheckConstraint("spent_units <= loaded_units", name=op.f("ck_hll_cards_within_loaded")),
        sa.CheckConstraint("spent_units >= 0", name=op.f("ck_hll_cards_spent_units_min")),
        sa.CheckConstraint("unit_micros >= 1", name=op.f("ck_hll_cards_unit_micros_min")),
        sa.ForeignKeyConstraint(
            ["customer_account_id"],
            ["accounts.id"],
            name=op.f("fk_hll_cards_customer_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("card_id", name=op.f("pk_hll_cards")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("txn_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_micros != 0", name=op.f("ck_ledger_entries_amount_nonzero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_ledger_entries_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["txn_id"], ["ledger_txns.id"], name=op.f("fk_ledger_entries_txn_id_ledger_txns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index(
        op.f("ix_ledger_entries_account_id_amount_micros"),
        "ledger_entries",
        ["account_id", "amount_micros"],
    )
    op.create_index(op.f("ix_ledger_entries_txn_id"), "ledger_entries", ["txn_id"])

    op.create_table(
        "merchants",
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_merchants_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_merchants")),
    )
    op.create_table(
        "payword_users",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("credit_limit_units", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_payword_users_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_payword_users")),
    )
    op.create_table(
        "szm_cards",
        sa.Column("card_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("batch_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("generator", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("unit_micros", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("anchor", sa.LargeBinary(length=64), nullable=True),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "protocol IN ('szm:chain', 'szm:prbg')", name=op.f("ck_szm_cards_protocol")
        ),
        sa.CheckConstraint("status IN ('active', 'blocked')", name=op.f("ck_szm_cards_status")),
        sa.CheckConstraint("spent <= units", name=op.f("ck_szm_cards_within_units")),
        sa.CheckConstraint("spent >= 0", name=op.f("ck_szm_cards_spent_min")),
        sa.CheckConstraint("unit_micros >= 1", name=op.f("ck_szm_cards_unit_micros_min")),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["szm_batches.batch_id"], name=op.f("fk_szm_cards_batch_id_szm_batches")
        ),
        sa.PrimaryKeyConstraint("card_id", name=op.f("pk_szm_cards")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "hll_deposit_batches",
        sa.Column("batch_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_hll_deposit_batches_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_hll_deposit_batches")),
    )
    op.create_table(
        "hll_spends",
        sa.Column("card_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("amount_units", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.LargeBinary(length=32), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_units >= 1", name=op.f("ck_hll_spends_amount_units_min")),
        sa.ForeignKeyConstraint(
            ["card_id"], ["hll_cards.card_id"], name=op.f("fk_hll_spends_card_id_hll_cards")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_hll_spends_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("card_id", "counter", name=op.f("pk_hll_spends")),
    )
    op.create_table(
        "payword_certificates",
        sa.Column("cert_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("cert", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["payword_users.user_id"],
            name=op.f("fk_payword_certificates_user_id_payword_users"),
        ),
        sa.PrimaryKeyConstraint("cert_id", name=op.f("pk_payword_certificates")),
    )
    op.create_index(op.f("ix_payword_certificates_user_id"), "payword_certificates", ["user_id"])

    op.create_table(
        "payword_redemptions",
        sa.Column("commitment_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("redeemed_index", sa.BigInteger(), nullable=False),
        sa.Column("credited_units", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["payword_users.user_id"],
            name=op.f("fk_payword_redemptions_user_id_payword_users"),
        ),
        sa.PrimaryKeyConstraint("commitment_id", name=op.f("pk_payword_redemptions")),
    )
    op.create_index(op.f("ix_payword_redemptions_user_id"), "payword_redemptions", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_payword_redemptions_user_id"), table_name="payword_redemptions")

    op.drop_table("payword_redemptions")
    op.drop_index(op.f("ix_payword_certificates_user_id"), table_name="payword_certificates")

    op.drop_table("payword_certificates")
    op.drop_table("hll_spends")
    op.drop_table("hll_deposit_batches")
    op.drop_table("szm_cards")
    op.drop_table("payword_users")
    op.drop_table("merchants")
    op.drop_index(op.f("ix_ledger_entries_txn_id"), table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_account_id_amount_micros"), table_name="ledger_entries")

    op.drop_table("ledger_entries")
    op.drop_table("hll_cards")
    op.drop_table("vendor_payword_commitments")
    op.drop_index(op.f("ix_vendor_hll_payments_state_at"), table_name="vendor_hll_payments")
    op.drop_index(
        op.f("ix_vendor_hll_payments_card_id_state_mode_amount_units"),
        table_name="vendor_hll_payments",
    )
    op.drop_index(op.f("ix_vendor_hll_payments_batch_id"), table_name="vendor_hll_payments")

    op.drop_table("vendor_hll_payments")
    op.drop_index(
        op.f("ix_vendor_deposit_batches_state_next_attempt_at"), table_name="vendor_deposit_batches"
    )

    op.drop_table("vendor_deposit_batches")
    op.drop_table("szm_recognised")
    op.drop_table("szm_batches")
    op.drop_table("operator_tokens")
    op.drop_table("ledger_txns")
    op.drop_table("audit_log")
    op.drop_table("accounts")
