"""The paywall cannot be bypassed through the path (issue 11, section 1), in process.

The vendor of ``vendor.toml`` (every method, a real SQLite store, HLL online against the
in-process issuer) is sent each form of ``/articles/a.txt`` that is not its canonical path,
with and without a valid payment. Before the fix the price was looked up on the raw path
and the goods server (``os.path.join``, then Starlette's normalising ``StaticFiles``) chose
the file: ``//articles/a.txt`` and friends were served free, ``//articles/a.txt`` under a
cheap ``/**`` paid the cheap price, and under the starter ``/**`` the trailing-slash form was
free. Now each is a 404 with no article, no challenge and nothing charged; the same
payment then buys the canonical path, so the refusals were not for a bad payment.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from farthing.paywall.config import load_vendor_config
from farthing.paywall.goods import GoodsApp
from farthing.paywall.middleware import NOT_OFFERED_SCOPE_KEY, Paywall
from tests.reliability.pathforms import (
    ARTICLE,
    BYPASS_FORMS,
    METHODS,
    TRAILING,
    Answer,
    asgi_request,
    decoded,
    pay,
    variants,
)
from tests.reliability.world import ARTICLES, World, challenge_ids

pytestmark = pytest.mark.anyio
SECRET = ARTICLES["a.txt"].encode()


def set_prices(world: World, *lines: str) -> None:
    """Replace the world's ``[prices]`` table with ``lines`` (kept in order)."""
    text = world.config_path.read_text()
    old = '"/articles/*" = "2000 EUR"\n'
    assert old in text
    world.config_path.write_text(text.replace(old, "".join(line + "\n" for line in lines)))


async def via_httpx(app: Paywall, method: str, raw: str, headers: list[tuple[str, str]]) -> Answer:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as client:
        response = await client.request(method, "http://vendor.test" + raw, headers=headers)
    return Answer(response.status_code, list(response.headers.items()), response.content)


def httpx_keeps(raw: str) -> bool:
    """httpx normalises literal dot segments away; those go in through the scope only."""
    return httpx.URL("http://vendor.test" + raw).raw_path == raw.encode()


def assert_refused(answer: Answer, form: str) -> None:
    assert answer.status == 404, (form, answer.status, answer.body[:200])
    assert SECRET not in answer.body, form
    assert "www-authenticate" not in answer, form
    assert "payment-receipt" not in answer, form


async def challenge(app: Paywall, path: str, method: str) -> tuple[str, int]:
    offer = await asgi_request(app, "GET", path)
    assert offer.status == 402, (path, offer.status)
    return challenge_ids(offer.get_list("www-authenticate"))[method]


@pytest.mark.parametrize("form", BYPASS_FORMS)
async def test_an_unpaid_path_variant_is_refused(sqlite_world: World, form: str) -> None:
    app = sqlite_world.vendor_app()
    assert_refused(await asgi_request(app, "GET", form), form)
    assert_refused(await asgi_request(app, "HEAD", form), form)
    if httpx_keeps(form):
        assert_refused(await via_httpx(app, "GET", form, []), form)


@pytest.mark.parametrize("method", METHODS)
async def test_a_paid_path_variant_charges_nothing(sqlite_world: World, method: str) -> None:
    app = sqlite_world.vendor_app()
    cid, expires = await challenge(app, ARTICLE, method)
    holder, header = pay(sqlite_world, method, cid, expires, ARTICLE, units=2)
    auth = [("authorization", header)]
    served = [
        form for form in BYPASS_FORMS if (await asgi_request(app, "GET", form, auth)).status != 404
    ]
    assert served == [], f"{len(served)}/{len(BYPASS_FORMS)} variants answered: {served}"
    assert sqlite_world.spent(holder) == 0
    canonical = await asgi_request(app, "GET", ARTICLE, auth)  # the same payment is good
    assert canonical.status == 200
    assert sqlite_world.spent(holder) == 2


@pytest.mark.parametrize("method", METHODS)
async def test_a_variant_does_not_buy_the_article_at_a_cheaper_price(
    sqlite_world: World, method: str
) -> None:
    set_prices(sqlite_world, '"/articles/*" = "2000 EUR"', '"/**" = "1000 EUR"')
    (sqlite_world.folder / "goods" / "cheap.txt").write_text("a cheap page")
    app = sqlite_world.vendor_app()
    cid, expires = await challenge(app, "/cheap.txt", method)  # an offer of the cheap route
    form = "//articles/a.txt"
    holder, header = pay(sqlite_world, method, cid, expires, decoded(form), units=1)
    answer = await asgi_request(app, "GET", form, [("authorization", header)])
    assert answer.status == 404, answer.status
    assert "payment-receipt" not in answer
    assert sqlite_world.spent(holder) == 0


