"""farthing's durable storage: one schema for SQLite (embedded default) and PostgreSQL.

Public API (everything else in this package is private)::

    store = open_store(path_or_dsn)             # creates/upgrades the schema by default
    with store.transaction() as tx:             # a unit of work: commit or roll back
        tx.ledger.post(...); tx.hll.record_spend(...); tx.szm.insert_cards(...)
    with store.hot_batch() as hot:              # the paid path's compare-and-set writes
        hot.szm.advance(card_id, old, new, anchor)
    store.run_in_transaction(fn, retries=5)     # re-run fn on a retryable Conflict
    store.check_ledger()                        # LedgerCheck(balanced, problems, ...)
    upgrade_to_head(target); migrate(store)     # Alembic, configured in code

Errors are farthing's own (:mod:`farthing.core.errors`): a repeated key or a lost race is
a :class:`~farthing.core.errors.Conflict` (``DUPLICATE_SPEND`` for replay guards); a busy
store or serialization failure is a Conflict for which :func:`is_retryable` is true.
See docs/storage.md.
"""

from __future__ import annotations

from farthing.store._errors import is_retryable, map_db_errors
from farthing.store._migrate import head_revision, upgrade_to_head
from farthing.store._rows import (
    AccountKind,
    AccountRow,
    AuditRow,
    CardStatus,
    HllBatchRow,
    HllCardRow,
    HllMode,
    HllPaymentState,
    HllSpendRow,
    IdempotencyRow,
    LedgerCheck,
    LedgerEntryRow,
    LedgerTxnRow,
    MerchantRow,
    OperatorRow,
    OutboxKind,
    OutboxRow,
    OutboxState,
    PaywordCertificateRow,
    PaywordRedemptionRow,
    PaywordUserRow,
    SpendOutcome,
    Spent,
    SzmBatchRow,
    SzmCardRow,
    SzmProtocol,
    VendorCommitmentRow,
    VendorHllPaymentRow,
)
from farthing.store._store import Store, migrate, open_store
from farthing.store._tx import HotTx, Tx

__all__ = [
    "AccountKind",
    "AccountRow",
    "AuditRow",
    "CardStatus",
    "HllBatchRow",
    "HllCardRow",
    "HllMode",
    "HllPaymentState",
    "HllSpendRow",
    "HotTx",
    "IdempotencyRow",
    "LedgerCheck",
    "LedgerEntryRow",
    "LedgerTxnRow",
    "MerchantRow",
    "OperatorRow",
    "OutboxKind",
    "OutboxRow",
    "OutboxState",
    "PaywordCertificateRow",
    "PaywordRedemptionRow",
    "PaywordUserRow",
    "SpendOutcome",
    "Spent",
    "Store",
    "SzmBatchRow",
    "SzmCardRow",
    "SzmProtocol",
    "Tx",
    "VendorCommitmentRow",
    "VendorHllPaymentRow",
    "head_revision",
    "is_retryable",
    "map_db_errors",
    "migrate",
    "open_store",
    "upgrade_to_head",
]
