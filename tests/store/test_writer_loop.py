"""The writer's hot batches on the event loop, on both stores (SQLite: the loop commits
itself; PostgreSQL: the loop's async connection, statements sent in pipelined rounds).

What must hold on either path: a payment's write is committed (visible to another
connection) before ``run_hot`` returns; payments that arrive together share one commit;
two payments racing for one card, or one challenge id, win once; a failing job fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from farthing.core.errors import Conflict
from farthing.store import HotTx, Store, open_store
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import issue_chain_cards
from tests.store.helpers import spend_job

pytestmark = pytest.mark.anyio

EXPIRES = 4_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _pay(card_id: bytes, old: int, challenge: bytes) -> Callable[[HotTx], str]:
    return spend_job(card_id, old, challenge, EXPIRES)


async def test_each_payment_is_committed_before_run_hot_returns(
    store: Store, store_target: str
) -> None:
    cards = issue_chain_cards(store, 12)
    commits: list[int] = []
    writer = StoreWriter(store, awaited_from=1, observe=lambda jobs, _s: commits.append(jobs))
    witness = open_store(store_target, create=False)  # its own connections

    async def payer(index: int) -> list[int]:
        seen = []
        for spent in range(3):
            challenge = bytes([index, spent]) * 16
            outcome = await writer.run_hot(_pay(cards[index].card_id, spent, challenge))
            assert outcome == "won"
            row = witness.szm_card(cards[index].card_id)  # another connection, right now
            assert row is not None
            seen.append(row.spent)
            assert witness.challenge_used(challenge)
        return seen

    try:
        seen = await asyncio.gather(*(payer(i) for i in range(len(cards))))
        assert writer._thread is None  # every batch committed on the loop, none on a thread
    finally:
        await writer.aclose()
        witness.close()
    assert seen == [[1, 2, 3]] * len(cards)
    assert sum(commits) == 3 * len(cards)
    assert max(commits) > 1  # payments that arrived together shared a commit


async def test_one_card_and_one_challenge_win_once_in_a_batch(store: Store) -> None:
    card, other = issue_chain_cards(store, 2)
    writer = StoreWriter(store, awaited_from=1)
    try:
        outcomes = await asyncio.gather(
            *(writer.run_hot(_pay(card.card_id, 0, bytes([n]) * 32)) for n in range(8)),
            writer.run_hot(_pay(other.card_id, 0, b"\x00" * 32)),  # card 0's first challenge
        )
    finally:
        await writer.aclose()
    assert sorted(outcomes[:8]) == ["lost"] * 7 + ["won"]
    assert outcomes[8] in ("used", "lost")  # the id was taken (or is given back only after)
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 1
    winner = outcomes[:8].index("won")
    assert store.challenge_used(bytes([winner]) * 32)
    for n in range(8):  # the losers gave their ids back
        if n != winner:
            assert not store.challenge_used(bytes([n]) * 32), n


async def test_a_failing_hot_job_fails_alone(store: Store) -> None:
    cards = issue_chain_cards(store, 2)
    writer = StoreWriter(store, awaited_from=1)

    def bad(hot: HotTx) -> str:
        hot.szm.advance(cards[1].card_id, 0, 5, None)
        raise Conflict("this one fails")

    try:
        outcomes = await asyncio.gather(
            writer.run_hot(_pay(cards[0].card_id, 0, b"\x01" * 32)),
            writer.run_hot(bad),
            return_exceptions=True,
        )
    finally:
        await writer.aclose()
    assert outcomes[0] == "won"
    assert isinstance(outcomes[1], Conflict)
    untouched = store.szm_card(cards[1].card_id)
    assert untouched is not None
    assert untouched.spent == 0  # its write rolled back


@pytest.mark.postgres
async def test_with_no_free_hot_connection_the_batch_waits_on_the_thread(
    pg_contract_dsn: str,
) -> None:
    """The loop's batch never waits for a connection: with the hot-path budget in use
    (lane_size=1, held by a thread's batch) it goes to the writer's thread, which waits."""
    store = open_store(pg_contract_dsn + "?lane_size=1&pool_timeout=0.5", create=False)
    card = issue_chain_cards(store, 1, seed="budget")[0]
    writer = StoreWriter(store, awaited_from=1)
    held = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold() -> None:
        with store.hot_batch():
            loop.call_soon_threadsafe(held.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)

    holder = asyncio.ensure_future(asyncio.to_thread(hold))
    try:
        await held.wait()
        paying = asyncio.ensure_future(writer.run_hot(_pay(card.card_id, 0, b"\x07" * 32)))
        await asyncio.sleep(0.2)
        assert not paying.done()
        assert writer._thread is not None  # handed to the thread, which waits for the slot
        release.set()
        assert await paying == "won"
        await holder
        assert await writer.run_hot(_pay(card.card_id, 1, b"\x08" * 32)) == "won"
        # The loop's batch gave the only slot back: a read is not refused (Unavailable).
        row = await asyncio.to_thread(store.szm_card, card.card_id)
        assert row is not None
        assert row.spent == 2
    finally:
        release.set()
        await writer.aclose()
        store.close()


@pytest.mark.postgres
async def test_a_small_batch_goes_to_the_thread_a_large_one_stays_on_the_loop(
    pg_contract_dsn: str,
) -> None:
    store = open_store(pg_contract_dsn, create=False)
    cards = issue_chain_cards(store, 6, seed="sizes")
    commits: list[int] = []
    writer = StoreWriter(store, awaited_from=4, observe=lambda jobs, _s: commits.append(jobs))
    try:
        alone = await writer.run_hot(_pay(cards[0].card_id, 0, b"\x10" * 32))
        assert writer._thread is not None  # one job: the thread committed it
        together = await asyncio.gather(
            *(writer.run_hot(_pay(card.card_id, 0, bytes([n]) * 32)) for n, card in
              enumerate(cards[1:], start=0x20))
        )  # fmt: skip
    finally:
        await writer.aclose()
        store.close()
    assert alone == "won"
    assert together == ["won"] * 5
    assert commits == [1, 5]  # the five shared one commit (on the loop)
