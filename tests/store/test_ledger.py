"""Double-entry ledger contract: balanced postings only, idempotent references, audit."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from farthing.core.errors import Conflict, ErrorCode, LocalProtocolError, NotFound
from farthing.store import AccountKind, Store
from farthing.store._schema import ledger_entries
from tests.store.helpers import UNIT, open_books, raw_engine, sell_szm_batch


def test_balanced_posting_moves_balances(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        txn = tx.ledger.post("load", "load:1", [(books.cash, 700), (books.card_float, -700)])
    with store.transaction(readonly=True) as tx:
        assert tx.ledger.balance(books.cash) == 700
        assert tx.ledger.balance(books.card_float) == -700
        entries = tx.ledger.entries(txn)
        assert [(e.account_id, e.amount_micros) for e in entries] == [
            (books.cash, 700),
            (books.card_float, -700),
        ]
        row = tx.ledger.txn("load:1")
    assert row is not None
    assert (row.id, row.kind, row.created_at) == (txn, "load", 1_800_000_000)


@pytest.mark.parametrize(
    "postings",
    [
        [(0, 100), (1, -99)],  # does not sum to zero
        [(0, 100)],  # a single entry
        [(0, 0), (1, 0)],  # zero amounts
        [(0, 100), (1, -100), (0, 0)],  # a zero amount among good ones
    ],
)
def test_malformed_postings_are_refused(store: Store, postings: list[tuple[int, int]]) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
    ids = [books.cash, books.card_float]
    with pytest.raises(LocalProtocolError), store.transaction() as tx:
        tx.ledger.post("bad", "bad:1", [(ids[i], amount) for i, amount in postings])
    with store.transaction(readonly=True) as tx:
        assert tx.ledger.txn("bad:1") is None
        assert tx.ledger.balance(books.cash) == 0


def test_mixed_currencies_are_refused(store: Store) -> None:
    with store.transaction() as tx:
        eur = tx.ledger.create_account("cash-eur", AccountKind.CASH, "EUR")
        usd = tx.ledger.create_account("float-usd", AccountKind.CARD_FLOAT, "USD")
    with pytest.raises(LocalProtocolError), store.transaction() as tx:
        tx.ledger.post("fx", "fx:1", [(eur, 5), (usd, -5)])


def test_unknown_account_is_not_found(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
    with pytest.raises(NotFound), store.transaction() as tx:
        tx.ledger.post("load", "load:x", [(books.cash, 5), (9999, -5)])


def test_a_reference_posts_once(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        tx.ledger.post("load", "load:1", [(books.cash, 10), (books.card_float, -10)])
    with pytest.raises(Conflict) as caught, store.transaction() as tx:
        tx.ledger.post("load", "load:1", [(books.cash, 10), (books.card_float, -10)])
    assert caught.value.code is ErrorCode.CONFLICT
    with store.transaction(readonly=True) as tx:
        assert tx.ledger.balance(books.cash) == 10


def test_account_names_are_unique(store: Store) -> None:
    with store.transaction() as tx:
        tx.ledger.create_account("shop", AccountKind.MERCHANT, "EUR")
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.ledger.create_account("shop", AccountKind.MERCHANT, "EUR")
    with store.transaction(readonly=True) as tx:
        shop = tx.ledger.account_by_name("shop")
    assert shop is not None
    assert shop.kind is AccountKind.MERCHANT


def test_check_ledger_is_balanced_after_normal_business(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        sell_szm_batch(tx, books, b"B" * 16, count=3, units=10)
        tx.hll.add_card(
            card_id=b"H" * 16, customer_account_id=books.customer, currency="EUR",
            unit_micros=UNIT, loaded_units=50,
        )  # fmt: skip
        value = 50 * UNIT
        tx.ledger.post(
            "hll_load", "hll_load:1", [(books.customer, value), (books.card_float, -value)]
        )
    result = store.check_ledger()
    assert result.balanced, result.problems
    assert (result.txn_count, result.entry_count) == (2, 4)


def test_check_ledger_detects_a_tampered_entry(store: Store, store_target: str) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        tx.ledger.post("load", "load:1", [(books.cash, 300), (books.customer, -300)])
    engine = raw_engine(store_target)
    try:
        with engine.begin() as conn:
            first = conn.execute(select(ledger_entries.c.id).limit(1)).scalar_one()
            conn.execute(
                update(ledger_entries).where(ledger_entries.c.id == first).values(amount_micros=301)
            )
    finally:
        engine.dispose()
    result = store.check_ledger()
    assert not result.balanced
    assert any("EUR" in p for p in result.problems)
    assert any("transaction" in p for p in result.problems)


def test_check_ledger_detects_card_value_without_float(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        tx.hll.add_card(
            card_id=b"H" * 16, customer_account_id=books.customer, currency="EUR",
            unit_micros=UNIT, loaded_units=5,
        )  # fmt: skip
    result = store.check_ledger()
    assert not result.balanced
    assert any(p.startswith("card float EUR") for p in result.problems)


@pytest.fixture
def xts_accounts(store: Store) -> tuple[int, int]:
    with store.transaction() as tx:
        books = open_books(tx, currency="XTS")
    return books.cash, books.customer


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    amounts=st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=4),
    closing=st.one_of(st.none(), st.integers(-(10**12), 10**12)),
)
def test_a_posting_is_accepted_iff_it_is_balanced(
    store: Store,
    xts_accounts: tuple[int, int],
    amounts: list[int],
    closing: int | None,
) -> None:
    cash, customer = xts_accounts
    last = -sum(amounts) if closing is None else closing  # None: balance it
    postings = [(cash, a) for a in amounts] + [(customer, last)]
    valid = sum(a for _, a in postings) == 0 and all(a != 0 for _, a in postings)
    with store.transaction(readonly=True) as tx:
        before = tx.ledger.balance(cash)
        reference = f"prop:{tx.ledger.check().txn_count}"  # unique: each valid post adds one
    if valid:
        with store.transaction() as tx:
            tx.ledger.post("prop", reference, postings)
    else:
        with pytest.raises(LocalProtocolError), store.transaction() as tx:
            tx.ledger.post("prop", reference, postings)
    with store.transaction(readonly=True) as tx:
        assert tx.ledger.balance(cash) == before + (sum(amounts) if valid else 0)
        assert (tx.ledger.txn(reference) is not None) == valid
        assert tx.ledger.check().balanced


# --- post_in: the bank's online posting, its checks folded into the writes ---------------


def test_post_in_moves_balances_and_a_reference_posts_once(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        txn_id = tx.ledger.post_in(
            "EUR", "load", "load:1", [(books.cash, 7), (books.card_float, -7)]
        )
        assert [e.amount_micros for e in tx.ledger.entries(txn_id)] == [7, -7]
    with pytest.raises(Conflict) as caught, store.transaction() as tx:
        tx.ledger.post_in("EUR", "load", "load:1", [(books.cash, 7), (books.card_float, -7)])
    assert caught.value.code is ErrorCode.CONFLICT
    with store.transaction(readonly=True) as tx:
        assert (tx.ledger.balance(books.cash), tx.ledger.balance(books.card_float)) == (7, -7)


def test_post_in_refuses_what_post_refuses(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        usd = tx.ledger.create_account("float-usd", AccountKind.CARD_FLOAT, "USD")
    refused: list[tuple[type[Exception], str, list[tuple[int, int]]]] = [
        (LocalProtocolError, "EUR", [(books.cash, 5), (books.card_float, -4)]),  # unbalanced
        (LocalProtocolError, "EUR", [(books.cash, 5), (usd, -5)]),  # currencies mixed
        (LocalProtocolError, "USD", [(books.cash, 5), (books.card_float, -5)]),  # not in USD
        (NotFound, "EUR", [(books.cash, 5), (9999, -5)]),  # no such account
    ]
    for error, currency, postings in refused:
        with pytest.raises(error), store.transaction() as tx:
            tx.ledger.post_in(currency, "bad", "bad:1", postings)
        with store.transaction(readonly=True) as tx:
            assert tx.ledger.txn("bad:1") is None
            assert tx.ledger.balance(books.cash) == 0