@pytest.mark.parametrize("method", METHODS)
async def test_the_starter_catch_all_does_not_give_away_the_trailing_slash_form(
    sqlite_world: World, method: str
) -> None:
    set_prices(sqlite_world, '"/**" = "2000 EUR"')  # as `farthing vendor init` writes it
    app = sqlite_world.vendor_app()
    assert_refused(await asgi_request(app, "GET", TRAILING), TRAILING)
    assert_refused(await via_httpx(app, "GET", TRAILING, []), TRAILING)
    cid, expires = await challenge(app, ARTICLE, method)
    holder, header = pay(sqlite_world, method, cid, expires, ARTICLE, units=2)
    auth = [("authorization", header)]
    for form in [TRAILING, *BYPASS_FORMS]:
        assert_refused(await asgi_request(app, "GET", form, auth), form)
    assert sqlite_world.spent(holder) == 0
    assert (await asgi_request(app, "GET", ARTICLE, auth)).status == 200
    assert sqlite_world.spent(holder) == 2


async def test_the_goods_server_serves_nothing_the_paywall_did_not_offer(tmp_path: Path) -> None:
    (tmp_path / "articles").mkdir()
    (tmp_path / "articles" / "a.txt").write_bytes(SECRET)
    goods = GoodsApp(tmp_path)
    assert (await asgi_request(goods, "GET", ARTICLE)).status == 200

    async def not_offered(scope: Scope, receive: Receive, send: Send) -> None:
        scope[NOT_OFFERED_SCOPE_KEY] = True
        await goods(scope, receive, send)

    answer = await asgi_request(not_offered, "GET", ARTICLE)
    assert answer.status == 404
    assert SECRET not in answer.body


@pytest.mark.parametrize("size", [200 * 1024, 300 * 1024])  # kept in memory / streamed
async def test_the_goods_server_names_no_file_its_own_lookup_did_not(
    tmp_path: Path, size: int
) -> None:
    """Without the paywall in front, every variant is still a 404 at the goods server."""
    (tmp_path / "articles").mkdir()
    (tmp_path / "articles" / "a.txt").write_bytes(SECRET + b"x" * (size - len(SECRET)))
    goods = GoodsApp(tmp_path)
    served = []
    for form in [TRAILING, *BYPASS_FORMS]:
        answer = await asgi_request(goods, "GET", form)
        if answer.status != 404 or SECRET in answer.body:
            served.append(form)
    assert served == []
    whole = await asgi_request(goods, "GET", ARTICLE)
    assert whole.status == 200
    assert len(whole.body) == size


async def test_path_variants_do_not_fill_the_file_cache(sqlite_world: World) -> None:
    """Issue 11, section 7: 1,000 unpaid requests for variants of one 200 KiB file."""
    big = sqlite_world.folder / "goods" / "articles" / "big.bin"
    big.write_bytes(b"b" * 200 * 1024)
    config = load_vendor_config(sqlite_world.config_path)
    goods = GoodsApp(config.content_dir)
    from farthing.paywall.app import create_vendor_app

    app = create_vendor_app(
        config.settings, content=goods, prices=config.prices, store=sqlite_world.store,
        bank=sqlite_world.bank(), clock=sqlite_world.clock, offers=goods.offers,
    )  # fmt: skip
    statuses: dict[int, int] = {}
    for form in variants("big.bin", 1000):
        status = (await asgi_request(app, "GET", form)).status
        statuses[status] = statuses.get(status, 0) + 1
    assert (await asgi_request(app, "GET", "/articles/big.bin")).status == 402
    assert statuses == {404: 1000}
    assert goods.known == 1, f"{goods.known} files remembered, {goods.cached_bytes} bytes"
    assert goods.cached_bytes <= 200 * 1024


@pytest.mark.parametrize("method", METHODS)
async def test_head_with_a_valid_credential_is_not_charged(
    sqlite_world: World, method: str
) -> None:
    """HEAD to a priced path: 402 with challenges and no body, the payment not looked at."""
    app = sqlite_world.vendor_app()
    cid, expires = await challenge(app, ARTICLE, method)
    holder, header = pay(sqlite_world, method, cid, expires, ARTICLE, units=2)
    auth = [("authorization", header)]
    head = await asgi_request(app, "HEAD", ARTICLE, auth)
    assert head.status == 402
    assert head.body == b""
    assert method in challenge_ids(head.get_list("www-authenticate"))
    assert "payment-receipt" not in head
    assert sqlite_world.spent(holder) == 0
    assert (await asgi_request(app, "GET", ARTICLE, auth)).status == 200  # the same payment
    assert sqlite_world.spent(holder) == 2
