"""The vendor's own store: PayWord commitments, HLL payments, the deposit outbox.

- PayWord: :meth:`HotVendorArea.payword_advance` is the same one-statement compare-and-set as SZM.
- HLL: ``vendor_hll_payments`` has PRIMARY KEY (card_id, counter), so recording a repeat
  fails with ``Conflict(DUPLICATE_SPEND)``: the vendor's replay guard. The risk taken on a
  card in deferred mode, :meth:`VendorArea.hll_outstanding`, is the sum of its deferred payments not
  yet settled or rejected (pending or batched); an index covers that sum.
- The outbox ``vendor_deposit_batches`` makes deposits durable: rows move pending ->
  batched in the same transaction that adds the batch to the outbox, so a restart between
  batches loses nothing, and a batch is retried until the issuer answers (the issuer's
  batch id makes the retry idempotent).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, final

from sqlalchemy import RowMapping, and_, bindparam, delete, func, insert, select, update

from farthing.core.errors import ErrorCode
from farthing.store._errors import unique_violation_as
from farthing.store._hot import HotArea
from farthing.store._rows import (
    HllMode,
    HllPaymentState,
    IdempotencyRow,
    OutboxKind,
    OutboxRow,
    OutboxState,
    Spent,
    VendorCommitmentRow,
    VendorHllPaymentRow,
)
from farthing.store._schema import (
    vendor_deposit_batches,
    vendor_hll_payments,
    vendor_idempotency,
    vendor_payword_commitments,
    vendor_used_challenges,
)
from farthing.store._sql import Area, build, insert_if_absent, require_forward, total

__all__ = [
    "HotVendorArea",
    "VendorArea",
]

_payments = vendor_hll_payments.c
_UNSETTLED = (HllPaymentState.PENDING.value, HllPaymentState.BATCHED.value)

# --- PayWord ------------------------------------------------------------------------------


def _payword_advance_params(
    commitment_id: bytes,
    old_spent: int,
    new_spent: int,
    new_last_value: bytes,
    request: bytes | None = None,
) -> dict[str, object]:
    """``request`` as in :func:`farthing.store._szm._advance_params`."""
    require_forward(old_spent, new_spent)
    return {
        "key_commitment_id": commitment_id,
        "old_spent": old_spent,
        "new_spent": new_spent,
        "new_last_value": new_last_value,
        "new_request": request,
        "new_units": None if request is None else new_spent - old_spent,
    }


# --- HLL payments -------------------------------------------------------------------------


def _payment_row(row: RowMapping) -> VendorHllPaymentRow:
    return build(
        VendorHllPaymentRow,
        row,
        mode=HllMode(row["mode"]),
        state=HllPaymentState(row["state"]),
    )


# --- deposit outbox -----------------------------------------------------------------------


def _outbox_row(row: RowMapping) -> OutboxRow:
    return build(OutboxRow, row, kind=OutboxKind(row["kind"]), state=OutboxState(row["state"]))


@final
class VendorArea(Area):
    """The paywall's PayWord commitments, HLL payments and deposit outbox, in one transaction."""

    __slots__ = ()

    def add_commitment(self, row: VendorCommitmentRow) -> None:
        with unique_violation_as(ErrorCode.CONFLICT, "this commitment exists"):
            self._ctx.conn.execute(
                insert(vendor_payword_commitments).values(_commitment_values(row))
            )

    def use_challenge(self, challenge_id: bytes, expires_at: int, used_at: int) -> bool:
        """As :meth:`HotVendorArea.use_challenge`, inside a transaction (HLL deferred)."""
        values = {
            "challenge_id": challenge_id,
            "expires_at": expires_at,
            "used_at": used_at,
            "request": None,
        }
        return insert_if_absent(self._ctx, vendor_used_challenges, values)

    # --- Idempotency-Key of paid requests with a body ----------------------------------

    def idempotency_get(self, key_digest: bytes, now: int) -> IdempotencyRow | None:
        """The key's record, unless it expired (then it is deleted: the key is free)."""
        c = vendor_idempotency.c
        row = (
            self._ctx.conn.execute(select(vendor_idempotency).where(c.key_digest == key_digest))
            .mappings()
            .first()
        )
        if row is None:
            return None
        if row["expires_at"] <= now:
            self.idempotency_drop(key_digest)
            return None
        return build(IdempotencyRow, row)

    def idempotency_begin(
        self, key_digest: bytes, request_digest: bytes, now: int, expires_at: int
    ) -> bool:
        """Claim the key for this request (running); False if it is claimed already."""
        values = {
            "key_digest": key_digest,
            "request_digest": request_digest,
            "created_at": now,
            "expires_at": expires_at,
        }
        return insert_if_absent(self._ctx, vendor_idempotency, values)

    def idempotency_finish(
        self, key_digest: bytes, status: int, headers: bytes, body: bytes
    ) -> None:
        """Keep the answer the key's request got, for its retries."""
        c = vendor_idempotency.c
        self._ctx.conn.execute(
            update(vendor_idempotency)
            .where(c.key_digest == key_digest)
            .values(status=status, headers=headers, body=body)
        )

    def idempotency_drop(self, key_digest: bytes) -> None:
        """Free the key (its payment was refused, or its answer is not kept)."""
        c = vendor_idempotency.c
        self._ctx.conn.execute(delete(vendor_idempotency).where(c.key_digest == key_digest))

    def challenge_used(self, challenge_id: bytes) -> bool:
        c = vendor_used_challenges.c
        stmt = select(c.challenge_id).where(c.challenge_id == challenge_id)
        return self._ctx.conn.execute(stmt).first() is not None

    def commitment(self, commitment_id: bytes) -> VendorCommitmentRow | None:
        params = {"key_commitment_id": commitment_id}
        row = (
            self._ctx.conn.execute(self._ctx.hot.payword_commitment, params)
            .mappings()
            .one_or_none()
        )
        return None if row is None else build(VendorCommitmentRow, row)

    def payword_unredeemed(self, limit: int) -> list[VendorCommitmentRow]:
        """Commitments with payments not yet redeemed at the broker."""
        c = vendor_payword_commitments.c
        stmt = (
            select(vendor_payword_commitments)
            .where(c.spent > c.redeemed_spent)
            .order_by(c.commitment_id)
            .limit(limit)
        )
        return [build(VendorCommitmentRow, row) for row in self._ctx.conn.execute(stmt).mappings()]

    def payword_mark_redeemed(self, commitment_id: bytes, spent: int) -> bool:
        """Move the redeemed watermark up to ``spent`` (never down, never past spent)."""
        c = vendor_payword_commitments.c
        stmt = (
            update(vendor_payword_commitments)
            .where(c.commitment_id == commitment_id, c.redeemed_spent < spent, c.spent >= spent)
            .values(redeemed_spent=spent)
        )
        return self._ctx.conn.execute(stmt).rowcount == 1

    def hll_record(
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
        """Record a payment; Conflict(DUPLICATE_SPEND) if (card, counter) was seen before.
        ``request``: the tag of the request that carried it, to recognise a retry."""
        values = {
            "card_id": card_id,
            "counter": counter,
            "offer": offer,
            "purchase": purchase,
            "amount_units": amount_units,
            "mode": HllMode(mode).value,
            "state": HllPaymentState(state).value,
            "batch_id": None,
            "at": at,
            "request": request,
        }
        with unique_violation_as(ErrorCode.DUPLICATE_SPEND, "this payment was already received"):
            self._ctx.conn.execute(insert(vendor_hll_payments).values(values))

    def hll_payment(self, card_id: bytes, counter: int) -> VendorHllPaymentRow | None:
        stmt = select(vendor_hll_payments).where(
            _payments.card_id == card_id, _payments.counter == counter
        )
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else _payment_row(row)

    def hll_outstanding(self, card_id: bytes) -> int:
        """Units of deferred payments on this card that the issuer has not settled or rejected."""
        stmt = select(total(_payments.amount_units)).where(
            _payments.card_id == card_id,
            _payments.state.in_(_UNSETTLED),
            _payments.mode == HllMode.DEFERRED.value,
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def hll_exposure(self, card_id: bytes) -> int:
        """Units of this card's deferred payments the issuer has not accepted: unsettled, or
        refused at deposit (never released: a card that cheated stays charged against it)."""
        stmt = select(total(_payments.amount_units)).where(
            _payments.card_id == card_id,
            _payments.state.in_((*_UNSETTLED, HllPaymentState.REJECTED.value)),
            _payments.mode == HllMode.DEFERRED.value,
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def hll_outstanding_total(self) -> int:
        """Units of all deferred payments the issuer has not settled or rejected (every card)."""
        stmt = select(total(_payments.amount_units)).where(
            _payments.state.in_(_UNSETTLED),
            _payments.mode == HllMode.DEFERRED.value,
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def hll_take_pending_for_batch(self, batch_id: bytes, limit: int) -> list[VendorHllPaymentRow]:
        """Move up to ``limit`` oldest pending payments to 'batched' under ``batch_id``."""
        keys = (
            select(_payments.card_id, _payments.counter)
            .where(_payments.state == HllPaymentState.PENDING.value)
            .order_by(_payments.at, _payments.card_id, _payments.counter)
            .limit(limit)
        )
        params = [{"key_card": c, "key_counter": n} for c, n in self._ctx.conn.execute(keys)]
        if not params:
            return []
        take = (
            update(vendor_hll_payments)
            .where(
                _payments.card_id == bindparam("key_card"),
                _payments.counter == bindparam("key_counter"),
                _payments.state == HllPaymentState.PENDING.value,
            )
            .values(state=HllPaymentState.BATCHED.value, batch_id=batch_id)
        )
        self._ctx.conn.execute(take, params)
        return self.hll_batch_payments(batch_id)

    def hll_payments_by_state(self) -> dict[HllPaymentState, int]:
        """How many recorded HLL payments are in each state (for operators and tests)."""
        stmt = select(_payments.state, func.count()).group_by(_payments.state)
        return {HllPaymentState(state): int(n) for state, n in self._ctx.conn.execute(stmt)}

    def hll_batch_payments(self, batch_id: bytes) -> list[VendorHllPaymentRow]:
        stmt = (
            select(vendor_hll_payments)
            .where(_payments.batch_id == batch_id)
            .order_by(_payments.at, _payments.card_id, _payments.counter)
        )
        return [_payment_row(row) for row in self._ctx.conn.execute(stmt).mappings()]

    def hll_settle_batch(
        self, batch_id: bytes, rejected: Collection[tuple[bytes, int]] = ()
    ) -> tuple[int, int]:
        """Close a batch after the issuer's report: listed (card, counter) pairs are rejected,
        the rest settled. Returns (settled, rejected) counts."""
        batched = and_(
            _payments.batch_id == batch_id, _payments.state == HllPaymentState.BATCHED.value
        )
        refused = 0
        if rejected:
            reject = (
                update(vendor_hll_payments)
                .where(
                    batched,
                    _payments.card_id == bindparam("key_card"),
                    _payments.counter == bindparam("key_counter"),
                )
                .values(state=HllPaymentState.REJECTED.value)
            )
            params = [{"key_card": c, "key_counter": n} for c, n in rejected]
            refused = self._ctx.conn.execute(reject, params).rowcount
        settle = (
            update(vendor_hll_payments).where(batched).values(state=HllPaymentState.SETTLED.value)
        )
        return self._ctx.conn.execute(settle).rowcount, refused

    def outbox_add(self, batch_id: bytes, kind: OutboxKind, payload: bytes, now: int) -> None:
        values = {
            "batch_id": batch_id,
            "kind": OutboxKind(kind).value,
            "payload": payload,
            "state": OutboxState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "report": None,
            "created_at": now,
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this batch is in the outbox"):
            self._ctx.conn.execute(insert(vendor_deposit_batches).values(values))

    def outbox_item(self, batch_id: bytes) -> OutboxRow | None:
        stmt = select(vendor_deposit_batches).where(vendor_deposit_batches.c.batch_id == batch_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else _outbox_row(row)

    def outbox_due(self, now: int, limit: int) -> list[OutboxRow]:
        """Batches to (re)send: pending or sent-without-answer, whose next attempt is due."""
        c = vendor_deposit_batches.c
        open_states = (OutboxState.PENDING.value, OutboxState.SENT.value)
        stmt = (
            select(vendor_deposit_batches)
            .where(c.state.in_(open_states), c.next_attempt_at <= now)
            .order_by(c.next_attempt_at, c.batch_id)
            .limit(limit)
        )
        return [_outbox_row(row) for row in self._ctx.conn.execute(stmt).mappings()]

    def outbox_in_state(self, state: OutboxState, now: int, limit: int) -> list[OutboxRow]:
        """Outbox items in ``state`` whose next attempt is due, oldest first (the failed ones,
        for reconciliation)."""
        c = vendor_deposit_batches.c
        stmt = (
            select(vendor_deposit_batches)
            .where(c.state == OutboxState(state).value, c.next_attempt_at <= now)
            .order_by(c.created_at, c.batch_id)
            .limit(limit)
        )
        return [_outbox_row(row) for row in self._ctx.conn.execute(stmt).mappings()]

    def outbox_counts(self) -> dict[OutboxState, int]:
        """How many outbox items are in each state."""
        c = vendor_deposit_batches.c
        stmt = select(c.state, func.count()).group_by(c.state)
        return {OutboxState(state): int(n) for state, n in self._ctx.conn.execute(stmt)}

    def outbox_mark(
        self,
        batch_id: bytes,
        state: OutboxState,
        attempts: int,
        next_attempt_at: int,
        report: str | None,
    ) -> bool:
        stmt = (
            update(vendor_deposit_batches)
            .where(vendor_deposit_batches.c.batch_id == batch_id)
            .values(
                state=OutboxState(state).value,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                report=report,
            )
        )
        return self._ctx.conn.execute(stmt).rowcount == 1


@final
class HotVendorArea(HotArea):
    """The PayWord commitment's compare-and-set, in one
    :meth:`~farthing.store.Store.hot_batch` (as :class:`farthing.store._szm.HotSzmArea`)."""

    __slots__ = ()

    def payword_advance(
        self,
        commitment_id: bytes,
        old_spent: int,
        new_spent: int,
        new_last_value: bytes,
        request: bytes | None = None,
    ) -> bool:
        """Compare-and-set the commitment's spent counter; True iff this call won."""
        params = _payword_advance_params(
            commitment_id, old_spent, new_spent, new_last_value, request
        )
        return self._batch.rowcount(self._prepared.payword_advance, params) == 1

    def add_commitment(self, row: VendorCommitmentRow) -> bool:
        """Store a new commitment unless its id is known (never reset one); True iff this
        call stored it. Its first payment's batch runs this before the compare-and-set."""
        params = _commitment_values(row)
        return self._batch.rowcount(self._prepared.payword_insert, params) == 1

    def payword_spend(
        self,
        commitment_id: bytes,
        old_spent: int,
        new_spent: int,
        new_last_value: bytes,
        request: bytes | None,
        challenge: tuple[bytes, int, int],
    ) -> Spent[VendorCommitmentRow]:
        """:meth:`payword_advance` and the challenge id's INSERT, both or neither; when it
        lost because the commitment had moved, the commitment as found (as
        :meth:`farthing.store._szm.HotSzmArea.spend`)."""
        params = _payword_advance_params(
            commitment_id, old_spent, new_spent, new_last_value, request
        )
        prepared = self._prepared
        return self._spend(
            prepared.payword_spend,
            prepared.payword_advance,
            params,
            challenge,
            prepared.payword_commitment,
            _commitment_row,
        )

    def use_challenge(
        self, challenge_id: bytes, expires_at: int, used_at: int, request: bytes | None = None
    ) -> bool:
        """Take a challenge id for the payment written in this batch (accepted at
        ``used_at``, by the request of tag ``request``); False if it was taken before (the
        draft's ``invalid-challenge``)."""
        params = {
            "key_id": challenge_id,
            "expires_at": expires_at,
            "used_at": used_at,
            "request": request,
        }
        return self._batch.rowcount(self._prepared.challenge_use, params) == 1

    def release_challenge(self, challenge_id: bytes) -> None:
        """Give back an id taken in this batch whose payment then lost its race."""
        self._batch.rowcount(self._prepared.challenge_release, {"key_id": challenge_id})

    def prune_challenges(self, now: int) -> int:
        """Forget the used ids that expired by ``now``; how many."""
        return self._batch.rowcount(self._prepared.challenge_prune, {"now": now})


def _commitment_row(row: Mapping[str, Any]) -> VendorCommitmentRow:
    return build(VendorCommitmentRow, row)


def _commitment_values(row: VendorCommitmentRow) -> dict[str, object]:
    """A commitment's columns, as both of its INSERTs take them."""
    return {
        "commitment_id": row.commitment_id,
        "commitment": row.commitment,
        "last_value": row.last_value,
        "spent": row.spent,
        "length": row.length,
        "currency": row.currency,
        "unit_micros": row.unit_micros,
        "expires_at": row.expires_at,
        "redeemed_spent": row.redeemed_spent,
    }
