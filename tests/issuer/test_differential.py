"""The reference actors (farthing.testing) and the real services judge alike.

The same deposit batches run through the in-memory :class:`~farthing.testing.hll.HllBank`
and through the issuer's HLL service on a real store (SQLite and PostgreSQL); every report,
every refusal and the final card and merchant totals must be equal. The same for PayWord
admissions and redemptions (:class:`~farthing.testing.payword.PaywordBroker` against the
issuer's PayWord service). Both sides call the
core's rules, so a rule changed in one place only (a service that skips a check, a
reference that orders them differently) makes this fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from farthing.core.errors import (
    Conflict,
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    PaymentExpired,
    UnsupportedMethod,
)
from farthing.core.hashchain import chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword
from farthing.http.issuer_wire import admit_request_tag, redeem_request_tag, verify_request_tag
from farthing.store import CardStatus
from farthing.testing.hll import HllBank, SoftwareCard
from farthing.testing.payword import PaywordBroker
from tests.issuer.helpers import (
    ACTOR,
    BOTH_BACKENDS,
    EUR,
    PIN,
    Harness,
    add_customer,
    add_merchant,
    balanced,
)

pytestmark = BOTH_BACKENDS

USD = Denomination(currency="USD", unit_micros=1000)


@dataclass(frozen=True)
class Outcome:
    """What one side answered: a value (a report, units, an id), or the error class and
    code it raised."""

    value: object = None
    error: tuple[type[FarthingError], int] | None = None


def outcome(call: Callable[[], object]) -> Outcome:
    try:
        return Outcome(value=call())
    except FarthingError as error:
        return Outcome(error=(type(error), int(error.code)))


class Twins:
    """One issuer on a real store and one reference bank, set up alike."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.bank = HllBank(denomination=EUR, deposit_window=h.config.hll_deposit_window)
        self.merchant_keys: dict[str, bytes] = {}
        self.cards: dict[str, SoftwareCard] = {}
        add_customer(h, micros=100_000_000)

    def merchant(self, merchant_id: str, currency: str) -> None:
        key = add_merchant(self.h, merchant_id, currency)
        self.bank.register_merchant(merchant_id, key, currency=currency)
        self.merchant_keys[merchant_id] = key

    def card(self, name: str, *, loaded: int, claims: int | None = None) -> SoftwareCard:
        """A card loaded with ``loaded`` units at both banks; ``claims``: the balance the
        card itself believes it has (more than loaded: a broken or cloned card)."""
        made = self.h.services.hll.personalise(ACTOR, "c1", units=loaded, unit_micros=1000)
        self.bank.register_card(made.card_id, made.card_key, loaded)
        state = hll.CardState(card_id=made.card_id, denomination=EUR, balance=claims or loaded)
        card = SoftwareCard(key=hll.SoftwareCardKey(made.card_key), state=state, pin=PIN)
        card.verify_pin(PIN)
        self.cards[name] = card
        return card

    def block(self, name: str) -> None:
        card_id = self.cards[name].state.card_id
        with self.h.store.transaction() as tx:
            assert tx.hll.set_status(card_id, CardStatus.BLOCKED)
        self.bank.block_card(card_id)

    def buy(
        self, name: str, merchant_id: str, amount: int, *, denomination: Denomination = EUR
    ) -> hll.DepositItem:
        offer = hll.make_offer(
            merchant_id=merchant_id,
            good=f"/goods/{amount}",
            amount=amount,
            denomination=denomination,
            rng=self.h.rng,
            now=self.h.clock.now(),
            ttl=300,
        )
        purchase = self.cards[name].purchase(offer, self.h.clock.now())
        return hll.DepositItem(offer=offer, purchase=purchase)

    def deposit(
        self, merchant_id: str, items: list[hll.DepositItem], *, batch_id: bytes | None = None
    ) -> hll.DepositReport:
        """Both sides settle the same batch; their answers must be equal."""
        batch = hll.DepositBatch(
            batch_id=batch_id or self.h.rng(hll.BATCH_ID_LEN),
            merchant_id=merchant_id,
            items=tuple(items),
        )
        tag = hll.batch_tag(self.merchant_keys[merchant_id], batch)
        now = self.h.clock.now()
        service = outcome(lambda: self.h.services.hll.deposit(hll.encode_batch(batch), tag).report)
        reference = outcome(lambda: self.bank.deposit(batch, tag, now))
        assert service == reference
        self.assert_same_totals()
        assert isinstance(reference.value, hll.DepositReport), reference
        return reference.value

    def verify_online(self, merchant_id: str, item: hll.DepositItem) -> Outcome:
        """Both banks verify and settle one purchase online; answers and totals equal."""
        offer_bytes = hll.encode_offer(item.offer)
        payment = hll.encode_payment(item.purchase)
        key = self.merchant_keys[merchant_id]
        tag = verify_request_tag(key, merchant_id, offer_bytes, payment)
        service = outcome(
            lambda: self.h.services.hll.verify_online(merchant_id, offer_bytes, payment, tag).units
        )
        now = self.h.clock.now()
        reference = outcome(lambda: self.bank.verify_online(item.offer, item.purchase, now).amount)
        assert service == reference
        self.assert_same_totals()
        return reference

    def deposit_refused(self, merchant_id: str, items: list[hll.DepositItem], **kw: bytes) -> int:
        """Both sides refuse the batch with the same error; its code."""
        with pytest.raises(FarthingError) as service_error:
            self.h.services.hll.deposit(*self._encoded(merchant_id, items, **kw))
        batch, tag = self._batch(merchant_id, items, **kw)
        with pytest.raises(FarthingError) as reference_error:
            self.bank.deposit(batch, tag, self.h.clock.now())
        assert type(service_error.value) is type(reference_error.value)
        assert service_error.value.code == reference_error.value.code
        self.assert_same_totals()
        return int(service_error.value.code)

    def _batch(
        self, merchant_id: str, items: list[hll.DepositItem], *, batch_id: bytes
    ) -> tuple[hll.DepositBatch, bytes]:
        batch = hll.DepositBatch(batch_id=batch_id, merchant_id=merchant_id, items=tuple(items))
        return batch, hll.batch_tag(self.merchant_keys[merchant_id], batch)

    def _encoded(
        self, merchant_id: str, items: list[hll.DepositItem], *, batch_id: bytes
    ) -> tuple[bytes, bytes]:
        batch, tag = self._batch(merchant_id, items, batch_id=batch_id)
        return hll.encode_batch(batch), tag

    def assert_same_totals(self) -> None:
        for card in self.cards.values():
            card_id = card.state.card_id
            assert self.h.services.hll.card(card_id).spent_units == self.bank.spent(card_id)
        for merchant_id in self.merchant_keys:
            owed = self.h.services.accounts.merchant(merchant_id).owed_micros
            assert owed == self.bank.credited(merchant_id) * 1000


