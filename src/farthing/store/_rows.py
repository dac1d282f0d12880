"""Typed rows the store returns, and the closed vocabularies its columns accept.

Rows are frozen dataclasses built from database rows by the repositories; no SQLAlchemy
object ever leaves the store. Every fixed vocabulary is a :class:`~enum.StrEnum` whose
values are what the database stores (a CHECK constraint in the schema enforces them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

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
    "SzmBatchRow",
    "SzmCardRow",
    "SzmProtocol",
    "VendorCommitmentRow",
    "VendorHllPaymentRow",
]


class AccountKind(StrEnum):
    """What an account stands for. Floats are liabilities: cards hold value the issuer owes."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"
    CARD_FLOAT = "card_float"
    PREPAID_FLOAT = "prepaid_float"
    REVENUE = "revenue"
    CASH = "cash"
    FEES = "fees"


class SpendOutcome(StrEnum):
    """How a payment's write in a hot batch ended (``hot.szm.spend``)."""

    WON = "won"  # the card (commitment) moved and the challenge id is taken, in this batch
    LOST = "lost"  # the stored spent was not the old one (or the card is blocked): nothing
    USED = "used"  # the challenge id was taken before: nothing written


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Spent(Generic[R]):
    """A payment's write's outcome (``hot.szm.spend``), and on LOST the stored row it found.

    ``stored`` is the row as the write found it, given only when that row shows the
    compare-and-set's ``old_spent`` was stale (its ``spent`` differs): the payment can be
    judged again against it with no second read. None: not found that way (no row, the
    card blocked or past its value, or PostgreSQL's statement snapshot older than the row
    its UPDATE found); read the row if it is needed."""

    outcome: SpendOutcome
    stored: R | None = None


class CardStatus(StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"


class SzmProtocol(StrEnum):
    CHAIN = "szm:chain"
    PRBG = "szm:prbg"


class HllMode(StrEnum):
    ONLINE = "online"
    DEFERRED = "deferred"


class HllPaymentState(StrEnum):
    PENDING = "pending"
    BATCHED = "batched"
    SETTLED = "settled"
    REJECTED = "rejected"


class OutboxKind(StrEnum):
    HLL = "hll"
    PAYWORD = "payword"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountRow:
    id: int
    name: str
    kind: AccountKind
    currency: str
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerTxnRow:
    id: int
    kind: str
    reference: str
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntryRow:
    id: int
    txn_id: int
    account_id: int
    amount_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerCheck:
    """The result of :meth:`farthing.store.Store.check_ledger`; ``balanced`` iff no problems."""

    balanced: bool
    problems: tuple[str, ...]
    txn_count: int
    entry_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorRow:
    id: int
    name: str
    token_hash: bytes
    created_at: int
    revoked_at: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    id: int
    at: int
    actor: str
    action: str
    detail: Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class MerchantRow:
    merchant_id: str
    account_id: int
    key_sealed: bytes
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HllCardRow:
    card_id: bytes
    customer_account_id: int
    currency: str
    unit_micros: int
    loaded_units: int
    spent_units: int
    status: CardStatus
    created_at: int

    @property
    def remaining_units(self) -> int:
        return self.loaded_units - self.spent_units


@dataclass(frozen=True, slots=True, kw_only=True)
class HllSpendRow:
    card_id: bytes
    counter: int
    merchant_id: str
    amount_units: int
    batch_id: bytes | None
    at: int
    offer_digest: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HllBatchRow:
    batch_id: bytes
    merchant_id: str
    digest: bytes
    report: Mapping[str, object]
    at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmBatchRow:
    batch_id: bytes
    protocol: SzmProtocol
    count: int
    units: int
    currency: str
    unit_micros: int
    expires_at: int
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmCardRow:
    """One anonymous prepaid card. There is deliberately no buyer column anywhere.

    ``anchor`` is the chain protocol's current w_spent (None for the generator protocol);
    ``secret_sealed`` holds the card secret sealed by the vendor, only for deployments that
    do not derive card secrets from a master key (None otherwise).
    """

    card_id: bytes
    batch_id: bytes
    protocol: SzmProtocol
    generator: str | None
    currency: str
    unit_micros: int
    units: int
    spent: int
    anchor: bytes | None
    expires_at: int
    status: CardStatus
    issued_at: int
    secret_sealed: bytes | None = None
    last_request: bytes | None = None
    last_units: int | None = None

    @property
    def remaining_units(self) -> int:
        return self.units - self.spent


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordUserRow:
    user_id: str
    account_id: int
    public_key: bytes
    credit_limit_units: int
    currency: str
    unit_micros: int
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordCertificateRow:
    cert_id: bytes
    user_id: str
    cert: bytes
    expires_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordRedemptionRow:
    commitment_id: bytes
    vendor_id: str
    user_id: str
    redeemed_index: int
    credited_units: int
    at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorCommitmentRow:
    """A PayWord commitment as the vendor keeps it; ``redeemed_spent`` is what was redeemed."""

    commitment_id: bytes
    commitment: bytes
    last_value: bytes
    spent: int
    length: int
    currency: str
    unit_micros: int
    expires_at: int
    redeemed_spent: int = 0
    last_request: bytes | None = None
    last_units: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorHllPaymentRow:
    card_id: bytes
    counter: int
    offer: bytes
    purchase: bytes
    amount_units: int
    mode: HllMode
    state: HllPaymentState
    batch_id: bytes | None
    at: int
    request: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRow:
    """A paid request's Idempotency-Key: what it was used for, and the answer once out
    (``status`` None while the request runs)."""

    key_digest: bytes
    request_digest: bytes
    status: int | None
    headers: bytes | None
    body: bytes | None = field(repr=False)
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    batch_id: bytes
    kind: OutboxKind
    payload: bytes
    state: OutboxState
    attempts: int
    next_attempt_at: int
    report: str | None
    created_at: int
