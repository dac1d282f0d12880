"""Paying a priced route with an HLL smart card, online (bank) and deferred (risk-bounded)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InsufficientFunds, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    format_credential,
    parse_challenges,
)
from farthing.testing import DeterministicRandom, FixedClock
from farthing.vendor.methods.hll import HllMethod, HllMode, PendingPurchase
from farthing.vendor.middleware import Paywall
from farthing.vendor.pricing import Price, PriceTable

pytestmark = pytest.mark.anyio
EUR = Denomination(currency="EUR", unit_micros=1000)
MASTER = b"K" * 32
CARD_ID = b"c" * 16


class LocalBank:
    """The core's in-memory HllBank behind the vendor's async bank-client port."""

    def __init__(self, clock: FixedClock) -> None:
        self.bank = hll.HllBank(denomination=EUR)
        self.clock = clock

    async def verify_online(self, offer: bytes, payment: bytes) -> None:
        self.bank.verify_online(
            hll.decode_offer(offer), hll.decode_payment(payment), self.clock.now()
        )


class MemoryLog:
    def __init__(self) -> None:
        self.rows: dict[tuple[bytes, int], PendingPurchase] = {}

    def record(self, purchase: PendingPurchase, *, risk_limit: int) -> None:
        if (purchase.card_id, purchase.counter) in self.rows:
            raise InvalidPayment("payment did not verify")
        outstanding = sum(p.amount for (c, _), p in self.rows.items() if c == purchase.card_id)
        if outstanding + purchase.amount > risk_limit:
            raise InsufficientFunds("risk", code=ErrorCode.RISK_LIMIT)
        self.rows[(purchase.card_id, purchase.counter)] = purchase


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("article")


def card(balance: int = 100) -> hll.SoftwareCard:
    key = hll.derive_card_key(MASTER, CARD_ID)
    state = hll.CardState(
        card_id=CARD_ID, denomination=EUR, balance=balance, counter=0, pin_tries_left=3
    )
    c = hll.SoftwareCard(key=hll.SoftwareCardKey(key), state=state, pin="1234")
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
    return hll.Offer(
        merchant_id=str(request["merchant"]),
        good=path,
        amount=int(str(request["units"])),
        denomination=Denomination(
            currency=str(request["currency"]), unit_micros=int(str(request["unitMicros"]))
        ),
        challenge=b64url_decode(challenge.id),
        expires_at=challenge.expires,
    )


def auth(challenge: Challenge, purchase: hll.Purchase) -> dict[str, str]:
    payload = {"method": "hll:mac", "payment": b64url_encode(hll.encode_payment(purchase))}
    return {"authorization": format_credential(Credential(id=challenge.id, payload=payload))}


async def get_challenge(c: httpx.AsyncClient) -> Challenge:
    return parse_challenges((await c.get("/articles/a")).headers.get_list("www-authenticate"))[0]


async def test_online_mode_pays_once_through_the_bank() -> None:
    clock = FixedClock()
    bank = LocalBank(clock)
    bank.bank.register_card(CARD_ID, hll.derive_card_key(MASTER, CARD_ID), 100)
    bank.bank.register_merchant("shop", b"m" * 32)
    method = HllMethod(merchant_id="shop", unit_micros=1000, mode=HllMode.ONLINE, bank=bank)
    the_card = card()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paywall(method, clock)), base_url="http://v"
    ) as c:
        challenge = await get_challenge(c)
        assert challenge.request["units"] == 3
        purchase = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
        ok = await c.get("/articles/a", headers=auth(challenge, purchase))
        replay = await c.get("/articles/a", headers=auth(challenge, purchase))
        other_path = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
        wrong_good = await c.get("/articles/b", headers=auth(challenge, other_path))
    assert ok.status_code == 200
    assert replay.status_code == 409
    assert wrong_good.status_code == 401  # the card signed another good
    assert bank.bank.credited("shop") == 3
    assert the_card.state.balance == 94


async def test_deferred_mode_bounds_risk_per_card() -> None:
    clock = FixedClock()
    log = MemoryLog()
    method = HllMethod(
        merchant_id="shop", unit_micros=1000, mode=HllMode.DEFERRED, deferred=log, risk_limit=7
    )
    the_card = card()
    statuses = []
    purchases = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paywall(method, clock)), base_url="http://v"
    ) as c:
        challenge = await get_challenge(c)
        for _ in range(3):
            purchases.append(the_card.purchase(offer_from(challenge, "/articles/a"), clock.now()))
            statuses.append(await c.get("/articles/a", headers=auth(challenge, purchases[-1])))
        replay = await c.get("/articles/a", headers=auth(challenge, purchases[0]))
    assert [r.status_code for r in statuses] == [200, 200, 402]
    assert statuses[2].json()["code"] == ErrorCode.RISK_LIMIT
    assert replay.status_code == 401
    assert sorted(counter for _, counter in log.rows) == [1, 2]
    offer = hll.decode_offer(log.rows[(CARD_ID, 1)].offer)
    assert (offer.good, offer.amount, offer.merchant_id) == ("/articles/a", 3, "shop")


def test_mode_needs_its_port() -> None:
    with pytest.raises(ValueError):
        HllMethod(merchant_id="m", unit_micros=1, mode=HllMode.ONLINE)
    with pytest.raises(ValueError):
        HllMethod(merchant_id="m", unit_micros=1, mode=HllMode.DEFERRED, deferred=MemoryLog())
