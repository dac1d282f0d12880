"""The vendor's state in the store: thin translations between store rows and core states.

Each book is what an :class:`~farthing.paywall.methods.offline.OfflineMethod` (or the HLL
method) needs: load a state, insert a new one, and compare-and-set it. The compare-and-set
is the store's conditional UPDATE, run by the process's :class:`StoreWriter` so that
payments arriving together share one durable commit; the database decides double spending
even with several workers or processes on one store. Reads run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Protocol

from farthing.core.cardcode import Generator
from farthing.core.errors import Conflict, ErrorCode, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.retry import same_request
from farthing.core.schemes import payword, szm_chain, szm_prbg
from farthing.core.schemes.hll import DeferredDecision
from farthing.paywall.methods.hll import DeferredPolicy, DeferredRecord, PendingPurchase
from farthing.paywall.methods.payword import HeldCommitment
from farthing.store import (
    CardStatus,
    HllMode,
    HllPaymentState,
    Store,
    SzmCardRow,
    SzmProtocol,
    Tx,
    VendorCommitmentRow,
    VendorHllPaymentRow,
)
from farthing.store.writer import StoreWriter

__all__ = ["ChainBook", "HllDeferredBook", "PaywordBook", "PaywordBroker", "PrbgBook"]


@functools.lru_cache(maxsize=256)
def _denomination(currency: str, unit_micros: int) -> Denomination:
    """One validated object per (currency, unit): building one costs a regex check."""
    return Denomination(currency=currency, unit_micros=unit_micros)


def _active(row: SzmCardRow | None, protocol: SzmProtocol) -> SzmCardRow | None:
    if row is None or row.protocol is not protocol or row.status is not CardStatus.ACTIVE:
        return None
    return row


class ChainBook:
    """``szm:chain`` cards in the shared issuer/vendor store."""

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    async def load(self, key: bytes) -> szm_chain.ChainCardState | None:
        row = _active(await asyncio.to_thread(self._store.szm_card, key), SzmProtocol.CHAIN)
        if row is None or row.anchor is None:
            return None
        return szm_chain.ChainCardState(
            card_id=row.card_id,
            anchor=row.anchor,
            spent=row.spent,
            length=row.units,
            denomination=_denomination(row.currency, row.unit_micros),
            expires_at=row.expires_at,
            last_request=row.last_request,
            last_units=row.last_units or 0,
        )

    async def insert(self, state: szm_chain.ChainCardState) -> bool:
        return False  # cards are issued by the issuer, never introduced by a payment

    async def advance(self, old: szm_chain.ChainCardState, new: szm_chain.ChainCardState) -> bool:
        return await self._writer.run_hot(
            lambda hot: hot.szm.advance(
                old.card_id, old.spent, new.spent, new.anchor, new.last_request
            )
        )


class PrbgBook:
    """``szm:prbg`` cards in the shared issuer/vendor store."""

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    async def load(self, key: bytes) -> szm_prbg.PrbgCardState | None:
        row = _active(await asyncio.to_thread(self._store.szm_card, key), SzmProtocol.PRBG)
        if row is None or row.generator is None:
            return None
        return szm_prbg.PrbgCardState(
            card_id=row.card_id,
            spent=row.spent,
            units=row.units,
            generator=Generator(row.generator),
            denomination=_denomination(row.currency, row.unit_micros),
            expires_at=row.expires_at,
            last_request=row.last_request,
            last_units=row.last_units or 0,
        )

    async def insert(self, state: szm_prbg.PrbgCardState) -> bool:
        return False

    async def advance(self, old: szm_prbg.PrbgCardState, new: szm_prbg.PrbgCardState) -> bool:
        return await self._writer.run_hot(
            lambda hot: hot.szm.advance(old.card_id, old.spent, new.spent, None, new.last_request)
        )


class PaywordBroker(Protocol):
    """The PayWord broker, as the vendor reaches it (over HTTP in production)."""

    async def admit_payword(self, commitment: bytes) -> None:
        """Have the broker admit a new commitment within the user's credit, or raise."""
        ...


