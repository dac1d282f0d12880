"""A reader with only a browser and a printed card, against a real ``farthing vendor serve``
over loopback, in Debian's Chromium: the 402 page, the card, three articles bought in a row,
reloads at no charge, two tabs at once, and the budget (docs/browser.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route

from farthing.core import shortcode
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import Credential, format_credential, parse_challenges
from tests.browser import screenshot
from tests.web.shop import (
    ARTICLES,
    PRICE_UNITS,
    Shop,
    article_text,
    chain_card,
    enter_card,
    running_shop,
    wallet_card,
    wallet_payments,
)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


def typo(code: str) -> str:
    """The code with its first symbol mistyped (another base32 symbol)."""
    first = "1" if code[0] != "1" else "2"
    return first + code[1:]


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    with running_shop(tmp_path) as running:
        yield running


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context()
    yield context
    context.close()


@pytest.fixture
def reader(context: BrowserContext) -> Page:
    return context.new_page()


def test_the_402_page_shows_the_price_and_takes_a_card(
    reader: Page, shop: Shop, tmp_path: Path
) -> None:
    response = reader.goto(shop.base + "/articles/a.txt")
    assert response is not None
    assert response.status == 402
    assert response.headers["content-type"].startswith("text/html")
    assert "Payment id=" in response.headers["www-authenticate"]
    assert reader.inner_text("h1") == "This article costs 0.2 cent"
    assert "szmchain" in reader.inner_text("#paywall")
    screenshot(reader, "browser-402.png", tmp_path)

    wrong = {
        typo(shop.code): "the card code has a typo",  # caught in the page: nothing sent
        shop.code[:-3]: "a card code has 24 symbols",
        shortcode.format_code(shortcode.ShortSecret("0" * 23)): "this shop knows no card",
    }
    for code, words in wrong.items():
        reader.fill("#card-code", code)
        reader.click("#card-form button")
        reader.locator("#status", has_text=words).wait_for()
        assert reader.inner_text("#status").startswith("This card code was refused: ")
        assert reader.is_hidden("#budget")

    reader.fill("#card-code", shop.code)
    reader.click("#card-form button")
    reader.wait_for_selector("#budget:not([hidden])")
    assert "300 units left on your card (30 cents)" in reader.inner_text("#balance")
    assert ", 2 units of your card" in reader.inner_text(".price")
    assert shop.vendor_spent() == 0


def test_three_articles_in_a_row_then_reloads_at_no_charge(reader: Page, shop: Shop) -> None:
    enter_card(reader, shop)
    assert article_text(reader) == ARTICLES["a"]
    for name in ("b", "c"):
        response = reader.goto(f"{shop.base}/articles/{name}.txt")
        assert response is not None
        assert response.status == 200
        assert article_text(reader) == ARTICLES[name]
    assert shop.vendor_spent() == 3 * PRICE_UNITS
    assert wallet_card(reader)["spent"] == 3 * PRICE_UNITS

    reader.goto(shop.base + "/_farthing/wallet.html")
    reader.wait_for_selector("#bought li >> nth=2")
    assert "294 units left on your card (29.4 cents)" in reader.inner_text("#card-balance")
    assert reader.input_value("#card-code") == shop.code

    for name in ("a", "b", "c"):
        reader.goto(f"{shop.base}/articles/{name}.txt")
        assert article_text(reader) == ARTICLES[name]
        reader.reload()
        assert article_text(reader) == ARTICLES[name]
    assert shop.vendor_spent() == 3 * PRICE_UNITS
    assert wallet_card(reader)["spent"] == 3 * PRICE_UNITS


BUY_ALL = """async (paths) => {
  const buy = async (path) => { const r = await fetch(path); return [r.status, await r.text()]; };
  window.bought = Promise.all(paths.map(buy));
}"""


def test_two_tabs_buying_at_once_never_reuse_an_index(
    context: BrowserContext, reader: Page, shop: Shop
) -> None:
    enter_card(reader, shop)  # buys a
    other = context.new_page()
    other.goto(shop.base + "/_farthing/wallet.html")
    first, second = ["/articles/b.txt", "/articles/d.txt"], ["/articles/c.txt", "/articles/e.txt"]
    reader.evaluate(BUY_ALL, first)
    other.evaluate(BUY_ALL, second)
    got = reader.evaluate("window.bought") + other.evaluate("window.bought")
    expected = [[200, ARTICLES[p.split("/")[2][0]]] for p in first + second]
    assert got == expected
    payments = wallet_payments(other)
    indexes = [p["index"] for p in payments]
    assert len(indexes) == len(set(indexes)) == 5
    assert {p["state"] for p in payments} == {"paid"}
    assert shop.vendor_spent() == 5 * PRICE_UNITS == wallet_card(other)["spent"]


def test_over_budget_the_page_asks_and_refused_nothing_is_paid(reader: Page, shop: Shop) -> None:
    enter_card(reader, shop)
    spent = shop.vendor_spent()
    reader.goto(shop.base + "/premium/long.txt")
    reader.wait_for_selector("#ask:not([hidden])")
    assert "10 cents, more than your limit of 5 cents per article" in reader.inner_text("#ask-why")
    reader.click("#ask-no")
    assert reader.inner_text("#status") == "Nothing was paid."
    assert shop.vendor_spent() == spent
    assert wallet_card(reader)["spent"] == spent

    reader.goto(shop.base + "/premium/long.txt")
    reader.wait_for_selector("#ask:not([hidden])")
    with reader.expect_navigation():
        reader.click("#ask-yes")
    assert article_text(reader) == "secret premium article"
    assert shop.vendor_spent() == spent + 100


def test_a_reader_with_only_a_keyboard_on_a_phone_sized_screen(
    chromium: Browser, shop: Shop
) -> None:
    context = chromium.new_context(viewport={"width": 360, "height": 740}, has_touch=True)
    try:
        page = context.new_page()
        page.goto(shop.base + "/articles/a.txt")
        fits = "document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(fits)  # nothing wider than the phone: no sideways scrolling
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "card-code"
        page.keyboard.type(shop.code)
        page.keyboard.press("Enter")
        page.wait_for_selector("#budget:not([hidden])")
        assert page.evaluate("document.activeElement.id") == "per-article"
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert article_text(page) == ARTICLES["a"]
        page.goto(shop.base + "/_farthing/wallet.html")
        page.wait_for_selector("#bought li")
        assert page.evaluate(fits)
    finally:
        context.close()


def test_past_the_day_limit_the_page_asks(reader: Page, shop: Shop) -> None:
    enter_card(reader, shop)  # a: 0.2 cent
    reader.goto(shop.base + "/_farthing/wallet.html")
    reader.fill("#per-day", "0.5")
    reader.click("#budget-form button")
    reader.locator("#status", has_text="Budget saved.").wait_for()
    reader.goto(shop.base + "/articles/b.txt")  # 0.4 cent today: within
    assert article_text(reader) == ARTICLES["b"]
    reader.goto(shop.base + "/articles/c.txt")  # would make 0.6 cent
    reader.wait_for_selector("#ask:not([hidden])")
    assert "pass your limit of 0.5 cent today" in reader.inner_text("#ask-why")
    reader.click("#ask-no")
    assert shop.vendor_spent() == 2 * PRICE_UNITS == wallet_card(reader)["spent"]


def test_the_budget_cannot_be_typed_before_the_wallet_has_read_it(reader: Page, shop: Shop) -> None:
    """A limit typed while the page still reads the stored one would be overwritten by it, and
    "Budget saved." would then save the old limit (seen once on a loaded CI machine)."""
    enter_card(reader, shop)
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    reader.route("**/_farthing/page.js", hold)
    reader.goto(shop.base + "/_farthing/wallet.html", wait_until="commit")
    reader.wait_for_selector("#budget-form", state="attached")
    for _ in range(200):  # the script is requested once the document names it
        if held:
            break
        reader.wait_for_timeout(25)
    assert held, "the page's script was not requested"
    assert reader.is_hidden("#budget-form")  # nothing to type into while the script waits
    held[0].continue_()
    reader.fill("#per-day", "0.5")
    reader.click("#budget-form button")
    reader.locator("#status", has_text="Budget saved.").wait_for()
    budget = reader.evaluate("async () => (await import('/_farthing/store.js')).getBudget()")
    assert budget["perDay"] == 5_000


def test_a_refused_payment_shows_the_402_page_with_the_reason(reader: Page, shop: Shop) -> None:
    enter_card(reader, shop)  # a: index 2
    # The same card pays elsewhere (another wallet holding the printed code): index 12.
    challenge = parse_challenges(
        httpx.get(shop.base + "/articles/f.txt", timeout=10).headers.get_list("www-authenticate")
    )[0]
    card = replace(chain_card(shop), spent=PRICE_UNITS)
    _, payment, _ = szm_chain.next_payment(card, 10, now=challenge.expires - 300)
    payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
    authorization = format_credential(Credential.answering(challenge, payload))
    paid = httpx.get(shop.base + "/articles/f.txt", headers={"authorization": authorization})
    assert paid.status_code == 200
    assert shop.vendor_spent() == 12

    response = reader.goto(shop.base + "/articles/b.txt")  # the browser's index 4 is stale
    assert response is not None
    assert response.status == 402
    reader.locator("#status", has_text="the shop says").wait_for()
    assert "Nothing was taken from your card" in reader.inner_text("#status")
    assert "the shop says: 288 units left on your card" in reader.inner_text("#status")
    assert shop.vendor_spent() == 12
    assert wallet_card(reader)["spent"] == 12  # the shop's balance moved the index on
    assert {p["index"]: p["state"] for p in wallet_payments(reader)} == {2: "paid", 4: "released"}
    reader.reload()
    assert article_text(reader) == ARTICLES["b"]
    assert shop.vendor_spent() == 14 == wallet_card(reader)["spent"]
