"""Issuer-side HLL: a (card, counter) is charged once, never past the loaded value."""

from __future__ import annotations

import pytest

from farthing.core.errors import Conflict, ErrorCode, InsufficientFunds, NotFound
from farthing.store import Store
from tests.store.helpers import UNIT, Books, open_books, race

CARD = b"C" * 16
BATCH = b"D" * 32


def _setup(store: Store, loaded: int = 10) -> Books:
    with store.transaction() as tx:
        books = open_books(tx)
        tx.admin.add_merchant("shop", books.merchant, b"sealed-key")
        tx.hll.add_card(
            card_id=CARD, customer_account_id=books.customer, currency="EUR", unit_micros=UNIT
        )
        tx.hll.load(CARD, loaded)
        value = loaded * UNIT
        tx.ledger.post("hll_load", "load:1", [(books.customer, value), (books.card_float, -value)])
    return books


def _deposit(store: Store, books: Books, counter: int, units: int) -> bool:
    """What the issuer does per deposited spend: record it and credit the merchant."""
    with store.transaction() as tx:
        recorded = tx.hll.record_spend(CARD, counter, "shop", units, BATCH, at=1)
        if recorded:
            value = units * UNIT
            postings = [(books.card_float, value), (books.merchant, -value)]
            tx.ledger.post("hll_spend", f"spend:{CARD.hex()}:{counter}", postings)
        return recorded


def _spent(store: Store) -> int:
    with store.transaction(readonly=True) as tx:
        card = tx.hll.card(CARD)
    assert card is not None
    return card.spent_units


def test_a_spend_is_recorded_and_charged(store: Store) -> None:
    books = _setup(store)
    assert _deposit(store, books, counter=1, units=4)
    assert _spent(store) == 4
    with store.transaction(readonly=True) as tx:
        spend = tx.hll.spend(CARD, 1)
        assert tx.ledger.balance(books.merchant) == -4 * UNIT
    assert spend is not None
    assert (spend.merchant_id, spend.amount_units, spend.batch_id) == ("shop", 4, BATCH)
    assert store.check_ledger().balanced


def test_a_repeated_counter_returns_false_and_is_not_counted_twice(store: Store) -> None:
    books = _setup(store)
    assert _deposit(store, books, counter=1, units=4)
    assert not _deposit(store, books, counter=1, units=4)
    assert not _deposit(store, books, counter=1, units=1)  # same counter, other amount
    assert _spent(store) == 4
    assert store.check_ledger().balanced


def test_a_spend_past_the_loaded_value_is_refused_and_the_batch_goes_on(store: Store) -> None:
    _setup(store, loaded=10)
    with store.transaction() as tx:
        assert tx.hll.record_spend(CARD, 1, "shop", 8, BATCH, at=1)
        with pytest.raises(InsufficientFunds):
            tx.hll.record_spend(CARD, 2, "shop", 3, BATCH, at=1)
        assert tx.hll.spend(CARD, 2) is None  # nothing of the refused spend remains
        assert tx.hll.record_spend(CARD, 3, "shop", 2, BATCH, at=1)  # the transaction goes on
    assert _spent(store) == 10
    with store.transaction(readonly=True) as tx:
        assert tx.hll.spend(CARD, 1) is not None
        assert tx.hll.spend(CARD, 3) is not None


def test_unknown_card_or_merchant_is_not_found(store: Store) -> None:
    _setup(store)
    with store.transaction() as tx:
        with pytest.raises(NotFound):
            tx.hll.record_spend(b"X" * 16, 1, "shop", 1, None, at=1)
        with pytest.raises(NotFound):
            tx.hll.record_spend(CARD, 1, "no-such-shop", 1, None, at=1)
        assert tx.hll.record_spend(CARD, 1, "shop", 1, None, at=1)


def test_concurrent_deposits_of_one_spend_count_it_once(store: Store) -> None:
    books = _setup(store)
    results = race(6, lambda _: _deposit(store, books, counter=7, units=3))
    assert results.count(True) == 1
    assert _spent(store) == 3
    result = store.check_ledger()
    assert result.balanced, result.problems


def test_concurrent_spends_never_pass_the_loaded_value(store: Store) -> None:
    books = _setup(store, loaded=10)

    def attempt(counter: int) -> bool:
        try:
            return _deposit(store, books, counter=counter, units=3)
        except InsufficientFunds:
            return False

    assert race(6, attempt).count(True) == 3
    assert _spent(store) == 9


def test_a_deposit_batch_is_saved_once(store: Store) -> None:
    _setup(store)
    report = {"accepted": 2, "rejected": [[CARD.hex(), 5]]}
    with store.transaction() as tx:
        assert tx.hll.batch(BATCH) is None
        tx.hll.save_batch(BATCH, "shop", b"\x01" * 32, report, at=5)
    with pytest.raises(Conflict) as caught, store.transaction() as tx:
        tx.hll.save_batch(BATCH, "shop", b"\x01" * 32, report, at=6)
    assert caught.value.code is ErrorCode.CONFLICT
    with store.transaction(readonly=True) as tx:
        saved = tx.hll.batch(BATCH)
    assert saved is not None
    assert (saved.report, saved.digest, saved.at) == (report, b"\x01" * 32, 5)


# --- spend_online: the bank's online spend, no savepoint ---------------------------------

DIGEST = b"O" * 32


def test_an_online_spend_is_recorded_once_and_charged_once(store: Store) -> None:
    _setup(store, loaded=10)
    with store.transaction() as tx:
        assert tx.hll.spend_online(CARD, 1, "shop", 4, 1, DIGEST)
        assert not tx.hll.spend_online(CARD, 1, "shop", 4, 1, DIGEST)  # nothing changed
        assert not tx.hll.spend_online(CARD, 1, "shop", 1, 1, b"P" * 32)
    assert _spent(store) == 4
    with store.transaction(readonly=True) as tx:
        spend = tx.hll.spend(CARD, 1)
    assert spend is not None
    assert (spend.amount_units, spend.batch_id, spend.offer_digest) == (4, None, DIGEST)


def test_an_online_spend_past_the_loaded_value_leaves_nothing_and_the_tx_goes_on(
    store: Store,
) -> None:
    _setup(store, loaded=10)
    with store.transaction() as tx:
        assert tx.hll.spend_online(CARD, 1, "shop", 8, 1, DIGEST)
        with pytest.raises(InsufficientFunds):
            tx.hll.spend_online(CARD, 2, "shop", 3, 1, DIGEST)
        assert tx.hll.spend(CARD, 2) is None  # its row was taken back
        assert tx.hll.spend_online(CARD, 2, "shop", 2, 1, DIGEST)  # counter 2 is still free
    assert _spent(store) == 10


def test_concurrent_online_spends_of_one_counter_count_it_once(store: Store) -> None:
    _setup(store)

    def spend(_: int) -> bool:
        with store.transaction() as tx:
            return tx.hll.spend_online(CARD, 7, "shop", 3, 1, DIGEST)

    assert race(6, spend).count(True) == 1
    assert _spent(store) == 3
