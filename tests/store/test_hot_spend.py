"""``hot.szm.spend`` / ``hot.vendor.payword_spend``: a payment's whole write (its challenge
id taken and the card moved, both or neither), on both stores; on PostgreSQL one
statement, so a batch of payments goes to the server with its COMMIT in one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from farthing.core.errors import Conflict
from farthing.store import HotTx, SpendOutcome, Store, open_store
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import issue_chain_cards

EXPIRES = 4_000_000_000
NOW = EXPIRES - 300


def _challenge(tag: int) -> tuple[bytes, int, int]:
    return bytes([tag]) * 32, EXPIRES, NOW


def test_spend_wins_once_and_a_used_id_or_a_moved_card_writes_nothing(store: Store) -> None:
    card, other = issue_chain_cards(store, 2, seed="spend")
    with store.hot_batch() as hot:
        won = hot.szm.spend(card.card_id, 0, 1, b"\x01" * 32, None, _challenge(1))
    with store.hot_batch() as hot:
        # the same id again, on another card: refused, the card does not move
        used = hot.szm.spend(other.card_id, 0, 1, b"\x02" * 32, None, _challenge(1))
    with store.hot_batch() as hot:
        # a stale spent: lost, and its id is not taken (it may pay later)
        lost = hot.szm.spend(card.card_id, 0, 1, b"\x03" * 32, None, _challenge(2))
    with store.hot_batch() as hot:
        later = hot.szm.spend(card.card_id, 1, 2, b"\x04" * 32, None, _challenge(2))
    assert (won, used, lost, later) == (
        SpendOutcome.WON,
        SpendOutcome.USED,
        SpendOutcome.LOST,
        SpendOutcome.WON,
    )
    row, untouched = store.szm_card(card.card_id), store.szm_card(other.card_id)
    assert row is not None
    assert untouched is not None
    assert (row.spent, row.anchor) == (2, b"\x04" * 32)
    assert untouched.spent == 0
    assert store.challenge_used(_challenge(1)[0])
    assert store.challenge_used(_challenge(2)[0])


def test_two_spends_of_one_card_or_one_id_in_one_batch_win_once(store: Store) -> None:
    card, other = issue_chain_cards(store, 2, seed="twice")
    with store.hot_batch() as hot:
        first = hot.szm.spend(card.card_id, 0, 1, b"\x01" * 32, None, _challenge(3))
        same_card = hot.szm.spend(card.card_id, 0, 1, b"\x02" * 32, None, _challenge(4))
        same_id = hot.szm.spend(other.card_id, 0, 1, b"\x03" * 32, None, _challenge(3))
    assert (first, same_card, same_id) == (
        SpendOutcome.WON,
        SpendOutcome.LOST,
        SpendOutcome.USED,
    )
    assert not store.challenge_used(_challenge(4)[0])


def _spend_one(card_id: bytes, tag: int) -> Callable[[HotTx], SpendOutcome]:
    return lambda hot: hot.szm.spend(card_id, 0, 1, b"\x05" * 32, None, _challenge(tag))


@pytest.mark.postgres
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_batch_of_spends_is_one_round_trip_with_its_commit(
    pg_contract_dsn: str, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    store = open_store(pg_contract_dsn, create=False)
    cards = issue_chain_cards(store, 6, seed="round")
    syncs = 0
    real_sync = psycopg.AsyncPipeline.sync

    async def counting(self: psycopg.AsyncPipeline) -> None:
        nonlocal syncs
        syncs += 1
        await real_sync(self)

    monkeypatch.setattr(psycopg.AsyncPipeline, "sync", counting)
    writer = StoreWriter(store, awaited_from=1)
    try:
        outcomes = await asyncio.gather(
            *(writer.run_hot(_spend_one(card.card_id, 0x40 + n)) for n, card in enumerate(cards))
        )
    finally:
        await writer.aclose()
    witness = open_store(pg_contract_dsn, create=False)
    try:
        rows = [witness.szm_card(card.card_id) for card in cards]
    finally:
        witness.close()
        store.close()
    assert outcomes == [SpendOutcome.WON] * len(cards)
    assert [row.spent if row else None for row in rows] == [1] * len(cards)  # committed
    assert syncs == 1  # before: 3 (BEGIN + INSERTs, UPDATEs, COMMIT)


@pytest.mark.postgres
def test_one_id_spent_on_two_cards_by_two_stores_at_once_is_taken_once(
    pg_contract_dsn: str,
) -> None:
    """The id's INSERT decides: the loser's transaction waits for the winner's, then
    fails (Conflict, all rolled back: its card did not move) or finds the id used."""
    a, b = open_store(pg_contract_dsn, create=False), open_store(pg_contract_dsn, create=False)
    try:
        first, second = issue_chain_cards(a, 2, seed="race-id")
        outcomes: list[object] = []
        with a.hot_batch() as hot_a:
            outcomes.append(hot_a.szm.spend(first.card_id, 0, 1, b"\x06" * 32, None, _challenge(9)))

            async def other() -> object:
                def pay() -> object:
                    try:
                        with b.hot_batch() as hot_b:
                            return hot_b.szm.spend(
                                second.card_id, 0, 1, b"\x07" * 32, None, _challenge(9)
                            )
                    except Conflict as refused:
                        return refused

                return await asyncio.to_thread(pay)

            loop = asyncio.new_event_loop()
            pending = loop.create_task(other())
            loop.run_until_complete(asyncio.sleep(0.3))  # b waits on a's uncommitted id
            assert not pending.done()
        outcomes.append(loop.run_until_complete(pending))
        loop.close()
        row = a.szm_card(second.card_id)
    finally:
        a.close()
        b.close()
    assert outcomes[0] == SpendOutcome.WON
    assert isinstance(outcomes[1], Conflict) or outcomes[1] == SpendOutcome.USED
    assert row is not None
    assert row.spent == 0  # the second card did not move
