"""The one schema, for SQLite and PostgreSQL alike (SQLAlchemy Core tables).

The tables are a declarative description, read by the repositories and by Alembic's
autogenerate; nothing here connects to anything. Conventions:

- money is ``BigInteger`` micro-units (signed in ledger entries), unit counts are
  ``BigInteger``, times are ``BigInteger`` Unix seconds, crypto values are ``LargeBinary``;
- fixed vocabularies are strings guarded by a named CHECK constraint built from the
  :mod:`farthing.store._rows` enums, so the database itself refuses a bad value;
- invariants that decide money (spent never exceeds loaded, unique (card, counter), unique
  ledger reference) are constraints, so the database is the arbiter, not the caller;
- there is no buyer or customer column on any SZM table (tested by introspection).
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    column,
)

from farthing.store._rows import (
    AccountKind,
    CardStatus,
    HllMode,
    HllPaymentState,
    OutboxKind,
    OutboxState,
    SzmProtocol,
)

__all__ = [
    "accounts",
    "audit_log",
    "hll_cards",
    "hll_deposit_batches",
    "hll_spends",
    "ledger_entries",
    "ledger_txns",
    "merchants",
    "metadata",
    "operator_tokens",
    "payword_admitted",
    "payword_certificates",
    "payword_redemptions",
    "payword_users",
    "szm_batches",
    "szm_card_lookups",
    "szm_cards",
    "szm_recognised",
    "vendor_deposit_batches",
    "vendor_hll_payments",
    "vendor_idempotency",
    "vendor_payword_commitments",
    "vendor_used_challenges",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A surrogate key: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
_ID = BigInteger().with_variant(Integer(), "sqlite")


def _one_of(name: str, vocabulary: type[StrEnum]) -> CheckConstraint:
    """CHECK (<name> IN (...)) over the enum's stored values."""
    return CheckConstraint(column(name).in_([v.value for v in vocabulary]), name=name)


def _at_least(name: str, low: int) -> CheckConstraint:
    return CheckConstraint(column(name) >= low, name=f"{name}_min")


# --- ledger ---------------------------------------------------------------------------

accounts = Table(
    "accounts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    _one_of("kind", AccountKind),
)

ledger_txns = Table(
    "ledger_txns",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("reference", String(200), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("txn_id", _ID, ForeignKey("ledger_txns.id"), nullable=False, index=True),
    Column("account_id", _ID, ForeignKey("accounts.id"), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    CheckConstraint(column("amount_micros") != 0, name="amount_nonzero"),
    # Covers SUM(amount_micros) per account: balance() reads the index only.
    Index(None, "account_id", "amount_micros"),
)

# --- operators and audit ----------------------------------------------------------------

operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(100), nullable=False),
    Column("detail", Text, nullable=False),
)

# --- issuer: merchants and HLL cards ------------------------------------------------------

