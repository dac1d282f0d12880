"""The vendor's state in the store: thin translations between store rows and core states.

Each book is what an :class:`~farthing.paywall.methods.offline.OfflineMethod` (or the HLL
method) needs: load a state, insert a new one, and compare-and-set it. The compare-and-set
is the store's conditional UPDATE, run by the process's :class:`StoreWriter` so that
payments arriving together share one durable commit; the database decides double spending
even with several workers or processes on one store. Reads run in a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar

from farthing.core.cardcode import Generator
from farthing.core.errors import Conflict, ErrorCode, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.core.schemes.hll import DeferredDecision
from farthing.http.payment_auth import ChallengeId
from farthing.paywall.methods.hll import DeferredPolicy, DeferredRecord, PendingPurchase
from farthing.paywall.methods.offline import Advance, Lost, Staleness, challenge_used
from farthing.paywall.methods.payword import HeldCommitment
from farthing.store import (
    CardStatus,
    HllMode,
    HllPaymentState,
    HotTx,
    SpendOutcome,
    Spent,
    Store,
    SzmCardRow,
    SzmProtocol,
    Tx,
    VendorCommitmentRow,
    VendorHllPaymentRow,
)
from farthing.store.writer import StoreWriter

__all__ = [
    "ChainBook",
    "HllDeferredBook",
    "PaywordBook",
    "PaywordBroker",
    "PrbgBook",
    "staleness_for",
]


def staleness_for(store: Store) -> Staleness:
    """When an offline method on ``store`` reads a card before trying its cached state
    (one per method): on PostgreSQL never (:meth:`Staleness.always_try`), on SQLite once
    the cache was often stale (a read there costs ~30 us on the loop)."""
    return Staleness.always_try() if store.backend == "postgresql" else Staleness()


@functools.lru_cache(maxsize=256)
def _denomination(currency: str, unit_micros: int) -> Denomination:
    """One validated object per (currency, unit): building one costs a regex check."""
    return Denomination(currency=currency, unit_micros=unit_micros)


class _CardState(Protocol):
    """What the book writes back of an SZM card's state."""

    @property
    def card_id(self) -> bytes: ...

    @property
    def spent(self) -> int: ...

    @property
    def last_request(self) -> bytes | None: ...


C = TypeVar("C", bound=_CardState)
R = TypeVar("R")  # a stored row
S = TypeVar("S")  # the paywall's state of one


def _active(row: SzmCardRow | None, protocol: SzmProtocol) -> SzmCardRow | None:
    if row is None or row.protocol is not protocol or row.status is not CardStatus.ACTIVE:
        return None
    return row


class _SzmBook(Generic[C]):
    """One SZM protocol's cards in the shared issuer/vendor store: the two protocols differ
    only in how a row becomes a state and what proof the card keeps (:meth:`_state`,
    :meth:`_anchor`)."""

    _protocol: SzmProtocol

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    async def load(self, key: bytes) -> C | None:
        return self._state_of(await self._store.read_hot(self._store.szm_card, key))

    def _state_of(self, row: SzmCardRow | None) -> C | None:
        active = _active(row, self._protocol)
        return None if active is None else self._state(active)

    async def introduce(self, state: C) -> C:
        raise InvalidPayment()  # cards are issued by the issuer, never introduced by a payment

    async def durable(self) -> None:
        await self._writer.durable()

    async def advance(self, old: C, new: C, challenge: ChallengeId, now: int) -> Advance | Lost[C]:
        spent = await self._writer.run_hot(
            lambda hot: _spend(
                hot,
                now,
                lambda: hot.szm.spend(
                    old.card_id,
                    old.spent,
                    new.spent,
                    self._anchor(new),
                    new.last_request,
                    (challenge.raw, challenge.expires, now),
                ),
            )
        )
        return _advanced(spent, self._state_of)

    async def challenge_used(self, challenge: ChallengeId) -> bool:
        return await self._store.read_hot(self._store.challenge_used, challenge.raw)

    async def challenge_used_at(self, challenge: ChallengeId) -> int | None:
        return await self._store.read_hot(self._store.challenge_used_at, challenge.raw)

    def _state(self, row: SzmCardRow) -> C | None:
        raise NotImplementedError

    def _anchor(self, state: C) -> bytes | None:
        raise NotImplementedError


class ChainBook(_SzmBook[szm_chain.ChainCardState]):
    """``szm:chain`` cards: the card keeps the last chain value (the anchor)."""

    _protocol = SzmProtocol.CHAIN

    def _state(self, row: SzmCardRow) -> szm_chain.ChainCardState | None:
        if row.anchor is None:
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

    def _anchor(self, state: szm_chain.ChainCardState) -> bytes | None:
        return state.anchor


