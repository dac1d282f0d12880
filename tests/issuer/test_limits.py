"""The body limit and the token buckets as plain ASGI layers, without the issuer app."""

from __future__ import annotations

from typing import cast

import anyio
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


# --- the budget of bodies in flight -------------------------------------------------------


async def _call(
    app: BodyLimit, path: str, chunks: list[bytes], *, length: int | None, then: str = "end"
) -> list[dict[str, object]]:
    """Call ``app`` directly: the body in ``chunks`` (then a disconnect, if ``then`` says
    so); the messages it sent."""
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1 or then != "end"}
        for n, chunk in enumerate(chunks)
    ]
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


def _status(sent: list[dict[str, object]]) -> int | None:
    return next((int(str(m["status"])) for m in sent if m["type"] == "http.response.start"), None)


async def test_bodies_in_flight_share_the_budget() -> None:
    """A budget for one deposit-size body: while it is held, a second is refused with 503
    and Retry-After before its body is read; small bodies still pass; afterwards the whole
    budget is back."""
    held = anyio.Event()
    release = anyio.Event()

    async def holding(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/big" and not held.is_set():
            held.set()
            await release.wait()
        await echo_length(scope, receive, send)

    app = BodyLimit(holding, limit=10, per_path={"/big": 100}, budget=90)
    results: dict[str, list[dict[str, object]]] = {}

    async def first() -> None:
        results["first"] = await _call(app, "/big", [b"x" * 100], length=100)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first)
        await held.wait()
        assert app.budget.left == 0
        second = await _call(app, "/big", [b"x" * 100], length=100)
        small = await _call(app, "/", [b"x" * 10], length=10)
        release.set()
    assert _status(results["first"]) == 200
    assert _status(second) == 503
    start = next(m for m in second if m["type"] == "http.response.start")
    headers = dict(start["headers"])  # type: ignore[call-overload]
    assert headers[b"retry-after"] == b"5"
    body = b"".join(cast(bytes, m["body"]) for m in second if m["type"] == "http.response.body")
    assert b'"farthingCode":4007' in body
    assert b'"retry_after":5' in body  # errors-00: the body says what Retry-After says
    assert _status(small) == 200
    assert app.budget.left == app.budget.total == 90


async def test_a_chunked_body_draws_on_the_budget_as_it_grows() -> None:
    app = BodyLimit(echo_length, limit=10, per_path={"/big": 100}, budget=30)
    fits = await _call(app, "/big", [b"x" * 20, b"x" * 20], length=None)
    over = await _call(app, "/big", [b"x" * 20, b"x" * 20, b"x" * 20], length=None)
    assert (_status(fits), _status(over)) == (200, 503)
    assert app.budget.left == 30


async def test_a_body_cut_short_never_reaches_the_app() -> None:
    """A client that leaves (or is closed by the body timeout) mid-body: the app must not
    run on the part that came; nothing is answered and the budget is given back."""
    ran: list[bytes] = []

    async def record(scope: Scope, receive: Receive, send: Send) -> None:
        ran.append((await receive())["body"])
        await echo_length(scope, receive, send)

    app = BodyLimit(record, limit=10, per_path={"/big": 100})
    sent = await _call(app, "/big", [b"x" * 60], length=100, then="disconnect")
    assert (ran, sent) == ([], [])
