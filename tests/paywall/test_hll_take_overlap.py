"""hll:mac online on SQLite: the vendor's take of the challenge id is committed before the
bank call, and its fsync (store/writer.py, ``run_hot_committed``) runs while the bank
settles; the answer still waits for both.

The store is real (SQLite, the loop's unsynced commit, the WAL fsync on a thread behind
:class:`farthing.testing.GatedFsync`); the bank is the core's own (``LocalBank``), which
notes whether the vendor's fsync had returned when it was asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.http.payment_auth import parse_challenges
from farthing.paywall.books import UsedChallenges
from farthing.paywall.methods.hll import HllMethod, HllMode
from farthing.paywall.methods.offline import DELIVERY_LEASE
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import Store, open_store, upgrade_to_head
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom, FixedClock, GatedFsync
from tests.paywall.test_hll_method import LocalBank, auth, offer_from

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    upgrade_to_head(str(path))
    return path


@pytest.fixture
def sqlite_store(tmp_path: Path, sqlite_template: Path) -> Iterator[Store]:
    path = tmp_path / "store.sqlite"
    path.write_bytes(sqlite_template.read_bytes())
    store = open_store(str(path), create=False)
    yield store
    store.close()


class WatchedBank(LocalBank):
    """The core's bank; records, for each call, how many of the vendor's fsyncs had
    returned."""

    def __init__(self, clock: FixedClock, gate: GatedFsync) -> None:
        super().__init__(clock)
        self.gate = gate
        self.asked = asyncio.Event()
        self.syncs_returned_when_asked: list[int] = []
        self.cards = 0

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        self.syncs_returned_when_asked.append(self.gate.returned)
        self.asked.set()
        return await super().verify_online(offer, payment)


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("article")


def vendor(store: Store, writer: StoreWriter, bank: WatchedBank, clock: FixedClock) -> Paywall:
    method = HllMethod(
        merchant_id="shop",
        unit_micros=1000,
        mode=HllMode.ONLINE,
        bank=bank,
        used=UsedChallenges(store, writer),
    )
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=3000, currency="EUR"))
    app = Starlette(routes=[Route("/articles/{slug}", article, methods=["GET", "POST"])])
    return Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[method],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )


async def paid_headers(
    c: httpx.AsyncClient, bank: WatchedBank, clock: FixedClock, method: str = "GET"
) -> dict[str, str]:
    asked = await c.request(method, "/articles/a")
    challenge = parse_challenges(asked.headers.get_list("www-authenticate"))[0]
    bank.cards += 1
    the_card, _ = bank.card(card_id=bytes([bank.cards]) * 16)
    purchase = the_card.purchase(offer_from(challenge, "/articles/a"), clock.now())
    return auth(challenge, purchase)


async def wait_for(event: asyncio.Event) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout=5)
    except TimeoutError:
        return False
    return True


async def test_the_bank_settles_while_the_takes_fsync_runs(sqlite_store: Store) -> None:
    """The take's fsync held: the bank is asked anyway, and the purchase is answered only
    once that fsync returned (before: the bank was asked only after it, 0 of 1 calls)."""
    clock = FixedClock(int(time.time()))
    gate = GatedFsync()
    writer = StoreWriter(sqlite_store, fsync=gate)
    bank = WatchedBank(clock, gate)
    transport = httpx.ASGITransport(app=vendor(sqlite_store, writer, bank, clock))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
            headers = await paid_headers(c, bank, clock)
            gate.hold()
            paying = asyncio.ensure_future(c.get("/articles/a", headers=headers))
            assert await wait_for(bank.asked), "the bank was not asked while the fsync ran"
            assert bank.syncs_returned_when_asked == [0]
            await asyncio.sleep(0.05)
            assert not paying.done()  # settled at the bank, but the take is not yet durable
            gate.release()
            answer = await asyncio.wait_for(paying, timeout=10)
    finally:
        gate.release()
        await writer.aclose()
    assert answer.status_code == 200, answer.text
    assert answer.text == "article"
    assert gate.returned >= 1
    assert bank.bank.credited("shop") == 3


async def test_a_request_that_may_not_be_retried_waits_for_the_take_first(
    sqlite_store: Store,
) -> None:
    """A POST's resend would be refused as spent, so its take is durable before the bank
    is asked: a failing fsync then charges nothing."""
    clock = FixedClock(int(time.time()))
    gate = GatedFsync()
    writer = StoreWriter(sqlite_store, fsync=gate)
    bank = WatchedBank(clock, gate)
    transport = httpx.ASGITransport(app=vendor(sqlite_store, writer, bank, clock))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
            headers = await paid_headers(c, bank, clock, "POST")
            gate.hold()
            paying = asyncio.ensure_future(c.post("/articles/a", headers=headers))
            await asyncio.to_thread(gate.started.wait, 10)
            assert not await wait_for_briefly(bank.asked)
            gate.release()
            answer = await asyncio.wait_for(paying, timeout=10)
            assert answer.status_code == 200, answer.text
            assert bank.syncs_returned_when_asked == [1]
            headers = await paid_headers(c, bank, clock, "POST")
            gate.fail_next()
            failed = await c.post("/articles/a", headers=headers)
    finally:
        gate.release()
        await writer.aclose()
    assert failed.status_code == 503
    assert bank.online == 1  # the failed take's purchase never reached the bank
    assert bank.bank.credited("shop") == 3


async def wait_for_briefly(event: asyncio.Event) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout=0.2)
    except TimeoutError:
        return False
    return True


async def test_a_take_whose_fsync_fails_after_the_bank_settled_is_served_on_resend(
    sqlite_store: Store,
) -> None:
    """The take's fsync fails while the bank settles: the request is answered 503 with
    Retry-After (never 200 before the take is durable); the same request sent again is
    served as a retry once a later fsync succeeded, and the card is charged once."""
    clock = FixedClock(int(time.time()))
    gate = GatedFsync()
    writer = StoreWriter(sqlite_store, fsync=gate)
    bank = WatchedBank(clock, gate)
    transport = httpx.ASGITransport(app=vendor(sqlite_store, writer, bank, clock))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
            headers = await paid_headers(c, bank, clock)
            gate.fail_next()
            failed = await c.get("/articles/a", headers=headers)
            asked = bank.online
            begun = gate.begun
            clock.advance(DELIVERY_LEASE + 1)  # before that a resend is told "in progress"
            resent = await c.get("/articles/a", headers=headers)
    finally:
        await writer.aclose()
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "1"
    assert "article" not in failed.text
    assert asked == 1  # the bank settled it...
    assert resent.status_code == 200, resent.text  # ...and the resend is served
    assert gate.begun > begun
    assert bank.online == 2
    assert bank.bank.credited("shop") == 3  # charged once


async def test_a_refused_purchase_gives_its_id_back_after_the_overlap(
    sqlite_store: Store,
) -> None:
    """The bank down while the take's fsync runs: 503 with the bank's Retry-After, the id
    given back (the same credential is sent to the bank again once it is up)."""
    clock = FixedClock(int(time.time()))
    gate = GatedFsync()
    writer = StoreWriter(sqlite_store, fsync=gate)
    bank = WatchedBank(clock, gate)
    bank.down = True
    transport = httpx.ASGITransport(app=vendor(sqlite_store, writer, bank, clock))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as c:
            headers = await paid_headers(c, bank, clock)
            down = await c.get("/articles/a", headers=headers)
            bank.down = False
            up = await c.get("/articles/a", headers=headers)
    finally:
        await writer.aclose()
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert up.status_code == 200, up.text
    assert bank.bank.credited("shop") == 3
