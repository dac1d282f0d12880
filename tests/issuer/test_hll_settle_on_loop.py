"""The bank settles online verifications in hot batches (store/writer.py
``run_hot_in_order``): on SQLite committed on the event loop with ``synchronous=NORMAL``
and answered only after an fsync of the WAL file that began after the commit (a real
``os.fsync`` behind a gate, :class:`farthing.testing.GatedFsync`); on PostgreSQL on the
writer thread's hot batch, one job after another.

Over a real uvicorn bank on loopback (tests/servers.py), real SQLite and real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from farthing.core.errors import ErrorCode, InsufficientFunds
from farthing.core.schemes import hll
from farthing.http.issuer_wire import verify_request_tag
from farthing.issuer import issuer_app
from farthing.store.writer import StoreWriter
from farthing.testing import GatedFsync
from farthing.testing.hll import SoftwareCard
from tests.issuer.helpers import (
    BOTH_BACKENDS,
    EUR,
    PIN,
    Harness,
    Shop,
    balanced,
    buy,
    open_shop,
    verify_body,
)
from tests.issuer.test_hll_verify_batch import Pair, batch_body, code_of, settled
from tests.servers import app_server


@pytest.fixture
def gate() -> Iterator[GatedFsync]:
    gate = GatedFsync()
    yield gate
    gate.release()  # never leave the bank's fsync thread waiting


@pytest.fixture
def gated_bank(harness: Harness, gate: GatedFsync) -> Iterator[str]:
    """The issuer app under uvicorn on loopback, its WAL fsync behind ``gate``."""
    with app_server(issuer_app(harness.services, fsync=gate)) as base:
        yield base


def _post_batch(bank: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{bank}/v1/hll/verify-batch", json=body, timeout=30)


async def _until(predicate: object) -> None:
    """Poll ``predicate`` (bounded: 10 s)."""
    assert callable(predicate)
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


@pytest.mark.anyio
async def test_a_batch_settled_on_the_loop_is_answered_only_after_its_fsync(
    harness: Harness, gated_bank: str, gate: GatedFsync
) -> None:
    """SQLite: the batch's settlements are committed (another connection reads them)
    while its fsync is held, and the answer waits for that fsync (before: committed with
    ``synchronous=FULL`` on the writer thread, the bank's own fsync never called)."""
    shop = open_shop(harness)
    pairs = [buy(harness, shop, 2) for _ in range(3)]
    gate.hold()
    answer = asyncio.ensure_future(
        asyncio.to_thread(_post_batch, gated_bank, batch_body(shop, pairs))
    )
    await asyncio.to_thread(gate.started.wait, 10)
    await _until(lambda: settled(harness, shop) == (6, 6000, 3))  # committed...
    await asyncio.sleep(0.2)
    assert not answer.done()  # ...not answered: its fsync has not returned
    gate.release()
    response = await answer
    assert response.status_code == 200, response.text
    assert [r["repeated"] for r in response.json()["results"]] == [False] * 3
    assert gate.returned >= 1
    assert settled(harness, shop) == (6, 6000, 3)
    assert balanced(harness)


def test_a_single_verification_waits_for_its_fsync_too(
    harness: Harness, gated_bank: str, gate: GatedFsync
) -> None:
    """``POST /v1/hll/verify`` settles the same way."""
    shop = open_shop(harness)
    offer, purchase = buy(harness, shop, 4)
    gate.fail_next()
    failed = httpx.post(
        f"{gated_bank}/v1/hll/verify", json=verify_body(shop, offer, purchase), timeout=30
    )
    assert failed.status_code == 503, failed.text
    assert gate.begun == 1
    again = httpx.post(
        f"{gated_bank}/v1/hll/verify", json=verify_body(shop, offer, purchase), timeout=30
    )
    assert again.status_code == 200, again.text
    assert again.json()["repeated"] is True  # its first settlement committed, charged once
    assert settled(harness, shop) == (4, 4000, 1)
    assert balanced(harness)


def test_a_failing_fsync_answers_unavailable_and_the_resend_settles_once(
    harness: Harness, gated_bank: str, gate: GatedFsync
) -> None:
    """A batch whose fsync fails is answered 503 as a whole (its outcome unknown); sent
    again, each purchase is answered settled (``repeated``: the first commit stands) and
    charged once; a new batch after it settles as usual."""
    shop = open_shop(harness)
    pairs = [buy(harness, shop, 2) for _ in range(3)]
    gate.fail_next()
    failed = _post_batch(gated_bank, batch_body(shop, pairs))
    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert "retry-after" in failed.headers
    again = _post_batch(gated_bank, batch_body(shop, pairs))
    assert again.status_code == 200, again.text
    assert [r["repeated"] for r in again.json()["results"]] == [True] * 3
    assert settled(harness, shop) == (6, 6000, 3)
    fresh = _post_batch(gated_bank, batch_body(shop, [buy(harness, shop, 1)]))
    assert [r["repeated"] for r in fresh.json()["results"]] == [False]
    assert settled(harness, shop) == (7, 7000, 4)
    assert balanced(harness)


def _replayed(harness: Harness, shop: Shop, earlier: Pair) -> Pair:
    """``earlier``'s counter under another offer (only the card's key could make it)."""
    other = replace(earlier[0], good="/elsewhere")
    sigma = hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id)).mac(
        hll.purchase_message(shop.card_id, other, earlier[1].counter)
    )
    return other, replace(earlier[1], sigma=sigma)


