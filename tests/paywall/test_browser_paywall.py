"""The paywall's side of readers in a browser (farthing.paywall.browser): the reserved
/_farthing/ folder is never priced, a navigation gets its 402 as an escaped HTML page with the
challenges still in the headers, and the card check refuses in words what is not the vendor's
own genuine card."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from farthing.core import cardcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.payment_auth import parse_challenges
from farthing.paywall.app import create_vendor_app
from farthing.paywall.browser import accepts_html, reader_price
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import CardStatus, Store, open_store
from farthing.testing import DeterministicRandom, FixedClock
from tests.paywall.helpers import NOW, SETTINGS, content, issue_chain_cards, issue_prbg_cards

pytestmark = pytest.mark.anyio
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "vendor.sqlite"))


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    table = PriceTable()
    table.add("/**", Price(micros=2000, currency="EUR"))  # everything priced, as `vendor init`
    app = create_vendor_app(
        SETTINGS,
        content=content(),
        prices=table,
        store=store,
        clock=FixedClock(NOW),
        rng=DeterministicRandom("browser"),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
        yield c


async def test_the_wallet_folder_is_never_priced(client: httpx.AsyncClient) -> None:
    for name, media in [("sw.js", "text/javascript"), ("style.css", "text/css")]:
        answer = await client.get("/_farthing/" + name, headers=HTML)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(media)
        assert "www-authenticate" not in answer.headers
    worker = await client.get("/_farthing/sw.js")
    assert worker.headers["service-worker-allowed"] == "/"
    assert (await client.get("/_farthing/payment-page.html.in")).status_code == 404
    assert (await client.get("/_farthing/nothing.js")).status_code == 404
    assert (await client.get("/articles/x")).status_code == 402  # the rest stays priced


async def test_a_navigation_gets_the_html_402_and_the_challenges(client: httpx.AsyncClient) -> None:
    page = await client.get("/articles/x", headers=HTML)
    assert page.status_code == 402
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    challenges = parse_challenges(page.headers.get_list("www-authenticate"))
    assert [c.method for c in challenges] == ["szm:chain", "szm:prbg"]
    assert "<h1>This article costs 0.2 cent</h1>" in page.text
    assert 'id="card-code"' in page.text

    machine = await client.get("/articles/x", headers={"accept": "application/json"})
    assert machine.status_code == 402
    assert machine.headers["content-type"] == "application/problem+json"
    assert json.loads(machine.text)["status"] == 402
    head = await client.head("/articles/x", headers=HTML)
    assert head.status_code == 402
    assert head.content == b""


async def test_the_page_escapes_the_path(client: httpx.AsyncClient) -> None:
    page = await client.get("/articles/%3Cscript%3Ealert(1)%22", headers=HTML)
    assert page.status_code == 402
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(1)&quot;" in page.text


def test_accepts_html() -> None:
    assert accepts_html("text/html")
    assert accepts_html("application/xhtml+xml, */*")
    assert not accepts_html("application/json, */*;q=0.1")
    assert not accepts_html("text/html;q=0")
    assert not accepts_html(None)


def test_reader_price() -> None:
    assert reader_price(2000, "EUR") == "0.2 cent"
    assert reader_price(10_000, "EUR") == "1 cent"
    assert reader_price(100_000, "EUR") == "10 cents"
    assert reader_price(1_500_000, "USD") == "1.50 USD"


async def check(client: httpx.AsyncClient, code: str) -> httpx.Response:
    return await client.post("/_farthing/card", json={"code": code})


async def test_a_genuine_card_shows_its_balance(client: httpx.AsyncClient, store: Store) -> None:
    chain = issue_chain_cards(store, 1, units=40)[0]
    prbg = issue_prbg_cards(store, 1, units=30)[0]
    answer = await check(client, cardcode.to_text(szm_chain.to_card_code(chain, realm="news")))
    assert answer.status_code == 200
    card = answer.json()
    assert (card["method"], card["units"], card["spent"]) == ("szm:chain", 40, 0)
    assert (card["unitMicros"], card["currency"], card["realm"]) == (1000, "EUR", "news")
    compact = cardcode.to_compact(szm_prbg.to_card_code(prbg, realm="news"))
    answer = await check(client, compact)
    assert answer.status_code == 200
    assert (answer.json()["method"], answer.json()["units"]) == ("szm:prbg", 30)


async def test_what_is_not_a_genuine_card_is_refused_in_words(
    client: httpx.AsyncClient, store: Store
) -> None:
    chain = issue_chain_cards(store, 2, units=40)
    code = szm_chain.to_card_code(chain[0], realm="news")
    cases = {
        "FTH1-AAAAA-BBBBB": (400, "not a card code"),
        "": (400, "type the card code"),
        cardcode.to_text(replace(code, secret=b"\x07" * 32)): (401, "did not issue"),
        cardcode.to_text(replace(code, card_id=b"\x01" * 16)): (401, "did not issue"),
        cardcode.to_text(replace(code, realm="other.example")): (401, "another shop"),
        cardcode.to_text(
            replace(code, protocol=Protocol.PRBG, generator=Generator.HMAC_CTR)
        ): (401, "did not issue"),
        cardcode.to_text(
            CardCode(
                protocol=Protocol.PRBG, card_id=b"\x02" * 16, secret=b"\x03" * 32, units=5,
                currency="EUR", unit_micros=1000, expires_at=NOW + 100,
                generator=Generator.BBS, realm="news", modulus=b"\xff" * 256,
            )
        ): (400, "BBS card"),
        "x" * 5000: (400, "not a card code"),
    }  # fmt: skip
    for text, (status, words) in cases.items():
        answer = await check(client, text)
        assert answer.status_code == status, text[:40]
        assert words in answer.json()["detail"], text[:40]
    store_status(store, chain[1].card_id, CardStatus.BLOCKED)
    withdrawn = cardcode.to_text(szm_chain.to_card_code(chain[1], realm="news"))
    answer = await check(client, withdrawn)
    assert answer.status_code == 401
    assert "blocked" in answer.json()["detail"]
    assert (await client.post("/_farthing/card", content=b"not json")).status_code == 400


def store_status(store: Store, card_id: bytes, status: CardStatus) -> None:
    with store.transaction() as tx:
        assert tx.szm.set_status(card_id, status)
