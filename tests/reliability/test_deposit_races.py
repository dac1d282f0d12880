"""HLL deposits sent twice, on SQLite and PostgreSQL: the bank answers every copy with the one
stored report, and the vendor never gives up on a batch the bank may have credited.

- Two depositors (two workers, each its own store connection) send the same outbox batch at
  the same moment; the issuer runs both requests on its own threads.
- The bank commits a deposit and the answer is lost (the connection resets): the vendor
  retries instead of failing the batch, and a batch already marked failed is reconciled
  against the bank, which tells what it did with that batch id.

What must hold: no copy is refused; every purchase ends ``settled`` (none ``batched``), the
merchant is credited once for each, and the outbox holds no open or failed item.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from farthing.core.clock import Clock, SystemClock
from farthing.core.encoding import b64url_encode
from farthing.core.errors import Conflict, ErrorCode
from farthing.core.schemes import hll
from farthing.http.issuer_client import IssuerClient
from farthing.http.problems import CONTENT_TYPE, problem_for
from farthing.paywall.books import HllDeferredBook
from farthing.paywall.deposits import Depositor, FlushReport, backoff
from farthing.paywall.methods.hll import PendingPurchase
from farthing.store import OutboxState, Store, open_store
from farthing.testing import FixedClock
from tests.reliability.conftest import BACKENDS, store_target
from tests.reliability.world import (
    MERCHANT_ID,
    PRICE_UNITS,
    UNIT,
    World,
    build_world,
    hll_offer,
)

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("reliability-servers")]

ROUNDS = 3
ITEMS = 120  # per batch: long enough a deposit transaction for the copies to overlap
CARDS = 6


def record_deferred(world: World, count: int) -> None:
    """``count`` delivered deferred purchases, spread over a few cards, in the vendor's book."""
    cards = world.hll_cards(CARDS, units=10 * count)
    book = HllDeferredBook(world.store)
    now = world.clock.now()
    for n in range(count):
        card = cards[n % CARDS]
        counter = n // CARDS + 1
        offer = hll_offer(b64url_encode(world.rng(24)), now + 300, good=f"/articles/{n}")
        book.record(
            PendingPurchase(
                card_id=card.card_id,
                counter=counter,
                amount=PRICE_UNITS,
                offer=hll.encode_offer(offer),
                payment=card.pay(offer, counter),
            ),
            decide=lambda card, merchant: hll.DeferredDecision.DEFER,
        )


def depositor(
    world: World,
    store: Store,
    transport: httpx.AsyncBaseTransport,
    *,
    clock: Clock | None = None,
    batch_size: int = ITEMS,
) -> Depositor:
    client = IssuerClient(
        "http://issuer.test",
        merchant_id=MERCHANT_ID,
        merchant_key=world.merchant_key,
        transport=transport,
    )
    return Depositor(
        store, client, clock=clock or SystemClock(), rng=os.urandom,
        merchant_id=MERCHANT_ID, merchant_key=world.merchant_key, batch_size=batch_size,
    )  # fmt: skip


