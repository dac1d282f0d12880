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
import threading
import time
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
from farthing.store._engine import PoolLimits
from tests.pgserver import PgServer, PgUnavailable
from tests.reliability.procs import issuer_server, vendor_server
from tests.reliability.test_deferred_load import BUYERS, deferred_jobs
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
HOLD_S = 4.0  # from just before the storm starts (the blasters start 1.2 s after)
CLIENTS = 120  # simultaneous client connections of the budget storm (3 blaster processes)
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


def storm_jobs(world: World, base: str) -> list[Job]:
    unpaid = httpx.get(base + "/articles/a.txt", timeout=10)
    offered = challenge_ids(unpaid.headers.get_list("www-authenticate"))
    jobs: list[Job] = []
    for method in METHODS:
        _, expires = offered[method]

        def fresh(method: str = method) -> Any:  # an id pays once: one per payment
            unpaid = httpx.get(base + "/articles/a.txt", timeout=10)
            return challenge_ids(unpaid.headers.get_list("www-authenticate"))[method][0]

        more, _ = plan(world, method, fresh, expires - 300, first=len(jobs))
        jobs += more
    random.Random(2).shuffle(jobs)
    return jobs


class PeakConnections:
    """The most connections to one database seen while the block runs (sampled)."""

    def __init__(self, dsn: str, database: str) -> None:
        self._dsn, self._database = dsn, database
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._done.wait(0.02):
                row = conn.execute(query, (self._database,)).fetchone()
                self.peak = max(self.peak, row[0] if row else 0)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def inserts_held(dsn: str, table: str, seconds: float) -> Iterator[None]:
    """Another client blocks every INSERT into ``table`` for ``seconds`` (from the start of
    the block): the vendor's transactions pile up holding their connections, as behind any
    slow statement."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            locked.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        holder.join(timeout=seconds + 10)


def test_a_vendor_holds_at_most_its_connection_budget(small_pg: PgServer, tmp_path: Path) -> None:
    """200 deferred HLL buyers, 120 at a time, while their INSERTs are held up for a moment:
    the 2-worker vendor holds at most 2 x (8 pooled + 3 hot-path) = 22 connections, and the
    buyers past the pool wait for a connection and are served."""
    world = build_world(tmp_path, small_pg.create_database("budget"), hll_mode="deferred")
    with vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log") as vendor:
        jobs = deferred_jobs(world, vendor.base, BUYERS)
        world.close()
        with (
            PeakConnections(small_pg.dsn(), "budget") as seen,
            inserts_held(small_pg.dsn("budget"), "vendor_hll_payments", HOLD_S),
        ):
            results = blast(vendor.base, jobs, tmp_path, threads=CLIENTS // 3)
    counts = answered(results)
    assert counts == {200: BUYERS}
    assert 0 < seen.peak <= 2 * PoolLimits().per_process + 1, seen.peak  # + 1: the lock holder


def test_a_vendor_out_of_connections_answers_503_not_500(
    small_pg: PgServer, tmp_path: Path
) -> None:
    world = build_world(tmp_path, small_pg.create_database("storm"))
    with vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log") as vendor:
        jobs = storm_jobs(world, vendor.base)
        world.close()  # the test's own pool gives its slots back
        with hog(small_pg.dsn("storm"), leave=FREE):
            results = blast(vendor.base, jobs, tmp_path)
    counts = answered(results)
    no_retry_after = [r for r in results if r["status"] == 503 and not r["retry_after"]]
    assert set(counts) <= {200, 402, 503}, counts
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
    assert all(r.json()["farthingCode"] == ErrorCode.STORE_UNAVAILABLE for r in refused)
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
            assert tx.vendor.outbox_due(0, 1) == []
    finally:
        store.close()
