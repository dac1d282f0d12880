"""The paywall's side of readers in a browser (farthing.paywall.browser): the reserved
/_farthing/ folder is never priced, a navigation gets its 402 as an escaped HTML page with the
challenges still in the headers, and the card check finds a card by the lookup id of its
short code, answering as the issuer does (terms and tag, no secret), and refuses in words
anything else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from farthing.core import shortcode
from farthing.core.encoding import b64url_encode
from farthing.http.issuer_wire import parse_card_lookup
from farthing.http.payment_auth import parse_challenges
from farthing.paywall.app import create_vendor_app
from farthing.paywall.browser import accepts_html, reader_price
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import CardStatus, Store, open_store
from farthing.testing import DeterministicRandom, FixedClock
from tests.paywall.helpers import (
    KEYS,
    NOW,
    SETTINGS,
    content,
    issue_chain_cards,
    issue_prbg_cards,
)

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
    assert [c.method for c in challenges] == ["szmchain", "szmprbg"]
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


def printed(store: Store, master: bytes, card_id: bytes) -> shortcode.ShortSecret:
    """The card's printed short code, registered for lookup as the issuer does."""
    short = shortcode.short_secret(master, card_id)
    with store.transaction() as tx:
        tx.szm.insert_lookups([(shortcode.lookup_id(short), card_id)])
    return short


async def look_up(client: httpx.AsyncClient, short: shortcode.ShortSecret) -> httpx.Response:
    lookup = b64url_encode(shortcode.lookup_id(short))
    return await client.post("/_farthing/card", json={"lookup": lookup})


async def test_a_card_is_found_by_its_code_as_the_issuer_answers(
    client: httpx.AsyncClient, store: Store
) -> None:
    chain = issue_chain_cards(store, 1, units=40)[0]
    prbg = issue_prbg_cards(store, 1, units=30)[0]
    for card_id, master, units in [
        (chain.card_id, KEYS.chain_master, 40),
        (prbg.card_id, KEYS.prbg_master, 30),
    ]:
        short = printed(store, master, card_id)
        answer = await look_up(client, short)
        assert answer.status_code == 200
        body = answer.json()
        assert "secret" not in body
        assert (body["units"], body["spent"], body["status"]) == (units, 0, "active")
        assert (body["unit_micros"], body["currency"], body["realm"]) == (1000, "EUR", "news")
        found = parse_card_lookup(body)  # the issuer client's reader of its own lookup
        # The holder's own check: the tag binds these terms to this code, the secret derives.
        card = shortcode.card_from_answer(short, found.terms, found.tag)
        assert card.card_id == card_id


async def test_what_is_not_a_card_of_this_shop_is_refused_in_words(
    client: httpx.AsyncClient, store: Store
) -> None:
    chain = issue_chain_cards(store, 2, units=40)
    unknown = await look_up(client, shortcode.ShortSecret("0" * 23))
    assert unknown.status_code == 404
    assert "this shop knows no card with this code" in unknown.json()["detail"]
    for body in [b"not json", b'{"code": "X"}', b'{"lookup": "!!"}', b"x" * 2000]:
        refused = await client.post("/_farthing/card", content=body)
        assert refused.status_code in (400, 413), body[:20]
        assert refused.json()["detail"], body[:20]
    short = printed(store, KEYS.chain_master, chain[1].card_id)
    store_status(store, chain[1].card_id, CardStatus.BLOCKED)
    answer = await look_up(client, short)
    assert answer.status_code == 200
    assert answer.json()["status"] == "blocked"  # the page says so in words and pays nothing


def store_status(store: Store, card_id: bytes, status: CardStatus) -> None:
    with store.transaction() as tx:
        assert tx.szm.set_status(card_id, status)
