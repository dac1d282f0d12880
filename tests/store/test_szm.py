"""SZM cards: the one-statement compare-and-set spend, races, bulk issue, revenue."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from farthing.core.errors import Conflict, LocalProtocolError
from farthing.store import CardStatus, Store, is_retryable, open_store
from tests.store.helpers import (
    UNIT,
    advance_szm,
    card_id,
    open_books,
    race,
    sell_szm_batch,
    spend_szm,
    szm_batch,
    szm_cards,
)

BATCH = b"B" * 16


def _issue(store: Store, count: int = 3, units: int = 10) -> None:
    with store.transaction() as tx:
        tx.szm.insert_batch(szm_batch(BATCH, count, units))
        tx.szm.insert_cards(szm_cards(BATCH, count, units))


def test_advance_is_a_compare_and_set(store: Store) -> None:
    _issue(store)
    card = card_id(0)
    assert advance_szm(store, card, 0, 3, b"\x03" * 32)
    assert not advance_szm(store, card, 0, 4, b"\x04" * 32)  # stale old_spent loses
    assert advance_szm(store, card, 3, 5, b"\x05" * 32)
    row = store.szm_card(card)
    assert row is not None
    assert (row.spent, row.anchor, row.remaining_units) == (5, b"\x05" * 32, 5)


def test_advance_never_passes_the_card_value(store: Store) -> None:
    _issue(store, units=10)
    assert not advance_szm(store, card_id(0), 0, 11, None)
    assert advance_szm(store, card_id(0), 0, 10, None)
    assert not advance_szm(store, card_id(0), 10, 11, None)


def test_advance_refuses_blocked_and_unknown_cards(store: Store) -> None:
    _issue(store)
    with store.transaction() as tx:
        assert tx.szm.set_status(card_id(1), CardStatus.BLOCKED)
    assert not advance_szm(store, card_id(1), 0, 1, None)
    assert not advance_szm(store, card_id(99), 0, 1, None)
    assert store.szm_card(card_id(99)) is None


@pytest.mark.parametrize(("old", "new"), [(3, 3), (4, 3), (-1, 2)])
def test_advance_only_moves_forward(store: Store, old: int, new: int) -> None:
    with pytest.raises(LocalProtocolError):
        advance_szm(store, card_id(0), old, new, None)


def test_a_hot_batch_commits_its_advances_together(store: Store) -> None:
    _issue(store, count=3, units=10)
    with store.hot_batch() as hot:
        assert hot.szm.advance(card_id(0), 0, 2, b"\x02" * 32)
        assert not hot.szm.advance(card_id(0), 0, 3, None)  # stale, inside the same batch
        assert hot.szm.advance(card_id(0), 2, 3, b"\x03" * 32)
        assert hot.szm.advance(card_id(1), 0, 10, None)
        assert not hot.szm.advance(card_id(2), 0, 11, None)  # past the card's value
    rows = [store.szm_card(card_id(i)) for i in range(3)]
    assert [r.spent for r in rows if r is not None] == [3, 10, 0]
    assert rows[0] is not None
    assert rows[0].anchor == b"\x03" * 32


def test_a_hot_batch_that_raises_changes_nothing(store: Store) -> None:
    _issue(store)

    def write_then_fail() -> None:
        with store.hot_batch() as hot:
            assert hot.szm.advance(card_id(0), 0, 2, None)
            raise RuntimeError("a job failed after another one wrote")

    with pytest.raises(RuntimeError):
        write_then_fail()
    row = store.szm_card(card_id(0))
    assert row is not None
    assert row.spent == 0
    assert advance_szm(store, card_id(0), 0, 1, None)  # the store still works


def test_a_hot_batch_that_may_not_wait_fails_at_once_on_a_locked_sqlite(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "v.sqlite")
    store = open_store(path)
    _issue(store)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Conflict) as raised, store.hot_batch(wait=False) as hot:
            hot.szm.advance(card_id(0), 0, 1, None)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert is_retryable(raised.value)
    with store.hot_batch(wait=False) as hot:  # free again: it commits
        assert hot.szm.advance(card_id(0), 0, 1, None)
    store.close()


def test_sqlite_writers_of_one_process_take_turns_without_polling(tmp_path: Path) -> None:
    """Threads of one process queue for SQLite's write lock in the store, instead of
    SQLite's busy handler sleeping and polling; a batch that may not wait is told so."""
    store = open_store(str(tmp_path / "v.sqlite"))
    _issue(store, count=40, units=100)
    holding, release = threading.Event(), threading.Event()

    def hold_the_turn() -> None:
        with store.transaction() as tx:
            tx.szm.set_status(card_id(0), CardStatus.BLOCKED)  # any write takes the turn
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_turn)
    holder.start()
    assert holding.wait(10)
    with pytest.raises(Conflict) as raised, store.hot_batch(wait=False) as hot:
        hot.szm.advance(card_id(1), 0, 1, None)
    assert is_retryable(raised.value)
    release.set()
    holder.join(10)
    wins = race(16, lambda t: advance_szm(store, card_id(2 + t), 0, 1, None))
    assert wins == [True] * 16
    store.close()