class PrbgBook(_SzmBook[szm_prbg.PrbgCardState]):
    """``szm:prbg`` cards: the card keeps its generator; no anchor."""

    _protocol = SzmProtocol.PRBG

    def _state(self, row: SzmCardRow) -> szm_prbg.PrbgCardState | None:
        if row.generator is None:
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

    def _anchor(self, state: szm_prbg.PrbgCardState) -> bytes | None:
        return None


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
        row = await self._store.read_hot(self._store.payword_commitment, key)
        return None if row is None else _held(row)

    async def introduce(self, held: HeldCommitment) -> HeldCommitment:
        """A new commitment, admitted by the broker (if any), to be stored by its first
        payment's write in the hot batch (:meth:`advance`): one commit, no read back."""
        if self._broker is not None:
            await self._broker.admit_payword(held.encoded)
        return dataclasses.replace(held, stored=False)

    async def durable(self) -> None:
        await self._writer.durable()

    async def insert(self, held: HeldCommitment) -> bool:
        """Store a commitment in a transaction of its own (admitted by the broker first),
        unless it is known; True iff stored."""
        if self._broker is not None:
            await self._broker.admit_payword(held.encoded)
        try:
            await self._writer.run(lambda tx: tx.vendor.add_commitment(_commitment_row(held)))
        except Conflict:
            return False  # known already: never reset its spent
        return True

    async def advance(
        self, old: HeldCommitment, new: HeldCommitment, challenge: ChallengeId, now: int
    ) -> Advance | Lost[HeldCommitment]:
        first = None if old.stored else _commitment_row(old)

        def spend(hot: HotTx) -> Spent[VendorCommitmentRow]:
            if first is not None:  # introduced by this payment: stored in its batch
                hot.vendor.add_commitment(first)
            return hot.vendor.payword_spend(
                old.commitment_id,
                old.state.spent,
                new.state.spent,
                new.state.last_value,
                new.state.last_request,
                (challenge.raw, challenge.expires, now),
            )

        spent = await self._writer.run_hot(lambda hot: _spend(hot, now, lambda: spend(hot)))
        return _advanced(spent, _held)

    async def challenge_used(self, challenge: ChallengeId) -> bool:
        return await self._store.read_hot(self._store.challenge_used, challenge.raw)

    async def challenge_used_at(self, challenge: ChallengeId) -> int | None:
        return await self._store.read_hot(self._store.challenge_used_at, challenge.raw)


def _held(row: VendorCommitmentRow) -> HeldCommitment:
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


def _commitment_row(held: HeldCommitment) -> VendorCommitmentRow:
    state = held.state
    return VendorCommitmentRow(
        commitment_id=held.commitment_id,
        commitment=held.encoded,
        last_value=state.last_value,
        spent=state.spent,
        length=state.length,
        currency=state.denomination.currency,
        unit_micros=state.denomination.unit_micros,
        expires_at=state.expires_at,
    )


_PRUNE_EVERY = 1024  # accepted payments per process between prunings of expired ids
_spent_since_prune = itertools.count(1)


def _spend(hot: HotTx, now: int, spend: Callable[[], Spent[R]]) -> Spent[R]:
    """A payment's one write (the store takes its challenge id and moves the card or
    commitment, both or neither: on PostgreSQL one statement, the job's last); every
    ``_PRUNE_EVERY`` payments one DELETE of expired ids first, in the same batch."""
    if next(_spent_since_prune) % _PRUNE_EVERY == 0:
        hot.vendor.prune_challenges(now)
    return spend()


def _advanced(spent: Spent[R], state_of: Callable[[R], S | None]) -> Advance | Lost[S]:
    """The write's outcome for the paywall; a loss with the row it found, as the state to
    judge the payment again against (no read)."""
    if spent.stored is not None:
        state = state_of(spent.stored)
        if state is not None:
            return Lost(state)
    return _ADVANCE_OF[spent.outcome]


_ADVANCE_OF: Final = {
    SpendOutcome.WON: Advance.WON,
    SpendOutcome.LOST: Advance.LOST,
    SpendOutcome.USED: Advance.USED,
}


class UsedChallenges:
    """:class:`farthing.paywall.methods.hll.ChallengeLog` on ``vendor_used_challenges``: the
    id's INSERT goes in a hot batch, as the other methods' payments do."""

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    async def take(self, challenge: ChallengeId, now: int, request: bytes | None) -> bool:
        return await self._writer.run_hot(
            lambda hot: hot.vendor.use_challenge(challenge.raw, challenge.expires, now, request)
        )

    async def release(self, challenge: ChallengeId) -> None:
        await self._writer.run_hot(lambda hot: hot.vendor.release_challenge(challenge.raw))

    async def request_of(self, challenge: ChallengeId) -> bytes | None:
        return await self._store.read_hot(self._store.challenge_request, challenge.raw)

    async def used_at(self, challenge: ChallengeId) -> int | None:
        return await self._store.read_hot(self._store.challenge_used_at, challenge.raw)

    async def durable(self) -> None:
        await self._writer.durable()


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
            if row is not None:  # served again if a retry, else refused (even if it
                return _retried(row, purchase)  # would now go online: never deliver twice)
            # Per card: what the bank has not accepted, refusals included (a card that
            # cheated stays charged); per merchant: what the bank has not yet answered.
            decision = decide(
                tx.vendor.hll_exposure(purchase.card_id), tx.vendor.hll_outstanding_total()
            )
            if decision is not DeferredDecision.DEFER:
                return DeferredRecord(deferred=False, retried=False)
            challenge = purchase.challenge
            if challenge is not None and not tx.vendor.use_challenge(
                challenge.raw, challenge.expires, tx.now()
            ):
                raise challenge_used()  # a new purchase under a used id: nothing recorded
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
        if row is None:
            raise InvalidPayment("payment did not verify")
        return _retried(row, purchase)

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


def _retried(row: VendorHllPaymentRow, purchase: PendingPurchase) -> DeferredRecord:
    """A (card, counter) recorded before: the same request again, not refused by the bank
    since, is served as taken then (the core's rule); anything else is refused."""
    hll.check_merchant_repeat(
        earlier_request=row.request,
        refused=row.state is HllPaymentState.REJECTED,
        request=purchase.request,
    )
    return DeferredRecord(deferred=row.mode is HllMode.DEFERRED, retried=True)
