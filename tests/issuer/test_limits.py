"""The body limit and the token buckets as plain ASGI layers, without the issuer app."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from farthing.issuer.config import RateLimit as Limit
from farthing.issuer.config import RateLimits
from farthing.issuer.limits import BodyLimit, RateLimit, TokenBucket

pytestmark = pytest.mark.anyio


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body and answers with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _post(app: object, path: str, content: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(path, content=content)


async def test_body_limit_passes_the_whole_body_through() -> None:
    app = BodyLimit(echo_length, limit=10, per_path={"/big": 100})
    assert (await _post(app, "/", b"x" * 10)).text == "10"
    assert (await _post(app, "/", b"x" * 11)).status_code == 413
    assert (await _post(app, "/big", b"x" * 100)).text == "100"
    assert (await _post(app, "/big", b"x" * 101)).status_code == 413


async def test_body_limit_counts_a_lying_content_length() -> None:
    async def lying(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        await BodyLimit(echo_length, limit=10, per_path={})(
            {**scope, "headers": [*headers, (b"content-length", b"3")]}, receive, send
        )

    assert (await _post(lying, "/", b"x" * 50)).status_code == 413


@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=5), max_size=40),
)
def test_bucket_never_admits_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=float(burst), tokens=float(burst), updated=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        admitted += wait == 0.0
        if wait:
            assert bucket.take(now + wait + 1e-9) == 0.0  # the promised wait is enough
            now += wait + 1e-9
            admitted += 1
    assert admitted <= burst + rate * now + 1


async def test_rate_limit_can_be_disabled() -> None:
    limits = RateLimits(enabled=False, per_client=Limit(rate=0.001, burst=1))
    app = RateLimit(echo_length, limits=limits, clock=lambda: 0.0)
    statuses = [(await _post(app, "/", b"")).status_code for _ in range(5)]
    assert statuses == [200] * 5


def test_rate_limit_config_is_checked() -> None:
    with pytest.raises(ValueError):
        Limit(rate=0, burst=1)
    with pytest.raises(ValueError):
        Limit(rate=1, burst=0)
