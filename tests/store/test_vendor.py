"""The vendor's store: HLL replay guard, risk sum, durable deposit outbox."""

from __future__ import annotations

import pytest

from farthing.core.errors import Conflict, ErrorCode, InsufficientFunds, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll
from farthing.paywall.books import HllDeferredBook
from farthing.paywall.methods.hll import DeferredRecord, PendingPurchase
from farthing.store import (
    HllMode,
    HllPaymentState,
    OutboxKind,
    OutboxState,
    Store,
    Tx,
    open_store,
)
from tests.store.helpers import fail_inside, race

CARD = b"C" * 16
BATCH = b"B" * 32


def _record(
    tx: Tx,
    counter: int,
    units: int = 2,
    mode: HllMode = HllMode.DEFERRED,
    state: HllPaymentState = HllPaymentState.PENDING,
    card: bytes = CARD,
) -> None:
    tx.vendor.hll_record(
        card_id=card, counter=counter, offer=b"offer", purchase=b"purchase",
        amount_units=units, mode=mode, state=state, at=100 + counter,
    )  # fmt: skip


def test_a_repeated_card_counter_is_a_duplicate_spend(store: Store) -> None:
    with store.transaction() as tx:
        _record(tx, 1)
    with pytest.raises(Conflict) as caught, store.transaction() as tx:
        _record(tx, 1)
    assert caught.value.code is ErrorCode.DUPLICATE_SPEND
    with store.transaction(readonly=True) as tx:
        payment = tx.vendor.hll_payment(CARD, 1)
    assert payment is not None
    assert (payment.mode, payment.state, payment.offer) == (
        HllMode.DEFERRED,
        HllPaymentState.PENDING,
        b"offer",
    )


def test_outstanding_counts_unsettled_deferred_payments_of_the_card(store: Store) -> None:
    with store.transaction() as tx:
        _record(tx, 1, units=2)
        _record(tx, 2, units=3)
        _record(tx, 3, units=5, mode=HllMode.ONLINE, state=HllPaymentState.SETTLED)
        _record(tx, 1, units=7, card=b"O" * 16)
        assert tx.vendor.hll_outstanding(CARD) == 5
        taken = tx.vendor.hll_take_pending_for_batch(BATCH, limit=1)
        assert [p.counter for p in taken] == [1]
        assert tx.vendor.hll_outstanding(CARD) == 5  # batched is still at risk
        assert tx.vendor.hll_settle_batch(BATCH) == (1, 0)
        assert tx.vendor.hll_outstanding(CARD) == 3


def test_taking_a_batch_and_queueing_it_are_one_unit(store: Store) -> None:
    with store.transaction() as tx:
        for counter in range(1, 6):
            _record(tx, counter)
    with store.transaction() as tx:
        taken = tx.vendor.hll_take_pending_for_batch(BATCH, limit=3)
        tx.vendor.outbox_add(BATCH, OutboxKind.HLL, b"payload", now=200)
    assert [p.counter for p in taken] == [1, 2, 3]
    assert all(p.state is HllPaymentState.BATCHED and p.batch_id == BATCH for p in taken)

    def take_then_crash(tx: Tx) -> None:
        assert len(tx.vendor.hll_take_pending_for_batch(b"X" * 32, limit=10)) == 2
        tx.vendor.outbox_add(b"X" * 32, OutboxKind.HLL, b"payload", now=201)

    with pytest.raises(RuntimeError):
        fail_inside(store, take_then_crash)
    with store.transaction() as tx:
        assert tx.vendor.outbox_item(b"X" * 32) is None
        assert tx.vendor.hll_batch_payments(b"X" * 32) == []
        rest = tx.vendor.hll_take_pending_for_batch(b"N" * 32, limit=10)
        assert tx.vendor.hll_take_pending_for_batch(b"E" * 32, limit=10) == []
    assert [p.counter for p in rest] == [4, 5]


def test_settling_a_batch_marks_rejections(store: Store) -> None:
    with store.transaction() as tx:
        for counter in range(1, 4):
            _record(tx, counter)
        tx.vendor.hll_take_pending_for_batch(BATCH, limit=10)
        assert tx.vendor.hll_settle_batch(BATCH, rejected=[(CARD, 2)]) == (2, 1)
        states = {p.counter: p.state for p in tx.vendor.hll_batch_payments(BATCH)}
    assert states == {
        1: HllPaymentState.SETTLED,
        2: HllPaymentState.REJECTED,
        3: HllPaymentState.SETTLED,
    }


def test_the_outbox_survives_a_restart(store_target: str, store: Store) -> None:
    with store.transaction() as tx:
        tx.vendor.outbox_add(BATCH, OutboxKind.PAYWORD, b"payload", now=100)
    store.close()
    with open_store(store_target, create=False) as reopened, reopened.transaction() as tx:
        due = tx.vendor.outbox_due(now=100, limit=10)
        assert [(d.batch_id, d.kind, d.state, d.payload) for d in due] == [
            (BATCH, OutboxKind.PAYWORD, OutboxState.PENDING, b"payload")
        ]
        assert tx.vendor.outbox_mark(BATCH, OutboxState.SENT, 1, next_attempt_at=160, report=None)
        assert tx.vendor.outbox_due(now=159, limit=10) == []
        assert [d.attempts for d in tx.vendor.outbox_due(now=160, limit=10)] == [1]
        assert tx.vendor.outbox_mark(BATCH, OutboxState.DONE, 2, next_attempt_at=160, report="{}")
        assert tx.vendor.outbox_due(now=10**10, limit=10) == []
        item = tx.vendor.outbox_item(BATCH)
    assert item is not None
    assert (item.state, item.report) == (OutboxState.DONE, "{}")