merchants = Table(
    "merchants",
    metadata,
    Column("merchant_id", String(64), primary_key=True),
    Column("account_id", _ID, ForeignKey("accounts.id"), nullable=False),
    Column("key_sealed", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

hll_cards = Table(
    "hll_cards",
    metadata,
    Column("card_id", LargeBinary(16), primary_key=True),
    Column("customer_account_id", _ID, ForeignKey("accounts.id"), nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("loaded_units", BigInteger, nullable=False),
    Column("spent_units", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    _one_of("status", CardStatus),
    _at_least("unit_micros", 1),
    _at_least("spent_units", 0),
    CheckConstraint(column("spent_units") <= column("loaded_units"), name="within_loaded"),
)

hll_spends = Table(
    "hll_spends",
    metadata,
    Column("card_id", LargeBinary(16), ForeignKey("hll_cards.card_id"), nullable=False),
    Column("counter", BigInteger, nullable=False),
    Column("merchant_id", String(64), ForeignKey("merchants.merchant_id"), nullable=False),
    Column("amount_units", BigInteger, nullable=False),
    Column("batch_id", LargeBinary(32), nullable=True),
    Column("at", BigInteger, nullable=False),
    # SHA-256 of the offer an online spend paid, so the same purchase sent again by the
    # merchant (its answer was lost) is recognised and not charged twice.
    Column("offer_digest", LargeBinary(32), nullable=True),
    # The bank's duplicate-spending guard: one (card, counter) ever.
    PrimaryKeyConstraint("card_id", "counter"),
    _at_least("amount_units", 1),
)

hll_deposit_batches = Table(
    "hll_deposit_batches",
    metadata,
    Column("batch_id", LargeBinary(32), primary_key=True),
    Column("merchant_id", String(64), ForeignKey("merchants.merchant_id"), nullable=False),
    Column("digest", LargeBinary(32), nullable=False),
    Column("report", Text, nullable=False),
    Column("at", BigInteger, nullable=False),
)

# --- SZM prepaid cards (vendor = issuer); no buyer identity anywhere ----------------------

szm_batches = Table(
    "szm_batches",
    metadata,
    Column("batch_id", LargeBinary(16), primary_key=True),
    Column("protocol", String(16), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    _one_of("protocol", SzmProtocol),
)

szm_cards = Table(
    "szm_cards",
    metadata,
    Column("card_id", LargeBinary(16), primary_key=True),
    Column("batch_id", LargeBinary(16), ForeignKey("szm_batches.batch_id"), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("generator", String(32), nullable=True),
    Column("currency", CHAR(3), nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("anchor", LargeBinary(64), nullable=True),
    Column("secret_sealed", LargeBinary, nullable=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    # The payment that moved spent last: its request's tag and units (idempotent retry).
    Column("last_request", LargeBinary(16), nullable=True),
    Column("last_units", BigInteger, nullable=True),
    _one_of("protocol", SzmProtocol),
    _one_of("status", CardStatus),
    _at_least("unit_micros", 1),
    _at_least("spent", 0),
    CheckConstraint(column("spent") <= column("units"), name="within_units"),
    # Clustered on card_id: the key is stored once and a lookup is one b-tree descent.
    sqlite_with_rowid=False,
)

# The lookup id of each card's printed short code (farthing.core.shortcode): a one-way
# function of the code, so a wallet finds its card from what a person typed. Apart from
# szm_cards so that the vendor's hot row stays as it is.
szm_card_lookups = Table(
    "szm_card_lookups",
    metadata,
    Column("lookup_id", LargeBinary(16), primary_key=True),
    Column(
        "card_id", LargeBinary(16), ForeignKey("szm_cards.card_id"), nullable=False, unique=True
    ),
)

szm_recognised = Table(
    "szm_recognised",
    metadata,
    Column("currency", CHAR(3), primary_key=True),
    Column("recognised_micros", BigInteger, nullable=False),
)

# --- issuer: PayWord broker ---------------------------------------------------------------

payword_users = Table(
    "payword_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("account_id", _ID, ForeignKey("accounts.id"), nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("credit_limit_units", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

payword_certificates = Table(
    "payword_certificates",
    metadata,
    Column("cert_id", LargeBinary(32), primary_key=True),
    Column("user_id", String(64), ForeignKey("payword_users.user_id"), nullable=False, index=True),
    Column("cert", LargeBinary, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

payword_redemptions = Table(
    "payword_redemptions",
    metadata,
    Column("commitment_id", LargeBinary(32), primary_key=True),
    Column("vendor_id", String(64), nullable=False),
    Column("user_id", String(64), ForeignKey("payword_users.user_id"), nullable=False, index=True),
    Column("redeemed_index", BigInteger, nullable=False),
    Column("credited_units", BigInteger, nullable=False),
    Column("at", BigInteger, nullable=False),
)

# The commitments the broker admitted (farthing.core.schemes.payword.admit_commitment): what
# each may still cost the user bounds its next ones; only these are redeemed.
payword_admitted = Table(
    "payword_admitted",
    metadata,
    Column("commitment_id", LargeBinary(32), primary_key=True),
    Column("user_id", String(64), ForeignKey("payword_users.user_id"), nullable=False, index=True),
    Column("vendor_id", String(64), nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("admitted_at", BigInteger, nullable=False),
)

# --- vendor side (the vendor's own store) -------------------------------------------------

vendor_payword_commitments = Table(
    "vendor_payword_commitments",
    metadata,
    Column("commitment_id", LargeBinary(32), primary_key=True),
    Column("commitment", LargeBinary, nullable=False),
    Column("last_value", LargeBinary(32), nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("redeemed_spent", BigInteger, nullable=False),
    # The payment that moved spent last: its request's tag and units (idempotent retry).
    Column("last_request", LargeBinary(16), nullable=True),
    Column("last_units", BigInteger, nullable=True),
    _at_least("spent", 0),
    CheckConstraint(column("spent") <= column("length"), name="within_length"),
    CheckConstraint(column("redeemed_spent") <= column("spent"), name="redeemed_le_spent"),
)

vendor_hll_payments = Table(
    "vendor_hll_payments",
    metadata,
    Column("card_id", LargeBinary(16), nullable=False),
    Column("counter", BigInteger, nullable=False),
    Column("offer", LargeBinary, nullable=False),
    Column("purchase", LargeBinary, nullable=False),
    Column("amount_units", BigInteger, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("batch_id", LargeBinary(32), nullable=True, index=True),
    Column("at", BigInteger, nullable=False),
    # The tag of the request that carried it, so that request is served again (retry).
    Column("request", LargeBinary(16), nullable=True),
    # The vendor's replay guard: a repeated (card, counter) cannot be inserted.
    PrimaryKeyConstraint("card_id", "counter"),
    _one_of("mode", HllMode),
    _one_of("state", HllPaymentState),
    _at_least("amount_units", 1),
    # Outstanding risk per card: SUM(amount_units) over its pending deferred rows.
    Index(None, "card_id", "state", "mode", "amount_units"),
    # Oldest pending rows first when building a deposit batch.
    Index(None, "state", "at"),
)

# Challenge ids a payment was accepted under: each is single use (the Payment draft), for
# every worker. Inserted in the payment's own write; a row past its expiry is pruned.
vendor_used_challenges = Table(
    "vendor_used_challenges",
    metadata,
    Column("challenge_id", LargeBinary(32), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
    # When the payment under it was accepted (s): a copy of that request on another worker
    # soon after meets its delivery in flight (docs/http.md). NULL for rows before 0006.
    Column("used_at", BigInteger, nullable=True),
    # hll online: the tag of the request that paid under it (farthing.core.retry), so its
    # resend is told from a new purchase under the same id without asking the bank.
    Column("request", LargeBinary(16), nullable=True),
)

vendor_idempotency = Table(
    "vendor_idempotency",
    metadata,
    # SHA-256 of (HTTP method, canonical path, Idempotency-Key): a key is the client's,
    # scoped to the one resource it names.
    Column("key_digest", LargeBinary(32), primary_key=True),
    # SHA-256 of (the credential as sent, the body's digest): what the key was used for.
    Column("request_digest", LargeBinary(32), nullable=False),
    Column("status", Integer, nullable=True),  # NULL while the request runs
    Column("headers", LargeBinary, nullable=True),  # JSON [[name, value], ...] latin-1
    Column("body", LargeBinary, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

vendor_deposit_batches = Table(
    "vendor_deposit_batches",
    metadata,
    Column("batch_id", LargeBinary(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("report", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    _one_of("kind", OutboxKind),
    _one_of("state", OutboxState),
    Index(None, "state", "next_attempt_at"),
)
