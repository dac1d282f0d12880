"""Stored szm:chain cards for the measurements of the vendor's write (bench/store.py,
tests/store/bench_hotpath.py): one batch of active cards numbered from 0 (the number is the
card id, 16 bytes big-endian), each with a random anchor, so that any payment index
advances them (no verification runs in these measurements)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from farthing.store import CardStatus, SzmBatchRow, SzmCardRow, SzmProtocol, Tx

__all__ = ["card_id", "chain_cards", "issue_chain_batch"]


def card_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def chain_cards(
    batch_id: bytes, numbers: Iterable[int], *, units: int, expires_at: int, issued_at: int
) -> Iterator[SzmCardRow]:
    for n in numbers:
        yield SzmCardRow(
            card_id=card_id(n),
            batch_id=batch_id,
            protocol=SzmProtocol.CHAIN,
            generator=None,
            currency="EUR",
            unit_micros=1000,
            units=units,
            spent=0,
            anchor=os.urandom(32),
            expires_at=expires_at,
            status=CardStatus.ACTIVE,
            issued_at=issued_at,
        )


def issue_chain_batch(
    tx: Tx, batch_id: bytes, count: int, *, units: int, expires_at: int, now: int
) -> None:
    """A batch of ``count`` cards of ``units`` units each, cards 0 to count - 1."""
    tx.szm.insert_batch(
        SzmBatchRow(
            batch_id=batch_id,
            protocol=SzmProtocol.CHAIN,
            count=count,
            units=units,
            currency="EUR",
            unit_micros=1000,
            expires_at=expires_at,
            created_at=now,
        )
    )
    tx.szm.insert_cards(
        chain_cards(batch_id, range(count), units=units, expires_at=expires_at, issued_at=now)
    )
