"""Group commit: concurrent writes share a commit, results come only after it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farthing.core.errors import Conflict
from farthing.store import CardStatus, HotTx, Tx, open_store
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import issue_chain_cards

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=[True, False], ids=["on-loop", "thread"])
def on_loop(request: pytest.FixtureRequest) -> bool:
    """Hot writes committed by the event loop (SQLite's default) or by the writer thread."""
    flag: bool = request.param
    return flag


def _block_if_active(card_id: bytes) -> Callable[[Tx], bool]:
    """A read-then-write job: True iff this job found the card active and blocked it."""

    def block(tx: Tx) -> bool:
        row = tx.szm.card(card_id)
        return (
            row is not None
            and row.status is CardStatus.ACTIVE
            and tx.szm.set_status(card_id, CardStatus.BLOCKED)
        )

    return block


async def test_concurrent_jobs_see_each_others_writes_and_win_once(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "v.sqlite"))
    card = issue_chain_cards(store, 1)[0]
    writer = StoreWriter(store)
    results = await asyncio.gather(*(writer.run(_block_if_active(card.card_id)) for _ in range(50)))
    await writer.aclose()
    assert results.count(True) == 1
    after = open_store(str(tmp_path / "v.sqlite")).szm_card(card.card_id)
    assert after is not None
    assert after.status is CardStatus.BLOCKED


async def test_a_failing_job_does_not_take_the_others_with_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "v.sqlite"))
    cards = issue_chain_cards(store, 3)
    writer = StoreWriter(store)

    def good(index: int) -> Callable[[Tx], bool]:
        return _block_if_active(cards[index].card_id)

    def bad(tx: Tx) -> bool:
        tx.szm.set_status(cards[2].card_id, CardStatus.BLOCKED)
        raise Conflict("this one fails")

    outcomes = await asyncio.gather(
        writer.run(good(0)), writer.run(bad), writer.run(good(1)), return_exceptions=True
    )
    await writer.aclose()
    assert outcomes[0] is True
    assert isinstance(outcomes[1], Conflict)
    assert outcomes[2] is True
    for index in (0, 1):
        row = store.szm_card(cards[index].card_id)
        assert row is not None
        assert row.status is CardStatus.BLOCKED
    untouched = store.szm_card(cards[2].card_id)
    assert untouched is not None
    assert untouched.status is CardStatus.ACTIVE  # the failed job's write rolled back


async def test_hot_advances_of_one_card_win_once(tmp_path: Path, on_loop: bool) -> None:
    store = open_store(str(tmp_path / "v.sqlite"))
    card = issue_chain_cards(store, 1)[0]
    writer = StoreWriter(store, on_loop=on_loop)

    def advance(hot: HotTx) -> bool:
        return hot.szm.advance(card.card_id, 0, 2, b"w" * 32)

    results = await asyncio.gather(*(writer.run_hot(advance) for _ in range(50)))
    assert (writer._thread is None) is on_loop  # on the loop, no thread was needed
    await writer.aclose()
    assert results.count(True) == 1
    after = open_store(str(tmp_path / "v.sqlite")).szm_card(card.card_id)
    assert after is not None
    assert (after.spent, after.anchor) == (2, b"w" * 32)


async def test_hot_and_other_jobs_in_one_batch_each_get_their_result(
    tmp_path: Path, on_loop: bool
) -> None:
    store = open_store(str(tmp_path / "v.sqlite"))
    cards = issue_chain_cards(store, 4)
    writer = StoreWriter(store, on_loop=on_loop)

    def hot(index: int) -> Callable[[HotTx], bool]:
        return lambda h: h.szm.advance(cards[index].card_id, 0, index + 1, None)

    def other(index: int) -> Callable[[Tx], bool]:
        return _block_if_active(cards[index].card_id)

    def bad_hot(h: HotTx) -> bool:
        raise Conflict("this hot one fails")

    outcomes = await asyncio.gather(
        writer.run_hot(hot(0)), writer.run(other(1)), writer.run_hot(bad_hot),
        writer.run_hot(hot(2)), writer.run(other(3)), writer.run_hot(hot(0)),
        return_exceptions=True,
    )  # fmt: skip
    await writer.aclose()
    assert outcomes[:2] == [True, True]
    assert isinstance(outcomes[2], Conflict)
    assert outcomes[3:] == [True, True, False]  # the second advance of card 0 is stale
    rows = [store.szm_card(card.card_id) for card in cards]
    assert [(r.spent, r.status) for r in rows if r is not None] == [
        (1, CardStatus.ACTIVE), (0, CardStatus.BLOCKED), (3, CardStatus.ACTIVE),
        (0, CardStatus.BLOCKED),
    ]  # fmt: skip


async def test_a_locked_store_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """The loop commits only when SQLite's write lock is free; while another connection
    holds it, the batch waits on the thread and the loop goes on serving."""
    path = str(tmp_path / "v.sqlite")
    store = open_store(path)
    card = issue_chain_cards(store, 1)[0]
    writer = StoreWriter(store, on_loop=True)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker, mid-commit
    try:
        advance = asyncio.ensure_future(
            writer.run_hot(lambda hot: hot.szm.advance(card.card_id, 0, 2, None))
        )
        started = time.monotonic()
        for _ in range(10):
            await asyncio.sleep(0.01)  # the loop is not blocked by the lock
        assert time.monotonic() - started < 1.0
        assert not advance.done()  # not answered before its commit
    finally:
        other.execute("COMMIT")
        other.close()
    assert await asyncio.wait_for(advance, timeout=10) is True
    await writer.aclose()
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2