@pytest.fixture
def twins(harness: Harness) -> Twins:
    twins = Twins(harness)
    twins.merchant("m1", "EUR")
    twins.merchant("usd-shop", "USD")
    twins.card("a", loaded=1000)
    twins.card("small", loaded=10, claims=100)
    twins.card("blocked", loaded=100)
    twins.block("blocked")
    return twins


def forged(item: hll.DepositItem) -> hll.DepositItem:
    sigma = bytes([item.purchase.sigma[0] ^ 1]) + item.purchase.sigma[1:]
    return replace(item, purchase=replace(item.purchase, sigma=sigma))


def stranger(item: hll.DepositItem, card_id: bytes) -> hll.DepositItem:
    return replace(item, purchase=replace(item.purchase, card_id=card_id))


def test_good_items_are_accepted_alike(twins: Twins) -> None:
    report = twins.deposit("m1", [twins.buy("a", "m1", n) for n in (2, 3, 4)])
    assert (len(report.accepted), report.credited) == (3, 9)


def test_replays_are_duplicates_alike(twins: Twins) -> None:
    first, second = twins.buy("a", "m1", 2), twins.buy("a", "m1", 3)
    twins.deposit("m1", [first])
    report = twins.deposit("m1", [first, second, second])
    assert report.duplicates == ((first.purchase.card_id, 1), (second.purchase.card_id, 2))
    assert report.credited == 3


