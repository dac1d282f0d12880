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

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import hll
from farthing.issuer.client import IssuerClient
from farthing.store import HllPaymentState, OutboxState, Store, open_store
from farthing.vendor.books import HllDeferredBook
from farthing.vendor.deposits import Depositor, FlushReport
from farthing.vendor.methods.hll import PendingPurchase
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
            risk_limit=10**9,
        )


def depositor(world: World, store: Store, transport: httpx.AsyncBaseTransport) -> Depositor:
    client = IssuerClient(
        "http://issuer.test",
        merchant_id=MERCHANT_ID,
        merchant_key=world.merchant_key,
        transport=transport,
    )
    return Depositor(
        store, client, clock=SystemClock(), rng=os.urandom,
        merchant_id=MERCHANT_ID, merchant_key=world.merchant_key, batch_size=ITEMS,
    )  # fmt: skip


def payment_states(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as tx:
        rows = tx.vendor_hll_payments_by_state()
    return {state.value: count for state, count in rows.items()}


def outbox_states(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as tx:
        rows = tx.outbox_counts()
    return {state.value: count for state, count in rows.items()}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_batch_sent_twice_at_once_gets_the_stored_report(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    world = build_world(tmp_path, store_target(request, backend, tmp_path), hll_mode="deferred")
    second = open_store(world.target, create=False)
    transport = httpx.ASGITransport(app=world.issuer_app())
    one, two = depositor(world, world.store, transport), depositor(world, second, transport)
    reports: list[FlushReport] = []
    for _ in range(ROUNDS):
        record_deferred(world, ITEMS)
        assert one.stage() == 1
        reports += await asyncio.gather(one.flush(), two.flush())
    failed = sum(r.failed for r in reports)
    sent = sum(r.sent for r in reports)
    states = payment_states(world.store)
    outbox = outbox_states(world.store)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    second.close()
    world.close()
    assert (failed, sent, states, outbox) == (
        0, 2 * ROUNDS, {"settled": ROUNDS * ITEMS}, {"done": ROUNDS}
    ), reports
    assert owed == ROUNDS * ITEMS * PRICE_UNITS * UNIT
