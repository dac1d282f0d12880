"""Paying a priced route with PayWord through the paywall (in memory, no sockets)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.http.payment_auth import Credential, Receipt, format_credential, parse_challenges
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.payword import PaywordScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.testing.payword import PaywordSpender

pytestmark = pytest.mark.anyio
EUR = Denomination(currency="EUR", unit_micros=1000)
BROKER_KEY = b"B" * 32
USER_KEY = b"U" * 32


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("article " + request.path_params["slug"])


def make_spender(clock: FixedClock, vendor_id: str = "shop", seed: str = "seed") -> PaywordSpender:
    cert = payword.issue_certificate(
        BROKER_KEY,
        broker_id="broker",
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=1000,
        denomination=EUR,
        expires_at=clock.now() + 86_400,
    )
    chain_seed = DeterministicRandom(seed)(32)
    commitment = payword.commit(
        USER_KEY,
        cert,
        vendor_id=vendor_id,
        seed=chain_seed,
        length=100,
        now=clock.now(),
        ttl=3600,
        rng=DeterministicRandom("n"),
    )
    return PaywordSpender(commitment, chain_seed)


def make_paywall(clock: FixedClock) -> tuple[Paywall, MemoryCardBook]:
    book = MemoryCardBook(key_attr="commitment_id")
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=3000, currency="EUR"))
    scheme = PaywordScheme(
        vendor_id="shop",
        broker_id="broker",
        broker_public=ed25519_public_key(BROKER_KEY),
        unit_micros=1000,
    )
    app = Starlette(routes=[Route("/articles/{slug}", article)])
    paywall = Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[OfflineMethod(scheme, book)],  # type: ignore[arg-type]
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )
    return paywall, book


def auth(cid: str, payment: payword.Payment, commitment: bytes | None = None) -> dict[str, str]:
    payload: dict[str, object] = {
        "payment": b64url_encode(payword.encode_payment(payment)),
    }
    if commitment is not None:
        payload["commitment"] = b64url_encode(commitment)
    return {"authorization": format_credential(Credential.answering(cid, payload))}


async def test_commitment_then_paywords() -> None:
    clock = FixedClock()
    paywall, book = make_paywall(clock)
    spender = make_spender(clock)
    encoded = payword.encode_commitment(spender.commitment)
    transport = httpx.ASGITransport(app=paywall)
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
        challenge = parse_challenges(
            (await c.get("/articles/a")).headers.get_list("www-authenticate")
        )[0]
        assert challenge.request["methodDetails"]["units"] == 3
        no_commitment = await c.get(
            "/articles/a", headers=auth(challenge, spender.reserve(3, now=0).payment)
        )
        first = spender.reserve(3, now=clock.now()).payment
        ok = await c.get("/articles/a", headers=auth(challenge, first, encoded))
        second = spender.reserve(3, now=clock.now()).payment
        # A challenge id pays once: the paid answer carried a fresh one for the next.
        (fresh,) = parse_challenges(ok.headers.get_list("www-authenticate"))
        ok2 = await c.get("/articles/b", headers=auth(fresh, second))
        replay = await c.get("/articles/b", headers=auth(fresh, second, encoded))
    assert no_commitment.status_code == 402
    assert ok.status_code == 200
    assert ok.text == "article a"
    assert Receipt.from_header(ok.headers["payment-receipt"]).extra["units"] == 6  # gap of 3
    assert ok2.status_code == 200
    assert replay.status_code == 402
    held = book.states[spender.commitment_id]
    assert held.state.spent == 9  # type: ignore[attr-defined]
    assert held.encoded == encoded  # type: ignore[attr-defined]


async def test_commitment_for_another_vendor_refused() -> None:
    clock = FixedClock()
    paywall, book = make_paywall(clock)
    spender = make_spender(clock, vendor_id="elsewhere")
    encoded = payword.encode_commitment(spender.commitment)
    transport = httpx.ASGITransport(app=paywall)
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
        challenge = parse_challenges(
            (await c.get("/articles/a")).headers.get_list("www-authenticate")
        )[0]
        response = await c.get(
            "/articles/a", headers=auth(challenge, spender.reserve(3, now=0).payment, encoded)
        )
    assert response.status_code == 402
    assert book.states == {}