def test_wrong_macs_are_invalid_alike(twins: Twins) -> None:
    good, bad = twins.buy("a", "m1", 2), forged(twins.buy("a", "m1", 5))
    report = twins.deposit("m1", [bad, good])
    assert (len(report.invalid), report.credited) == (1, 2)
    # the forged counter stays open for the genuine payment
    assert twins.deposit("m1", [good]).duplicates == ((good.purchase.card_id, 1),)


def test_a_merchant_paid_in_another_currency_is_refused_alike(twins: Twins) -> None:
    report = twins.deposit("usd-shop", [twins.buy("a", "usd-shop", 4)])
    assert (len(report.invalid), report.credited) == (1, 0)


def test_a_blocked_card_is_refused_alike(twins: Twins) -> None:
    report = twins.deposit("m1", [twins.buy("blocked", "m1", 4)])
    assert (len(report.invalid), report.credited) == (1, 0)


def test_insufficient_balance_is_refused_alike(twins: Twins) -> None:
    items = [twins.buy("small", "m1", n) for n in (6, 6, 20, 4)]
    report = twins.deposit("m1", items)
    assert [counter for _, counter, _ in report.accepted] == [1, 4]
    assert [counter for _, counter in report.invalid] == [2, 3]


def test_a_mixed_batch_is_judged_alike(twins: Twins) -> None:
    late = twins.buy("a", "m1", 2)  # its offer expires 200 s before known's
    twins.h.clock.advance(200)
    known = twins.buy("a", "m1", 1)
    twins.deposit("m1", [known])
    twins.h.clock.advance(twins.h.config.hll_deposit_window + 150)  # late's window closed
    items = [
        twins.buy("a", "m1", 3),
        known,  # replay of an accepted payment
        forged(twins.buy("a", "m1", 4)),
        twins.buy("blocked", "m1", 1),
        twins.buy("small", "m1", 7),
        twins.buy("small", "m1", 7),  # over what is left
        twins.buy("a", "usd-shop", 2),  # made to another merchant
        late,  # deposited after the window
        stranger(twins.buy("a", "m1", 6), twins.h.rng(hll.CARD_ID_LEN)),  # an unknown card
        twins.buy("a", "m1", 5),
    ]
    report = twins.deposit("m1", items)
    assert report.credited == 3 + 7 + 5
    assert len(report.duplicates) == 1
    assert len(report.invalid) == 6


def test_a_resent_batch_gets_the_first_report_alike(twins: Twins) -> None:
    items = [twins.buy("a", "m1", 2), twins.buy("small", "m1", 11)]
    batch_id = twins.h.rng(hll.BATCH_ID_LEN)
    first = twins.deposit("m1", items, batch_id=batch_id)
    assert twins.deposit("m1", items, batch_id=batch_id) == first
    code = twins.deposit_refused("m1", items[:1], batch_id=batch_id)
    assert code == ErrorCode.CONFLICT  # the batch id came with other items
    assert balanced(twins.h)


