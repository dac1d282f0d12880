"""IssuerClient over the network (its aiohttp link, ``_Link``): the same answers and the
same errors as through httpx (tests/issuer/test_client.py), from real servers on
loopback: the issuer app, a server that answers what a test tells it, and a closed port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from farthing.core.errors import (
    Conflict,
    ErrorCode,
    InvalidPayment,
    RateLimited,
    Unavailable,
)
from farthing.core.schemes import hll
from farthing.issuer import IssuerClient
from tests.issuer.helpers import Harness, buy, open_shop
from tests.servers import app_server, free_port

pytestmark = pytest.mark.anyio

_ANSWERS: dict[str, Response] = {
    "/500": JSONResponse({"farthingCode": 9000, "status": 500}, status_code=500),
    "/502": PlainTextResponse("<html>bad gateway</html>", status_code=502),
    "/404": PlainTextResponse("not json", status_code=404),
    "/200-text": PlainTextResponse("not json"),
    "/200-list": JSONResponse([1, 2]),
    "/400-unknown": JSONResponse({"farthingCode": 123456}, status_code=400),
    "/307": Response(status_code=307, headers={"location": "/200-list/followed"}),
    "/429": JSONResponse({"farthingCode": 4005}, status_code=429, headers={"Retry-After": "7"}),
}
_SEEN: list[bytes] = []


async def _answer(request: Request) -> Response:
    _SEEN.append(request.url.path.encode() + b" " + await request.body())
    return _ANSWERS["/" + request.path_params["case"]]


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    """A server whose base URL ``/<case>`` answers every call with ``_ANSWERS[case]``."""
    app = Starlette(routes=[Route("/{case}/{rest:path}", _answer, methods=["GET", "POST"])])
    with app_server(app) as base:
        yield base


def _client(base: str) -> IssuerClient:
    return IssuerClient(base, merchant_id="m1", merchant_key=bytes(32))


@pytest.mark.parametrize(
    "case", ["/500", "/502", "/404", "/200-text", "/200-list", "/400-unknown", "/307"]
)
async def test_broken_answers_are_issuer_unavailable(scripted: str, case: str) -> None:
    _SEEN.clear()
    async with _client(scripted + case) as client:
        with pytest.raises(Unavailable) as failure:
            await client.verify_online(b"offer", b"payment")
    assert failure.value.code is ErrorCode.ISSUER_UNAVAILABLE
    assert len(_SEEN) == 1  # answered as scripted; a redirect not followed


async def test_rate_limited_carries_retry_after(scripted: str) -> None:
    async with _client(scripted + "/429") as client:
        with pytest.raises(RateLimited) as limited:
            await client.redeem_payword(b"claim")
    assert limited.value.retry_after == 7


async def test_the_body_is_the_json_httpx_sent(scripted: str) -> None:
    _SEEN.clear()
    async with _client(scripted + "/200-list") as client:
        with pytest.raises(Unavailable):
            await client.verify_online(b"offer", b"payment")
    assert _SEEN[-1].startswith(
        b'/200-list/v1/hll/verify {"merchant_id":"m1","offer":"b2ZmZXI","payment":'
    )


async def test_connection_failure_is_issuer_unavailable() -> None:
    async with _client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(Unavailable) as failure:
            await client.verify_online(b"offer", b"payment")
    assert failure.value.code is ErrorCode.ISSUER_UNAVAILABLE
    assert failure.value.__cause__ is not None


async def test_the_real_bank_settles_and_refuses_through_the_link(harness: Harness) -> None:
    shop = open_shop(harness)
    with app_server(harness.app) as base:
        async with IssuerClient(
            base, merchant_id=shop.merchant_id, merchant_key=shop.merchant_key
        ) as client:
            assert client._link is not None  # the network path, not httpx
            pairs = [buy(harness, shop, 2) for _ in range(3)]
            encoded = [(hll.encode_offer(o), hll.encode_payment(p)) for o, p in pairs]
            assert await asyncio.gather(*(client.verify_online(*e) for e in encoded)) == [False] * 3
            assert await client.verify_online(*encoded[0]) is True  # repeated, not charged
            offer, purchase = pairs[1]
            elsewhere = hll.encode_offer(offer)[:-1] + b"\x00"
            with pytest.raises((InvalidPayment, Conflict)):
                await client.verify_online(elsewhere, hll.encode_payment(purchase))
            broker_id, _ = await client.broker()
    assert broker_id == "bank.test"
