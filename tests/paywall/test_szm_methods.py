"""Paying a priced route with SZM cards through the paywall (in memory, no sockets)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.encoding import b64url_encode
from farthing.core.errors import InvalidPayment
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook

pytestmark = pytest.mark.anyio
MASTER = b"M" * 32
EUR = Denomination(currency="EUR", unit_micros=1000)


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("secret article " + request.path_params["slug"])


def setup(clock: FixedClock) -> tuple[Paywall, MemoryCardBook, szm_chain.ChainCard]:
    book = MemoryCardBook()
    state, card = szm_chain.issue_card(
        MASTER,
        DeterministicRandom("card"),
        length=20,
        denomination=EUR,
        expires_at=clock.now() + 3600,
    )
    book.add(state)
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=2000, currency="EUR"))
    app = Starlette(routes=[Route("/articles/{slug}", article)])
    paywall = Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[OfflineMethod(SzmScheme.chain(MASTER), book)],  # type: ignore[arg-type]
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )
    return paywall, book, card


def client(app: Paywall) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v")


async def challenge_id(c: httpx.AsyncClient, path: str = "/articles/a") -> Challenge:
    response = await c.get(path)
    assert response.status_code == 402
    return parse_challenges(response.headers.get_list("www-authenticate"))[0]


def auth(cid: Challenge, payment: szm_chain.Payment) -> dict[str, str]:
    payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
    return {"authorization": format_credential(Credential.answering(cid, payload))}


async def test_pay_open_and_replay_refused() -> None:
    clock = FixedClock()
    paywall, book, card = setup(clock)
    async with client(paywall) as c:
        cid = await challenge_id(c)
        card, payment, key = szm_chain.next_payment(card, 2, now=clock.now())
        response = await c.get("/articles/a", headers=auth(cid, payment))
        replay = await c.get("/articles/b", headers=auth(cid, payment))
    assert response.status_code == 200
    receipt = Receipt.from_header(response.headers["payment-receipt"])
    assert receipt.extra["units"] == 2
    opened = open_sealed(
        key,
        response.content,
        method="szm:chain",
        card_id=card.card_id,
        index=2,
        resource="/articles/a",
        status=200,
        content_type="text/plain; charset=utf-8",
    )
    assert opened == b"secret article a"
    with pytest.raises(InvalidPayment):
        open_sealed(
            key,
            response.content,
            method="szm:chain",
            card_id=card.card_id,
            index=2,
            resource="/articles/b",
            status=200,
            content_type="text/plain; charset=utf-8",
        )
    assert replay.status_code == 402
    assert b"secret" not in replay.content
    assert book.states[card.card_id].spent == 2  # type: ignore[attr-defined]


async def test_wrong_amount_and_forged_token_refused() -> None:
    clock = FixedClock()
    paywall, book, card = setup(clock)
    async with client(paywall) as c:
        cid = await challenge_id(c)
        _, short, _ = szm_chain.next_payment(card, 1, now=clock.now())
        too_little = await c.get("/articles/a", headers=auth(cid, short))
        _, good, _ = szm_chain.next_payment(card, 2, now=clock.now())
        forged = szm_chain.Payment(
            card_id=good.card_id, index=good.index, value=bytes(b ^ 1 for b in good.value)
        )
        bad = await c.get("/articles/a", headers=auth(cid, forged))
        unknown = szm_chain.Payment(card_id=b"x" * 16, index=2, value=good.value)
        stranger = await c.get("/articles/a", headers=auth(cid, unknown))
    assert too_little.status_code == 402
    assert too_little.json()["type"].endswith("/payment-insufficient")
    assert bad.status_code == 402
    assert stranger.status_code == 402
    assert book.states[card.card_id].spent == 0  # type: ignore[attr-defined]


async def test_concurrent_double_spend_accepted_once() -> None:
    clock = FixedClock()
    paywall, book, card = setup(clock)
    statuses: list[int] = []
    async with client(paywall) as c:
        cid = await challenge_id(c)
        _, payment, _ = szm_chain.next_payment(card, 2, now=clock.now())

        async def spend() -> None:
            response = await c.get("/articles/a", headers=auth(cid, payment))
            statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(spend)
    # One charge; the identical copies are retries of it (docs/http.md), charged nothing.
    assert statuses == [200] * 20
    assert book.states[card.card_id].spent == 2  # type: ignore[attr-defined]


async def test_stale_cache_is_repaired_by_the_conditional_update() -> None:
    clock = FixedClock()
    paywall_a, book, card = setup(clock)
    # A second "worker" shares the book but has its own cache.
    paywall_b = Paywall(
        paywall_a.app,
        realm="news",
        prices=paywall_a.prices,
        methods=[OfflineMethod(SzmScheme.chain(MASTER), book)],  # type: ignore[arg-type]
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("w"),
    )
    async with client(paywall_a) as a, client(paywall_b) as b:
        card, p1, _ = szm_chain.next_payment(card, 2, now=clock.now())
        assert (
            await b.get("/articles/a", headers=auth(await challenge_id(a), p1))
        ).status_code == 200
        card, p2, _ = szm_chain.next_payment(card, 2, now=clock.now())
        assert (
            await a.get("/articles/a", headers=auth(await challenge_id(a), p2))
        ).status_code == 200
        card, p3, _ = szm_chain.next_payment(card, 2, now=clock.now())
        assert (
            await b.get("/articles/a", headers=auth(await challenge_id(a), p3))
        ).status_code == 200
    assert book.states[card.card_id].spent == 6  # type: ignore[attr-defined]


class CountingDecode:
    """szm_chain.parse_payment, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> szm_chain.Parsed:
        self.calls += 1
        return szm_chain.parse_payment(data)