class PaywordBook:
    """PayWord commitments the vendor has accepted, with their signed bytes for redemption.

    With a ``broker``, a commitment is stored (and paywords under it accepted) only once the
    broker admitted it: the broker then caps what all of a user's vendors may claim at the
    credit limit, and pays only admitted commitments. Without one (a vendor that cannot
    redeem anyway) commitments are taken on the signatures alone."""

    def __init__(
        self, store: Store, writer: StoreWriter, *, broker: PaywordBroker | None = None
    ) -> None:
        self._store = store
        self._writer = writer
        self._broker = broker

    async def load(self, key: bytes) -> HeldCommitment | None:
        row = await asyncio.to_thread(self._store.payword_commitment, key)
        if row is None:
            return None
        state = payword.CommitmentState(
            commitment_id=row.commitment_id,
            last_value=row.last_value,
            spent=row.spent,
            length=row.length,
            denomination=_denomination(row.currency, row.unit_micros),
            expires_at=row.expires_at,
            last_request=row.last_request,
            last_units=row.last_units or 0,
        )
        return HeldCommitment(commitment_id=row.commitment_id, state=state, encoded=row.commitment)

    async def insert(self, held: HeldCommitment) -> bool:
        if self._broker is not None:
            await self._broker.admit_payword(held.encoded)
        state = held.state
        row = VendorCommitmentRow(
            commitment_id=held.commitment_id,
            commitment=held.encoded,
            last_value=state.last_value,
            spent=state.spent,
            length=state.length,
            currency=state.denomination.currency,
            unit_micros=state.denomination.unit_micros,
            expires_at=state.expires_at,
        )
        try:
            await self._writer.run(lambda tx: tx.vendor.add_commitment(row))
        except Conflict:
            return False  # known already: never reset its spent
        return True

    async def advance(self, old: HeldCommitment, new: HeldCommitment) -> bool:
        return await self._writer.run_hot(
            lambda hot: hot.vendor.payword_advance(
                old.commitment_id,
                old.state.spent,
                new.state.spent,
                new.state.last_value,
                new.state.last_request,
            )
        )


class HllDeferredBook:
    """Delivered, not yet deposited HLL purchases; the caps are the core's decision."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record(self, purchase: PendingPurchase, *, decide: DeferredPolicy) -> DeferredRecord:
        def write(tx: Tx) -> DeferredRecord:
            # One deferred decision at a time per vendor: the merchant cap sums every card,
            # so it is a lock at READ COMMITTED, not SERIALIZABLE (whose aborts ran out
            # of retries under 200 honest buyers at once).
            tx.lock_key(b"vendor-hll-deferred")
            row = tx.vendor.hll_payment(purchase.card_id, purchase.counter)
            if row is not None:
                if _is_retry(row, purchase):  # a lost answer: serve it again, take nothing
                    return DeferredRecord(deferred=row.mode is HllMode.DEFERRED, retried=True)
                raise _repeat()  # also when it would now go online: never deliver it twice
            # Per card: what the bank has not accepted, refusals included (a card that
            # cheated stays charged); per merchant: what the bank has not yet answered.
            decision = decide(
                tx.vendor.hll_exposure(purchase.card_id), tx.vendor.hll_outstanding_total()
            )
            if decision is not DeferredDecision.DEFER:
                return DeferredRecord(deferred=False, retried=False)
            tx.vendor.hll_record(
                card_id=purchase.card_id,
                counter=purchase.counter,
                offer=purchase.offer,
                purchase=purchase.payment,
                amount_units=purchase.amount,
                mode=HllMode.DEFERRED,
                state=HllPaymentState.PENDING,
                at=tx.now(),
                request=purchase.request,
            )
            return DeferredRecord(deferred=True, retried=False)

        try:
            return self._store.run_in_transaction(write)
        except Conflict as error:
            if error.code is not ErrorCode.DUPLICATE_SPEND:
                raise
        # (card, counter) was taken by a concurrent copy: this very request, or a replay.
        with self._store.transaction(readonly=True) as tx:
            row = tx.vendor.hll_payment(purchase.card_id, purchase.counter)
        if row is not None and _is_retry(row, purchase):
            return DeferredRecord(deferred=row.mode is HllMode.DEFERRED, retried=True)
        raise _repeat()

    def record_online(self, purchase: PendingPurchase) -> None:
        """Remember a purchase the bank verified online, so the same credential sent again
        is refused here instead of being taken deferred (the bank has not seen a deferred
        one yet). A concurrent copy already recorded is left as it is."""

        def write(tx: Tx) -> None:
            tx.vendor.hll_record(
                card_id=purchase.card_id,
                counter=purchase.counter,
                offer=purchase.offer,
                purchase=purchase.payment,
                amount_units=purchase.amount,
                mode=HllMode.ONLINE,
                state=HllPaymentState.SETTLED,
                at=tx.now(),
                request=purchase.request,
            )

        with contextlib.suppress(Conflict):
            self._store.run_in_transaction(write)


def _repeat() -> InvalidPayment:
    return InvalidPayment("payment did not verify")


def _is_retry(row: VendorHllPaymentRow, purchase: PendingPurchase) -> bool:
    """Was this purchase recorded before from the same request, and not refused since?"""
    return row.state is not HllPaymentState.REJECTED and same_request(row.request, purchase.request)