def test_online_payments_are_judged_alike(twins: Twins) -> None:
    assert twins.verify_online("m1", twins.buy("a", "m1", 4)).value == 4
    blocked = twins.verify_online("m1", twins.buy("blocked", "m1", 1))
    assert blocked.error == (InvalidPayment, ErrorCode.PAYMENT_INVALID)
    usd = twins.verify_online("usd-shop", twins.buy("a", "usd-shop", 2))
    assert usd.error == (UnsupportedMethod, ErrorCode.UNSUPPORTED_METHOD)
    assert twins.verify_online("m1", twins.buy("small", "m1", 7)).value == 7
    over = twins.verify_online("m1", twins.buy("small", "m1", 7))
    assert over.error == (InsufficientFunds, ErrorCode.INSUFFICIENT_FUNDS)
    bad = twins.verify_online("m1", forged(twins.buy("a", "m1", 3)))
    assert bad.error == (InvalidPayment, ErrorCode.PAYMENT_INVALID)
    late = twins.buy("a", "m1", 3)
    twins.h.clock.advance(301)
    assert twins.verify_online("m1", late).error == (PaymentExpired, ErrorCode.CHALLENGE_EXPIRED)


def test_a_deposited_payment_sent_online_is_a_duplicate_alike(twins: Twins) -> None:
    item = twins.buy("a", "m1", 3)
    twins.deposit("m1", [item])
    replay = twins.verify_online("m1", item)
    assert replay.error == (Conflict, ErrorCode.DUPLICATE_SPEND)


# --- PayWord redemptions --------------------------------------------------------------


