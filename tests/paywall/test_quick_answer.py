"""The paywall's quick answer (``Paywall.quick``): a paid plain GET of a good kept in memory
is answered by the goods app directly, not through Starlette's routing and exception
layers. It must answer exactly as the long way does: the same messages (status, headers in
their order, sealed body, receipt, fresh challenge), the same sales line; and it must not
be taken where the long way could answer otherwise (ranges, conditional requests, HEAD, a
missing file, a file not kept in memory, a path an earlier route takes).

Two vendors built alike from one config (`vendor_from_config`, fixed clock, the same
deterministic randomness, the same cards in two stores): one with the quick answer, one
without; the same requests to both, and every message they send compared.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import Credential, format_credential, parse_challenges
from farthing.paywall.app import VendorApps, build_vendor
from farthing.paywall.config import load_vendor_config
from farthing.paywall.goods import GoodsApp
from farthing.paywall.serve import vendor_from_config
from farthing.store import open_store
from farthing.testing import DeterministicRandom, FixedClock
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet
from tests.http.http_doc import (
    ARTICLE,
    PAYWORD,
    SITE,
    SZM_HLL,
    fill_wallet,
    write_vendor,
)
from tests.paywall.helpers import NOW, SETTINGS, issue_chain_cards, issue_prbg_cards, prices

Message = dict[str, Any]
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
LARGE = "/articles/large.bin"  # over goods.py's in-memory size: always streamed


def scope(path: str, headers: list[tuple[str, str]], method: str = "GET") -> dict[str, Any]:
    raw = [(b"host", b"news.example"), *((k.lower().encode(), v.encode()) for k, v in headers)]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


async def call(
    app: App, path: str, headers: list[tuple[str, str]], method: str = "GET"
) -> list[Message]:
    """Every message the app sends for one request."""
    sent: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays until the answer is out
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(path, headers, method), receive, send)
    return sent


def status(messages: list[Message]) -> int:
    return int(messages[0]["status"])


def header(messages: list[Message], name: bytes) -> list[bytes]:
    return [v for k, v in messages[0]["headers"] if k == name]


@dataclass
class Twins:
    """The same vendor twice: ``quick`` answers from memory, ``slow`` always goes through
    the app; ``taken`` counts the quick answers ``quick`` sent."""

    quick: VendorApps
    slow: VendorApps
    wallet: Wallet
    folders: tuple[Path, Path]
    taken: list[str]

    async def both(
        self, path: str, headers: list[tuple[str, str]], method: str = "GET"
    ) -> list[Message]:
        fast = await call(self.quick.app, path, headers, method)
        long = await call(self.slow.app, path, headers, method)
        assert fast == long  # status, headers in order, body: byte for byte
        return fast

    def sales(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Both vendors' sales lines, without the time (the recorder's own clock)."""
        out = []
        for folder in self.folders:
            log = folder / "sales.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            out.append([{k: v for k, v in json.loads(x).items() if k != "at"} for x in lines])
        return out[0], out[1]


def _vendor(config: Path, seed: str, taken: list[str] | None) -> VendorApps:
    vendor = vendor_from_config(
        load_vendor_config(config), clock=FixedClock(NOW), rng=DeterministicRandom(seed)
    )
    quick = vendor.paywall.quick
    assert quick is not None  # the served folder's vendor has one
    if taken is None:
        vendor.paywall.quick = None
    else:

        async def counted(scope: Any, path: str, send: Any) -> int | None:
            answered = await quick(scope, path, send)
            if answered is not None:
                taken.append(path)
            return answered

        vendor.paywall.quick = counted
    return vendor


