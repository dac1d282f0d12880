"""The wallet buys from a real farthing Paywall with SZM cards, over httpx (async and sync).

No sockets: ``httpx.ASGITransport`` for the async client and Starlette's ``TestClient`` (an
``httpx.Client``) for the sync one, both with ``auth=PaymentAuth(wallet)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from farthing.core import cardcode
from farthing.core.cardcode import Generator
from farthing.core.encoding import Writer, b64url_encode
from farthing.core.errors import (
    CardExhausted,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
)
from farthing.core.money import Denomination
from farthing.core.prbg import blum_modulus_of_any_size, generate_blum_modulus
from farthing.core.primitives import sha256
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge, Receipt, parse_credential
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.testing.szm import PrbgVerifier
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.store import Outcome
from farthing.wallet.testing import taken
from farthing.wallet.wallet import Wallet, scope_matches

MASTER = b"M" * 32
EUR = Denomination(currency="EUR", unit_micros=1000)
ARTICLE_PRICE = 2000  # micros: 2 units of the card
SITE = "https://news.test"


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("secret article " + request.path_params["slug"])


async def free(request: Any) -> PlainTextResponse:
    return PlainTextResponse("free front page")


class Recorder:
    """ASGI wrapper that notes each response status and each Authorization header."""

    def __init__(self, app: Paywall) -> None:
        self.app = app
        self.statuses: list[int] = []
        self.authorizations: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                self.authorizations.append(value.decode())

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, noting)


def vendor(clock: FixedClock) -> tuple[Recorder, MemoryCardBook, szm_chain.ChainCard]:
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
    prices.add("/articles/*", Price(micros=ARTICLE_PRICE, currency="EUR"))
    app = Starlette(routes=[Route("/articles/{slug}", article), Route("/", free)])
    paywall = Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[OfflineMethod(SzmScheme.chain(MASTER), book)],  # type: ignore[misc]
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )
    return Recorder(paywall), book, card


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def wallet(tmp_path: Path, clock: FixedClock) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "correct horse", clock=clock) as w:
        yield w


def printed_code(card: szm_chain.ChainCard) -> str:
    return cardcode.to_text(szm_chain.to_card_code(card, realm="news"))


# --- end to end through the paywall ----------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_buys_opens_and_pays_up_front(wallet: Wallet, clock: FixedClock) -> None:
    app, book, card = vendor(clock)
    wallet.add_szm_code(printed_code(card), site=SITE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://news.test", auth=PaymentAuth(wallet)
    ) as client:
        first = await client.get("/articles/a")
        second = await client.get("/articles/b")
        front = await client.get("/")
    assert first.status_code == 200
    assert first.text == "secret article a"
    assert first.headers["content-type"].startswith("text/plain")
    assert second.text == "secret article b"
    assert front.text == "free front page"
    assert app.statuses == [402, 200, 200, 200]  # the second article was paid up front
    assert book.states[card.card_id].spent == 4  # type: ignore[attr-defined]
    history = wallet.history()
    assert [(h.url, h.outcome, h.units, h.position) for h in history] == [
        ("https://news.test/articles/b", Outcome.PAID, 2, 4),
        ("https://news.test/articles/a", Outcome.PAID, 2, 2),
    ]
    assert all(h.method == "szm:chain" and h.charged_micros == 2000 for h in history)
    assert wallet.cards()[0].units_left == 16


@pytest.mark.anyio
async def test_each_paid_answer_brings_a_fresh_challenge_for_the_next(
    wallet: Wallet, clock: FixedClock
) -> None:
    """A challenge id pays once (the vendor refuses it after): the wallet pays each next
    article up front with the fresh challenge the last paid answer carried, no 402."""
    app, book, card = vendor(clock)
    wallet.add_szm_code(printed_code(card), site=SITE)
    sent: list[str] = []

    async def note(request: httpx.Request) -> None:
        if "authorization" in request.headers:
            sent.append(parse_credential(request.headers["authorization"]).challenge.id)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="https://news.test",
        auth=PaymentAuth(wallet),
        event_hooks={"request": [note]},
    ) as client:
        texts = [(await client.get(f"/articles/{name}")).text for name in "abcd"]
    assert texts == [f"secret article {name}" for name in "abcd"]
    assert app.statuses == [402, 200, 200, 200, 200]
    assert len(sent) == len(set(sent)) == 4  # four payments, four challenge ids
    assert book.states[card.card_id].spent == 8  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_replayed_credential_is_refused(wallet: Wallet, clock: FixedClock) -> None:
    app, book, card = vendor(clock)
    wallet.add_szm_code(printed_code(card), site=SITE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://news.test") as plain:
        async with httpx.AsyncClient(
            transport=transport, base_url="https://news.test", auth=PaymentAuth(wallet)
        ) as paying:
            assert (await paying.get("/articles/a")).status_code == 200
        stolen = app.authorizations[-1]
        replay = await plain.get("/articles/b", headers={"authorization": stolen})
        # The same request again is a retry (docs/http.md): served, but sealed under a key
        # only the card holder has, and charged nothing.
        again = await plain.get("/articles/a", headers={"authorization": stolen})
    assert replay.status_code == 402
    assert b"secret" not in replay.content
    assert again.status_code == 200
    assert b"secret" not in again.content
    assert book.states[card.card_id].spent == 2  # type: ignore[attr-defined]


def test_sync_client_buys_through_testclient(wallet: Wallet, clock: FixedClock) -> None:
    app, _book, card = vendor(clock)
    wallet.add_szm_code(cardcode.to_compact(szm_chain.to_card_code(card, realm="news")), site=SITE)
    with sync_client(app) as client:
        first = client.get("/articles/x", auth=PaymentAuth(wallet))
        second = client.get("/articles/y", auth=PaymentAuth(wallet))
    assert (first.text, second.text) == ("secret article x", "secret article y")
    assert app.statuses == [402, 200, 200]
    assert [h.outcome for h in wallet.history()] == [Outcome.PAID, Outcome.PAID]


def sync_client(app: Recorder) -> httpx.Client:
    with warnings.catch_warnings():
        # Starlette asks for the httpx2 fork; the TestClient is still an httpx.Client.
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    return TestClient(app, base_url="https://news.test")


@pytest.mark.anyio
async def test_exhausted_card_raises_before_sending(wallet: Wallet, clock: FixedClock) -> None:
    app, _book, card = vendor(clock)
    short = szm_chain.ChainCard(
        card_id=card.card_id,
        secret=card.secret,
        length=1,
        spent=0,
        denomination=EUR,
        expires_at=card.expires_at,
    )
    wallet.add_szm_code(printed_code(short), site=SITE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://news.test", auth=PaymentAuth(wallet)
    ) as client:
        with pytest.raises(CardExhausted, match="too few units"):
            await client.get("/articles/a")
    assert app.statuses == [402]
    assert wallet.history() == []


@pytest.mark.anyio
async def test_card_of_another_issuer_is_not_offered(wallet: Wallet, clock: FixedClock) -> None:
    app, _book, card = vendor(clock)
    wallet.add_szm_card(szm_chain.to_card_code(card, realm="other-vendor"), site=SITE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://news.test", auth=PaymentAuth(wallet)
    ) as client:
        with pytest.raises(LocalProtocolError, match="from the issuer 'other-vendor'"):
            await client.get("/articles/a")


def test_tampered_sealed_body_raises_and_is_recorded(wallet: Wallet, clock: FixedClock) -> None:
    _app, _book, card = vendor(clock)
    wallet.add_szm_code(printed_code(card), site=SITE)
    payment = wallet.pay("https://news.test/articles/a", [chain_challenge(clock)])
    receipt = Receipt(
        method="szm:chain",
        timestamp=clock.now(),
        reference="r",
        extra={"sealed": {"alg": "aes-256-gcm", "contentType": "text/plain"}},
    )
    with pytest.raises(InvalidPayment):
        wallet.settle(payment, receipt, b"\x00" * 40)
    assert wallet.history()[0].outcome == Outcome.SEAL_BROKEN


# --- paying up front: scope and expiry --------------------------------------------------------


def chain_challenge(
    clock: FixedClock, *, resource: str = "/articles/*", ttl: int = 300, realm: str = "news"
) -> Challenge:
    return Challenge(
        id="challenge-id",
        realm=realm,
        method="szmchain",
        intent="charge",
        request=SzmRequest(amount=2000, currency="EUR", resource=resource).to_json(),
        expires=clock.now() + ttl,
    )


@pytest.mark.parametrize(
    ("scope", "path", "matches"),
    [
        ("/articles/*", "/articles/a", True),
        ("/articles/*", "/articles/a/b", False),
        ("/articles/*", "/articles/", False),
        ("/articles/**", "/articles/a/b", True),
        ("/a/*/c", "/a/b/c", True),
        ("/a/*/c", "/a/b/d", False),
        ("/exact", "/exact", True),
        ("/exact", "/exactly", False),
        ("/v1.0/*", "/v1x0/a", False),
    ],
)
def test_scope_patterns(scope: str, path: str, matches: bool) -> None:
    assert scope_matches(scope, path) is matches


def test_up_front_needs_matching_scope_and_time_to_spare(wallet: Wallet, clock: FixedClock) -> None:
    _app, _book, card = vendor(clock)
    wallet.add_szm_code(printed_code(card), site=SITE)
    wallet.remember("https://news.test/articles/a", [chain_challenge(clock, ttl=60)])
    assert wallet.pay_up_front("https://news.test/videos/v") is None
    assert wallet.pay_up_front("https://other.test/articles/b") is None
    assert wallet.pay_up_front("https://news.test/articles/b/c") is None
    paid = wallet.pay_up_front("https://news.test/articles/b")
    assert paid is not None
    assert paid.index == 2
    clock.advance(51)  # 9 s left: inside the safety margin
    assert wallet.pay_up_front("https://news.test/articles/c") is None
    assert wallet.cards()[0].spent == 2


# --- szm:prbg, checked with the pure reference verifier -------------------------------------


@pytest.mark.parametrize("generator", [Generator.HMAC_CTR, Generator.BBS])
def test_prbg_card_pays_and_keys_match_the_issuer(
    wallet: Wallet, clock: FixedClock, generator: Generator
) -> None:
    master = b"P" * 32
    bbs = generate_blum_modulus(2048, DeterministicRandom("blum"))
    state, card = szm_prbg.issue_card(
        master,
        DeterministicRandom("prbg"),
        units=10,
        denomination=EUR,
        expires_at=clock.now() + 3600,
        generator=generator,
        bbs=bbs.public,
    )
    verifier = PrbgVerifier(master, bbs_key=bbs)
    verifier.add(state)
    wallet.add_szm_code(cardcode.to_text(szm_prbg.to_card_code(card, realm="news")), site=SITE)
    challenge = Challenge(
        id="cid",
        realm="news",
        method="szmprbg",
        intent="charge",
        request=SzmRequest(amount=2500, currency="EUR", resource="/a/*").to_json(),
        expires=clock.now() + 300,
    )
    for expected_index in (3, 6, 9):
        payment = wallet.pay("https://news.test/a/x", [challenge])
        raw = payment_bytes(payment.authorization)
        accepted = verifier.verify_bytes(raw, units=3, now=clock.now())
        assert accepted.index == payment.index == expected_index
        assert payment.sealing_key == verifier.payment_key(card.card_id, expected_index)
        taken(wallet, payment)
    with pytest.raises(CardExhausted):
        wallet.pay("https://news.test/a/x", [challenge])


def payment_bytes(authorization: str) -> bytes:
    from farthing.core.encoding import b64url_decode
    from farthing.http.payment_auth import parse_credential

    payment = parse_credential(authorization).payload["payment"]
    assert isinstance(payment, str)
    return b64url_decode(payment)


def test_a_bbs_card_with_a_weak_modulus_is_refused(wallet: Wallet) -> None:
    weak = blum_modulus_of_any_size(1024, DeterministicRandom("weak")).public.n_bytes
    card = (
        Writer(cardcode.CARD_DOMAIN)
        .text("szm:prbg").bytes(bytes(16)).bytes(bytes(range(32))).u64(10).text("EUR")
        .u64(1000).u64(2_000_000_000).text("bbs").text("news").bytes(weak)
        .finish()
    )  # fmt: skip
    with pytest.raises(MalformedMessage, match="2048"):
        wallet.add_szm_code(b64url_encode(card + sha256(card)[:4]), site="https://news.test")
    assert wallet.cards() == []
