"""Honest load on the vendor's deferred HLL book and on small connection pools, on PostgreSQL.

- 200 deferred purchases from 200 cards, recorded at one instant by two vendor workers
  (two stores, many threads each): every one is recorded. The per-card risk check reads a
  SUM and then writes; under SERIALIZABLE, PostgreSQL's predicate locks made purchases on
  *different* cards abort each other until the retries ran out ("the store is busy").
- The same over HTTP: 200 buyers at once against a 2-worker vendor in deferred mode, each
  answered 200 with the article.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.errors import FarthingError
from farthing.core.schemes import hll
from farthing.paywall.books import HllDeferredBook
from farthing.paywall.methods.hll import DeferredPolicy, PendingPurchase
from farthing.store import Store, open_store
from tests.reliability.conftest import store_target
from tests.reliability.procs import vendor_server
from tests.reliability.test_races import Job, blast
from tests.reliability.world import (
    ARTICLES,
    PRICE_UNITS,
    World,
    authorization,
    build_world,
    challenge_ids,
    hll_offer,
)

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("reliability-servers")]

BUYERS = 200
WORKERS = 2
DEADLINE = 60.0


def purchases(world: World, count: int) -> list[PendingPurchase]:
    """One honest purchase from each of ``count`` new cards."""
    now = world.clock.now()
    out = []
    for card in world.hll_cards(count, units=10):
        offer = hll_offer(b64url_encode(world.rng(24)), now + 300, good="/articles/a.txt")
        out.append(
            PendingPurchase(
                card_id=card.card_id,
                counter=1,
                amount=PRICE_UNITS,
                offer=hll.encode_offer(offer),
                payment=card.pay(offer, 1),
            )
        )
    return out


def defer_within(limit: int) -> DeferredPolicy:
    """The core's caps alone (these cards' certificates are checked elsewhere)."""
    risk = hll.DeferredRisk(limit=limit, merchant_cap=10**9)

    def decide(card: int, merchant: int) -> hll.DeferredDecision:
        fits = risk.fits(card, merchant, PRICE_UNITS)
        return hll.DeferredDecision.DEFER if fits else hll.DeferredDecision.ONLINE

    return decide


def record_at_once(stores: list[Store], bought: list[PendingPurchase]) -> list[str]:
    """Record every purchase at one instant, one thread each, spread over the stores."""
    books = [HllDeferredBook(store) for store in stores]
    barrier = threading.Barrier(len(bought), timeout=DEADLINE)
    errors: list[str] = []

    def record(n: int) -> None:
        try:
            barrier.wait()
            books[n % len(books)].record(bought[n], decide=defer_within(10))
        except FarthingError as error:
            errors.append(f"{type(error).__name__}: {error.message}")
        except BaseException as error:  # reported to the test, not lost in a thread
            barrier.abort()
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=record, args=(n,), daemon=True) for n in range(len(bought))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * DEADLINE)
    errors.extend("a buyer did not finish" for thread in threads if thread.is_alive())
    return errors


def test_concurrent_deferred_purchases_on_different_cards_all_succeed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    world = build_world(tmp_path, store_target(request, "postgres", tmp_path), hll_mode="deferred")
    bought = purchases(world, BUYERS)
    stores = [open_store(world.target, create=False) for _ in range(WORKERS)]
    try:
        errors = record_at_once(stores, bought)
        with world.store.transaction(readonly=True) as tx:
            recorded = tx.vendor.hll_payments_by_state()
    finally:
        for store in stores:
            store.close()
        world.close()
    assert (len(errors), errors[:3]) == (0, [])
    assert sum(recorded.values()) == BUYERS


def deferred_jobs(world: World, base: str, count: int) -> list[Job]:
    """One paid request from each of ``count`` new HLL cards, for the vendor at ``base``."""
    cards = world.hll_cards(count, units=10)
    names = sorted(ARTICLES)
    jobs = []
    for n, card in enumerate(cards):
        unpaid = httpx.get(base + "/articles/a.txt", timeout=10)  # an id pays once
        cid, expires = challenge_ids(unpaid.headers.get_list("www-authenticate"))["hll:mac"]
        path = f"/articles/{names[n % len(names)]}"
        payment = card.pay(hll_offer(cid, expires, good=path), 1)
        header = authorization(cid, "hll:mac", payment, certificate=card.certificate)
        jobs.append(Job(n, "hll:mac", path, header, card.key, 1, None))
    return jobs


def test_concurrent_deferred_purchases_over_http_all_succeed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    world = build_world(tmp_path, store_target(request, "postgres", tmp_path), hll_mode="deferred")
    with vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log") as vendor:
        results = blast(vendor.base, deferred_jobs(world, vendor.base, BUYERS), tmp_path)
    with world.store.transaction(readonly=True) as tx:
        recorded = tx.vendor.hll_payments_by_state()
    world.close()
    statuses = Counter(r["status"] for r in results)
    assert statuses == {200: BUYERS}
    assert sum(recorded.values()) == BUYERS