def test_the_risk_limit_holds_under_concurrency(store: Store) -> None:
    """Check-then-insert in a serializable unit: no two requests both slip under the limit."""
    limit = 10

    def accept(counter: int) -> bool:
        def unit(tx: Tx) -> None:
            if tx.vendor.hll_outstanding(CARD) + 3 > limit:
                raise InsufficientFunds("risk limit", code=ErrorCode.RISK_LIMIT)
            _record(tx, counter, units=3)

        try:
            store.run_in_transaction(unit, retries=30, serializable=True)
        except InsufficientFunds:
            return False
        return True

    assert race(6, accept).count(True) == 3
    with store.transaction(readonly=True) as tx:
        assert tx.vendor.hll_outstanding(CARD) == 9


def test_the_merchant_cap_holds_under_concurrency_across_cards(store: Store) -> None:
    """Eight certified cards buy 3 units each at once from a merchant whose cap is 9: the
    book (core decision, store transaction) takes exactly three deferred, sends the other
    five online, and records only the three."""
    signing_key = b"C" * 32
    risk = hll.DeferredRisk(limit=10, merchant_cap=9)
    book = HllDeferredBook(store)
    denomination = Denomination(currency="EUR", unit_micros=1000)

    def buy(n: int) -> hll.DeferredDecision:
        card_id = bytes([n + 1]) * 16
        certificate = hll.issue_card_certificate(
            signing_key, card_id=card_id, denomination=denomination, expires_at=10**10
        )
        offer = hll.Offer(
            merchant_id="shop", good="/a", amount=3, denomination=denomination,
            challenge=bytes([n]) * 16, expires_at=10**10,
        )  # fmt: skip
        purchase = hll.Purchase(card_id=card_id, counter=1, sigma=bytes(32))

        def decide(card: int, merchant: int) -> hll.DeferredDecision:
            return hll.decide_deferred(
                risk=risk, bank_public_key=ed25519_public_key(signing_key),
                certificate=hll.encode_card_certificate(certificate), offer=offer,
                purchase=purchase, now=1000, card_outstanding=card, merchant_outstanding=merchant,
            )  # fmt: skip

        pending = PendingPurchase(
            card_id=card_id, counter=1, amount=3, offer=hll.encode_offer(offer),
            payment=hll.encode_payment(purchase),
        )  # fmt: skip
        return book.record(pending, decide=decide).deferred

    deferred = race(8, buy)
    assert deferred.count(True) == 3
    assert deferred.count(False) == 5
    with store.transaction(readonly=True) as tx:
        assert tx.vendor.hll_outstanding_total() == 9


def test_a_card_refused_at_deposit_stays_charged_against_its_limit(store: Store) -> None:
    """Payments the bank refused at deposit keep counting against the card, so a certified
    card that cheats costs a deferred merchant at most the per-card limit over its life."""
    with store.transaction() as tx:
        _record(tx, 1, units=3)
        tx.vendor.hll_take_pending_for_batch(BATCH, limit=10)
        tx.vendor.hll_settle_batch(BATCH, rejected={(CARD, 1)})
        assert tx.vendor.hll_outstanding(CARD) == 0  # nothing awaits the bank any more
        assert tx.vendor.hll_exposure(CARD) == 3  # but the refused 3 still count
        assert tx.vendor.hll_outstanding_total() == 0
    seen: list[tuple[int, int]] = []

    def decide(card: int, merchant: int) -> hll.DeferredDecision:
        seen.append((card, merchant))
        fits = hll.DeferredRisk(limit=5, merchant_cap=100).fits(card, merchant, 3)
        return hll.DeferredDecision.DEFER if fits else hll.DeferredDecision.ONLINE

    pending = PendingPurchase(card_id=CARD, counter=2, amount=3, offer=b"o", payment=b"p")
    assert HllDeferredBook(store).record(pending, decide=decide) == DeferredRecord(
        deferred=False, retried=False
    )
    assert seen == [(3, 0)]


def test_a_purchase_settled_online_is_refused_when_sent_again(store: Store) -> None:
    book = HllDeferredBook(store)
    pending = PendingPurchase(card_id=CARD, counter=4, amount=3, offer=b"o", payment=b"p")
    book.record_online(pending)
    book.record_online(pending)  # a concurrent copy: left as it is
    with pytest.raises(InvalidPayment):
        book.record(pending, decide=lambda card, merchant: hll.DeferredDecision.DEFER)
    with store.transaction(readonly=True) as tx:
        row = tx.vendor.hll_payment(CARD, 4)
        assert row is not None
        assert (row.mode, row.state) == (HllMode.ONLINE, HllPaymentState.SETTLED)
        assert (tx.vendor.hll_exposure(CARD), tx.vendor.hll_outstanding_total()) == (0, 0)


def test_the_risk_limit_holds_under_a_key_lock(store: Store) -> None:
    """Check-then-insert at READ COMMITTED, serialized by the card's lock (what the deferred
    book does): no two requests both slip under the limit, and none is aborted."""
    limit = 10

    def accept(counter: int) -> bool:
        def unit(tx: Tx) -> None:
            tx.lock_key(b"risk:" + CARD)
            if tx.vendor.hll_outstanding(CARD) + 3 > limit:
                raise InsufficientFunds("risk limit", code=ErrorCode.RISK_LIMIT)
            _record(tx, counter, units=3)

        try:
            store.run_in_transaction(unit, retries=0)
        except InsufficientFunds:
            return False
        return True

    assert race(12, accept).count(True) == 3
    with store.transaction(readonly=True) as tx:
        assert tx.vendor.hll_outstanding(CARD) == 9
