"""IssuerClient against the real app (in-process) and against broken transports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from farthing.core.errors import (
    AccessDenied,
    ErrorCode,
    InvalidPayment,
    LocalProtocolError,
    NotFound,
    PaymentExpired,
    RateLimited,
    Unavailable,
)
from farthing.core.schemes import hll
from farthing.http.issuer_client import error_from_problem
from farthing.issuer import IssuerClient
from farthing.paywall.methods.hll import HllBankClient
from tests.issuer.helpers import Harness, Shop, buy, deposit_batch, open_shop

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bank(harness: Harness) -> AsyncIterator[tuple[IssuerClient, Shop]]:
    shop = open_shop(harness)
    transport = httpx.ASGITransport(app=harness.app)
    client = IssuerClient(
        "http://bank.test",
        merchant_id=shop.merchant_id,
        merchant_key=shop.merchant_key,
        transport=transport,
    )
    async with client:
        yield client, shop


def _offline(handler: httpx.MockTransport) -> IssuerClient:
    return IssuerClient(
        "http://bank.test", merchant_id="m1", merchant_key=bytes(32), transport=handler
    )


async def test_verify_online_settles_and_maps_refusals(
    harness: Harness, bank: tuple[IssuerClient, Shop]
) -> None:
    client, shop = bank
    as_bank: HllBankClient = client  # the vendor's protocol, checked by mypy and at runtime
    offer, purchase = buy(harness, shop, 4)
    offer_bytes, payment = hll.encode_offer(offer), hll.encode_payment(purchase)
    assert await as_bank.verify_online(offer_bytes, payment) is False
    assert await client.verify_online(offer_bytes, payment) is True  # repeated, not charged
    forged = hll.encode_payment(hll.Purchase(card_id=shop.card_id, counter=9, sigma=bytes(32)))
    with pytest.raises(InvalidPayment) as invalid:
        await client.verify_online(offer_bytes, forged)
    assert invalid.value.code is ErrorCode.PAYMENT_INVALID
    harness.clock.advance(1000)
    late_offer, late = buy(harness, shop, 1, ttl=10)
    harness.clock.advance(11)
    with pytest.raises(PaymentExpired):
        await client.verify_online(hll.encode_offer(late_offer), hll.encode_payment(late))
    assert harness.services.accounts.merchant("m1").owed_micros == 4000


async def test_wrong_merchant_key_is_access_denied(harness: Harness) -> None:
    shop = open_shop(harness)
    offer, purchase = buy(harness, shop, 1)
    transport = httpx.ASGITransport(app=harness.app)
    async with IssuerClient(
        "http://bank.test", merchant_id="m1", merchant_key=bytes(32), transport=transport
    ) as client:
        with pytest.raises(AccessDenied) as denied:
            await client.verify_online(hll.encode_offer(offer), hll.encode_payment(purchase))
    assert denied.value.code is ErrorCode.UNAUTHENTICATED


async def test_deposit_returns_the_report_and_is_repeatable(
    harness: Harness, bank: tuple[IssuerClient, Shop]
) -> None:
    client, shop = bank
    batch, tag = deposit_batch(harness, shop, [buy(harness, shop, 2), buy(harness, shop, 5)])
    report = await client.deposit_hll(batch, tag)
    assert report.batch_id == batch.batch_id
    assert report.credited == 7
    assert [c for _, c, _ in report.accepted] == [1, 2]
    assert await client.deposit_hll(hll.encode_batch(batch), tag) == report
    assert harness.services.accounts.merchant("m1").owed_micros == 7000


async def test_card_status_and_broker(harness: Harness, bank: tuple[IssuerClient, Shop]) -> None:
    from farthing.core.money import Denomination
    from farthing.core.schemes.szm_status import status_request
    from farthing.issuer.szm_service import BatchSpec
    from farthing.store import SzmProtocol

    client, _shop = bank
    spec = BatchSpec(
        protocol=SzmProtocol.CHAIN,
        count=1,
        units=9,
        denomination=Denomination(currency="EUR", unit_micros=100),
        expires_at=harness.clock.now() + 60,
    )
    batch = harness.services.szm.issue_batch("t", spec)
    page = harness.services.szm.export("t", batch.batch_id, offset=0, limit=1)
    code = page.cards[0].code
    now = harness.clock.now()
    status = await client.card_status(status_request(code.secret, code.card_id, now=now))
    assert (status.units, status.spent, status.status) == (9, 0, "active")
    with pytest.raises(NotFound):
        await client.card_status(status_request(code.secret, bytes(16), now=now))
    with pytest.raises(NotFound):  # the id alone, without the card secret, tells nothing
        await client.card_status(status_request(bytes(32), code.card_id, now=now))
    broker_id, public_key = await client.broker()
    assert (broker_id, public_key) == ("bank.test", harness.config.keys.broker_public_key)


async def test_connection_failure_is_issuer_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _offline(httpx.MockTransport(refuse)) as client:
        with pytest.raises(Unavailable) as failure:
            await client.verify_online(b"offer", b"payment")
    assert failure.value.code is ErrorCode.ISSUER_UNAVAILABLE
    assert isinstance(failure.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, json={"farthingCode": 9000, "status": 500}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(404, text="not json"),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(400, json={"farthingCode": 123456}),
    ],
)
async def test_broken_answers_are_issuer_unavailable(response: httpx.Response) -> None:
    async with _offline(httpx.MockTransport(lambda _request: response)) as client:
        with pytest.raises(Unavailable) as failure:
            await client.verify_online(b"offer", b"payment")
    assert failure.value.code is ErrorCode.ISSUER_UNAVAILABLE


async def test_rate_limited_carries_retry_after() -> None:
    answer = httpx.Response(429, json={"farthingCode": 4005}, headers={"Retry-After": "7"})
    async with _offline(httpx.MockTransport(lambda _request: answer)) as client:
        with pytest.raises(RateLimited) as limited:
            await client.redeem_payword(b"claim")
    assert limited.value.retry_after == 7


def test_every_remote_code_maps_to_its_class() -> None:
    expected = {
        ErrorCode.NON_CANONICAL: "MalformedMessage",
        ErrorCode.UNSUPPORTED_METHOD: "UnsupportedMethod",
        ErrorCode.DEPOSIT_INVALID: "InvalidPayment",
        ErrorCode.RISK_LIMIT: "InsufficientFunds",
        ErrorCode.CERTIFICATE_EXPIRED: "PaymentExpired",
        ErrorCode.UNAUTHENTICATED: "AccessDenied",
        ErrorCode.NOT_FOUND: "NotFound",
        ErrorCode.DUPLICATE_SPEND: "Conflict",
        ErrorCode.PAYLOAD_TOO_LARGE: "MalformedMessage",
    }
    for code, name in expected.items():
        error = error_from_problem(400, {"farthingCode": int(code), "detail": "x"}, None)
        assert type(error).__name__ == name
        assert error.code is code


async def test_calls_without_credentials_are_misuse() -> None:
    unused = httpx.MockTransport(lambda _request: httpx.Response(500))
    client = IssuerClient("http://bank.test", merchant_id=None, merchant_key=None, transport=unused)
    async with client:
        with pytest.raises(LocalProtocolError) as misuse:
            await client.verify_online(b"o", b"p")
    assert misuse.value.code is ErrorCode.MISUSE
