"""What leaves the paywall for a paid request: HEAD is never charged, a zero-copy answer
(``http.response.pathsend``) cannot pass the seal, and slash-ended FastAPI routes still work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from starlette.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.sealing import open_sealed
from farthing.paywall.methods.base import Settlement
from farthing.paywall.metrics import PaywallMetrics
from farthing.paywall.middleware import SEALED_CONTENT_TYPE, Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.paywall.routes import paid, payment, priced_routes
from farthing.testing import DeterministicRandom, FixedClock
from tests.paywall.test_paywall import KEY, FakeMethod, challenges_of, client, credential, make_app

pytestmark = pytest.mark.anyio
SECRET = b"the paid file, in the clear"


async def test_head_is_answered_402_and_never_charged() -> None:
    method = FakeMethod("szm:chain", sealed=True)
    paywall, _ = make_app(method)
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        plain = await c.head("/articles/x")
        with_credential = await c.head("/articles/x", headers=credential(challenge, ok=True))
    for answer in (plain, with_credential):
        assert answer.status_code == 402
        assert answer.content == b""
        assert [c.method for c in challenges_of(answer)] == ["szmchain"]
        assert "payment-receipt" not in answer.headers
    assert method.seen == [], "a HEAD request was settled"


def paywall_around(app: ASGIApp, *methods: FakeMethod) -> Paywall:
    prices = PriceTable()
    prices.add("/files/*", Price(micros=2000, currency="EUR"))
    return Paywall(
        app, realm="news", prices=prices, methods=list(methods), challenge_secret=b"s" * 32,
        clock=FixedClock(), rng=DeterministicRandom("t"), metrics=PaywallMetrics(),
    )  # fmt: skip


async def paid_request(app: Paywall, extensions: dict[str, object]) -> list[Message]:
    """A paid GET of /files/a as a server with ``extensions`` sends it; the messages that
    leave the paywall."""
    async with client(app) as c:
        challenge = challenges_of(await c.get("/files/a"))[0]
    header = credential(challenge, ok=True)["authorization"].encode()
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": "/files/a", "raw_path": b"/files/a",
        "query_string": b"", "root_path": "", "headers": [(b"authorization", header)],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": extensions,
    }  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def leaked(sent: list[Message]) -> bool:
    return any(
        m["type"] != "http.response.body" and m["type"] != "http.response.start" for m in sent
    ) or any(SECRET in m.get("body", b"") for m in sent)


async def test_a_paid_file_response_is_sealed_even_where_the_server_offers_pathsend(
    tmp_path: Path,
) -> None:
    """Starlette's FileResponse sends ``http.response.pathsend`` when the server offers it;
    the paywall takes the offer away for a paid request, so the body comes through it."""
    (tmp_path / "a").write_bytes(SECRET)

    async def files(scope: Scope, receive: Receive, send: Send) -> None:
        await FileResponse(tmp_path / "a", media_type="text/plain")(scope, receive, send)

    extensions = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}
    sent = await paid_request(
        paywall_around(files, FakeMethod("szm:chain", sealed=True)), extensions
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    start, body = sent
    assert start["status"] == 200
    assert (b"content-type", SEALED_CONTENT_TYPE.encode()) in start["headers"]
    binding = dict(
        method="szm:chain", card_id=b"c" * 16, index=3, resource="/files/a",
        status=200, content_type="text/plain; charset=utf-8",
    )  # fmt: skip
    assert open_sealed(KEY, body["body"], **binding) == SECRET


@pytest.mark.parametrize(
    "kind", ["http.response.pathsend", "http.response.zerocopysend", "http.response.trailers"]
)
@pytest.mark.parametrize("sealed", [True, False])
async def test_a_paid_answer_the_paywall_cannot_seal_fails_closed(
    tmp_path: Path, kind: str, sealed: bool
) -> None:
    """A tiny app that sends its file zero-copy whatever the server offers: nothing of the
    file leaves. A held-back (sealed) answer becomes a 500 with a correlation id; an
    unsealed one, whose start is out, is broken off."""
    (tmp_path / "a").write_bytes(SECRET)

    async def rogue(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": kind, "path": str(tmp_path / "a"), "file": 0, "count": len(SECRET)})

    app = paywall_around(rogue, FakeMethod("szm:chain", sealed=sealed))
    if not sealed:
        with pytest.raises(RuntimeError, match=kind):
            await paid_request(app, {"http.response.pathsend": {}})
        return
    sent = await paid_request(app, {"http.response.pathsend": {}})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 500
    problem = json.loads(sent[1]["body"])
    assert problem["status"] == 500
    assert len(problem["correlationId"]) == 32
    assert not leaked(sent)


async def test_slash_ended_routes_work_and_a_priced_path_with_a_slash_is_refused() -> None:
    inner = FastAPI()

    @inner.get("/items/{item}/")
    @paid(micros=1000, currency="EUR")
    async def item(item: str, settled: Settlement = Depends(payment)) -> PlainTextResponse:
        return PlainTextResponse(f"item {item}")

    @inner.get("/articles/{slug}")
    @paid(micros=2000, currency="EUR")
    async def article(slug: str, settled: Settlement = Depends(payment)) -> PlainTextResponse:
        return PlainTextResponse(f"article {slug}")

    @inner.get("/about/")
    async def about() -> PlainTextResponse:
        return PlainTextResponse("about")

    paywall = Paywall(
        inner, realm="news", prices=priced_routes(inner.routes), methods=[FakeMethod("payword")],
        challenge_secret=b"s" * 32, clock=FixedClock(), rng=DeterministicRandom("t"),
    )  # fmt: skip
    async with client(paywall) as c:
        item_offer = await c.get("/items/3/")
        challenge = challenges_of(item_offer)[0]
        item_paid = await c.get("/items/3/", headers=credential(challenge, ok=True))
        article_slash = await c.get("/articles/x/")
        about = await c.get("/about/")
    assert item_offer.status_code == 402
    assert item_paid.text == "item 3"
    assert article_slash.status_code == 404
    assert about.text == "about"