class BrokerTwins:
    """The issuer's PayWord broker on a real store and a reference broker with its key."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        keys = h.config.keys
        self.broker = PaywordBroker(broker_id=keys.broker_id, private_key=keys.payword_broker_key)
        self.merchant_keys: dict[str, bytes] = {}
        self.user_key = h.rng(32)
        add_customer(h, micros=0)
        self.cert = self._register_user(credit_limit=100)

    def merchant(self, merchant_id: str, currency: str) -> None:
        self.merchant_keys[merchant_id] = add_merchant(self.h, merchant_id, currency)
        self.broker.register_vendor(merchant_id, currency)

    def _register_user(self, *, credit_limit: int) -> payword.Certificate:
        public = ed25519_public_key(self.user_key)
        made = self.h.services.payword.register_user(
            ACTOR,
            user_id="u1",
            customer_id="c1",
            public_key=public,
            credit_limit=credit_limit,
            unit_micros=1000,
        )
        cert = self.broker.issue(
            user_id="u1",
            user_public_key=public,
            credit_limit=credit_limit,
            denomination=EUR,
            now=self.h.clock.now(),
            ttl=self.h.config.certificate_ttl,
        )
        assert cert == made.certificate  # the same broker key signs the same certificate
        return cert

    def commit(self, vendor_id: str, length: int) -> ChainClaims:
        seed = self.h.rng(32)
        commitment = payword.commit(
            self.user_key,
            self.cert,
            vendor_id=vendor_id,
            seed=seed,
            length=length,
            now=self.h.clock.now(),
            ttl=3600,
            rng=self.h.rng,
        )
        return ChainClaims(commitment=commitment, seed=seed)

    def admit(self, vendor_id: str, chain: ChainClaims) -> Outcome:
        data = payword.encode_commitment(chain.commitment)
        tag = admit_request_tag(self.merchant_keys[vendor_id], vendor_id, data)
        service = outcome(lambda: self.h.services.payword.admit(vendor_id, data, tag).commitment_id)
        now = self.h.clock.now()
        reference = outcome(
            lambda: self.broker.admit(data, vendor_id=vendor_id, now=now).commitment_id
        )
        assert service == reference
        return reference

    def redeem(self, vendor_id: str, claim: payword.Redemption) -> Outcome:
        """Both brokers judge the same claim; their answers and totals must be equal."""
        data = payword.encode_redemption(claim)
        tag = redeem_request_tag(self.merchant_keys[vendor_id], vendor_id, data)
        service = outcome(
            lambda: self.h.services.payword.redeem(vendor_id, data, tag).credited_units
        )
        now = self.h.clock.now()
        reference = outcome(
            lambda: self.broker.redeem(data, vendor_id=vendor_id, now=now).credited_units
        )
        assert service == reference
        for merchant_id, key in self.merchant_keys.items():
            owed = self.h.services.accounts.merchant(merchant_id).owed_micros
            currency = self.h.services.accounts.merchant(merchant_id).currency
            assert owed == self.broker.vendor_credit(merchant_id, currency), key
        return reference


@dataclass(frozen=True)
class ChainClaims:
    commitment: payword.Commitment
    seed: bytes

    def claim(self, index: int) -> payword.Redemption:
        steps = self.commitment.length - index
        value = chain_walk(payword.CHAIN_TAG, self.seed, steps)
        return payword.Redemption(commitment=self.commitment, index=index, value=value)


@pytest.fixture
def brokers(harness: Harness) -> BrokerTwins:
    twins = BrokerTwins(harness)
    twins.merchant("m1", "EUR")
    twins.merchant("m2", "EUR")
    twins.merchant("usd-shop", "USD")
    return twins


def test_good_claims_are_credited_alike(brokers: BrokerTwins) -> None:
    chain = brokers.commit("m1", 20)
    brokers.admit("m1", chain)
    assert brokers.redeem("m1", chain.claim(3)).value == 3
    assert brokers.redeem("m1", chain.claim(10)).value == 7


def test_replayed_lower_and_anchor_claims_credit_nothing_alike(brokers: BrokerTwins) -> None:
    chain = brokers.commit("m1", 20)
    brokers.admit("m1", chain)
    assert brokers.redeem("m1", chain.claim(0)).value == 0
    assert brokers.redeem("m1", chain.claim(8)).value == 8
    assert brokers.redeem("m1", chain.claim(8)).value == 0
    assert brokers.redeem("m1", chain.claim(5)).value == 0
    assert brokers.redeem("m1", chain.claim(9)).value == 1


def test_bad_claims_are_refused_alike(brokers: BrokerTwins) -> None:
    chain = brokers.commit("m1", 20)
    brokers.admit("m1", chain)
    wrong_value = replace(chain.claim(4), value=chain.claim(5).value)
    past_the_end = replace(chain.claim(20), index=21)
    for claim in (wrong_value, past_the_end):
        assert brokers.redeem("m1", claim).error == (InvalidPayment, ErrorCode.DEPOSIT_INVALID)
    # made to m1: m2 cannot claim it
    assert brokers.redeem("m2", chain.claim(4)).error is not None
    assert brokers.redeem("m1", chain.claim(4)).value == 4


def test_a_commitment_never_admitted_is_refused_alike(brokers: BrokerTwins) -> None:
    chain = brokers.commit("m1", 20)
    assert brokers.redeem("m1", chain.claim(4)).error == (
        InvalidPayment,
        ErrorCode.DEPOSIT_INVALID,
    )


def test_a_vendor_paid_in_another_currency_is_refused_alike(brokers: BrokerTwins) -> None:
    chain = brokers.commit("usd-shop", 20)
    brokers.admit("usd-shop", chain)
    assert brokers.redeem("usd-shop", chain.claim(4)).error == (
        UnsupportedMethod,
        ErrorCode.UNSUPPORTED_METHOD,
    )


def test_the_credit_limit_and_the_window_bind_alike(brokers: BrokerTwins) -> None:
    first, second = brokers.commit("m1", 60), brokers.commit("m2", 60)  # limit: 100
    brokers.admit("m1", first)
    assert brokers.admit("m2", second).error == (InsufficientFunds, ErrorCode.CREDIT_LIMIT)
    assert brokers.redeem("m1", first.claim(50)).value == 50
    assert brokers.admit("m2", second).error is None  # redeemed units no longer count
    brokers.h.clock.advance(3600 + payword.DEFAULT_REDEEM_WINDOW)
    assert brokers.redeem("m1", first.claim(60)).error == (PaymentExpired, ErrorCode.CARD_EXPIRED)
