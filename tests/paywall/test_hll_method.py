"""Paying a priced route with an HLL smart card, online (bank) and deferred (risk-bounded)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, Unavailable
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    format_credential,
    parse_challenges,
)
from farthing.paywall.methods.hll import (
    DeferredPolicy,
    DeferredRecord,
    HllMethod,
    HllMode,
    PendingPurchase,
)
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock
from farthing.testing.hll import HllBank, SoftwareCard

pytestmark = pytest.mark.anyio
EUR = Denomination(currency="EUR", unit_micros=1000)
MASTER = b"K" * 32
CARD_ID = b"c" * 16


CERT_KEY = b"C" * 32  # the bank's card-certification key (Ed25519 seed)
BANK_PUBLIC = ed25519_public_key(CERT_KEY)


class LocalBank:
    """The core's in-memory HllBank behind the vendor's async bank-client port; counts how
    often the vendor asked it (``online``), and can be switched off (``down``)."""

    def __init__(self, clock: FixedClock) -> None:
        self.bank = HllBank(denomination=EUR, certification_key=CERT_KEY)
        self.bank.register_merchant("shop", b"m" * 32)
        self.clock = clock
        self.online = 0
        self.down = False

    def card(self, card_id: bytes = CARD_ID, balance: int = 100) -> tuple[SoftwareCard, bytes]:
        """A personalised card and its certificate."""
        self.bank.register_card(card_id, hll.derive_card_key(MASTER, card_id), balance)
        return card(balance, card_id), self.bank.certify(card_id, self.clock.now() + 86_400)

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        self.online += 1
        if self.down:
            raise Unavailable("the bank is down", retry_after=5, code=ErrorCode.ISSUER_UNAVAILABLE)
        self.bank.verify_online(
            hll.decode_offer(offer), hll.decode_payment(payment), self.clock.now()
        )
        return False  # the in-memory bank refuses a repeat outright


class MemoryLog:
    """The vendor store's contract in memory: deferred rows (``rows``, what the merchant is
    owed unverified) and the (card, counter) pairs the bank verified online."""

    def __init__(self) -> None:
        self.rows: dict[tuple[bytes, int], PendingPurchase] = {}
        self.online: set[tuple[bytes, int]] = set()

    def record_online(self, purchase: PendingPurchase) -> None:
        self.online.add((purchase.card_id, purchase.counter))

    def record(self, purchase: PendingPurchase, *, decide: DeferredPolicy) -> DeferredRecord:
        pair = (purchase.card_id, purchase.counter)
        if pair in self.rows or pair in self.online:
            raise InvalidPayment("payment did not verify")
        card = sum(p.amount for (c, _), p in self.rows.items() if c == purchase.card_id)
        decision = decide(card, sum(p.amount for p in self.rows.values()))
        deferred = decision is hll.DeferredDecision.DEFER
        if deferred:
            self.rows[(purchase.card_id, purchase.counter)] = purchase
        return DeferredRecord(deferred=deferred, retried=False)


def deferred_method(
    bank: LocalBank, log: MemoryLog, *, risk_limit: int = 10, merchant_cap: int = 1000
) -> HllMethod:
    return HllMethod(
        merchant_id="shop",
        unit_micros=1000,
        mode=HllMode.DEFERRED,
        bank=bank,
        deferred=log,
        risk=hll.DeferredRisk(limit=risk_limit, merchant_cap=merchant_cap),
        bank_public_key=BANK_PUBLIC,
    )


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("article")


def card(balance: int = 100, card_id: bytes = CARD_ID) -> SoftwareCard:
    key = hll.derive_card_key(MASTER, card_id)
    state = hll.CardState(
        card_id=card_id, denomination=EUR, balance=balance, counter=0, pin_tries_left=3
    )
    c = SoftwareCard(key=hll.SoftwareCardKey(key), state=state, pin="1234")
    c.verify_pin("1234")
    return c


def paywall(method: HllMethod, clock: FixedClock) -> Paywall:
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=3000, currency="EUR"))
    app = Starlette(routes=[Route("/articles/{slug}", article)])
    return Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[method],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )


def offer_from(challenge: Challenge, path: str) -> hll.Offer:
    """What a wallet builds from the challenge (docs/http.md)."""
    request = challenge.request
    details = request["methodDetails"]
    assert isinstance(details, dict)
    return hll.Offer(
        merchant_id=str(request["recipient"]),
        good=path,
        amount=int(str(details["units"])),
        denomination=Denomination(
            currency=str(request["currency"]).removeprefix("micro-").upper(),
            unit_micros=int(str(details["unitMicros"])),
        ),
        challenge=b64url_decode(challenge.id),
        expires_at=challenge.expires,
    )


def auth(
    challenge: Challenge, purchase: hll.Purchase, certificate: bytes | None = None
) -> dict[str, str]:
    payload = {"payment": b64url_encode(hll.encode_payment(purchase))}
    if certificate is not None:
        payload["certificate"] = b64url_encode(certificate)
    return {"authorization": format_credential(Credential.answering(challenge, payload))}


async def get_challenge(c: httpx.AsyncClient) -> Challenge:
    return parse_challenges((await c.get("/articles/a")).headers.get_list("www-authenticate"))[0]


async def test_online_mode_pays_once_through_the_bank() -> None:
    clock = FixedClock()
    bank = LocalBank(clock)
    the_card, _ = bank.card()
    method = HllMethod(merchant_id="shop", unit_micros=1000, mode=HllMode.ONLINE, bank=bank)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paywall(method, clock)), base_url="http://v"
    ) as c:
        challenge = await get_challenge(c)
        assert challenge.request["methodDetails"]["units"] == 3
        purchase = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
        ok = await c.get("/articles/a", headers=auth(challenge, purchase))
        replay = await c.get("/articles/a", headers=auth(challenge, purchase))
        other_path = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
        wrong_good = await c.get("/articles/b", headers=auth(challenge, other_path))
    assert ok.status_code == 200
    assert replay.status_code == 402
    assert wrong_good.status_code == 402  # the card signed another good
    assert bank.bank.credited("shop") == 3
    assert the_card.state.balance == 94


async def pay(
    c: httpx.AsyncClient,
    the_card: SoftwareCard,
    certificate: bytes | None,
    clock: FixedClock,
    path: str = "/articles/a",
) -> httpx.Response:
    challenge = await get_challenge(c)
    purchase = the_card.purchase(offer_from(challenge, path), clock.now())
    return await c.get(path, headers=auth(challenge, purchase, certificate))


def mode(answer: httpx.Response) -> str:
    """How the vendor took the payment, from its receipt."""
    receipt = json.loads(b64url_decode(answer.headers["payment-receipt"]))
    return str(receipt["mode"])


def client(method: HllMethod, clock: FixedClock) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paywall(method, clock)), base_url="http://v"
    )


async def test_deferred_mode_bounds_risk_per_card_then_goes_online() -> None:
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    the_card, certificate = bank.card()
    async with client(deferred_method(bank, log, risk_limit=7), clock) as c:
        statuses = [await pay(c, the_card, certificate, clock) for _ in range(3)]
        bank.down = True
        refused = await pay(c, the_card, certificate, clock)
    assert [r.status_code for r in statuses] == [200, 200, 200]
    assert [mode(r) for r in statuses] == ["deferred", "deferred", "online"]  # 9 > 7
    assert bank.online == 2
    assert bank.bank.credited("shop") == 3
    assert refused.status_code >= 500  # past the card's limit and the bank is down
    assert sorted(counter for _, counter in log.rows) == [1, 2]
    offer = hll.decode_offer(log.rows[(CARD_ID, 1)].offer)
    assert (offer.good, offer.amount, offer.merchant_id) == ("/articles/a", 3, "shop")


async def test_fifty_made_up_cards_get_nothing_from_a_deferred_vendor() -> None:
    """The attack: random card ids, counter 1, random MACs. Today's code served 50 of 50
    (risk counted per card id taken from the request); now each goes online and the bank
    refuses it, with and without a (real, but another card's) certificate."""
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    _, real_certificate = bank.card()
    served = 0
    async with client(deferred_method(bank, log), clock) as c:
        for attempt in range(50):
            challenge = await get_challenge(c)
            forged = hll.Purchase(card_id=os.urandom(16), counter=1, sigma=os.urandom(32))
            certificate = real_certificate if attempt % 2 else None
            answer = await c.get("/articles/a", headers=auth(challenge, forged, certificate))
            served += answer.status_code == 200 or answer.text == "article"
    assert served == 0
    assert bank.online == 50  # every one was put to the bank
    assert log.rows == {}


async def test_an_honest_certified_card_buys_deferred_while_the_bank_is_down() -> None:
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    the_card, certificate = bank.card()
    bank.down = True
    async with client(deferred_method(bank, log), clock) as c:
        answer = await pay(c, the_card, certificate, clock)
    assert answer.status_code == 200
    assert answer.text == "article"
    assert mode(answer) == "deferred"
    assert bank.online == 0
    assert list(log.rows) == [(CARD_ID, 1)]


async def test_past_the_merchant_cap_honest_purchases_go_online() -> None:
    """Five honest cards, 3 units each, per-card limit 10, merchant cap 9: three are taken
    deferred, the next two go online (today's code took all five deferred: no such cap)."""
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    cards = [bank.card(bytes([n]) * 16) for n in range(5)]
    async with client(deferred_method(bank, log, merchant_cap=9), clock) as c:
        answers = [await pay(c, the_card, cert, clock) for the_card, cert in cards]
    assert [a.status_code for a in answers] == [200] * 5
    assert [mode(a) for a in answers] == ["deferred"] * 3 + ["online"] * 2
    assert len(log.rows) == 3
    assert sum(p.amount for p in log.rows.values()) == 9
    assert bank.online == 2
    assert bank.bank.credited("shop") == 6


async def test_bad_certificates_are_not_taken_deferred() -> None:
    """A forged certificate, another card's and an expired one: each payment goes online
    (the bank is down here, so none is served) and nothing is recorded for deposit."""
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    the_card, good = bank.card()
    _, another = bank.card(b"o" * 16)
    real = hll.decode_card_certificate(good)
    forged = hll.issue_card_certificate(
        b"F" * 32, card_id=CARD_ID, denomination=EUR, expires_at=real.expires_at
    )
    expired = hll.issue_card_certificate(
        CERT_KEY, card_id=CARD_ID, denomination=EUR, expires_at=clock.now()
    )
    bank.down = True
    async with client(deferred_method(bank, log), clock) as c:
        answers = [
            await pay(c, the_card, cert, clock)
            for cert in (hll.encode_card_certificate(forged), another,
                         hll.encode_card_certificate(expired))
        ]  # fmt: skip
        garbled = await pay(c, the_card, good[:-1], clock)
        honest = await pay(c, the_card, good, clock)
    assert [a.status_code >= 500 for a in answers] == [True, True, True]
    assert bank.online == 3
    assert garbled.status_code == 402  # bytes that are no certificate: refused outright
    assert honest.status_code == 200
    assert list(log.rows) == [(CARD_ID, 5)]


def test_mode_needs_its_port() -> None:
    with pytest.raises(ValueError):
        HllMethod(merchant_id="m", unit_micros=1, mode=HllMode.ONLINE)
    with pytest.raises(ValueError):
        HllMethod(
            merchant_id="m",
            unit_micros=1,
            mode=HllMode.DEFERRED,
            bank=LocalBank(FixedClock()),
            deferred=MemoryLog(),
        )


async def test_a_payment_taken_online_is_not_taken_again_deferred() -> None:
    """Over its card's limit a payment goes online; sent again once the limit has room (the
    first purchase settled), it is refused rather than delivered a second time on credit."""
    clock = FixedClock()
    bank, log = LocalBank(clock), MemoryLog()
    the_card, certificate = bank.card()
    async with client(deferred_method(bank, log, risk_limit=3), clock) as c:
        first = await pay(c, the_card, certificate, clock)
        challenge = await get_challenge(c)
        purchase = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
        online = await c.get("/articles/a", headers=auth(challenge, purchase, certificate))
        del log.rows[(CARD_ID, 1)]  # the bank settled the first: the card's limit has room
        again = await c.get("/articles/a", headers=auth(challenge, purchase, certificate))
    assert (mode(first), mode(online)) == ("deferred", "online")
    assert again.status_code == 402
    assert list(log.rows) == []
    assert bank.bank.credited("shop") == 3
