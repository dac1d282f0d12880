"""Builders shared by the issuer tests: a harness, customers, merchants, cards, payments."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.issuer_wire import verify_request_tag
from farthing.issuer import IssuerConfig, IssuerServices
from farthing.store import Store
from farthing.testing import DeterministicRandom, FixedClock
from farthing.testing.hll import SoftwareCard

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
BOTH_BACKENDS = pytest.mark.parametrize("store_target", BACKENDS, indirect=True)
"""Marks a module or test to run on SQLite and on the throwaway PostgreSQL."""

EUR = Denomination(currency="EUR", unit_micros=1000)
PIN = "1234"
ACTOR = "test:setup"


@dataclass
class Harness:
    target: str
    store: Store
    clock: FixedClock
    rng: DeterministicRandom
    config: IssuerConfig
    app: FastAPI
    services: IssuerServices
    token: str


@dataclass
class Shop:
    """A customer with a personalised HLL card, and a merchant with its key."""

    merchant_id: str
    merchant_key: bytes
    card: SoftwareCard
    card_id: bytes


def add_customer(h: Harness, customer_id: str = "c1", micros: int = 10_000_000) -> None:
    h.services.accounts.create_customer(ACTOR, customer_id, "EUR")
    if micros:
        h.services.accounts.load(ACTOR, customer_id, micros, f"cash-{customer_id}")


def add_merchant(h: Harness, merchant_id: str = "m1", currency: str = "EUR") -> bytes:
    return h.services.accounts.create_merchant(ACTOR, merchant_id, currency).key


def new_card(h: Harness, customer_id: str = "c1", units: int = 1000) -> SoftwareCard:
    made = h.services.hll.personalise(ACTOR, customer_id, units=units, unit_micros=1000)
    state = hll.CardState(card_id=made.card_id, denomination=made.denomination, balance=units)
    card = SoftwareCard(key=hll.SoftwareCardKey(made.card_key), state=state, pin=PIN)
    card.verify_pin(PIN)
    return card


def open_shop(h: Harness, *, units: int = 1000) -> Shop:
    add_customer(h)
    key = add_merchant(h)
    card = new_card(h, units=units)
    return Shop(merchant_id="m1", merchant_key=key, card=card, card_id=card.state.card_id)


def buy(
    h: Harness, shop: Shop, amount: int = 3, *, good: str = "/a", ttl: int = 300
) -> tuple[hll.Offer, hll.Purchase]:
    offer = hll.make_offer(
        merchant_id=shop.merchant_id,
        good=good,
        amount=amount,
        denomination=EUR,
        rng=h.rng,
        now=h.clock.now(),
        ttl=ttl,
    )
    return offer, shop.card.purchase(offer, h.clock.now())


def verify_body(
    shop: Shop, offer: hll.Offer, purchase: hll.Purchase, *, key: bytes | None = None
) -> dict[str, str]:
    offer_bytes, payment = hll.encode_offer(offer), hll.encode_payment(purchase)
    tag = verify_request_tag(key or shop.merchant_key, shop.merchant_id, offer_bytes, payment)
    return {
        "merchant_id": shop.merchant_id,
        "offer": b64url_encode(offer_bytes),
        "payment": b64url_encode(payment),
        "tag": b64url_encode(tag),
    }


def deposit_batch(
    h: Harness,
    shop: Shop,
    items: list[tuple[hll.Offer, hll.Purchase]],
    batch_id: bytes | None = None,
) -> tuple[hll.DepositBatch, bytes]:
    batch = hll.DepositBatch(
        batch_id=batch_id or h.rng(hll.BATCH_ID_LEN),
        merchant_id=shop.merchant_id,
        items=tuple(hll.DepositItem(offer=o, purchase=p) for o, p in items),
    )
    return batch, hll.batch_tag(shop.merchant_key, batch)


def deposit_body(batch: hll.DepositBatch, tag: bytes) -> dict[str, str]:
    return {"batch": b64url_encode(hll.encode_batch(batch)), "tag": b64url_encode(tag)}


def assert_problem(response: object, status: int, code: int | None = None) -> dict[str, object]:
    """The response is an RFC 9457 problem with this status (and code); never a 500."""
    from httpx import Response

    assert isinstance(response, Response)
    assert response.status_code != 500, response.text
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["farthingCode"] == code, body
    return dict(body)


def balanced(h: Harness) -> bool:
    check = h.store.check_ledger()
    assert check.balanced, check.problems
    return check.balanced


def answered_calls(bank: str, token: str, routes: Iterable[str]) -> dict[str, float]:
    """Calls of these routes the bank has answered 200, by route (from its metrics)."""
    text = httpx.get(f"{bank}/metrics", headers={"authorization": f"Bearer {token}"}).text
    calls = dict.fromkeys(routes, 0.0)
    for line in text.splitlines():
        if line.startswith("farthing_http_requests_total{") and 'status="200"' in line:
            for route in calls:
                if f'route="{route}"' in line:
                    calls[route] += float(line.rsplit(" ", 1)[1])
    return calls
