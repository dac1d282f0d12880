"""The ledger audit: :func:`check_ledger` re-derives every invariant from the raw rows.

Checks, each reported as a readable problem string:

1. per currency, all entries sum to zero;
2. every transaction sums to zero, has at least two entries and one currency;
3. HLL card float: for each currency C,
   ``-balance(card_float accounts in C) == sum over HLL cards in C of
   (loaded_units - spent_units) * unit_micros`` (the value still on the cards);
4. SZM prepaid float: for each currency C,
   ``-balance(prepaid_float accounts in C) == sum over SZM cards in C of
   (units - spent) * unit_micros + (spent value not yet recognised)``, where the spent value
   not yet recognised is ``sum(spent * unit_micros) - szm_recognised[C]``; equivalently
   issued value minus recognised revenue. Also ``0 <= recognised <= spent value``.

It reads only; run it in a read-only transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from sqlalchemy import ColumnElement, func, select

from farthing.store._rows import AccountKind, LedgerCheck
from farthing.store._schema import (
    accounts,
    hll_cards,
    ledger_entries,
    ledger_txns,
    szm_cards,
    szm_recognised,
)
from farthing.store._sql import Ctx, total

__all__ = ["check_ledger"]

_MAX_LISTED: Final = 20
_amount = ledger_entries.c.amount_micros


def check_ledger(ctx: Ctx) -> LedgerCheck:
    problems = [
        *_unbalanced_currencies(ctx),
        *_unbalanced_txns(ctx),
        *_malformed_txns(ctx),
        *_card_float_problems(ctx),
        *_prepaid_float_problems(ctx),
    ]
    txn_count = ctx.conn.execute(select(func.count()).select_from(ledger_txns)).scalar_one()
    entry_count = ctx.conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one()
    return LedgerCheck(
        balanced=not problems,
        problems=tuple(problems),
        txn_count=int(txn_count),
        entry_count=int(entry_count),
    )


def _unbalanced_currencies(ctx: Ctx) -> list[str]:
    stmt = (
        select(accounts.c.currency, total(_amount))
        .select_from(ledger_entries.join(accounts))
        .group_by(accounts.c.currency)
        .having(func.sum(_amount) != 0)
    )
    return [
        f"entries in {currency} sum to {amount} micros, not 0"
        for currency, amount in ctx.conn.execute(stmt)
    ]


def _unbalanced_txns(ctx: Ctx) -> list[str]:
    stmt = (
        select(ledger_entries.c.txn_id, total(_amount))
        .group_by(ledger_entries.c.txn_id)
        .having(func.sum(_amount) != 0)
        .order_by(ledger_entries.c.txn_id)
        .limit(_MAX_LISTED)
    )
    return [
        f"transaction {txn_id} sums to {amount} micros, not 0"
        for txn_id, amount in ctx.conn.execute(stmt)
    ]


def _malformed_txns(ctx: Ctx) -> list[str]:
    currencies = func.count(func.distinct(accounts.c.currency))
    mixed = (
        select(ledger_entries.c.txn_id)
        .select_from(ledger_entries.join(accounts))
        .group_by(ledger_entries.c.txn_id)
        .having(currencies > 1)
        .limit(_MAX_LISTED)
    )
    short = (
        select(ledger_txns.c.id)
        .select_from(ledger_txns.outerjoin(ledger_entries))
        .group_by(ledger_txns.c.id)
        .having(func.count(ledger_entries.c.id) < 2)
        .limit(_MAX_LISTED)
    )
    return [
        *(f"transaction {i} mixes currencies" for i in ctx.conn.execute(mixed).scalars()),
        *(f"transaction {i} has fewer than two entries" for i in ctx.conn.execute(short).scalars()),
    ]


def _liability_by_currency(ctx: Ctx, kind: AccountKind) -> dict[str, int]:
    stmt = (
        select(accounts.c.currency, total(_amount))
        .select_from(ledger_entries.join(accounts))
        .where(accounts.c.kind == kind.value)
        .group_by(accounts.c.currency)
    )
    return {currency: -int(amount) for currency, amount in ctx.conn.execute(stmt)}


def _sum_by_currency(
    ctx: Ctx, currency: ColumnElement[str], value: ColumnElement[int]
) -> dict[str, int]:
    stmt = select(currency, total(value)).group_by(currency)
    return {c: int(v) for c, v in ctx.conn.execute(stmt)}


def _compare(name: str, ledger: Mapping[str, int], cards: Mapping[str, int]) -> list[str]:
    return [
        f"{name} {currency}: ledger owes {ledger.get(currency, 0)} micros, "
        f"cards account for {cards.get(currency, 0)}"
        for currency in sorted(set(ledger) | set(cards))
        if ledger.get(currency, 0) != cards.get(currency, 0)
    ]


def _card_float_problems(ctx: Ctx) -> list[str]:
    c = hll_cards.c
    on_cards = _sum_by_currency(ctx, c.currency, (c.loaded_units - c.spent_units) * c.unit_micros)
    return _compare("card float", _liability_by_currency(ctx, AccountKind.CARD_FLOAT), on_cards)


def _prepaid_float_problems(ctx: Ctx) -> list[str]:
    c = szm_cards.c
    issued = _sum_by_currency(ctx, c.currency, c.units * c.unit_micros)
    spent = _sum_by_currency(ctx, c.currency, c.spent * c.unit_micros)
    recognised = {
        currency: int(micros) for currency, micros in ctx.conn.execute(select(szm_recognised))
    }
    problems = [
        f"recognised SZM revenue {currency} is {micros} micros, outside 0..{spent.get(currency, 0)}"
        for currency, micros in sorted(recognised.items())
        if not 0 <= micros <= spent.get(currency, 0)
    ]
    expected = {
        currency: issued.get(currency, 0) - recognised.get(currency, 0)
        for currency in set(issued) | set(recognised)
    }
    ledger = _liability_by_currency(ctx, AccountKind.PREPAID_FLOAT)
    return problems + _compare("prepaid float", ledger, expected)
