"""The reference HLL merchant (farthing.testing) and the paywall's deferred mode judge alike.

The same Hypothesis-generated sequences of purchases (honest; retried by the same request;
replayed by another; a cloned card's stale counter; an unknown card; arriving after the
offer expired; past the per-card or the merchant's deferred cap, then online, where a card
claiming more than it was loaded is refused) run through the in-memory
:class:`~farthing.testing.hll.HllMerchant` (with :class:`DeferredRisk`) and through the
paywall's :class:`~farthing.paywall.methods.hll.HllMethod` on its real book
(:class:`~farthing.paywall.books.HllDeferredBook`, SQLite; PostgreSQL in one variant),
behind the paywall's own challenge check. Each side has its own reference bank for the
online path. Every answer (how it was taken, units, whether a retry, or the error class and
code), the deferred exposure per card and in all, and the banks' credit must be equal.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farthing.core.errors import CardExhausted, FarthingError
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll
from farthing.http.methods.hll import HllPayload
from farthing.http.payment_auth import Challenge, ChallengeBinder, JsonObject, encode_jcs_b64
from farthing.paywall.books import HllDeferredBook
from farthing.paywall.methods.base import PaymentContext
from farthing.paywall.methods.hll import HllMethod, HllMode
from farthing.paywall.pricing import Price, PricedRoute
from farthing.store import Store, open_store
from farthing.testing import DeterministicRandom
from farthing.testing.hll import HllBank, HllMerchant, SoftwareCard
from tests.pgserver import PgServer

EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
MERCHANT, MERCHANT_KEY = "shop", b"m" * 32
MASTER = b"K" * 32
CERT_KEY = b"C" * 32  # the bank's card-certification key (Ed25519 seed)
RISK = hll.DeferredRisk(limit=8, merchant_cap=14)
TTL = 300
BINDER = ChallengeBinder(b"s" * 32)
_seeds = itertools.count()


def request_for(good: str, units: int) -> JsonObject:
    """The challenge's request, as far as the binding needs it: the id binds it whole."""
    return {"amount": str(units), "currency": "micro-eur", "methodDetails": {"resource": good}}


# One step: (kind, card, units); cards: 0 certified, 1 certified but loaded with less than
# it claims, 2 without a certificate (always online).
Step = tuple[str, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(["pay", "pay", "pay", "retry", "replay", "stale", "stranger", "late"]),
        st.integers(0, 2),
        st.integers(1, 5),
    ),
    min_size=1,
    max_size=16,
)


@dataclass(frozen=True)
class Answer:
    mode: str = ""
    units: int = 0
    retried: bool = False
    error: tuple[str, int] | None = None


@dataclass(frozen=True)
class Sent:
    challenge: Challenge
    offer: hll.Offer
    purchase: hll.Purchase
    certificate: bytes | None
    request: bytes


class BankPort:
    """The paywall's bank-client port over one reference bank (the issuer answers alike:
    tests/issuer/test_differential.py)."""

    def __init__(self, bank: HllBank) -> None:
        self.bank = bank
        self.now = NOW

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        settled = self.bank.settle_online(
            hll.decode_offer(offer), hll.decode_payment(payment), self.now
        )
        return settled.repeated


def new_bank() -> HllBank:
    bank = HllBank(denomination=EUR, certification_key=CERT_KEY)
    bank.register_merchant(MERCHANT, MERCHANT_KEY)
    return bank


def software_card(card_id: bytes, claims: int) -> SoftwareCard:
    state = hll.CardState(card_id=card_id, denomination=EUR, balance=claims)
    card = SoftwareCard(
        key=hll.SoftwareCardKey(hll.derive_card_key(MASTER, card_id)), state=state, pin="1234"
    )
    card.verify_pin("1234")
    return card


