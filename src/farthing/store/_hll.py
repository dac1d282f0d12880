"""Issuer-side HLL: smart cards' value, recorded spends, deposit batches.

Duplicate spending is decided by the database: ``hll_spends`` has PRIMARY KEY
(card_id, counter), and recording a spend also raises ``hll_cards.spent_units`` with a
conditional UPDATE that cannot pass ``loaded_units`` (a CHECK constraint backs it up).
Both happen inside one SAVEPOINT within the caller's transaction, where the caller also
posts the ledger credit (card float -> merchant), so a spend is counted exactly once or
not at all.

:meth:`HllArea.record_spend` outcomes, chosen so that a deposit batch can go on item by item:

- ``True``: recorded and charged to the card;
- ``False``: that (card, counter) was recorded before; nothing changed, no exception;
- raises :class:`~farthing.core.errors.InsufficientFunds` if the card cannot cover it, or
  :class:`~farthing.core.errors.NotFound` for an unknown card or merchant. In both cases
  the savepoint is rolled back, nothing of this spend remains and the enclosing
  transaction is still usable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

from sqlalchemy import exc, insert, select, update

from farthing.core.errors import ErrorCode, InsufficientFunds, NotFound
from farthing.store._errors import is_unique_violation, unique_violation_as
from farthing.store._rows import CardStatus, HllBatchRow, HllCardRow, HllSpendRow
from farthing.store._schema import hll_cards, hll_deposit_batches, hll_spends, merchants
from farthing.store._sql import (
    Area,
    build,
    dump_json,
    insert_if_absent,
    load_json,
    require_positive,
)

__all__ = [
    "HllArea",
]


_CLAIMED: Mapping[str, object] = {"claimed": True}


@final
class HllArea(Area):
    """The issuer's HLL cards, spends and deposit batches, in one transaction."""

    __slots__ = ()

    def add_card(
        self,
        *,
        card_id: bytes,
        customer_account_id: int,
        currency: str,
        unit_micros: int,
        loaded_units: int = 0,
    ) -> None:
        values = {
            "card_id": card_id,
            "customer_account_id": customer_account_id,
            "currency": currency,
            "unit_micros": unit_micros,
            "loaded_units": loaded_units,
            "spent_units": 0,
            "status": CardStatus.ACTIVE.value,
            "created_at": self._ctx.clock.now(),
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this card exists"):
            self._ctx.conn.execute(insert(hll_cards).values(values))

    def card(self, card_id: bytes) -> HllCardRow | None:
        stmt = select(hll_cards).where(hll_cards.c.card_id == card_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(HllCardRow, row, status=CardStatus(row["status"]))

    def load(self, card_id: bytes, units: int) -> None:
        """Add ``units`` to the card's loaded value (the caller posts the card float)."""
        require_positive(units, "units")
        stmt = (
            update(hll_cards)
            .where(hll_cards.c.card_id == card_id)
            .values(loaded_units=hll_cards.c.loaded_units + units)
        )
        if self._ctx.conn.execute(stmt).rowcount != 1:
            raise NotFound("no such card")

    def set_status(self, card_id: bytes, status: CardStatus) -> bool:
        stmt = (
            update(hll_cards)
            .where(hll_cards.c.card_id == card_id)
            .values(status=CardStatus(status).value)
        )
        return self._ctx.conn.execute(stmt).rowcount == 1

    def record_spend(
        self,
        card_id: bytes,
        counter: int,
        merchant_id: str,
        amount_units: int,
        batch_id: bytes | None,
        at: int,
        offer_digest: bytes | None = None,
    ) -> bool:
        """Record spend (card, counter) and charge it to the card; see the module docstring."""
        require_positive(amount_units, "amount_units")
        savepoint = self._ctx.conn.begin_nested()
        try:
            self._ctx.conn.execute(
                insert(hll_spends).values(
                    card_id=card_id,
                    counter=counter,
                    merchant_id=merchant_id,
                    amount_units=amount_units,
                    batch_id=batch_id,
                    at=at,
                    offer_digest=offer_digest,
                )
            )
        except exc.IntegrityError as error:
            savepoint.rollback()
            if is_unique_violation(error):
                return False
            self._raise_if_unknown(card_id, merchant_id)
            raise
        if not self._charge(card_id, amount_units):
            savepoint.rollback()
            self._raise_if_unknown(card_id, merchant_id)
            raise InsufficientFunds("the card cannot cover this spend")
        savepoint.commit()
        return True

    def _charge(self, card_id: bytes, amount_units: int) -> bool:
        c = hll_cards.c
        stmt = (
            update(hll_cards)
            .where(c.card_id == card_id, c.spent_units + amount_units <= c.loaded_units)
            .values(spent_units=c.spent_units + amount_units)
        )
        return self._ctx.conn.execute(stmt).rowcount == 1

    def _raise_if_unknown(self, card_id: bytes, merchant_id: str) -> None:
        if self.card(card_id) is None:
            raise NotFound("no such card")
        known = select(merchants.c.merchant_id).where(merchants.c.merchant_id == merchant_id)
        if self._ctx.conn.execute(known).first() is None:
            raise NotFound("no such merchant")

    def spend(self, card_id: bytes, counter: int) -> HllSpendRow | None:
        stmt = select(hll_spends).where(
            hll_spends.c.card_id == card_id, hll_spends.c.counter == counter
        )
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(HllSpendRow, row)

    def batch(self, batch_id: bytes) -> HllBatchRow | None:
        stmt = select(hll_deposit_batches).where(hll_deposit_batches.c.batch_id == batch_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(HllBatchRow, row, report=load_json(row["report"]))

    def save_batch(
        self,
        batch_id: bytes,
        merchant_id: str,
        digest: bytes,
        report: Mapping[str, object],
        at: int,
    ) -> None:
        """Remember a processed deposit batch; Conflict if this batch id was saved before."""
        values = {
            "batch_id": batch_id,
            "merchant_id": merchant_id,
            "digest": digest,
            "report": dump_json(report),
            "at": at,
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this deposit batch was processed"):
            self._ctx.conn.execute(insert(hll_deposit_batches).values(values))

    def claim_batch(self, batch_id: bytes, merchant_id: str, digest: bytes, at: int) -> bool:
        """Take a deposit batch id for this transaction, before any of its spends: True if taken,
        False if another transaction holds it (then it has committed it: read it with
        :meth:`batch`).

        The row is the lock. On PostgreSQL a second copy of the batch blocks on the primary key
        until the first commits, then fails here and reads the first one's report; were it to
        settle the items first, it would find them all spent and then fail on the batch row.
        The placeholder report is replaced by :meth:`finish_batch` in the same transaction, so
        no other transaction ever sees it.
        """
        values = {
            "batch_id": batch_id,
            "merchant_id": merchant_id,
            "digest": digest,
            "report": dump_json(_CLAIMED),
            "at": at,
        }
        return insert_if_absent(self._ctx, hll_deposit_batches, values)

    def finish_batch(self, batch_id: bytes, report: Mapping[str, object]) -> None:
        """Store the report of a batch this transaction claimed."""
        stmt = (
            update(hll_deposit_batches)
            .where(hll_deposit_batches.c.batch_id == batch_id)
            .values(report=dump_json(report))
        )
        if self._ctx.conn.execute(stmt).rowcount != 1:
            raise NotFound("no such deposit batch")