def _beyond_the_card(harness: Harness, shop: Shop, amount: int) -> Pair:
    """A purchase of ``amount`` by a copy of the card that believes it holds 100 units
    (the bank's record decides: the card itself would refuse to overspend)."""
    state = replace(shop.card.state, balance=100)
    key = hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id))
    card = SoftwareCard(key=key, state=state, pin=PIN)
    card.verify_pin(PIN)
    offer = hll.make_offer(
        merchant_id=shop.merchant_id,
        good="/a",
        amount=amount,
        denomination=EUR,
        rng=harness.rng,
        now=harness.clock.now(),
        ttl=300,
    )
    return offer, card.purchase(offer, harness.clock.now())


@BOTH_BACKENDS
def test_a_counter_replayed_in_the_same_batch_is_refused(harness: Harness) -> None:
    """A batch holding a purchase and another purchase under the same card counter, a
    purchase twice, and one the card cannot cover: the first settles, the replay is a
    409, the copy is ``repeated``, the uncovered one 402; one charge in all."""
    shop = open_shop(harness, units=10)
    first = buy(harness, shop, 3)
    replay = _replayed(harness, shop, first)
    too_much = _beyond_the_card(harness, shop, 8)  # 3 + 8 > 10
    with app_server(harness.app) as bank:
        response = _post_batch(bank, batch_body(shop, [first, replay, first, too_much]))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["repeated"] is False
    assert code_of(results[1]) == (409, ErrorCode.DUPLICATE_SPEND.value)
    assert results[2]["repeated"] is True
    assert code_of(results[3])[0] == 402
    assert settled(harness, shop) == (3, 3000, 1)
    assert balanced(harness)


@BOTH_BACKENDS
@pytest.mark.anyio
async def test_settlements_in_one_hot_batch_run_one_after_another(harness: Harness) -> None:
    """The same uncovered purchase in several requests' settlements of one hot batch (as
    ``POST /v1/hll/verify-batch`` sends them): each is refused (InsufficientFunds), none
    answered as a repeat of another's spend row, which that one deletes again.
    PostgreSQL's batch on the loop interleaves its jobs' statements, so there
    ``run_hot_in_order`` takes the thread's batch (``run_hot``: answered ``repeated``)."""
    shop = open_shop(harness, units=2)
    offer, purchase = _beyond_the_card(harness, shop, 3)
    service = harness.services.hll
    key = shop.merchant_key
    offer_bytes, payment = hll.encode_offer(offer), hll.encode_payment(purchase)
    tag = verify_request_tag(key, shop.merchant_id, offer_bytes, payment)
    checked = service.check_online(shop.merchant_id, offer_bytes, payment, tag)
    writer = StoreWriter(harness.store, awaited_from=1)
    try:
        outcomes = await asyncio.gather(
            *(
                writer.run_hot_in_order(lambda hot: service.settle_online_batch(hot, [checked]))
                for _ in range(6)
            )
        )
    finally:
        await writer.aclose()
    assert all(isinstance(o, InsufficientFunds) for [o] in outcomes), outcomes
    assert settled(harness, shop) == (0, 0, 0)
    assert balanced(harness)
