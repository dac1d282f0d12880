"""``hot.szm.spend`` / ``hot.vendor.payword_spend``: a payment's whole write (its challenge
id taken and the card moved, both or neither), on both stores; on PostgreSQL one
statement, so a batch of payments goes to the server with its COMMIT in one round trip.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farthing.core.errors import Conflict
from farthing.store import (
    CardStatus,
    HotTx,
    SpendOutcome,
    Spent,
    Store,
    VendorCommitmentRow,
    open_store,
)
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
    assert (won.outcome, used.outcome, lost.outcome, later.outcome) == (
        SpendOutcome.WON,
        SpendOutcome.USED,
        SpendOutcome.LOST,
        SpendOutcome.WON,
    )
    assert (won.stored, used.stored, later.stored) == (None, None, None)
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
    assert (first.outcome, same_card.outcome, same_id.outcome) == (
        SpendOutcome.WON,
        SpendOutcome.LOST,
        SpendOutcome.USED,
    )
    assert not store.challenge_used(_challenge(4)[0])


def _spend_one(card_id: bytes, tag: int) -> Callable[[HotTx], SpendOutcome]:
    return lambda hot: hot.szm.spend(card_id, 0, 1, b"\x05" * 32, None, _challenge(tag)).outcome


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
            spent = hot_a.szm.spend(first.card_id, 0, 1, b"\x06" * 32, None, _challenge(9))
            outcomes.append(spent.outcome)

            async def other() -> object:
                def pay() -> object:
                    try:
                        with b.hot_batch() as hot_b:
                            return hot_b.szm.spend(
                                second.card_id, 0, 1, b"\x07" * 32, None, _challenge(9)
                            ).outcome
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


def test_a_spend_lost_to_a_moved_card_returns_the_card_as_stored(store: Store) -> None:
    """The loser gets the row it lost to (no second read to judge the payment again);
    its challenge id is not taken."""
    (card,) = issue_chain_cards(store, 1, seed="lost-row")
    with store.hot_batch() as hot:
        hot.szm.spend(card.card_id, 0, 2, b"\x21" * 32, b"r" * 16, _challenge(0x21))
    with store.hot_batch() as hot:
        lost = hot.szm.spend(card.card_id, 0, 1, b"\x22" * 32, None, _challenge(0x22))
        # in the same batch, after a win: the row as the batch left it
        won = hot.szm.spend(card.card_id, 2, 3, b"\x23" * 32, None, _challenge(0x23))
        after = hot.szm.spend(card.card_id, 2, 4, b"\x24" * 32, None, _challenge(0x24))
    assert (lost.outcome, won.outcome, after.outcome) == (
        SpendOutcome.LOST,
        SpendOutcome.WON,
        SpendOutcome.LOST,
    )
    assert lost.stored is not None
    assert after.stored is not None
    assert (lost.stored.spent, lost.stored.anchor, lost.stored.last_request) == (
        2,
        b"\x21" * 32,
        b"r" * 16,
    )
    assert lost.stored == replace(after.stored, spent=2, anchor=b"\x21" * 32,
                                  last_request=b"r" * 16, last_units=2)  # fmt: skip
    assert (after.stored.spent, after.stored.anchor) == (3, b"\x23" * 32)
    assert not store.challenge_used(_challenge(0x22)[0])
    assert not store.challenge_used(_challenge(0x24)[0])


def test_a_spend_lost_for_another_reason_returns_no_row(store: Store) -> None:
    """Blocked, past its value, or unknown: nothing to judge again against (the caller
    reads the row if it needs it)."""
    blocked, short = issue_chain_cards(store, 2, seed="no-row")
    with store.transaction() as tx:
        tx.szm.set_status(blocked.card_id, CardStatus.BLOCKED)
    with store.hot_batch() as hot:
        outcomes = [
            hot.szm.spend(blocked.card_id, 0, 1, b"\x31" * 32, None, _challenge(0x31)),
            hot.szm.spend(short.card_id, 0, 10_000, b"\x32" * 32, None, _challenge(0x32)),
            hot.szm.spend(b"?" * 16, 0, 1, b"\x33" * 32, None, _challenge(0x33)),
        ]
    assert outcomes == [Spent(SpendOutcome.LOST)] * 3


def test_a_payword_spend_lost_returns_the_commitment_as_stored(store: Store) -> None:
    commitment = VendorCommitmentRow(
        commitment_id=b"c" * 32, commitment=b"signed", last_value=b"\x00" * 32, spent=0,
        length=10, currency="EUR", unit_micros=1000, expires_at=EXPIRES,
    )  # fmt: skip
    with store.hot_batch() as hot:
        hot.vendor.add_commitment(commitment)
        first = hot.vendor.payword_spend(b"c" * 32, 0, 3, b"\x03" * 32, None, _challenge(0x41))
    with store.hot_batch() as hot:
        lost = hot.vendor.payword_spend(b"c" * 32, 0, 1, b"\x01" * 32, None, _challenge(0x42))
    assert first == Spent(SpendOutcome.WON)
    stored = store.payword_commitment(b"c" * 32)
    assert stored is not None
    assert (stored.spent, stored.last_value) == (3, b"\x03" * 32)
    assert lost == Spent(SpendOutcome.LOST, stored)
    assert not store.challenge_used(_challenge(0x42)[0])


@pytest.mark.postgres
def test_a_spend_lost_to_another_store_on_the_same_database_returns_its_row(
    pg_contract_dsn: str,
) -> None:
    """Two workers (two stores) on one database: the one with the stale ``old_spent``
    gets the other's write back from its one statement."""
    a, b = open_store(pg_contract_dsn, create=False), open_store(pg_contract_dsn, create=False)
    try:
        (card,) = issue_chain_cards(a, 1, seed="two-stores")
        with a.hot_batch() as hot:
            won = hot.szm.spend(card.card_id, 0, 1, b"\x51" * 32, b"t" * 16, _challenge(0x51))
        with b.hot_batch() as hot:
            lost = hot.szm.spend(card.card_id, 0, 1, b"\x52" * 32, None, _challenge(0x52))
        stored = a.szm_card(card.card_id)
    finally:
        a.close()
        b.close()
    assert won == Spent(SpendOutcome.WON)
    assert lost == Spent(SpendOutcome.LOST, stored)


_examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    attempts=st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(0, 5), st.integers(0, 5)),
        min_size=1,
        max_size=12,
    )
)
def test_spends_from_two_stores_match_a_model_of_the_card(
    store_target: str, attempts: list[tuple[str, int, int]]
) -> None:
    """Payments of one card through two stores on one database (two workers), each from
    some ``old_spent`` under some challenge id: a payment is taken iff its id is unused and
    its ``old_spent`` is the stored one; a loss to a moved card returns the card as
    stored; nothing else moves the card or takes an id."""
    example = next(_examples)
    stores = {name: open_store(store_target, create=False) for name in "ab"}
    try:
        (card,) = issue_chain_cards(stores["a"], 1, seed=f"model-{example}")
        spent, used = 0, set()
        for name, old, tag in attempts:
            challenge = (example.to_bytes(4, "big") + bytes([tag])) * 6 + b"\x00\x00"
            with stores[name].hot_batch() as hot:
                got = hot.szm.spend(
                    card.card_id, old, old + 1, bytes([old + 1]) * 32, None,
                    (challenge, EXPIRES, NOW),
                )  # fmt: skip
            if tag in used:
                assert got == Spent(SpendOutcome.USED)
            elif old == spent:
                assert got == Spent(SpendOutcome.WON)
                spent, used = old + 1, used | {tag}
            else:
                assert got.outcome is SpendOutcome.LOST
                assert got.stored is not None
                assert got.stored == stores["b"].szm_card(card.card_id)
                assert got.stored.spent == spent
        row = stores["b"].szm_card(card.card_id)
        assert row is not None
        assert row.spent == spent
    finally:
        for opened in stores.values():
            opened.close()
