"""HLL at the bank over HTTP: personalisation, online verification, deposits."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.testing import SoftwareWrappingKey
from tests.issuer.helpers import (
    BOTH_BACKENDS,
    Harness,
    add_customer,
    assert_problem,
    balanced,
    buy,
    deposit_batch,
    deposit_body,
    open_shop,
    verify_body,
)

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


def new_card(customer: str, units: int, token: SoftwareWrappingKey) -> dict[str, object]:
    key = b64url_encode(token.public_key())
    return {"customer_id": customer, "units": units, "token_public_key": key}


def _merchant_owed(h: Harness, merchant_id: str = "m1") -> int:
    return h.services.accounts.merchant(merchant_id).owed_micros


async def test_personalise_moves_value_from_customer_to_card(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    add_customer(harness, "c1", 1_000_000)
    token = SoftwareWrappingKey()
    made = await api.post("/v1/hll/cards", json=new_card("c1", 400, token))
    assert made.status_code == 201
    body = made.json()
    card_id = b64url_decode(body["card_id"])
    master = harness.config.keys.hll_master
    # K_C leaves the bank only wrapped for the token that asked; the token unwraps it.
    assert not any("key_hex" in name for name in body)
    unwrapped = token.unwrap(b64url_decode(body["wrapped_card_key"]))
    assert unwrapped == hll.derive_card_key(master, card_id)
    assert hll.derive_card_key(master, card_id).hex() not in made.text
    certificate = hll.decode_card_certificate(b64url_decode(body["certificate"]))
    hll.verify_card_certificate(
        hll.card_certification_public_key(master),
        certificate,
        card_id=card_id,
        denomination=Denomination(currency="EUR", unit_micros=1000),
        now=harness.clock.now(),
    )
    assert certificate.expires_at == body["certificate_expires_at"]
    assert (body["units"], body["currency"], body["unit_micros"]) == (400, "EUR", 1000)
    customer = (await api.get("/v1/customers/c1")).json()
    assert customer["available_micros"] == 600_000
    card = (await api.get(f"/v1/hll/cards/{body['card_id']}")).json()
    assert (card["loaded_units"], card["spent_units"], card["status"]) == (400, 0, "active")
    assert "card_key_hex" not in card
    assert balanced(harness)


async def test_personalise_needs_funds(api: httpx.AsyncClient, harness: Harness) -> None:
    add_customer(harness, "poor", 10_000)
    token = SoftwareWrappingKey()
    response = await api.post("/v1/hll/cards", json=new_card("poor", 11, token))
    assert_problem(response, 402, ErrorCode.INSUFFICIENT_FUNDS)
    assert_problem(await api.post("/v1/hll/cards", json=new_card("x", 1, token)), 404)
    assert balanced(harness)


async def test_personalise_needs_a_token_key_and_never_answers_k_c_in_the_clear(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    add_customer(harness, "c1", 1_000_000)
    no_key = await api.post("/v1/hll/cards", json={"customer_id": "c1", "units": 1})
    assert no_key.status_code == 400
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - a refusal test
    der = small.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for junk in (b"not a key", der):
        body = {"customer_id": "c1", "units": 1, "token_public_key": b64url_encode(junk)}
        assert_problem(await api.post("/v1/hll/cards", json=body), 400, ErrorCode.BAD_FIELD)
    customer = (await api.get("/v1/customers/c1")).json()
    assert customer["available_micros"] == 1_000_000  # refused before any money moved
    assert balanced(harness)


async def test_online_verify_credits_once_and_refuses_the_replay(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    offer, purchase = buy(harness, shop, 7)
    ok = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert ok.status_code == 200, ok.text
    assert ok.json()["units"] == 7
    assert ok.json()["credited_micros"] == 7000
    assert ok.json()["repeated"] is False
    # The same purchase again (the merchant lost the answer): settled before, not charged.
    again = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert again.status_code == 200, again.text
    assert again.json()["repeated"] is True
    # The same (card, counter) under another offer (only a card key could make it): 409.
    other = replace(offer, good="/elsewhere")
    sigma = hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id)).mac(
        hll.purchase_message(shop.card_id, other, purchase.counter)
    )
    forged = replace(purchase, sigma=sigma)
    replay = await api.post("/v1/hll/verify", json=verify_body(shop, other, forged))
    assert_problem(replay, 409, ErrorCode.DUPLICATE_SPEND)
    # After the offer's expiry the purchase is refused like any other.
    harness.clock.set(offer.expires_at)
    late = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert late.status_code == 402, late.text
    assert _merchant_owed(harness) == 7000
    with harness.store.transaction(readonly=True) as tx:
        card = tx.hll.card(shop.card_id)
    assert card is not None
    assert card.spent_units == 7
    assert balanced(harness)


async def test_online_verifies_arriving_together_each_settle_once(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    """Verifications in flight together share the bank's group commit; each gets its own
    answer, and the same purchase twice among them is charged once (the copy is answered
    `repeated`) without taking the others with it."""
    shop = open_shop(harness)
    bought = [buy(harness, shop, 2) for _ in range(8)]
    bodies = [verify_body(shop, offer, purchase) for offer, purchase in bought]
    bodies.append(bodies[3])  # the same purchase again, in the same moment
    answers = await asyncio.gather(*(api.post("/v1/hll/verify", json=b) for b in bodies))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 9, [a.text for a in answers]
    assert sorted(a.json()["repeated"] for a in answers) == [False] * 8 + [True]
    assert _merchant_owed(harness) == 8 * 2000
    with harness.store.transaction(readonly=True) as tx:
        card = tx.hll.card(shop.card_id)
    assert card is not None
    assert card.spent_units == 16
    assert balanced(harness)


async def test_online_verify_refusals(api: httpx.AsyncClient, harness: Harness) -> None:
    shop = open_shop(harness)
    offer, purchase = buy(harness, shop, 2)
    bad_tag = verify_body(shop, offer, purchase, key=bytes(32))
    assert_problem(await api.post("/v1/hll/verify", json=bad_tag), 401, ErrorCode.UNAUTHENTICATED)
    unknown = {**verify_body(shop, offer, purchase), "merchant_id": "nobody"}
    assert_problem(await api.post("/v1/hll/verify", json=unknown), 401, ErrorCode.UNAUTHENTICATED)
    forged = hll.Purchase(card_id=purchase.card_id, counter=purchase.counter, sigma=bytes(32))
    response = await api.post("/v1/hll/verify", json=verify_body(shop, offer, forged))
    assert_problem(response, 401, ErrorCode.PAYMENT_INVALID)
    stranger = hll.Purchase(card_id=bytes(16), counter=1, sigma=purchase.sigma)
    response = await api.post("/v1/hll/verify", json=verify_body(shop, offer, stranger))
    assert_problem(response, 401, ErrorCode.PAYMENT_INVALID)
    harness.clock.advance(301)
    response = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert_problem(response, 402, ErrorCode.CHALLENGE_EXPIRED)
    assert _merchant_owed(harness) == 0
    assert balanced(harness)


async def test_offer_for_another_merchant_is_refused(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    offer, purchase = buy(harness, shop, 2)
    other_key = harness.services.accounts.create_merchant("t", "m2", "EUR").key
    shop.merchant_id, shop.merchant_key = "m2", other_key  # m2 forwards m1's payment
    response = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert_problem(response, 403, ErrorCode.ACCESS_DENIED)


async def test_card_cannot_be_overspent_at_the_bank(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness, units=5)
    # A broken card that does not keep its balance: the bank's cap still holds.
    shop.card._state = hll.CardState(
        card_id=shop.card_id, denomination=shop.card.state.denomination, balance=100
    )
    offer, purchase = buy(harness, shop, 6)
    response = await api.post("/v1/hll/verify", json=verify_body(shop, offer, purchase))
    assert_problem(response, 402, ErrorCode.INSUFFICIENT_FUNDS)
    assert balanced(harness)


async def test_deposit_settles_reports_and_is_idempotent(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    online = buy(harness, shop, 1)
    assert (await api.post("/v1/hll/verify", json=verify_body(shop, *online))).status_code == 200
    items = [buy(harness, shop, 2), buy(harness, shop, 3)]
    offer, purchase = buy(harness, shop, 4)
    forged = (offer, hll.Purchase(card_id=shop.card_id, counter=purchase.counter, sigma=bytes(32)))
    batch, tag = deposit_batch(harness, shop, [*items, online, forged, items[0]])

    first = await api.post("/v1/hll/deposits", json=deposit_body(batch, tag))
    assert first.status_code == 200, first.text
    report = first.json()
    assert [(p["counter"], p["units"]) for p in report["accepted"]] == [(2, 2), (3, 3)]
    assert [p["counter"] for p in report["duplicates"]] == [1, 2]  # online before; repeat
    assert [p["counter"] for p in report["invalid"]] == [4]
    assert (report["credited_units"], report["credited_micros"]) == (5, 5000)
    assert report["replayed"] is False
    decoded = hll.decode_report(b64url_decode(report["report"]))
    assert decoded.credited == 5

    again = await api.post("/v1/hll/deposits", json=deposit_body(batch, tag))
    assert again.json() == {**report, "replayed": True}
    assert _merchant_owed(harness) == 6000  # 1 online + 5 deposited, exactly once
    assert balanced(harness)


async def test_reused_batch_id_with_other_items_is_409(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    batch, tag = deposit_batch(harness, shop, [buy(harness, shop, 2)])
    assert (await api.post("/v1/hll/deposits", json=deposit_body(batch, tag))).status_code == 200
    other, other_tag = deposit_batch(harness, shop, [buy(harness, shop, 3)], batch.batch_id)
    response = await api.post("/v1/hll/deposits", json=deposit_body(other, other_tag))
    assert_problem(response, 409, ErrorCode.CONFLICT)
    assert _merchant_owed(harness) == 2000
    assert balanced(harness)


async def test_deposit_with_a_bad_tag_or_merchant_is_401(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    batch, _tag = deposit_batch(harness, shop, [buy(harness, shop, 2)])
    response = await api.post("/v1/hll/deposits", json=deposit_body(batch, bytes(32)))
    assert_problem(response, 401, ErrorCode.DEPOSIT_INVALID)
    shop.merchant_id = "ghost"
    ghost, ghost_tag = deposit_batch(harness, shop, [])
    response = await api.post("/v1/hll/deposits", json=deposit_body(ghost, ghost_tag))
    assert_problem(response, 401, ErrorCode.DEPOSIT_INVALID)


async def test_deposit_window_and_card_balance(api: httpx.AsyncClient, harness: Harness) -> None:
    shop = open_shop(harness, units=10)
    late = buy(harness, shop, 2)
    harness.clock.advance(harness.config.hll_deposit_window + 301)
    fresh = [buy(harness, shop, 5), buy(harness, shop, 3)]
    batch, tag = deposit_batch(harness, shop, [late, *fresh])
    report = (await api.post("/v1/hll/deposits", json=deposit_body(batch, tag))).json()
    assert [p["counter"] for p in report["invalid"]] == [1]
    assert report["credited_units"] == 8
    with harness.store.transaction(readonly=True) as tx:
        card = tx.hll.card(shop.card_id)
    assert card is not None
    assert card.spent_units == 8
    assert balanced(harness)


async def test_unknown_card_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/v1/hll/cards/{b64url_encode(bytes(16))}")
    assert_problem(response, 404, ErrorCode.NOT_FOUND)


def _lookup_body(merchant_id: str, key: bytes, batch_id: bytes) -> dict[str, str]:
    from farthing.http.issuer_wire import deposit_lookup_tag

    tag = deposit_lookup_tag(key, merchant_id, batch_id)
    return {
        "merchant_id": merchant_id,
        "batch_id": b64url_encode(batch_id),
        "tag": b64url_encode(tag),
    }


async def test_a_merchant_can_ask_what_the_bank_did_with_a_batch(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    shop = open_shop(harness)
    batch, tag = deposit_batch(harness, shop, [buy(harness, shop, 2), buy(harness, shop, 3)])
    lookup = _lookup_body(shop.merchant_id, shop.merchant_key, batch.batch_id)
    unknown = await api.post("/v1/hll/deposits/lookup", json=lookup)
    assert_problem(unknown, 404, ErrorCode.NOT_FOUND)
    first = await api.post("/v1/hll/deposits", json=deposit_body(batch, tag))
    known = await api.post("/v1/hll/deposits/lookup", json=lookup)
    assert known.status_code == 200
    assert known.json() == {**first.json(), "replayed": True}
    forged = _lookup_body(shop.merchant_id, bytes(32), batch.batch_id)
    assert_problem(await api.post("/v1/hll/deposits/lookup", json=forged), 401)
    assert _merchant_owed(harness) == 5000  # asking credits nothing
