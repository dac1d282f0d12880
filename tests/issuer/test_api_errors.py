"""Bad input of every kind: always an RFC 9457 problem, never a 500, never echoed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.primitives import hmac_sha256
from farthing.http.issuer_wire import redeem_request_tag, verify_request_tag
from farthing.issuer import IssuerConfig, RateLimit, RateLimits, create_issuer_app
from tests.issuer.helpers import Harness, Shop, assert_problem, open_shop

pytestmark = pytest.mark.anyio

MARKER = "<script>zz-echo-me</script>"

POST_ROUTES = [
    "/v1/customers",
    "/v1/customers/c1/loads",
    "/v1/merchants",
    "/v1/hll/cards",
    "/v1/hll/verify",
    "/v1/hll/deposits",
    "/v1/szm/batches",
    "/v1/szm/revenue",
    "/v1/payword/users",
    "/v1/payword/commitments",
    "/v1/payword/redemptions",
]


VERIFY_BODY = {"merchant_id": "m1", "offer": "AA", "payment": "AA", "tag": "AA"}


@pytest.mark.parametrize("route", ["/v1/customers", "/v1/hll/verify"])
async def test_malformed_json_is_400_without_echo(api: httpx.AsyncClient, route: str) -> None:
    response = await api.post(
        route,
        content=b'{"customer_id": "' + MARKER.encode() + b'", ',
        headers={"Content-Type": "application/json"},
    )
    body = assert_problem(response, 400, ErrorCode.MALFORMED)
    assert body["detail"] == "the request does not match the schema"
    assert MARKER not in response.text
    assert any(e["type"] == "json_invalid" for e in body["errors"])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("route", "body", "location"),
    [
        ("/v1/customers", {"customer_id": 7, "currency": "EUR"}, ["body", "customer_id"]),
        ("/v1/customers", {"customer_id": "a", "currency": "euro"}, ["body", "currency"]),
        (
            "/v1/customers/c1/loads",
            {"amount_micros": "5", "reference": "r"},
            ["body", "amount_micros"],
        ),
        (
            "/v1/customers/c1/loads",
            {"amount_micros": 5.0, "reference": "r"},
            ["body", "amount_micros"],
        ),
        (
            "/v1/customers/c1/loads",
            {"amount_micros": True, "reference": "r"},
            ["body", "amount_micros"],
        ),
        (
            "/v1/customers/c1/loads",
            {"amount_micros": -1, "reference": "r"},
            ["body", "amount_micros"],
        ),
        ("/v1/hll/cards", {"customer_id": "c1"}, ["body", "units"]),
        ("/v1/szm/batches", {"protocol": "szm:magic"}, ["body", "protocol"]),
        ("/v1/customers", [1, 2], ["body"]),
        ("/v1/customers", {"customer_id": "a", "currency": "EUR", MARKER: 1}, ["body", "*"]),
        # The bank's busiest route is a plain Starlette route: the same answers.
        ("/v1/hll/verify", {"merchant_id": "m1", "offer": "AA", "payment": "AA"}, ["body", "tag"]),
        ("/v1/hll/verify", {**VERIFY_BODY, "tag": 7}, ["body", "tag"]),
        ("/v1/hll/verify", [1, 2], ["body"]),
        ("/v1/hll/verify", {**VERIFY_BODY, MARKER: 1}, ["body", "*"]),
    ],
)
async def test_wrong_types_are_400_with_locations_only(
    api: httpx.AsyncClient, route: str, body: object, location: list[str]
) -> None:
    response = await api.post(route, json=body)
    problem = assert_problem(response, 400, ErrorCode.MALFORMED)
    assert location in [e["loc"] for e in problem["errors"]]  # type: ignore[union-attr]
    assert MARKER not in response.text


async def test_bad_base64_is_400(api: httpx.AsyncClient) -> None:
    body = {"merchant_id": "m1", "offer": "AAA=", "payment": "AA", "tag": "AA"}
    assert_problem(await api.post("/v1/hll/verify", json=body), 400)
    body = {"batch": "A", "tag": "AA"}
    assert_problem(await api.post("/v1/hll/deposits", json=body), 400)
    body = {"batch": "AAAA", "tag": "AA"}  # decodes, but is not a batch
    assert_problem(await api.post("/v1/hll/deposits", json=body), 400)


async def test_oversized_body_by_content_length_is_413(api: httpx.AsyncClient) -> None:
    big = b'{"customer_id": "' + b"a" * 70_000 + b'"}'
    response = await api.post(
        "/v1/customers", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, ErrorCode.PAYLOAD_TOO_LARGE)


async def test_oversized_body_while_streaming_is_413(api: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024  # no Content-Length: chunked, counted as it arrives

    response = await api.post("/v1/customers", content=chunks())
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, ErrorCode.PAYLOAD_TOO_LARGE)


async def test_deposits_may_be_larger(api: httpx.AsyncClient) -> None:
    filler = "A" * 200_000  # over the default limit, under the deposit limit: parsed
    response = await api.post("/v1/hll/deposits", json={"batch": filler, "tag": "AA"})
    assert_problem(response, 400)
    response = await api.post("/v1/hll/deposits", json={"batch": "A" * 3_000_000, "tag": "AA"})
    assert_problem(response, 413, ErrorCode.PAYLOAD_TOO_LARGE)


async def test_unknown_route_and_method(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/nothing-here"), 404, ErrorCode.NOT_FOUND)
    assert_problem(await api.delete("/v1/customers"), 405)


async def test_internal_error_is_500_with_correlation_id_only(
    api: httpx.AsyncClient,
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode() -> None:
        raise RuntimeError("secret database password in this message")

    monkeypatch.setattr(harness.services.reports, "check", explode)
    with caplog.at_level(logging.ERROR, logger="farthing.issuer"):
        response = await api.get("/v1/ledger/check")
    assert response.status_code == 500
    body = response.json()
    assert body["farthingCode"] == ErrorCode.INTERNAL
    assert "password" not in response.text
    assert body["correlationId"] in caplog.text
    assert "RuntimeError" in caplog.text


def _limited_app(harness: Harness, now: list[float]) -> object:
    limits = RateLimits(
        per_client=RateLimit(rate=1.0, burst=2), per_operator=RateLimit(rate=0.5, burst=3)
    )
    config = IssuerConfig(keys=harness.config.keys, rate_limits=limits)
    return create_issuer_app(
        config, harness.store, clock=harness.clock, rng=harness.rng, rate_clock=lambda: now[0]
    )


async def test_rate_limit_per_client_is_429_with_retry_after(harness: Harness) -> None:
    now = [100.0]
    transport = httpx.ASGITransport(app=_limited_app(harness, now), client=("10.0.0.1", 1))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        statuses = [(await client.get("/v1/payword/broker")).status_code for _ in range(2)]
        limited = await client.get("/v1/payword/broker")
        assert statuses == [200, 200]
        assert_problem(limited, 429, ErrorCode.RATE_LIMITED)
        assert limited.headers["retry-after"] == "1"
        now[0] += 1.0
        assert (await client.get("/v1/payword/broker")).status_code == 200


async def test_rate_limit_per_operator_spans_addresses(harness: Harness) -> None:
    now = [100.0]
    app = _limited_app(harness, now)
    headers = {"Authorization": f"Bearer {harness.token}"}
    statuses = []
    for i in range(4):  # a new address each time: only the operator's bucket runs dry
        transport = httpx.ASGITransport(app=app, client=(f"10.0.0.{i}", 1))  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers
        ) as c:
            response = await c.get("/v1/ledger/check")
            statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert response.headers["retry-after"] == "2"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=st.sampled_from(POST_ROUTES), body=json_values)
def test_no_input_ever_makes_a_500(harness: Harness, route: str, body: object) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        headers = {"Authorization": f"Bearer {harness.token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers
        ) as c:
            return await c.post(route, json=body)

    response = asyncio.run(post())
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_bytes_under_a_valid_tag_never_make_a_500(
    harness: Harness, data: st.DataObject
) -> None:
    """Past authentication, the decoders see hostile bytes: still no 500."""
    if harness.services.merchants.get("m1") is None:
        open_shop(harness)
    merchant = harness.services.merchants.get("m1")
    assert merchant is not None
    shop = Shop(merchant_id="m1", merchant_key=merchant.key, card=None, card_id=b"")  # type: ignore[arg-type]
    offer, purchase = data.draw(st.binary(max_size=400)), data.draw(st.binary(max_size=120))
    route, body = data.draw(
        st.sampled_from(
            [
                ("/v1/hll/verify", _raw_verify_body(shop, offer, purchase)),
                (
                    "/v1/hll/deposits",
                    {"batch": b64url_encode(offer), "tag": b64url_encode(hll_tag(shop, offer))},
                ),
                ("/v1/payword/redemptions", _raw_redeem_body(shop, offer)),
            ]
        )
    )

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post(route, json=body)

    response = asyncio.run(post())
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def hll_tag(shop: Shop, batch: bytes) -> bytes:
    return hmac_sha256(shop.merchant_key, batch)


def _raw_verify_body(shop: Shop, offer: bytes, payment: bytes) -> dict[str, str]:
    tag = verify_request_tag(shop.merchant_key, shop.merchant_id, offer, payment)
    return {
        "merchant_id": shop.merchant_id,
        "offer": b64url_encode(offer),
        "payment": b64url_encode(payment),
        "tag": b64url_encode(tag),
    }


def _raw_redeem_body(shop: Shop, redemption: bytes) -> dict[str, str]:
    tag = redeem_request_tag(shop.merchant_key, shop.merchant_id, redemption)
    return {
        "merchant_id": shop.merchant_id,
        "redemption": b64url_encode(redemption),
        "tag": b64url_encode(tag),
    }