@contextmanager
def twins(tmp_path: Path, sections: str, seed: str) -> Iterator[Twins]:
    a, b = tmp_path / "quick", tmp_path / "slow"
    configs = [write_vendor(folder / "szm", sections) for folder in (a, b)]
    for folder in (a, b):  # a good too large to keep in memory, the same in both
        (folder / "szm" / "goods" / LARGE.lstrip("/")).write_bytes(bytes(range(256)) * 1100)
    store = open_store(str(b / "szm" / "vendor.sqlite"))  # the cards fill_wallet puts in a
    try:
        issue_chain_cards(store, 1, seed="http-doc-chain")
        issue_prbg_cards(store, 1, seed="http-doc-prbg")
    finally:
        store.close()
    taken: list[str] = []
    with (
        cheap_wallet_kdf(),
        Wallet.create(
            tmp_path / "wallet.sqlite", "quick", clock=FixedClock(NOW),
            rng=DeterministicRandom("wallet"),
        ) as wallet,
    ):  # fmt: skip
        fill_wallet(wallet, a)
        yield Twins(
            quick=_vendor(configs[0], seed, taken),
            slow=_vendor(configs[1], seed, None),
            wallet=wallet,
            folders=(a / "szm", b / "szm"),
            taken=taken,
        )


async def pay_both(t: Twins, method: str, path: str, extra: list[tuple[str, str]]) -> list[Message]:
    """A 402 from both, the wallet's credential for it, sent to both with ``extra``."""
    t.wallet.pay_only_with(method)
    accept = t.wallet.accept_payment(SITE + path)
    assert accept is not None
    refused = await t.both(path, [("Accept-Payment", accept)])
    assert status(refused) == 402
    values = [v.decode() for v in header(refused, b"www-authenticate")]
    payment = t.wallet.pay(SITE + path, parse_challenges(values))
    return await t.both(path, [("Authorization", payment.authorization), *extra])


@pytest.mark.parametrize(
    ("sections", "method"),
    [(SZM_HLL, "szmchain"), (SZM_HLL, "szmprbg"), (SZM_HLL, "hll"), (PAYWORD, "payword")],
)
def test_a_paid_get_answered_quick_is_the_long_ways_answer(
    tmp_path: Path, sections: str, method: str
) -> None:
    """Each method's paid GET (sealed for SZM, plain for hll and payword), then the same
    request again (a lost answer's resend: served, not sold again): the same messages from
    both vendors, the quick one answering from memory both times; one sales line each,
    the same."""
    with twins(tmp_path, sections, method) as t:

        async def run() -> list[Message]:
            paid = await pay_both(t, method, ARTICLE, [])
            await asyncio.sleep(0.15)  # the sales log's flush delay
            return paid

        paid = asyncio.run(run())
        assert status(paid) == 200
        assert header(paid, b"payment-receipt")
        assert header(paid, b"www-authenticate")
        assert t.taken == [ARTICLE]
        quick_sales, slow_sales = t.sales()
        assert quick_sales == slow_sales
        assert [s["path"] for s in quick_sales] == [ARTICLE]


def test_a_resent_paid_request_is_served_again_the_same_and_not_sold_twice(
    tmp_path: Path,
) -> None:
    with twins(tmp_path, SZM_HLL, "resend") as t:

        async def run() -> tuple[list[Message], list[Message]]:
            t.wallet.pay_only_with("szmchain")
            accept = t.wallet.accept_payment(SITE + ARTICLE)
            assert accept is not None
            refused = await t.both(ARTICLE, [("Accept-Payment", accept)])
            values = [v.decode() for v in header(refused, b"www-authenticate")]
            line = t.wallet.pay(SITE + ARTICLE, parse_challenges(values)).authorization
            first = await t.both(ARTICLE, [("Authorization", line)])
            again = await t.both(ARTICLE, [("Authorization", line)])
            await asyncio.sleep(0.15)
            return first, again

        first, again = asyncio.run(run())
        assert status(first) == status(again) == 200
        assert t.taken == [ARTICLE, ARTICLE]
        quick_sales, slow_sales = t.sales()
        assert quick_sales == slow_sales
        assert len(quick_sales) == 1


