"""Two vendor workers on one PostgreSQL database, each with its own store (connections),
writer and card cache, as two uvicorn workers are.

A card paid through one worker and then through the other (whose cached state is stale)
is judged against the stored state that its losing write returned (no read), and charged
once per payment; a payment sent again to either worker is not taken again, and a
challenge id stays single use; two workers paying the same card index at once charge it
once; a connection broken between batches fails nothing for good (the next batch and read
connect afresh).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.paywall.books import ChainBook, staleness_for
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.store import Store, SzmCardRow, open_store
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
        self.store = open_store(dsn, create=False)
        self.writer = StoreWriter(self.store)
        book = ChainBook(self.store, self.writer)
        method = OfflineMethod(
            SzmScheme.chain(KEYS.chain_master), book, staleness=staleness_for(self.store)
        )
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
def card_reads(monkeypatch: pytest.MonkeyPatch) -> list[Store]:
    """The card reads (``Store.szm_card``) the workers make, by the store that made it."""
    reads: list[Store] = []
    real = Store.szm_card

    def counting(self: Store, card_id: bytes) -> SzmCardRow | None:
        reads.append(self)
        return real(self, card_id)

    monkeypatch.setattr(Store, "szm_card", counting)
    return reads


async def test_a_card_paid_through_both_workers_is_charged_once_per_payment(
    workers: tuple[Worker, Worker, str], card_reads: list[Store]
) -> None:
    """Each worker's cached state is behind every other payment: the payment's write
    loses and returns the stored card, and the payment is judged again against it, with
    no read of the card (one read per worker: its first payment, nothing cached)."""
    a, b, _dsn = workers
    card = issue_chain_cards(a.store, 1, units=40, seed="both")[0]
    statuses = []
    for n in range(20):
        card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
        worker = (a, b)[n % 2]
        statuses.append(await worker.pay(await worker.challenge(), payment))
    assert statuses == [200] * 20
    assert card_reads == [a.store, b.store]  # before: 19 (each stale payment read the card)
    row = a.store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 40


async def test_a_payment_replayed_to_either_worker_is_not_taken_again(
    workers: tuple[Worker, Worker, str],
) -> None:
    """A payment taken by one worker, sent again (same challenge, same credential) to
    either worker, or its card's next payment under the used challenge id: nothing
    charged, never a second 200 from the other worker within the delivery lease."""
    a, b, _dsn = workers
    card = issue_chain_cards(a.store, 1, units=40, seed="replay")[0]
    for n in range(4):  # both caches hold the card, one of them stale
        card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
        worker = (a, b)[n % 2]
        assert await worker.pay(await worker.challenge(), payment) == 200
    challenge = await a.challenge()
    card, payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
    assert await a.pay(challenge, payment) == 200
    replays = [await b.pay(challenge, payment), await a.pay(challenge, payment)]
    _later, next_payment, _ = szm_chain.next_payment(card, 2, now=SystemClock().now())
    reused = await b.pay(challenge, next_payment)
    row = a.store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 10  # five payments of 2 units, each taken once
    assert replays[0] == 402  # another worker within the lease: in progress, not served
    assert replays[1] in (200, 402)  # the same worker: served as retried, or refused
    assert reused == 402  # a new payment under a used challenge id
    assert not await b.store.read_hot(b.store.challenge_used, b"\x00" * 32)


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
