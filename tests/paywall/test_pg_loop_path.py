"""The paid path on PostgreSQL stays on the event loop: the card reads (and the batches)
go out on the loop's own async connections, not through a thread.

Two vendor workers are two stores on one database, each with its own writer and card
cache. What must hold on the loop as it did through a thread: a card paid through one
worker and then through the other (whose cached state is stale) is judged against the
stored state and charged once per payment; two workers paying the same card index at
once charge it once; a connection broken between batches fails nothing for good (the next
batch and read connect afresh).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.paywall.books import ChainBook
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.store import open_store
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom
from tests.paywall.helpers import KEYS, content, issue_chain_cards, prices

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Worker:
    """One vendor worker: its own store (connections), writer and card cache."""

    def __init__(self, dsn: str, seed: str) -> None:
        self.store = open_store(dsn + "?loop_reads=1", create=False)
        self.writer = StoreWriter(self.store)
        book = ChainBook(self.store, self.writer)
        method = OfflineMethod(SzmScheme.chain(KEYS.chain_master), book)
        self.paywall = Paywall(
            content(),
            realm="news",
            prices=prices(),
            methods=[method],
            challenge_secret=b"s" * 32,
            clock=SystemClock(),
            rng=DeterministicRandom(seed),
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.paywall), base_url="http://v"
        )

    async def challenge(self) -> Challenge:
        response = await self.client.get("/articles/a")
        assert response.status_code == 402
        return parse_challenges(response.headers.get_list("www-authenticate"))[0]

    async def pay(self, challenge: Challenge, payment: szm_chain.Payment) -> int:
        payload: dict[str, object] = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
        headers = {"authorization": format_credential(Credential.answering(challenge, payload))}
        return (await self.client.get("/articles/a", headers=headers)).status_code

    async def close(self) -> None:
        await self.client.aclose()
        await self.writer.aclose()
        self.store.close()


@pytest.fixture
async def workers(fresh_pg_dsn: str) -> AsyncIterator[tuple[Worker, Worker, str]]:
    open_store(fresh_pg_dsn).close()  # migrated
    a, b = Worker(fresh_pg_dsn, "a"), Worker(fresh_pg_dsn, "b")
    try:
        yield a, b, fresh_pg_dsn
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store reads handed to a thread (``asyncio.to_thread``), by function name."""
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return hops


async def test_hot_reads_run_on_the_loop_and_answer_as_the_thread_did(
    workers: tuple[Worker, Worker, str],
) -> None:
    a, _b, _dsn = workers
    cards = issue_chain_cards(a.store, 12, seed="reads")
    loop_thread = threading.get_ident()

    def read_where(card_id: bytes) -> tuple[int, Any]:
        return threading.get_ident(), a.store.szm_card(card_id)

    # Twelve reads asked for in one pass of the loop (one round trip on its connection).
    answers = await asyncio.gather(*(a.store.read_hot(read_where, c.card_id) for c in cards))
    for card, (thread, row) in zip(cards, answers, strict=True):
        assert thread == loop_thread  # before: a worker thread (asyncio.to_thread)
        assert row == a.store.szm_card(card.card_id)  # the same row, read through the thread lane
    assert await a.store.read_hot(a.store.szm_card, b"\x00" * 16) is None
    assert await a.store.read_hot(a.store.challenge_used, b"\x01" * 32) is False


async def test_a_card_paid_through_both_workers_is_charged_once_per_payment(
    workers: tuple[Worker, Worker, str], thread_hops: list[str]
) -> None:
    """Each worker's cached state is behind every other payment: judged against the
    stored state, read on the loop."""
    a, b, _dsn = workers
    card = issue_chain_cards(a.store, 1, units=40, seed="both")[0]
    statuses = []
    for n in range(20):
        card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
        worker = (a, b)[n % 2]
        statuses.append(await worker.pay(await worker.challenge(), payment))
    assert statuses == [200] * 20
    row = a.store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 40
    assert "szm_card" not in thread_hops  # before: every stored-state read hopped (19)


async def test_two_workers_paying_the_same_index_at_once_charge_it_once(
    workers: tuple[Worker, Worker, str],
) -> None:
    a, b, _dsn = workers
    cards = issue_chain_cards(a.store, 8, units=10, seed="race")
    for round_ in range(3):
        sends = []
        for index, card in enumerate(cards):
            card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
            cards[index] = card
            for worker in (a, b):
                sends.append(_pay_fresh(worker, payment))
        statuses = await asyncio.gather(*sends)
        # Per card the two copies: exactly one paid, the other refused (never both).
        for pair in range(len(cards)):
            two = statuses[2 * pair : 2 * pair + 2]
            assert two.count(200) == 1, (round_, two)
    for card in cards:
        row = a.store.szm_card(card.card_id)
        assert row is not None
        assert row.spent == 6


async def _pay_fresh(worker: Worker, payment: szm_chain.Payment) -> int:
    return await worker.pay(await worker.challenge(), payment)


async def test_a_broken_connection_fails_no_later_payment(
    workers: tuple[Worker, Worker, str],
) -> None:
    """Every backend of the workers killed between payments: the payments in flight then
    answer 200 or 503 (never a 500, never charged twice); the next ones connect afresh."""
    a, b, dsn = workers
    cards = issue_chain_cards(a.store, 16, units=10, seed="broken")

    async def pay_all(worker: Worker) -> list[int]:
        sends = []
        for index, card in enumerate(cards):
            card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
            cards[index] = card
            sends.append(_pay_fresh(worker, payment))
        return list(await asyncio.gather(*sends))

    assert await pay_all(a) == [200] * len(cards)
    charged = [2] * len(cards)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    during = await pay_all(b)
    assert set(during) <= {200, 503}, during
    charged = [c + (2 if s == 200 else 0) for c, s in zip(charged, during, strict=True)]
    after = await pay_all(a)
    assert after == [200] * len(cards)  # connected afresh
    charged = [c + 2 for c in charged]
    for card, expected in zip(cards, charged, strict=True):
        row = a.store.szm_card(card.card_id)
        assert row is not None
        assert row.spent == expected


async def test_without_loop_reads_the_reads_stay_in_a_thread(fresh_pg_dsn: str) -> None:
    """The default (``loop_reads`` off): as before, a read hops to a thread."""
    store = open_store(fresh_pg_dsn)
    try:
        card = issue_chain_cards(store, 1, seed="default")[0]

        def read_where(card_id: bytes) -> tuple[int, Any]:
            return threading.get_ident(), store.szm_card(card_id)

        thread, row = await store.read_hot(read_where, card.card_id)
    finally:
        store.close()
    assert thread != threading.get_ident()
    assert row is not None
