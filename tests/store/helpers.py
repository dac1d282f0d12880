"""Builders shared by the store contract tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Engine

from farthing.store import (
    AccountKind,
    CardStatus,
    HotTx,
    Store,
    SzmBatchRow,
    SzmCardRow,
    SzmProtocol,
    Tx,
)
from farthing.store._engine import make_engines, target_url

T = TypeVar("T")
NOW = 1_800_000_000
UNIT = 1000  # micros per unit


def card_id(i: int) -> bytes:
    return i.to_bytes(16, "big")


def szm_cards(batch_id: bytes, count: int, units: int, start: int = 0) -> Iterator[SzmCardRow]:
    for i in range(start, start + count):
        yield SzmCardRow(
            card_id=card_id(i),
            batch_id=batch_id,
            protocol=SzmProtocol.CHAIN,
            generator=None,
            currency="EUR",
            unit_micros=UNIT,
            units=units,
            spent=0,
            anchor=bytes(32),
            expires_at=NOW + 86_400,
            status=CardStatus.ACTIVE,
            issued_at=NOW,
        )


def szm_batch(batch_id: bytes, count: int, units: int) -> SzmBatchRow:
    return SzmBatchRow(
        batch_id=batch_id,
        protocol=SzmProtocol.CHAIN,
        count=count,
        units=units,
        currency="EUR",
        unit_micros=UNIT,
        expires_at=NOW + 86_400,
        created_at=NOW,
    )


@dataclass(frozen=True)
class Books:
    cash: int
    prepaid_float: int
    card_float: int
    revenue: int
    customer: int
    merchant: int


def open_books(tx: Tx, currency: str = "EUR") -> Books:
    def make(kind: AccountKind) -> int:
        return tx.ledger.create_account(f"{kind.value}-{currency}", kind, currency)

    return Books(
        cash=make(AccountKind.CASH),
        prepaid_float=make(AccountKind.PREPAID_FLOAT),
        card_float=make(AccountKind.CARD_FLOAT),
        revenue=make(AccountKind.REVENUE),
        customer=make(AccountKind.CUSTOMER),
        merchant=make(AccountKind.MERCHANT),
    )


def sell_szm_batch(tx: Tx, books: Books, batch_id: bytes, count: int, units: int) -> None:
    """Issue a batch and post its value: cash -> prepaid float (the documented sale)."""
    tx.szm.insert_batch(szm_batch(batch_id, count, units))
    tx.szm.insert_cards(szm_cards(batch_id, count, units))
    value = count * units * UNIT
    tx.ledger.post(
        "szm_sale", f"sale:{batch_id.hex()}", [(books.cash, value), (books.prepaid_float, -value)]
    )


def raw_engine(target: str) -> Engine:
    """An engine beside the store, for tests that tamper with rows directly."""
    return make_engines(target_url(target)).write


def race(threads: int, work: Callable[[int], T]) -> list[T]:
    """Run work(0..threads-1) in threads released together by a barrier."""
    barrier = threading.Barrier(threads)

    def run(i: int) -> T:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))


def fail_inside(store: Store, work: Callable[[Tx], object]) -> None:
    """Do ``work`` in a transaction that then raises RuntimeError (so it must roll back)."""
    with store.transaction() as tx:
        work(tx)
        raise RuntimeError("crash after the work, before commit")


def advance_szm(
    store: Store,
    card: bytes,
    old: int,
    new: int,
    anchor: bytes | None,
    request: bytes | None = None,
) -> bool:
    """The paid path's card compare-and-set, alone in a hot batch (one durable commit)."""
    with store.hot_batch() as hot:
        return hot.szm.advance(card, old, new, anchor, request)


def advance_payword(
    store: Store,
    commitment: bytes,
    old: int,
    new: int,
    last_value: bytes,
    request: bytes | None = None,
) -> bool:
    """The paid path's commitment compare-and-set, alone in a hot batch."""
    with store.hot_batch() as hot:
        return hot.vendor.payword_advance(commitment, old, new, last_value, request)


def spend_szm(store: Store, card: bytes, old: int, new: int) -> bool:
    return advance_szm(store, card, old, new, new.to_bytes(32, "big"))


def spend_job(card_id: bytes, old: int, challenge: bytes, expires: int) -> Callable[[HotTx], str]:
    """The paywall's write (books._spend): take the challenge id and move the card one
    unit, both or neither; "won", "lost" (the card had moved) or "used"."""

    def spend(hot: HotTx) -> str:
        anchor = bytes([old + 1]) * 32
        used = (challenge, expires, expires - 300)
        return str(hot.szm.spend(card_id, old, old + 1, anchor, None, used).outcome)

    return spend
