"""``Tx``: one unit of work, exposing the repositories' operations.

A ``Tx`` comes only from :meth:`farthing.store.Store.transaction` (or
``run_in_transaction``): everything done through it commits together when the ``with``
block ends normally and rolls back if it raises. It holds no connection type in its API:
arguments and results are ints, bytes, str, enums and the row dataclasses of
:mod:`farthing.store._rows`. The methods delegate to the per-area modules (_ledger,
_admin, _hll, _szm, _payword, _vendor), whose docstrings hold the details.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import final

from farthing.core.schemes.payword import OpenCommitment
from farthing.store import _admin, _hll, _ledger, _payword, _szm, _vendor
from farthing.store._check import check_ledger
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
    SzmBatchRow,
    SzmCardRow,
    VendorCommitmentRow,
    VendorHllPaymentRow,
)
from farthing.store._sql import Ctx, lock_key

__all__ = ["Tx"]


@final
class Tx:
    """Repository operations inside one database transaction."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx

    def now(self) -> int:
        """The store's clock (used for every ``created_at`` the caller does not pass)."""
        return self._ctx.clock.now()

    def lock_key(self, name: bytes) -> None:
        """Hold the lock ``name`` until the transaction ends (see :func:`_sql.lock_key`):
        read-then-write units over one key serialize on it without SERIALIZABLE's aborts."""
        lock_key(self._ctx, name)

    # --- accounts and ledger ------------------------------------------------------------

    def create_account(self, name: str, kind: AccountKind, currency: str) -> int:
        """Create an account; return its id. Conflict if the name is taken."""
        return _ledger.create_account(self._ctx, name, kind, currency)

    def account(self, account_id: int) -> AccountRow | None:
        return _ledger.account(self._ctx, account_id)

    def account_by_name(self, name: str) -> AccountRow | None:
        return _ledger.account_by_name(self._ctx, name)

    def post(self, kind: str, reference: str, postings: Sequence[tuple[int, int]]) -> int:
        """Post a balanced set of (account_id, amount_micros); return the txn id.

        LocalProtocolError if unbalanced, mixed-currency or malformed; NotFound for an unknown
        account; Conflict if ``reference`` (the idempotency key) was posted before.
        """
        return _ledger.post(self._ctx, kind, reference, postings)

    def ledger_txn(self, reference: str) -> LedgerTxnRow | None:
        return _ledger.ledger_txn(self._ctx, reference)

    def txn_entries(self, txn_id: int) -> list[LedgerEntryRow]:
        return _ledger.txn_entries(self._ctx, txn_id)

    def balance(self, account_id: int) -> int:
        """Sum of the account's entries in micros (negative: the issuer owes it)."""
        return _ledger.balance(self._ctx, account_id)

    def check_ledger(self) -> LedgerCheck:
        return check_ledger(self._ctx)

    # --- operators, audit, merchants -------------------------------------------------------

    def add_operator_token(self, name: str, token_hash: bytes) -> int:
        """Store SHA-256(token) for an operator (never the token); return its id."""
        return _admin.add_operator_token(self._ctx, name, token_hash)

    def operator_by_token_hash(self, token_hash: bytes) -> OperatorRow | None:
        """The operator with this token hash, revoked or not (check ``.active``)."""
        return _admin.operator_by_token_hash(self._ctx, token_hash)

    def revoke_operator_token(self, operator_id: int) -> bool:
        return _admin.revoke_operator_token(self._ctx, operator_id)

    def audit(self, actor: str, action: str, detail: Mapping[str, object]) -> int:
        """Append to the audit log (``detail`` is stored as canonical JSON)."""
        return _admin.audit(self._ctx, actor, action, detail)

    def audit_entries(self, limit: int = 100) -> list[AuditRow]:
        """The newest entries first."""
        return _admin.audit_entries(self._ctx, limit)

    def add_merchant(self, merchant_id: str, account_id: int, key_sealed: bytes) -> None:
        return _admin.add_merchant(self._ctx, merchant_id, account_id, key_sealed)

    def merchant(self, merchant_id: str) -> MerchantRow | None:
        return _admin.merchant(self._ctx, merchant_id)

    def merchants(self) -> list[MerchantRow]:
        return _admin.merchants_list(self._ctx)

    # --- issuer: HLL -----------------------------------------------------------------------

    def hll_add_card(
        self,
        *,
        card_id: bytes,
        customer_account_id: int,
        currency: str,
        unit_micros: int,
        loaded_units: int = 0,
    ) -> None:
        """Register a card (the caller posts its loaded value to the card float)."""
        _hll.add_card(
            self._ctx,
            card_id=card_id,
            customer_account_id=customer_account_id,
            currency=currency,
            unit_micros=unit_micros,
            loaded_units=loaded_units,
        )

    def hll_card(self, card_id: bytes) -> HllCardRow | None:
        return _hll.card(self._ctx, card_id)

    def hll_load(self, card_id: bytes, units: int) -> None:
        """Raise the card's loaded value; NotFound for an unknown card."""
        _hll.load(self._ctx, card_id, units)

    def hll_set_status(self, card_id: bytes, status: CardStatus) -> bool:
        return _hll.set_status(self._ctx, card_id, status)

    def hll_record_spend(
        self,
        card_id: bytes,
        counter: int,
        merchant_id: str,
        amount_units: int,
        batch_id: bytes | None,
        at: int,
        offer_digest: bytes | None = None,
    ) -> bool:
        """Record spend (card, counter) and charge the card, atomically.

        True: recorded. False: this (card, counter) was recorded before (nothing changes).
        Raises InsufficientFunds (the card cannot cover it) or NotFound (unknown card or
        merchant); then nothing of this spend remains and the transaction stays usable.
        ``offer_digest``: SHA-256 of the offer paid, kept to recognise the same purchase.
        """
        return _hll.record_spend(
            self._ctx, card_id, counter, merchant_id, amount_units, batch_id, at, offer_digest
        )

    def hll_spend(self, card_id: bytes, counter: int) -> HllSpendRow | None:
        return _hll.spend(self._ctx, card_id, counter)

    def hll_batch(self, batch_id: bytes) -> HllBatchRow | None:
        """A processed deposit batch (for idempotent re-deposits)."""
        return _hll.batch(self._ctx, batch_id)

    def hll_claim_batch(self, batch_id: bytes, merchant_id: str, digest: bytes, at: int) -> bool:
        """Take a batch id before settling its items; False if another transaction has it
        (it has committed by then; read it with :meth:`hll_batch`)."""
        return _hll.claim_batch(self._ctx, batch_id, merchant_id, digest, at)

    def hll_finish_batch(self, batch_id: bytes, report: Mapping[str, object]) -> None:
        """Store the report of a batch claimed in this transaction."""
        _hll.finish_batch(self._ctx, batch_id, report)

    def hll_save_batch(
        self,
        batch_id: bytes,
        merchant_id: str,
        digest: bytes,
        report: Mapping[str, object],
        at: int,
    ) -> None:
        """Remember a processed batch and its report; Conflict if saved before."""
        _hll.save_batch(self._ctx, batch_id, merchant_id, digest, report, at)

    # --- SZM -------------------------------------------------------------------------------

    def szm_insert_batch(self, batch: SzmBatchRow) -> None:
        _szm.insert_batch(self._ctx, batch)

    def szm_batch(self, batch_id: bytes) -> SzmBatchRow | None:
        return _szm.batch(self._ctx, batch_id)

    def szm_insert_cards(self, rows: Iterable[SzmCardRow]) -> int:
        """Bulk insert (executemany, chunked); return the count. Conflict on a repeated id."""
        return _szm.insert_cards(self._ctx, rows)

    def szm_card(self, card_id: bytes) -> SzmCardRow | None:
        return _szm.card(self._ctx, card_id)

    def szm_advance(
        self,
        card_id: bytes,
        old_spent: int,
        new_spent: int,
        new_anchor: bytes | None,
        request: bytes | None = None,
    ) -> bool:
        """One conditional UPDATE: True iff the card's spent was ``old_spent`` and moved."""
        return _szm.advance(self._ctx, card_id, old_spent, new_spent, new_anchor, request)

    def szm_set_status(self, card_id: bytes, status: CardStatus) -> bool:
        return _szm.set_status(self._ctx, card_id, status)

    def szm_recognize_revenue(
        self, revenue_account_id: int, prepaid_float_account_id: int, reference: str
    ) -> int:
        """Post spent-but-unrecognised value (prepaid float -> revenue); return micros."""
        return _szm.recognize_revenue(
            self._ctx, revenue_account_id, prepaid_float_account_id, reference
        )

    # --- issuer: PayWord -------------------------------------------------------------------

    def payword_add_user(
        self,
        *,
        user_id: str,
        account_id: int,
        public_key: bytes,
        credit_limit_units: int,
        currency: str,
        unit_micros: int,
    ) -> None:
        _payword.add_user(
            self._ctx,
            user_id=user_id,
            account_id=account_id,
            public_key=public_key,
            credit_limit_units=credit_limit_units,
            currency=currency,
            unit_micros=unit_micros,
        )

    def payword_user(self, user_id: str) -> PaywordUserRow | None:
        return _payword.user(self._ctx, user_id)

    def payword_add_certificate(
        self, *, cert_id: bytes, user_id: str, cert: bytes, expires_at: int
    ) -> None:
        _payword.add_certificate(
            self._ctx, cert_id=cert_id, user_id=user_id, cert=cert, expires_at=expires_at
        )

    def payword_certificate(self, cert_id: bytes) -> PaywordCertificateRow | None:
        return _payword.certificate(self._ctx, cert_id)

    def payword_redeem(
        self, commitment_id: bytes, vendor_id: str, user_id: str, new_index: int, at: int
    ) -> int:
        """Raise the redeemed index (never lowers it); return the units newly credited."""
        return _payword.redeem(self._ctx, commitment_id, vendor_id, user_id, new_index, at)

    def payword_redemption(self, commitment_id: bytes) -> PaywordRedemptionRow | None:
        return _payword.redemption(self._ctx, commitment_id)

    def payword_redeemed_units(self, user_id: str) -> int:
        return _payword.redeemed_units(self._ctx, user_id)

    def payword_admit(self, commitment: OpenCommitment) -> bool:
        """Record a commitment the broker admitted; False if it was recorded already."""
        return _payword.admit(self._ctx, commitment)

    def payword_admitted(self, commitment_id: bytes) -> OpenCommitment | None:
        return _payword.admitted(self._ctx, commitment_id)

    def payword_open_commitments(
        self, user_id: str, *, expired_before: int
    ) -> list[OpenCommitment]:
        """The user's admitted commitments still redeemable (expiring at or after
        ``expired_before``), each with the index redeemed so far."""
        return _payword.open_commitments(self._ctx, user_id, expired_before=expired_before)

    # --- vendor: PayWord -------------------------------------------------------------------

    def payword_add_commitment(self, row: VendorCommitmentRow) -> None:
        _vendor.add_commitment(self._ctx, row)

    def payword_commitment(self, commitment_id: bytes) -> VendorCommitmentRow | None:
        return _vendor.commitment(self._ctx, commitment_id)

    def payword_advance(
        self,
        commitment_id: bytes,
        old_spent: int,
        new_spent: int,
        new_last_value: bytes,
        request: bytes | None = None,
    ) -> bool:
        """One conditional UPDATE, as :meth:`szm_advance`."""
        return _vendor.payword_advance(
            self._ctx, commitment_id, old_spent, new_spent, new_last_value, request
        )

    def payword_unredeemed(self, limit: int) -> list[VendorCommitmentRow]:
        return _vendor.payword_unredeemed(self._ctx, limit)

    def payword_mark_redeemed(self, commitment_id: bytes, spent: int) -> bool:
        return _vendor.payword_mark_redeemed(self._ctx, commitment_id, spent)

    # --- vendor: HLL -----------------------------------------------------------------------

    def vendor_hll_record(
        self,
        *,
        card_id: bytes,
        counter: int,
        offer: bytes,
        purchase: bytes,
        amount_units: int,
        mode: HllMode,
        state: HllPaymentState,
        at: int,
        request: bytes | None = None,
    ) -> None:
        """Record a received payment; Conflict(DUPLICATE_SPEND) for a repeated (card, counter)."""
        _vendor.hll_record(
            self._ctx,
            card_id=card_id,
            counter=counter,
            offer=offer,
            purchase=purchase,
            amount_units=amount_units,
            mode=mode,
            state=state,
            at=at,
            request=request,
        )

    def vendor_hll_payment(self, card_id: bytes, counter: int) -> VendorHllPaymentRow | None:
        return _vendor.hll_payment(self._ctx, card_id, counter)

    def vendor_hll_outstanding(self, card_id: bytes) -> int:
        """Units of this card's deferred payments not yet settled or rejected."""
        return _vendor.hll_outstanding(self._ctx, card_id)

    def vendor_hll_exposure(self, card_id: bytes) -> int:
        """Units of this card's deferred payments not accepted by the issuer: not yet
        settled, or refused at deposit."""
        return _vendor.hll_exposure(self._ctx, card_id)

    def vendor_hll_outstanding_total(self) -> int:
        """Units of all cards' deferred payments not yet settled or rejected (the merchant's
        unverified exposure)."""
        return _vendor.hll_outstanding_total(self._ctx)

    def hll_take_pending_for_batch(self, batch_id: bytes, limit: int) -> list[VendorHllPaymentRow]:
        """Move up to ``limit`` oldest pending payments to 'batched' under ``batch_id``."""
        return _vendor.hll_take_pending_for_batch(self._ctx, batch_id, limit)

    def vendor_hll_payments_by_state(self) -> dict[HllPaymentState, int]:
        return _vendor.hll_payments_by_state(self._ctx)

    def vendor_hll_batch_payments(self, batch_id: bytes) -> list[VendorHllPaymentRow]:
        return _vendor.hll_batch_payments(self._ctx, batch_id)

    def vendor_hll_settle_batch(
        self, batch_id: bytes, rejected: Collection[tuple[bytes, int]] = ()
    ) -> tuple[int, int]:
        """Batched rows -> 'rejected' if listed, else 'settled'; return (settled, rejected)."""
        return _vendor.hll_settle_batch(self._ctx, batch_id, rejected)

    # --- vendor: deposit outbox ------------------------------------------------------------

    def outbox_add(self, batch_id: bytes, kind: OutboxKind, payload: bytes, now: int) -> None:
        _vendor.outbox_add(self._ctx, batch_id, kind, payload, now)

    def outbox_item(self, batch_id: bytes) -> OutboxRow | None:
        return _vendor.outbox_item(self._ctx, batch_id)

    def outbox_due(self, now: int, limit: int) -> list[OutboxRow]:
        """Pending or sent-unanswered batches whose next attempt is due, oldest first."""
        return _vendor.outbox_due(self._ctx, now, limit)

    def outbox_in_state(self, state: OutboxState, now: int, limit: int) -> list[OutboxRow]:
        """Outbox items in ``state`` whose next attempt is due by ``now``, oldest first."""
        return _vendor.outbox_in_state(self._ctx, state, now, limit)

    def outbox_counts(self) -> dict[OutboxState, int]:
        return _vendor.outbox_counts(self._ctx)

    def outbox_mark(
        self,
        batch_id: bytes,
        state: OutboxState,
        attempts: int,
        next_attempt_at: int,
        report: str | None,
    ) -> bool:
        return _vendor.outbox_mark(self._ctx, batch_id, state, attempts, next_attempt_at, report)

    # --- the operator's views (dashboard, metrics) --------------------------------------

    def ledger_posted_totals(self) -> list[tuple[str, str, int, int]]:
        return _ledger.posted_totals(self._ctx)

    def ledger_posted_series(self, *, since: int, bucket: int) -> list[tuple[str, str, int, int]]:
        return _ledger.posted_series(self._ctx, since=since, bucket=bucket)

    def szm_cards_expiring(self, *, now: int, until: int) -> list[tuple[str, int]]:
        return _szm.cards_expiring(self._ctx, now=now, until=until)

    def szm_cards_page(
        self, *, card_id: bytes | None = None, batch_id: bytes | None = None, limit: int = 100
    ) -> list[SzmCardRow]:
        return _szm.cards_page(self._ctx, card_id=card_id, batch_id=batch_id, limit=limit)

    def szm_batches_list(self, *, limit: int = 100) -> list[SzmBatchRow]:
        return _szm.batches_list(self._ctx, limit=limit)

    def payword_users_list(self, *, limit: int = 100) -> list[PaywordUserRow]:
        return _payword.users_list(self._ctx, limit=limit)

    def payword_redemptions_list(self, *, limit: int = 100) -> list[PaywordRedemptionRow]:
        return _payword.redemptions_list(self._ctx, limit=limit)

    def hll_deposit_batches(self, *, limit: int = 100) -> list[HllBatchRow]:
        return _hll.deposit_batches(self._ctx, limit=limit)
