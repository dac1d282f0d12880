"""Clearing a deposit batch costs a few statements per batch, not several per item, and
still judges every item in the batch's order (duplicates first, then what the card covers).

Counted in database statements (cursor executions; an ``executemany`` is one), which do not
depend on the machine's load: before batching, each item cost a savepoint, an insert, a
conditional update and a release (4 per item, 1,200+ for the batch below).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from sqlalchemy import event
from sqlalchemy.engine import Engine

from farthing.core.schemes import hll
from farthing.testing.hll import SoftwareCard
from tests.issuer.helpers import (
    BOTH_BACKENDS,
    PIN,
    Harness,
    Shop,
    balanced,
    buy,
    deposit_batch,
    new_card,
    open_shop,
)

pytestmark = BOTH_BACKENDS


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: object) -> None:
        seen.append(str(args[2]))  # the statement text

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def test_a_large_batch_is_cleared_in_a_few_statements(harness: Harness) -> None:
    shop = open_shop(harness, units=400)
    other = Shop(shop.merchant_id, shop.merchant_key, new_card(harness, units=2), b"")
    items = [buy(harness, shop, amount=1) for _ in range(300)]
    items += [buy(harness, other, amount=1) for _ in range(2)]
    batch, tag = deposit_batch(harness, shop, items)
    with counted_statements() as statements:
        outcome = harness.services.hll.deposit(hll.encode_batch(batch), tag)
    assert len(outcome.report.accepted) == 302
    assert outcome.credited_micros == 302 * 1000
    assert len(statements) <= 20, statements
    card = harness.services.hll.card(shop.card_id)
    assert card.spent_units == 300
    assert balanced(harness)


def test_items_are_judged_in_order_within_a_batch(harness: Harness) -> None:
    # The bank loaded 5 units; a card that believes it holds 6 (a tampered or badly
    # synchronised one) pays 2 three times.
    shop = open_shop(harness, units=5)
    state = shop.card.state
    card = SoftwareCard(
        key=hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id)),
        state=replace(state, balance=6),
        pin=PIN,
    )
    card.verify_pin(PIN)
    shop = replace(shop, card=card)
    first, second, third = (buy(harness, shop, amount=2) for _ in range(3))
    early, early_tag = deposit_batch(harness, shop, [first])
    harness.services.hll.deposit(hll.encode_batch(early), early_tag)
    # first again (spent in an earlier batch), second, second again (in this batch), third
    # (only 1 unit left after second: overspent, not recorded)
    batch, tag = deposit_batch(harness, shop, [first, second, second, third])
    report = harness.services.hll.deposit(hll.encode_batch(batch), tag).report
    card_id = shop.card_id
    counters = [purchase.counter for _, purchase in (first, second, third)]
    assert report.accepted == ((card_id, counters[1], 2),)
    assert report.duplicates == ((card_id, counters[0]), (card_id, counters[1]))
    assert report.invalid == ((card_id, counters[2]),)
    assert harness.services.hll.card(card_id).spent_units == 4
    assert balanced(harness)
