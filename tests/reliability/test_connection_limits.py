"""A PostgreSQL server out of connection slots, under a storm of honest requests.

A private server with a low ``max_connections``; a 2-worker vendor and a 2-worker issuer on
it; then every free slot but ``FREE`` is taken by another client, and paid requests arrive
at once. Whatever cannot get a connection (the pool's wait runs out, or the server says
"too many clients") must be answered 503 with Retry-After, never 500: nothing was done and
the client may send it again. Everything else is answered as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, Unavailable
from farthing.core.schemes import hll
from farthing.store import open_store
from tests.pgserver import PgServer, PgUnavailable
from tests.reliability.procs import issuer_server, vendor_server
from tests.reliability.test_races import METHODS, Job, blast, plan
from tests.reliability.world import (
    MERCHANT_ID,
    World,
    build_world,
    challenge_ids,
    hll_offer,
)

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("reliability-servers")]

MAX_CONNECTIONS = 30
FREE = 2  # slots left to the servers under test once the hog has taken the rest
DEPOSITS = 40
ITEMS = 3


@pytest.fixture
def small_pg() -> Iterator[PgServer]:
    try:
        server = PgServer.start_new(max_connections=MAX_CONNECTIONS)
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@contextlib.contextmanager
def hog(dsn: str, *, leave: int) -> Iterator[int]:
    """Take every connection slot the server has left but ``leave``; yield how many."""
    held: list[psycopg.Connection[Any]] = []
    try:
        while True:
            try:
                held.append(psycopg.connect(dsn, autocommit=True))
            except psycopg.OperationalError:
                break
        for _ in range(min(leave, len(held))):
            held.pop().close()
        yield len(held)
    finally:
        for conn in held:
            conn.close()


def answered(results: list[dict[str, Any]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    return counts


def test_a_vendor_out_of_connections_answers_503_not_500(
    small_pg: PgServer, tmp_path: Path
) -> None:
    world = build_world(tmp_path, small_pg.create_database("storm"))
    jobs: list[Job] = []
    with vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log") as vendor:
        unpaid = httpx.get(vendor.base + "/articles/a.txt", timeout=10)
        offered = challenge_ids(unpaid.headers.get_list("www-authenticate"))
        for method in METHODS:
            cid, expires = offered[method]
            more, _ = plan(world, method, cid, expires - 300, first=len(jobs))
            jobs += more
        random.Random(2).shuffle(jobs)
        world.close()  # the test's own pool gives its slots back
        with hog(small_pg.dsn("storm"), leave=FREE):
            results = blast(vendor.base, jobs, tmp_path)
    counts = answered(results)
    no_retry_after = [r for r in results if r["status"] == 503 and not r["retry_after"]]
    assert set(counts) <= {200, 401, 503}, counts
    assert no_retry_after == []
    assert counts.get(503, 0) > 0, f"the storm never met the connection limit: {counts}"


def deposit_bodies(world: World, count: int) -> list[dict[str, str]]:
    """``count`` deferred-mode batches of ``ITEMS`` purchases each, from new cards."""
    cards = world.hll_cards(count * ITEMS, units=10)
    now = world.clock.now()
    bodies = []
    for n in range(count):
        items = []
        for card in cards[n * ITEMS : (n + 1) * ITEMS]:
            offer = hll_offer(b64url_encode(world.rng(24)), now + 300, good="/articles/a.txt")
            items.append(
                hll.DepositItem(offer=offer, purchase=hll.decode_payment(card.pay(offer, 1)))
            )
        batch = hll.DepositBatch(
            batch_id=world.rng(16), merchant_id=MERCHANT_ID, items=tuple(items)
        )
        tag = hll.batch_tag(world.merchant_key, batch)
        bodies.append({"batch": b64url_encode(hll.encode_batch(batch)), "tag": b64url_encode(tag)})
    return bodies


def test_an_issuer_out_of_connections_answers_503_not_500(
    small_pg: PgServer, tmp_path: Path
) -> None:
    world = build_world(tmp_path, small_pg.create_database("storm"))
    bodies = deposit_bodies(world, DEPOSITS)
    world.close()

    async def storm(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/hll/deposits", json=b) for b in bodies))

    with (
        issuer_server(
            small_pg.dsn("storm"), world.key_file, workers=2, log_path=tmp_path / "issuer.log"
        ) as issuer,
        hog(small_pg.dsn("storm"), leave=FREE),
    ):
        responses = asyncio.run(storm(issuer.base))
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
    refused = [r for r in responses if r.status_code == 503]
    assert set(counts) <= {200, 503}, counts
    assert all(r.headers.get("retry-after") for r in refused)
    assert all(r.json()["code"] == ErrorCode.STORE_UNAVAILABLE for r in refused)
    assert counts.get(503, 0) > 0, f"the storm never met the connection limit: {counts}"


def test_an_exhausted_pool_is_unavailable_not_an_internal_error(small_pg: PgServer) -> None:
    """One pooled connection, held by a transaction: the next unit waits ``pool_timeout``
    and is refused as Unavailable (503), and so is a hot-path call past ``lane_size``."""
    dsn = small_pg.create_database("pool") + "?pool_size=1&lane_size=1&pool_timeout=0.2"
    store = open_store(dsn)
    try:
        with (
            store.transaction(readonly=True),
            pytest.raises(Unavailable) as refused,
            store.transaction(readonly=True),
        ):
            pass
        assert refused.value.retry_after >= 1
        with store.hot_batch(), pytest.raises(Unavailable):
            store.szm_card(b"\x00" * 16)
        with store.transaction(readonly=True) as tx:  # the pool works again afterwards
            assert tx.outbox_due(0, 1) == []
    finally:
        store.close()
