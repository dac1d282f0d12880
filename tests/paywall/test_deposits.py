"""Vendor deposits: staged durably, sent idempotently, retried with backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from farthing.core.errors import ErrorCode, RateLimited, Unavailable
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword
from farthing.http.payment_auth import ChallengeId
from farthing.paywall.books import HllDeferredBook, PaywordBook
from farthing.paywall.deposits import Depositor, backoff
from farthing.paywall.methods.hll import PendingPurchase
from farthing.paywall.methods.offline import Advance
from farthing.paywall.methods.payword import HeldCommitment
from farthing.store import HllPaymentState, OutboxState, open_store
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom, FixedClock
from farthing.testing.hll import HllBank, SoftwareCard
from farthing.testing.payword import PaywordBroker, PaywordSpender

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000
EUR = Denomination(currency="EUR", unit_micros=1000)
MERCHANT_KEY = b"m" * 32
MASTER = b"K" * 32
CARD_ID = b"c" * 16
BROKER_KEY = b"B" * 32


class LocalIssuer:
    """The core's in-memory bank and broker as a deposit target; can be made to fail."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.bank = HllBank(denomination=EUR)
        self.bank.register_card(CARD_ID, hll.derive_card_key(MASTER, CARD_ID), 1000)
        self.bank.register_merchant("shop", MERCHANT_KEY)
        self.broker = PaywordBroker(broker_id="broker", private_key=BROKER_KEY)
        self.broker.register_vendor("shop", "EUR")
        self.down = False
        self.busy = False
        self.calls = 0
        self.reports: dict[bytes, hll.DepositReport] = {}

    async def deposit_hll(self, batch: hll.DepositBatch, tag: bytes) -> hll.DepositReport:
        self.calls += 1
        if self.down:
            raise Unavailable(
                "issuer unreachable", retry_after=5, code=ErrorCode.ISSUER_UNAVAILABLE
            )
        if self.busy:
            raise RateLimited("slow down", retry_after=1)
        report = self.bank.deposit(batch, tag, self.clock.now())
        self.reports[batch.batch_id] = report
        return report

    async def hll_deposit_report(self, batch_id: bytes) -> hll.DepositReport | None:
        self.calls += 1
        if self.down:
            raise Unavailable(
                "issuer unreachable", retry_after=5, code=ErrorCode.ISSUER_UNAVAILABLE
            )
        return self.reports.get(batch_id)

    async def redeem_payword(self, redemption: payword.Redemption) -> int:
        self.calls += 1
        if self.down:
            raise Unavailable(
                "issuer unreachable", retry_after=5, code=ErrorCode.ISSUER_UNAVAILABLE
            )
        credit = self.broker.redeem(
            payword.encode_redemption(redemption), vendor_id="shop", now=self.clock.now()
        )
        return credit.credited_units


def record_purchases(store_path: str, count: int) -> None:
    store = open_store(store_path)
    book = HllDeferredBook(store)
    key = hll.SoftwareCardKey(hll.derive_card_key(MASTER, CARD_ID))
    card = SoftwareCard(
        key=key, state=hll.CardState(card_id=CARD_ID, denomination=EUR, balance=1000), pin="1"
    )
    card.verify_pin("1")
    for i in range(count):
        offer = hll.Offer(
            merchant_id="shop",
            good=f"/a/{i}",
            amount=3,
            denomination=EUR,
            challenge=bytes([i]) * 40,
            expires_at=NOW + 60,
        )
        purchase = card.purchase(offer, NOW)
        book.record(
            PendingPurchase(
                card_id=CARD_ID,
                counter=purchase.counter,
                amount=3,
                offer=hll.encode_offer(offer),
                payment=hll.encode_payment(purchase),
            ),
            decide=lambda card, merchant: hll.DeferredDecision.DEFER,  # vouched, within caps
        )
    store.close()


def depositor(store_path: str, issuer: LocalIssuer, clock: FixedClock) -> Depositor:
    return Depositor(
        open_store(store_path),
        issuer,
        clock=clock,
        rng=DeterministicRandom("d"),
        merchant_id="shop",
        merchant_key=MERCHANT_KEY,
        batch_size=4,
    )


async def test_hll_batches_survive_a_restart_and_credit_once(tmp_path: Path) -> None:
    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    record_purchases(path, 10)
    assert depositor(path, issuer, clock).stage() == 3  # 4 + 4 + 2
    # The vendor restarts between staging and sending: a new store, a new depositor.
    again = depositor(path, issuer, clock)
    assert again.stage() == 0
    report = await again.flush()
    assert (report.sent, report.failed) == (3, 0)
    assert issuer.bank.credited("shop") == 30
    assert (await again.flush()).sent == 0
    store = open_store(path)
    with store.transaction(readonly=True) as tx:
        payment = tx.vendor.hll_payment(CARD_ID, 1)
    assert payment is not None
    assert payment.state is HllPaymentState.SETTLED