async def test_each_payment_is_decoded_once_whatever_path_it_takes() -> None:
    """The adapter decodes the payload once and passes the payment on: a payment, its
    replay (refused, then judged as a retry), a stale cached state (judged again against
    the stored one) and a retry of the same request each cost one decode."""
    clock = FixedClock()
    paywall_a, book, card = setup(clock)
    decode = CountingDecode()
    chain = SzmScheme.chain(MASTER)
    counted = SzmScheme(
        chain.name,
        decode=decode,
        advance=szm_chain.advance,
        retry=lambda state, payment, request: szm_chain.verify_retry(
            state,
            szm_chain.Payment(card_id=payment[0], index=payment[1], value=payment[2]),
            request=request,
        ),
        stale=szm_chain.stale_position,
        key=lambda state, index: szm_chain.issuer_payment_key(MASTER, state, index),
    )
    paywall_b = Paywall(
        paywall_a.app,
        realm="news",
        prices=paywall_a.prices,
        methods=[OfflineMethod(counted, book)],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("w"),
    )
    calls = []
    async with client(paywall_a) as a, client(paywall_b) as b:
        cid = await challenge_id(b)
        card, p1, _ = szm_chain.next_payment(card, 2, now=clock.now())
        statuses = [(await b.get("/articles/a", headers=auth(cid, p1))).status_code]
        calls.append(decode.calls)
        statuses.append((await b.get("/articles/a", headers=auth(cid, p1))).status_code)  # retry
        calls.append(decode.calls)
        statuses.append((await b.get("/articles/b", headers=auth(cid, p1))).status_code)  # replay
        calls.append(decode.calls)
        card, p2, _ = szm_chain.next_payment(card, 2, now=clock.now())
        cid = await challenge_id(b)  # a challenge id pays once
        statuses.append((await a.get("/articles/a", headers=auth(cid, p2))).status_code)
        card, p3, _ = szm_chain.next_payment(card, 2, now=clock.now())
        cid = await challenge_id(b)
        statuses.append((await b.get("/articles/a", headers=auth(cid, p3))).status_code)  # stale
        calls.append(decode.calls)
    assert statuses == [200, 200, 402, 200, 200]
    assert calls == [1, 2, 3, 4]
