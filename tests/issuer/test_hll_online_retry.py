"""Idempotent retry for ``hll:mac`` online: a vendor (paywall) in front of the real bank
(the issuer app, in process), both on a real store. The same paid request sent again after
its answer was lost gets the good again; the bank charges the card and credits the
merchant once (docs/http.md, "Retrying a paid request")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.schemes import hll
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.issuer import IssuerClient
from farthing.paywall.app import HllSettings, VendorSettings, create_vendor_app
from farthing.paywall.methods.hll import HllMode
from farthing.testing import DeterministicRandom
from tests.issuer.helpers import BOTH_BACKENDS, EUR, Harness, Shop, open_shop
from tests.paywall.helpers import content, prices

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


@dataclass
class Online:
    harness: Harness
    shop: Shop
    client: httpx.AsyncClient

    async def challenge(self, path: str = "/articles/a", *, verb: str = "GET") -> Challenge:
        response = await self.client.request(verb, path)
        assert response.status_code == 402
        return parse_challenges(response.headers.get_list("www-authenticate"))[0]

    def pay(self, challenge: Challenge, path: str, method: str = "GET") -> dict[str, str]:
        request = challenge.request
        details = request["methodDetails"]
        assert isinstance(details, dict)
        offer = hll.Offer(
            merchant_id=str(request["recipient"]),
            good=path,
            amount=int(str(details["units"])),
            denomination=EUR,
            challenge=b64url_decode(challenge.id),
            expires_at=challenge.expires,
        )
        purchase = self.shop.card.purchase(offer, self.harness.clock.now())
        payload = {"payment": b64url_encode(hll.encode_payment(purchase))}
        return {"authorization": format_credential(Credential.answering(challenge, payload))}

    def spent_units(self) -> int:
        with self.harness.store.transaction(readonly=True) as tx:
            card = tx.hll.card(self.shop.card_id)
        assert card is not None
        return card.spent_units

    def owed_micros(self) -> int:
        return self.harness.services.accounts.merchant(self.shop.merchant_id).owed_micros


@pytest.fixture
async def online(harness: Harness) -> AsyncIterator[Online]:
    shop = open_shop(harness)
    settings = VendorSettings(
        realm="news",
        challenge_secret=b"s" * 32,
        hll=HllSettings(
            merchant_id=shop.merchant_id,
            merchant_key=shop.merchant_key,
            unit_micros=1000,
            mode=HllMode.ONLINE,
        ),
    )
    async with IssuerClient(
        "http://bank.test",
        merchant_id=shop.merchant_id,
        merchant_key=shop.merchant_key,
        transport=httpx.ASGITransport(app=harness.app),
    ) as bank:
        app = create_vendor_app(
            settings,
            content=content(),
            prices=prices(),
            store=harness.store,
            bank=bank,
            clock=harness.clock,
            rng=DeterministicRandom("vendor"),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
            yield Online(harness=harness, shop=shop, client=client)


async def test_the_same_request_again_gets_the_good_and_the_bank_charges_once(
    online: Online,
) -> None:
    challenge = await online.challenge()
    headers = online.pay(challenge, "/articles/a")
    first = await online.client.get("/articles/a", headers=headers)  # its answer is "lost"
    again = await online.client.get("/articles/a", headers=headers)
    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert again.text == first.text == "secret article a"
    before = Receipt.from_header(first.headers["payment-receipt"])
    after = Receipt.from_header(again.headers["payment-receipt"])
    assert (after.reference, after.extra) == (before.reference, before.extra)
    assert online.spent_units() == 2
    assert online.owed_micros() == 2000


async def test_the_same_credential_elsewhere_or_late_is_refused(online: Online) -> None:
    challenge = await online.challenge()
    headers = online.pay(challenge, "/articles/a")
    assert (await online.client.get("/articles/a", headers=headers)).status_code == 200
    elsewhere = await online.client.get("/articles/b", headers=headers)  # the MAC is for /a
    online.harness.clock.set(challenge.expires)
    late = await online.client.get("/articles/a", headers=headers)
    assert elsewhere.status_code == 402
    assert late.status_code == 402
    assert b"secret" not in elsewhere.content + late.content
    assert online.spent_units() == 2
    assert online.owed_micros() == 2000


async def test_a_request_that_may_not_be_retried_is_refused_again(online: Online) -> None:
    # POST is not retried (calling the app again could repeat its effect): its repeat is
    # refused as a duplicate, as before.
    challenge = await online.challenge(verb="POST")  # bound to its (empty) body: a digest
    assert challenge.digest is not None
    headers = online.pay(challenge, "/articles/a")
    first = await online.client.post("/articles/a", headers=headers)
    repeat = await online.client.post("/articles/a", headers=headers)
    assert first.status_code == 405  # paid, then the app answers (it serves GET only)
    assert repeat.status_code == 402
    assert online.spent_units() == 2


async def test_two_identical_requests_at_once_are_charged_once(online: Online) -> None:
    challenge = await online.challenge()
    headers = online.pay(challenge, "/articles/a")
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await online.client.get("/articles/a", headers=headers))

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(send)
    # One delivery (-02 "Concurrent Request Handling"): the copies that met it in flight
    # are refused as in progress (before: 6 deliveries of 6).
    assert sorted(a.status_code for a in answers) == [200] + [402] * 5, [a.text for a in answers]
    assert [a.text for a in answers if a.status_code == 200] == ["secret article a"]
    assert online.spent_units() == 2
    assert online.owed_micros() == 2000


async def test_a_used_challenge_id_takes_no_new_purchase(online: Online) -> None:
    """-02 "Status Codes": an already-used challenge id is 402 invalid-challenge. A second
    purchase (the card's next counter) under the id that paid before is refused before the
    bank is asked: the card is not charged, the merchant not credited (before: 200, the
    card charged twice)."""
    challenge = await online.challenge()
    first = await online.client.get("/articles/a", headers=online.pay(challenge, "/articles/a"))
    assert first.status_code == 200, first.text
    second = await online.client.get("/articles/a", headers=online.pay(challenge, "/articles/a"))
    elsewhere = await online.client.get("/articles/b", headers=online.pay(challenge, "/articles/b"))
    for refused in (second, elsewhere):
        assert refused.status_code == 402, refused.text
        assert refused.json()["type"].endswith("/invalid-challenge")
        assert refused.json()["farthingCode"] == ErrorCode.CHALLENGE_INVALID
        assert b"secret" not in refused.content
    assert online.spent_units() == 2
    assert online.owed_micros() == 2000