async def test_unreachable_issuer_is_retried_with_backoff(tmp_path: Path) -> None:
    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    record_purchases(path, 2)
    dep = depositor(path, issuer, clock)
    dep.stage()
    issuer.down = True
    assert (await dep.flush()).retry_later == 1
    assert (await dep.flush()).retry_later == 0  # not due yet
    clock.advance(backoff(1))
    issuer.down = False
    assert (await dep.flush()).sent == 1
    assert issuer.bank.credited("shop") == 6


async def test_rate_limited_deposit_is_retried_not_failed(tmp_path: Path) -> None:
    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    record_purchases(path, 1)
    dep = depositor(path, issuer, clock)
    dep.stage()
    issuer.busy = True
    assert (await dep.flush()).retry_later == 1
    issuer.busy = False
    clock.advance(backoff(1))
    assert (await dep.flush()).sent == 1
    assert issuer.bank.credited("shop") == 3


async def test_refused_batch_is_marked_failed(tmp_path: Path) -> None:
    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    record_purchases(path, 1)
    bad = Depositor(
        open_store(path),
        issuer,
        clock=clock,
        rng=DeterministicRandom("d"),
        merchant_id="shop",
        merchant_key=b"x" * 32,
    )
    bad.stage()
    assert (await bad.flush()).failed == 1
    store = open_store(path)
    with store.transaction(readonly=True) as tx:
        assert tx.vendor.outbox_due(NOW + 10**6, 10) == []
    assert issuer.bank.credited("shop") == 0


async def test_payword_redemptions_are_staged_once_per_index(tmp_path: Path) -> None:
    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    cert = issuer.broker.issue(
        user_id="alice",
        user_public_key=ed25519_public_key(b"U" * 32),
        credit_limit=500,
        denomination=EUR,
        now=NOW,
        ttl=86_400,
    )
    seed = b"s" * 32
    commitment = payword.commit(
        b"U" * 32,
        cert,
        vendor_id="shop",
        seed=seed,
        length=50,
        now=NOW,
        ttl=3600,
        rng=DeterministicRandom("n"),
    )
    state = payword.accept_commitment(
        issuer.broker.public_key, commitment, vendor_id="shop", now=NOW
    )
    # what a vendor with a broker does before it takes paywords (PaywordBook(broker=...))
    issuer.broker.admit(payword.encode_commitment(commitment), vendor_id="shop", now=NOW)
    store = open_store(path)
    writer = StoreWriter(store)
    book = PaywordBook(store, writer)
    held = HeldCommitment(
        commitment_id=state.commitment_id,
        state=state,
        encoded=payword.encode_commitment(commitment),
    )
    assert await book.insert(held)
    spender = PaywordSpender(commitment, seed)
    current = held
    for step in range(3):
        payment = spender.reserve(2, now=NOW).payment
        new_state, _ = payword.verify_payment(current.state, payment, units=2, now=NOW)
        new = HeldCommitment(
            commitment_id=held.commitment_id, state=new_state, encoded=held.encoded
        )
        challenge = ChallengeId(raw=bytes([step]) * 32, expires=NOW + 300)
        assert await book.advance(current, new, challenge, NOW) == Advance.WON
        current = new
    await writer.aclose()
    dep = Depositor(store, issuer, clock=clock, rng=DeterministicRandom("d"))
    assert dep.stage() == 1
    assert dep.stage() == 0
    assert (await dep.flush()).sent == 1
    assert issuer.broker.vendor_credit("shop", "EUR") == 6 * EUR.unit_micros
    assert dep.stage() == 0  # redeemed up to its spent
    with store.transaction(readonly=True) as tx:
        assert all(item.state is OutboxState.DONE for item in tx.vendor.outbox_due(NOW + 10**6, 10))


async def test_background_loop_deposits_until_cancelled(tmp_path: Path) -> None:
    import asyncio

    path = str(tmp_path / "vendor.sqlite")
    clock = FixedClock(NOW)
    issuer = LocalIssuer(clock)
    record_purchases(path, 3)
    task = asyncio.create_task(depositor(path, issuer, clock).run(0.01))
    for _ in range(200):
        if issuer.bank.credited("shop") == 9:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert issuer.bank.credited("shop") == 9