def test_threads_racing_from_the_same_spent_have_one_winner(store: Store) -> None:
    cards = 6
    _issue(store, count=cards, units=100)
    for i in range(cards):
        wins = race(8, lambda t, i=i: spend_szm(store, card_id(i), 0, 1 + t))
        assert wins.count(True) == 1
        row = store.szm_card(card_id(i))
        assert row is not None
        assert row.spent == 1 + wins.index(True)


_RACER = """
import sys, time
from pathlib import Path
from farthing.store import open_store
from tests.store.helpers import advance_szm
path, go, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = open_store(path, create=False)
while not go.exists():
    time.sleep(0.001)
wins = sum(advance_szm(store, i.to_bytes(16, "big"), 0, 1, None) for i in range(count))
store.close()
print(wins)
"""


def test_two_processes_racing_on_sqlite_have_one_winner_per_card(tmp_path: Path) -> None:
    path = str(tmp_path / "race.sqlite")
    count = 300
    with open_store(path) as store:
        _issue(store, count=count, units=5)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, path, str(go), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.3)  # both processes are importing and waiting on the flag
    go.touch()
    outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert sum(int(out) for out in outputs) == count
    with open_store(path, create=False) as store:
        rows = [store.szm_card(card_id(i)) for i in range(count)]
    assert all(row is not None and row.spent == 1 for row in rows)


def test_bulk_issue_of_ten_thousand_cards(store: Store) -> None:
    # Its speed is bench/scale.py's to measure (docs/scaling.md), not a timed test's.
    with store.transaction() as tx:
        tx.szm.insert_batch(szm_batch(BATCH, 10_000, 20))
        inserted = tx.szm.insert_cards(szm_cards(BATCH, 10_000, 20))
    assert inserted == 10_000
    last = store.szm_card(card_id(9_999))
    assert last is not None
    assert last.units == 20


def test_a_card_id_is_issued_once(store: Store) -> None:
    _issue(store, count=2)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.szm.insert_cards(szm_cards(BATCH, 1, 10, start=1))


def test_revenue_recognition_keeps_the_prepaid_float_equation(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        sell_szm_batch(tx, books, BATCH, count=4, units=10)
    assert spend_szm(store, card_id(0), 0, 3)
    assert spend_szm(store, card_id(1), 0, 10)
    assert store.check_ledger().balanced  # spent but not yet recognised still balances

    with store.transaction() as tx:
        assert tx.szm.recognize_revenue(books.revenue, books.prepaid_float, "rev:1") == 13 * UNIT
        assert tx.szm.recognize_revenue(books.revenue, books.prepaid_float, "rev:2") == 0
    assert spend_szm(store, card_id(2), 0, 1)
    with store.transaction() as tx:
        assert tx.szm.recognize_revenue(books.revenue, books.prepaid_float, "rev:3") == 1 * UNIT
        liability = -tx.ledger.balance(books.prepaid_float)
        revenue = -tx.ledger.balance(books.revenue)
    # liability == unspent value on cards + spent value not yet recognised (0 here)
    unspent = (40 - 14) * UNIT
    assert (liability, revenue) == (unspent, 14 * UNIT)
    result = store.check_ledger()
    assert result.balanced, result.problems


def test_check_ledger_notices_unrecognised_drift(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        sell_szm_batch(tx, books, BATCH, count=1, units=10)
        # a revenue posting that bypasses the watermark breaks the equation
        tx.ledger.post("bogus", "bogus:1", [(books.prepaid_float, 5), (books.revenue, -5)])
    result = store.check_ledger()
    assert not result.balanced
    assert any(p.startswith("prepaid float EUR") for p in result.problems)


def test_recognition_needs_the_right_accounts(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
    with pytest.raises(LocalProtocolError), store.transaction() as tx:
        tx.szm.recognize_revenue(books.cash, books.prepaid_float, "rev:x")


def test_the_hot_path_reconnects_after_the_server_drops_connections(
    store: Store, store_target: str
) -> None:
    if store.backend != "postgresql":
        pytest.skip("only a server can drop its clients")
    _issue(store, count=3)
    assert advance_szm(store, card_id(0), 0, 1, None)  # the lane now holds a connection
    with psycopg.connect(store_target, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError):
        advance_szm(store, card_id(1), 0, 1, None)  # outcome unknown: not retried silently
    assert advance_szm(store, card_id(2), 0, 1, None)
    row = store.szm_card(card_id(1))
    assert row is not None
    assert row.spent == 0


def test_a_read_after_the_server_dropped_connections_is_answered(
    store: Store, store_target: str
) -> None:
    """A read whose pooled connection the server closed meanwhile (a restart) runs once
    more on a fresh one (before: psycopg's AdminShutdown reached the caller, seen as a
    flaky tests/paywall/test_pg_two_workers.py); a write is still never retried."""
    if store.backend != "postgresql":
        pytest.skip("only a server can drop its clients")
    _issue(store, count=1)
    assert store.szm_card(card_id(0)) is not None  # the read lane now holds a connection
    with psycopg.connect(store_target, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    row = store.szm_card(card_id(0))
    assert row is not None
    assert row.spent == 0