@pytest.mark.parametrize(
    "extra",
    [
        [("Range", "bytes=0-3")],
        [("If-Range", '"x"'), ("Range", "bytes=0-3")],
        [("If-None-Match", '"x"')],
        [("If-Match", '"x"')],
        [("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT")],
        [("If-Unmodified-Since", "Wed, 21 Oct 2015 07:28:00 GMT")],
    ],
)
def test_ranges_and_conditional_requests_go_the_long_way(
    tmp_path: Path, extra: list[tuple[str, str]]
) -> None:
    """A request that might be answered with a part, 304 or 412: never the quick answer;
    the long way's answer is unchanged."""
    with twins(tmp_path, SZM_HLL, "conditional") as t:
        paid = asyncio.run(pay_both(t, "szmchain", ARTICLE, extra))
        assert status(paid) == 200
        assert t.taken == []


def test_a_large_good_a_missing_one_and_head_go_the_long_way(tmp_path: Path) -> None:
    """A good not kept in memory is streamed by the app (paid, sealed); a missing file is
    the app's free 404; HEAD is the 402 without a body: the same from both vendors, and no
    quick answer for any of them."""
    with twins(tmp_path, SZM_HLL, "long") as t:

        async def run() -> tuple[list[Message], list[Message], list[Message]]:
            large = await pay_both(t, "szmchain", LARGE, [])
            missing = await t.both("/articles/missing.txt", [])
            head = await t.both(ARTICLE, [], method="HEAD")
            return large, missing, head

        large, missing, head = asyncio.run(run())
        assert status(large) == 200
        assert header(large, b"payment-receipt")
        assert status(missing) == 404
        assert status(head) == 402
        assert head[-1]["body"] == b""
        assert t.taken == []


def test_a_path_an_earlier_route_takes_is_never_answered_quick(tmp_path: Path) -> None:
    """A route before the content (``extra_routes``) at a priced path that is also a file:
    the route answers the paid request, as the router decides, not the file."""
    goods = tmp_path / "goods"
    (goods / "articles").mkdir(parents=True)
    (goods / "articles" / "a.txt").write_bytes(b"the file\n")
    (goods / "articles" / "b.txt").write_bytes(b"another file\n")
    store = open_store(str(tmp_path / "vendor.sqlite"))
    (card,) = issue_chain_cards(store, 1)

    async def route(request: Request) -> PlainTextResponse:
        return PlainTextResponse("the route")

    app = GoodsApp(goods)
    taken: list[str] = []

    async def quick(scope: Any, path: str, send: Any) -> int | None:
        answered = await app.quick(scope, path, send)
        if answered is not None:
            taken.append(path)
        return answered

    vendor = build_vendor(
        SETTINGS, content=app, prices=prices(), store=store, offers=app.offers,
        quick=quick, extra_routes=[Route("/articles/a.txt", route)],
        clock=FixedClock(NOW), rng=DeterministicRandom("route"),
    )  # fmt: skip

    async def paid(path: str, card: Any) -> tuple[bytes, Any]:
        """A paid GET of ``path``: its opened body, and the card after it."""
        refused = await call(vendor.app, path, [("Accept-Payment", "szmchain/charge")])
        values = [v.decode() for v in header(refused, b"www-authenticate")]
        (challenge,) = parse_challenges(values)
        card, payment, key = szm_chain.next_payment(card, 2, now=NOW)
        raw = b64url_encode(szm_chain.encode_payment(payment))
        line = format_credential(Credential.answering(challenge, {"payment": raw}))
        answer = await call(vendor.app, path, [("Authorization", line)])
        assert status(answer) == 200
        opened = open_sealed(
            key, answer[1]["body"], method="szm:chain", card_id=card.card_id,
            index=card.spent, resource=path, status=200,
            content_type="text/plain; charset=utf-8",
        )  # fmt: skip
        return opened, card

    async def run() -> tuple[bytes, bytes]:
        routed, after = await paid("/articles/a.txt", card)
        filed, _ = await paid("/articles/b.txt", after)
        return routed, filed

    try:
        routed, filed = asyncio.run(run())
    finally:
        store.close()
    assert routed == b"the route"
    assert filed == b"another file\n"
    assert taken == ["/articles/b.txt"]
