"""The paywall middleware against a fake payment method (no scheme, no store)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from farthing.core.errors import ErrorCode, InvalidPayment, PaymentExpired
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    encode_json_b64,
    format_credential,
    parse_challenges,
)
from farthing.http.problems import PROBLEM_BASE
from farthing.paywall.methods.base import PaymentContext, Sealing, Settlement
from farthing.paywall.metrics import PaywallMetrics
from farthing.paywall.middleware import MAX_PAID_BODY, SEALED_CONTENT_TYPE, Paywall
from farthing.paywall.pricing import Price, PricedRoute, PriceTable
from farthing.paywall.routes import paid, payment, priced_routes
from farthing.testing import DeterministicRandom, FixedClock

KEY = b"K" * 32
pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class FakeReceipt:
    """Receipt members of the fake method: a fixed reference and its units."""

    reference: str
    units: int

    def to_json(self) -> dict[str, object]:
        return {"units": self.units}


class FakeMethod:
    """Accepts payload {"ok": true}; raises on {"fail": ...}; seals if asked."""

    def __init__(self, name: str, *, sealed: bool = False) -> None:
        self.name = name
        self.sealed = sealed
        self.seen: list[PaymentContext] = []

    def request(self, route: PricedRoute) -> dict[str, object]:
        return {
            "amount": str(route.price.micros),
            "currency": "micro-" + route.price.currency.lower(),
            "methodDetails": {"fake": self.name},
        }

    async def settle(self, context: PaymentContext) -> Settlement:
        self.seen.append(context)
        fail = context.payload.get("fail")
        if fail == "invalid":
            raise InvalidPayment("payment did not verify")
        if fail == "expired":
            raise PaymentExpired("card expired")
        if fail == "crash":
            raise RuntimeError("secret internal detail 0xdeadbeef")
        sealing = Sealing(key=KEY, card_id=b"c" * 16, index=3) if self.sealed else None
        receipt = FakeReceipt(reference="ref-1", units=2)
        return Settlement(method=self.name, receipt=receipt, sealing=sealing)


def make_app(*methods: FakeMethod, clock: FixedClock | None = None) -> tuple[Paywall, FastAPI]:
    inner = FastAPI()

    @inner.get("/free")
    async def free() -> PlainTextResponse:
        return PlainTextResponse("free")

    @inner.get("/articles/{slug}")
    @paid(micros=2000, currency="EUR")
    async def article(slug: str, settled: Settlement = Depends(payment)) -> PlainTextResponse:
        return PlainTextResponse(f"article {slug} paid {settled.units}")

    paywall = Paywall(
        inner,
        realm="news",
        prices=priced_routes(inner.routes),
        methods=list(methods),
        challenge_secret=b"s" * 32,
        clock=clock or FixedClock(),
        rng=DeterministicRandom("t"),
        metrics=PaywallMetrics(),
    )
    return paywall, inner


def client(app: Paywall) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v")


def challenges_of(response: httpx.Response) -> list[Challenge]:
    return parse_challenges(response.headers.get_list("www-authenticate"))


def credential(challenge: Challenge, **payload: object) -> dict[str, str]:
    return {"authorization": format_credential(Credential.answering(challenge, dict(payload)))}


def raw_credential(obj: dict[str, object]) -> dict[str, str]:
    """Any JSON object as a Payment credential."""
    return {"authorization": "Payment " + encode_json_b64(obj)}


ECHO = {"id": "x", "realm": "news", "method": "szmchain", "intent": "charge", "request": "e30"}


async def test_free_route_passes_through() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"))
    async with client(paywall) as c:
        response = await c.get("/free")
    assert response.status_code == 200
    assert response.text == "free"


async def test_unpaid_request_gets_one_challenge_per_method() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"), FakeMethod("payword"))
    async with client(paywall) as c:
        response = await c.get("/articles/x")
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/payment-required")
    found = challenges_of(response)
    assert [ch.method for ch in found] == ["szmchain", "payword"]
    assert all(ch.request["amount"] == "2000" for ch in found)
    assert len({ch.id for ch in found}) == 2
    assert response.json()["challengeId"] == found[0].id


async def test_paid_request_gets_content_and_receipt() -> None:
    method = FakeMethod("szm:chain")
    paywall, _ = make_app(method)
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        response = await c.get("/articles/x", headers=credential(challenge, ok=True))
    assert response.status_code == 200
    assert response.text == "article x paid 2"
    receipt = Receipt.from_header(response.headers["payment-receipt"])
    assert (receipt.method, receipt.reference, receipt.extra["units"]) == ("szmchain", "ref-1", 2)
    assert response.headers["cache-control"] == "private"
    assert method.seen[0].resource == "/articles/x"


async def test_challenge_pays_up_front_for_another_url_of_the_same_route() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"))
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        response = await c.get("/articles/other", headers=credential(challenge, ok=True))
    assert response.status_code == 200
    assert response.text == "article other paid 2"


async def test_sealed_body_opens_only_with_the_payment_key() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain", sealed=True))
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        response = await c.get("/articles/x", headers=credential(challenge, ok=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == SEALED_CONTENT_TYPE
    assert b"article" not in response.content
    receipt = Receipt.from_header(response.headers["payment-receipt"])
    assert receipt.extra["sealed"] == {
        "alg": "aes-256-gcm",
        "contentType": "text/plain; charset=utf-8",
    }
    binding = dict(
        method="szm:chain",
        card_id=b"c" * 16,
        index=3,
        resource="/articles/x",
        status=200,
        content_type="text/plain; charset=utf-8",
    )
    assert open_sealed(KEY, response.content, **binding) == b"article x paid 2"
    with pytest.raises(InvalidPayment):
        open_sealed(b"k" * 32, response.content, **binding)
    with pytest.raises(InvalidPayment):
        open_sealed(KEY, response.content, **{**binding, "index": 4})


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"authorization": "Payment !!!"}, 402, "malformed-credential"),
        ({"authorization": "Bearer abc"}, 402, "payment-required"),
        (raw_credential({"payload": {}}), 402, "malformed-credential"),
        (raw_credential({"challenge": ECHO, "payload": []}), 402, "malformed-credential"),
        (
            raw_credential({"challenge": {**ECHO, "id": 7}, "payload": {}}),
            402,
            "malformed-credential",
        ),
        (
            raw_credential({"challenge": {**ECHO, "method": "btc"}, "payload": {}}),
            402,
            "invalid-challenge",
        ),
        (raw_credential({"challenge": ECHO, "payload": {}}), 402, "invalid-challenge"),
    ],
)
async def test_bad_credentials_map_to_problem_types(
    headers: dict[str, str], status: int, kind: str
) -> None:
    method = FakeMethod("szm:chain")
    paywall, _ = make_app(method)
    async with client(paywall) as c:
        response = await c.get("/articles/x", headers=headers)
    assert response.status_code == status
    assert response.json()["type"].endswith("/" + kind)
    assert method.seen == []
    assert response.headers["cache-control"] == "no-store"
    assert challenges_of(response), "every 402 carries a fresh challenge"
    assert response.json()["challengeId"] == challenges_of(response)[0].id


async def test_challenge_for_another_price_or_method_is_refused() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"), FakeMethod("payword"))
    async with client(paywall) as c:
        szm, pw = challenges_of(await c.get("/articles/x"))
        echo = szm.echo()
        forged = [
            replace(echo, method="payword"),  # another method's challenge, same id
            replace(echo, request=pw.request_b64),  # another request
            replace(echo, realm="other"),
            replace(echo, intent="session"),
            replace(echo, expires="2099-01-01T00:00:00Z"),  # a later expiry
            replace(echo, opaque=pw.opaque_b64),  # another nonce
            replace(echo, digest="sha-256=:AAAA:"),
            replace(echo, header="Payment-Authorization"),
            replace(echo, id=pw.id),
        ]
        answers = [
            await c.get(
                "/articles/x",
                headers={
                    "authorization": format_credential(
                        Credential(challenge=e, payload={"ok": True})
                    )
                },
            )
            for e in forged
        ]
    assert [a.status_code for a in answers] == [402] * len(forged)
    assert {a.json()["farthingCode"] for a in answers} == {ErrorCode.CHALLENGE_INVALID}
    assert {a.json()["type"] for a in answers} == {PROBLEM_BASE + "invalid-challenge"}


async def test_expired_challenge_and_method_refusals() -> None:
    clock = FixedClock()
    paywall, _ = make_app(FakeMethod("szm:chain"), clock=clock)
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        refused = await c.get("/articles/x", headers=credential(challenge, fail="invalid"))
        expired_card = await c.get("/articles/x", headers=credential(challenge, fail="expired"))
        clock.advance(301)
        late = await c.get("/articles/x", headers=credential(challenge, ok=True))
    assert refused.status_code == 402
    assert refused.json()["type"].endswith("/verification-failed")
    assert expired_card.status_code == 402
    assert expired_card.json()["type"].endswith("/payment-expired")
    assert late.status_code == 402
    assert late.json()["farthingCode"] == ErrorCode.CHALLENGE_EXPIRED
    assert challenges_of(late)


async def test_internal_fault_is_500_without_detail() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"))
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        response = await c.get("/articles/x", headers=credential(challenge, fail="crash"))
    assert response.status_code == 500
    assert "deadbeef" not in response.text
    assert json.loads(response.text)["correlationId"]


async def test_metrics_count_outcomes() -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"))
    async with client(paywall) as c:
        challenge = challenges_of(await c.get("/articles/x"))[0]
        await c.get("/articles/x", headers=credential(challenge, ok=True))
        await c.get("/articles/x", headers=credential(challenge, fail="invalid"))
    assert paywall.metrics is not None
    text = paywall.metrics.render().decode()
    assert 'farthing_payments_total{method="szmchain",outcome="accepted"} 1.0' in text
    assert 'farthing_payments_total{method="szmchain",outcome="payment_invalid"} 1.0' in text


def test_price_table_patterns() -> None:
    table = PriceTable()
    table.add("/a/*", Price(micros=5, currency="EUR"))
    table.add("/b/**", Price(micros=7, currency="EUR"))
    table.add("/x", Price(micros=1, currency="EUR"))
    assert table.match("/a/1") is not None
    assert table.match("/a/1/2") is None
    matched = table.match("/b/1/2")
    assert matched is not None
    assert matched.price.micros == 7
    assert table.match("/y") is None
    with pytest.raises(ValueError):
        table.add("relative", Price(micros=1, currency="EUR"))
    with pytest.raises(ValueError):
        Price(micros=0, currency="EUR")


@pytest.mark.parametrize(
    ("accept", "methods"),
    [
        (None, ["szmchain", "payword", "hll"]),
        ("payword/charge", ["payword"]),
        ("hll/*;q=0.5, payword/charge;q=0.8", ["payword", "hll"]),
        ("*/charge, szmchain/charge;q=0", ["payword", "hll"]),  # the most specific range wins
        ("*/*;q=0.2, hll/charge", ["hll", "szmchain", "payword"]),  # ties keep our order
        ("tempo/charge", ["szmchain", "payword", "hll"]),  # nothing matches: all of them
        ("szmchain/charge;q=2, payword", ["szmchain", "payword", "hll"]),  # malformed: ignored
    ],
)
async def test_accept_payment_filters_and_orders_the_challenges(
    accept: str | None, methods: list[str]
) -> None:
    paywall, _ = make_app(FakeMethod("szm:chain"), FakeMethod("payword"), FakeMethod("hll:mac"))
    headers = {} if accept is None else {"accept-payment": accept}
    async with client(paywall) as c:
        response = await c.get("/articles/x", headers=headers)
    found = challenges_of(response)
    assert [ch.method for ch in found] == methods
    assert response.json()["challengeId"] == found[0].id


async def test_a_request_keeping_authorization_pays_in_payment_authorization() -> None:
    """draft-02 "Credentials": a challenge with ``header`` is answered in
    ``Payment-Authorization`` only; the header is bound into the id."""
    method = FakeMethod("szm:chain")
    paywall, _ = make_app(method)
    bearer = {"authorization": "Bearer token-of-another-scheme"}
    async with client(paywall) as c:
        asked = await c.get("/articles/x", headers=bearer)
        challenge = challenges_of(asked)[0]
        value = format_credential(Credential.answering(challenge, {"ok": True}))
        paid = await c.get("/articles/x", headers={**bearer, "payment-authorization": value})
        wrong_field = await c.get("/articles/x", headers={"authorization": value})
        both = await c.get(
            "/articles/x", headers={"authorization": value, "payment-authorization": value}
        )
    assert challenge.header == "Payment-Authorization"
    assert paid.status_code == 200
    assert paid.headers["cache-control"] == "private"
    assert wrong_field.status_code == 402
    assert wrong_field.json()["type"].endswith("/invalid-challenge")
    assert both.status_code == 400
    assert len(method.seen) == 1


def post_app(method: FakeMethod) -> Paywall:
    """A paid POST API: the app echoes the body it got."""
    inner = FastAPI()

    @inner.post("/api/{slug}")
    @paid(micros=2000, currency="EUR")
    async def api(slug: str, request: Request) -> PlainTextResponse:
        return PlainTextResponse(b"got " + await request.body())

    return Paywall(
        inner,
        realm="news",
        prices=priced_routes(inner.routes),
        methods=[method],
        challenge_secret=b"s" * 32,
        clock=FixedClock(),
        rng=DeterministicRandom("t"),
    )


async def test_a_paid_post_is_bound_to_its_body() -> None:
    """draft-02 "Request Body Digest Binding": the challenge's ``digest`` is the body's
    RFC 9530 digest, bound into the id; a credential for one body pays for no other."""
    method = FakeMethod("szm:chain")
    async with client(post_app(method)) as c:
        asked = await c.post("/api/x", content=b"order 1")
        challenge = challenges_of(asked)[0]
        value = format_credential(Credential.answering(challenge, {"ok": True}))
        other = await c.post("/api/x", content=b"order 2", headers={"authorization": value})
        paid_ = await c.post("/api/x", content=b"order 1", headers={"authorization": value})
        too_big = await c.post("/api/x", content=b"x" * (MAX_PAID_BODY + 1))
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(b"order 1").digest()).decode() + ":"
    assert challenge.digest == digest
    assert other.status_code == 402
    assert other.json()["type"].endswith("/invalid-challenge")
    assert challenges_of(other)[0].digest != digest  # the fresh challenge binds order 2
    assert paid_.status_code == 200
    assert paid_.text == "got order 1"
    assert too_big.status_code == 413
    assert len(method.seen) == 1