def payment_states(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as tx:
        rows = tx.vendor.hll_payments_by_state()
    return {state.value: count for state, count in rows.items()}


def outbox_states(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as tx:
        rows = tx.vendor.outbox_counts()
    return {state.value: count for state, count in rows.items()}


async def race_copies(world: World, rounds: int, items: int) -> None:
    """``rounds`` times: ``items`` purchases staged as one batch, sent by two depositors at
    once; then every copy answered, every purchase settled and credited once."""
    second = open_store(world.target, create=False)
    transport = httpx.ASGITransport(app=world.issuer_app())
    one = depositor(world, world.store, transport, batch_size=items)
    two = depositor(world, second, transport, batch_size=items)
    reports: list[FlushReport] = []
    for _ in range(rounds):
        record_deferred(world, items)
        assert one.stage() == 1
        reports += await asyncio.gather(one.flush(), two.flush())
    second.close()
    failed = sum(r.failed for r in reports)
    sent = sum(r.sent for r in reports)
    states = payment_states(world.store)
    outbox = outbox_states(world.store)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    assert (failed, sent, states, outbox) == (
        0,
        2 * rounds,
        {"settled": rounds * items},
        {"done": rounds},
    ), reports
    assert owed == rounds * items * PRICE_UNITS * UNIT


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_batch_sent_twice_at_once_gets_the_stored_report(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    world = build_world(tmp_path, store_target(request, backend, tmp_path), hll_mode="deferred")
    try:
        await race_copies(world, ROUNDS, ITEMS)
    finally:
        world.close()


@pytest.mark.heavy
@pytest.mark.postgres
async def test_ten_rounds_of_300_item_batches_sent_twice_at_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The size of the original finding (9 of 10 rounds refused a copy, 2,700 stuck)."""
    world = build_world(tmp_path, store_target(request, "postgres", tmp_path), hll_mode="deferred")
    try:
        await race_copies(world, 10, 300)
    finally:
        world.close()


class FaultyLine(httpx.AsyncBaseTransport):
    """The vendor's line to the real issuer, with one fault per request, in order:
    ``"reset"`` lets the issuer answer (it has committed) and loses the answer, ``"busy"``
    answers the 409 the issuer gives when its store stays busy, ``None`` passes through."""

    def __init__(self, issuer: httpx.AsyncBaseTransport, faults: list[str | None]) -> None:
        self._issuer = issuer
        self._faults = faults

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._faults.pop(0) if self._faults else None
        if fault == "busy":
            busy = problem_for(Conflict("the store is busy; try again", code=ErrorCode.CONFLICT))
            return httpx.Response(
                busy.status, json=busy.to_json(), headers={"content-type": CONTENT_TYPE}
            )
        response = await self._issuer.handle_async_request(request)
        if fault == "reset":
            await response.aread()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


LOST = 10  # purchases in the batch whose answer is lost


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_lost_answer_then_a_busy_bank_is_retried_not_failed(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    world = build_world(tmp_path, store_target(request, backend, tmp_path), hll_mode="deferred")
    record_deferred(world, LOST)
    clock = FixedClock(world.clock.now())
    line = FaultyLine(httpx.ASGITransport(app=world.issuer_app()), ["reset", "busy"])
    dep = depositor(world, world.store, line, clock=clock)
    assert dep.stage() == 1
    reports = []
    for attempt in range(1, 4):
        reports.append(await dep.flush_and_reconcile())
        clock.advance(backoff(attempt))
    states, outbox = payment_states(world.store), outbox_states(world.store)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    world.close()
    assert [(r.sent, r.retry_later, r.failed) for r in reports] == [(0, 1, 0), (0, 1, 0), (1, 0, 0)]
    assert (states, outbox) == ({"settled": LOST}, {"done": 1})
    assert owed == LOST * PRICE_UNITS * UNIT


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failed_batch_the_bank_credited_is_reconciled(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """A batch left failed while the bank had credited it (what a 409 to a concurrent copy
    did before): the vendor asks the bank about it and closes it by the bank's report."""
    world = build_world(tmp_path, store_target(request, backend, tmp_path), hll_mode="deferred")
    record_deferred(world, LOST)
    clock = FixedClock(world.clock.now())
    line = FaultyLine(httpx.ASGITransport(app=world.issuer_app()), ["reset"])
    dep = depositor(world, world.store, line, clock=clock)
    assert dep.stage() == 1
    assert (await dep.flush()).retry_later == 1
    with world.store.transaction() as tx:
        (item,) = tx.vendor.outbox_due(clock.now() + 10**6, 10)
        tx.vendor.outbox_mark(
            item.batch_id, OutboxState.FAILED, 1, clock.now(), '{"error": "CONFLICT"}'
        )
    stuck = payment_states(world.store)
    report = await dep.flush_and_reconcile()
    states, outbox = payment_states(world.store), outbox_states(world.store)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    world.close()
    assert stuck == {"batched": LOST}
    assert (report.sent, report.reconciled) == (0, 1)
    assert (states, outbox) == ({"settled": LOST}, {"done": 1})
    assert owed == LOST * PRICE_UNITS * UNIT