class Twins:
    """The reference merchant and the paywall's HLL method, each with its own bank."""

    def __init__(self, store: Store) -> None:
        self.rng = DeterministicRandom(f"hll-differential-{next(_seeds)}")
        self.store = store
        self.ref_bank, self.paywall_bank = new_bank(), new_bank()
        self.port = BankPort(self.paywall_bank)
        bank_public = ed25519_public_key(CERT_KEY)
        self.merchant = HllMerchant(
            merchant_id=MERCHANT,
            merchant_key=MERCHANT_KEY,
            rng=self.rng,
            risk=RISK,
            bank_public_key=bank_public,
            offer_ttl=TTL,
        )
        self.method = HllMethod(
            merchant_id=MERCHANT,
            unit_micros=EUR.unit_micros,
            mode=HllMode.DEFERRED,
            bank=self.port,
            deferred=HllDeferredBook(store),
            risk=RISK,
            bank_public_key=bank_public,
        )
        self.cards: list[SoftwareCard] = []
        self.certificates: list[bytes | None] = []
        for loaded, claims, certified in ((100, 100, True), (6, 100, True), (100, 100, False)):
            card_id = self.rng(hll.CARD_ID_LEN)
            for bank in (self.ref_bank, self.paywall_bank):
                bank.register_card(card_id, hll.derive_card_key(MASTER, card_id), loaded)
            self.cards.append(software_card(card_id, claims))
            certificate = self.ref_bank.certify(card_id, NOW + 86_400) if certified else None
            self.certificates.append(certificate)
        self.clone = software_card(self.cards[0].state.card_id, 100)  # a cloned card 0
        self.sent: list[Sent] = []

    async def run(self, plan: list[Step]) -> None:
        for step in plan:
            made = self.make(step)
            if made is None:
                continue
            sent, now = made
            paywall = await self.by_paywall(sent, now)
            reference = answer(functools.partial(self.by_reference, sent, now))
            assert paywall == reference, (step, paywall, reference)
        self.assert_same_books()

    def assert_same_books(self) -> None:
        with self.store.transaction(readonly=True) as tx:
            assert tx.vendor.hll_outstanding_total() == self.merchant.outstanding_total()
            for card in self.cards:
                exposure = tx.vendor.hll_exposure(card.state.card_id)
                assert exposure == self.merchant.outstanding(card.state.card_id)
        assert self.paywall_bank.credited(MERCHANT) == self.ref_bank.credited(MERCHANT)

    def offer(self, units: int) -> tuple[Challenge, hll.Offer]:
        """A challenge as the paywall issues it, and the reference merchant's open offer
        bound to it (the same T, good, price and expiry)."""
        good = f"/a/{len(self.sent)}"
        request = request_for(good, units)
        challenge = BINDER.issue(
            realm="r", method="hll", request=request, request_b64=encode_jcs_b64(request),
            expires=NOW + TTL, nonce=self.rng(16),
        )  # fmt: skip
        raw = BINDER.verify(
            challenge.echo(), now=NOW, realm="r", request_b64=challenge.request_b64
        ).raw
        offer = self.merchant.offer(
            good=good, amount=units, denomination=EUR, now=NOW, challenge=raw
        )
        return challenge, offer

    def make(self, step: Step) -> tuple[Sent, int] | None:
        kind, which, units = step
        tag = self.rng(32)
        if kind in ("pay", "late", "stale", "stranger"):
            card = self.clone if kind == "stale" else self.cards[which]
            challenge, offer = self.offer(units)
            try:
                purchase = card.purchase(offer, NOW)
            except CardExhausted:
                return None
            certificate = self.certificates[0 if kind == "stale" else which]
            if kind == "stranger":  # a card nobody issued, showing card 0's certificate
                purchase = replace(purchase, card_id=self.rng(hll.CARD_ID_LEN))
                certificate = self.certificates[0]
            sent = Sent(challenge, offer, purchase, certificate, tag)
            self.sent.append(sent)
            return sent, offer.expires_at if kind == "late" else NOW
        if not self.sent:
            return None
        last = self.sent[-1]
        if kind == "retry":  # the same request again: its answer was lost
            return last, NOW
        return replace(last, request=tag), NOW  # "replay": the credential, another request

    async def by_paywall(self, sent: Sent, now: int) -> Answer:
        offer = sent.offer
        self.port.now = now
        try:
            challenge = BINDER.verify(
                sent.challenge.echo(), now=now, realm="r",
                request_b64=encode_jcs_b64(request_for(offer.good, offer.amount)),
            )  # fmt: skip
            context = PaymentContext(
                payload=HllPayload(
                    payment=hll.encode_payment(sent.purchase), certificate=sent.certificate
                ).to_json(),
                route=PricedRoute(
                    scope=offer.good, price=Price(micros=offer.amount * 1000, currency="EUR")
                ),
                resource=offer.good,
                challenge=challenge,
                now=now,
                request=sent.request,
            )
            settlement = await self.method.settle(context)
        except FarthingError as error:
            return Answer(error=(type(error).__name__, int(error.code)))
        receipt = settlement.receipt
        assert isinstance(receipt.mode, HllMode)
        return Answer(mode=receipt.mode.value, units=receipt.units, retried=settlement.retried)

    def by_reference(self, sent: Sent, now: int) -> Answer:
        decision, retried = self.merchant.accept(
            sent.offer,
            sent.purchase,
            now,
            certificate=sent.certificate,
            verify_online=self.ref_bank.verify_online,
            request=sent.request,
        )
        mode = HllMode.DEFERRED if decision is hll.DeferredDecision.DEFER else HllMode.ONLINE
        return Answer(mode=mode.value, units=sent.offer.amount, retried=retried)


def price(units: int) -> Price:
    return Price(micros=units * EUR.unit_micros, currency="EUR")


def answer(call: Callable[[], Answer]) -> Answer:
    try:
        return call()
    except FarthingError as error:
        return Answer(error=(type(error).__name__, int(error.code)))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_hll_purchases_are_judged_alike_on_sqlite(tmp_path: Path, plan: list[Step]) -> None:
    with open_store(str(tmp_path / f"v{next(_seeds)}.sqlite")) as store:
        asyncio.run(Twins(store).run(plan))


@pytest.mark.postgres
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_hll_purchases_are_judged_alike_on_postgresql(
    pg_server: PgServer, plan: list[Step]
) -> None:
    name = f"hll_diff_{next(_seeds)}"
    dsn = pg_server.create_database(name)
    try:
        with open_store(dsn) as store:
            asyncio.run(Twins(store).run(plan))
    finally:
        pg_server.drop_database(name)


def test_the_caps_retries_and_repeats_are_met_alike(tmp_path: Path) -> None:
    """A fixed sequence through each interesting answer, whatever Hypothesis draws."""
    plan: list[Step] = [
        ("pay", 0, 5), ("retry", 0, 0), ("replay", 0, 0), ("pay", 0, 4),  # 9 > 8: online
        ("retry", 0, 0), ("pay", 1, 5), ("pay", 1, 5), ("pay", 2, 2),  # 10: cap 14 left 4
        ("pay", 0, 3), ("stale", 0, 1), ("stranger", 0, 1), ("late", 0, 1),
    ]  # fmt: skip
    with open_store(str(tmp_path / "v.sqlite")) as store:
        twins = Twins(store)
        asyncio.run(twins.run(plan))
        assert twins.merchant.outstanding_total() == 13
