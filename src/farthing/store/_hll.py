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

import functools
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, final

from sqlalchemy import (
    BindParameter,
    ClauseElement,
    Dialect,
    TextClause,
    bindparam,
    delete,
    exc,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from farthing.core.errors import ErrorCode, InsufficientFunds, NotFound
from farthing.store._driver import Compiled
from farthing.store._errors import is_unique_violation, unique_violation_as
from farthing.store._fastlane import FastBatch, FastStatement
from farthing.store._rows import CardStatus, HllBatchRow, HllCardRow, HllSpendRow
from farthing.store._schema import hll_cards, hll_deposit_batches, hll_spends, merchants
from farthing.store._sql import (
    Area,
    build,
    dump_json,
    insert_if_absent,
    load_json,
    require_positive,
    set_card_status,
)

__all__ = [
    "HllArea",
    "HotHllArea",
]


_CLAIMED: Mapping[str, object] = {"claimed": True}

# Rows per statement when clearing a deposit batch: two bound values per (card, counter)
# keep a chunk under SQLite's oldest limit of 999 parameters.
_CHUNK: Final = 400
_T = TypeVar("_T")

_SPEND_ROWS: Final = insert(hll_spends)
_CHARGE_CARDS: Final = (
    update(hll_cards)
    .where(hll_cards.c.card_id == bindparam("b_card_id"))
    .values(spent_units=hll_cards.c.spent_units + bindparam("b_units"))
)

# PostgreSQL: a deposit batch's accepted spends in one INSERT and one UPDATE whatever its
# size: the rows go as a few array parameters (psycopg sends each as one value), not as
# one parameter set per row (bench.clearing: the per-row binding was a third of the CPU).
# Driver SQL (psycopg), run with ``exec_driver_sql``: ``%(name)b`` sends an array in
# PostgreSQL's binary format. A deposit batch passes arrays of a thousand card ids and
# counters; psycopg writes the text form of such an array element by element in Python
# (about 2.6 ms for one bytea[] and one bigint[] of 1,000, against 0.4 ms in binary).
_RECORD_SPENDS_PG: Final = (
    "INSERT INTO hll_spends (card_id, counter, merchant_id, amount_units, batch_id, at)"
    " SELECT k.card_id, k.counter, %(merchant_id)s, k.units, %(batch_id)s, %(at)s"
    " FROM unnest(%(cards)b::bytea[], %(counters)b::bigint[], %(units)b::bigint[])"
    " AS k(card_id, counter, units)"
)
_CHARGE_CARDS_PG: Final = (
    "UPDATE hll_cards AS c SET spent_units = c.spent_units + k.units"
    " FROM unnest(%(cards)b::bytea[], %(units)b::bigint[]) AS k(card_id, units)"
    " WHERE c.card_id = k.card_id"
)
_SPENT_AMONG_PG: Final = (
    "SELECT s.card_id, s.counter FROM hll_spends AS s"
    " JOIN unnest(%(cards)b::bytea[], %(counters)b::bigint[]) AS k(card_id, counter)"
    " ON s.card_id = k.card_id AND s.counter = k.counter"
)


@dataclass(frozen=True, slots=True)
class _OnlineStatements:
    """The online verification's statements, compiled for one dialect (see ``_driver``)."""

    card: FastStatement
    spend: FastStatement
    charge: FastStatement
    unspend: FastStatement
    spent: FastStatement

    @classmethod
    def build(cls, dialect: Dialect) -> _OnlineStatements:
        c, s = hll_cards.c, hll_spends.c
        units = bindparam("units", type_=c.spent_units.type)
        charge = (
            update(hll_cards)
            .where(c.card_id == bindparam("card_id"), c.spent_units + units <= c.loaded_units)
            .values(spent_units=c.spent_units + units)
        )
        one_spend = (s.card_id == bindparam("card_id"), s.counter == bindparam("counter"))
        unspend = delete(hll_spends).where(*one_spend)
        return cls(
            card=FastStatement.prepare(
                select(hll_cards).where(c.card_id == bindparam("card_id")), dialect
            ),
            spend=FastStatement.prepare(_spend_once(dialect), dialect),
            charge=FastStatement.prepare(charge, dialect),
            unspend=FastStatement.prepare(unspend, dialect),
            spent=FastStatement.prepare(select(hll_spends).where(*one_spend), dialect),
        )


_ONLINE: Final = Compiled(_OnlineStatements.build)


def _spend_once(dialect: Dialect) -> ClauseElement:
    """INSERT the spend ... ON CONFLICT (card_id, counter) DO NOTHING: one row if this
    (card, counter) is new, none if it was recorded before (the primary key decides)."""
    values: dict[str, BindParameter[object]] = {
        name: bindparam(name)
        for name in ("card_id", "counter", "merchant_id", "amount_units", "at", "offer_digest")
    }
    key = ["card_id", "counter"]
    if dialect.name == "postgresql":
        return (
            postgresql.insert(hll_spends).values(values).on_conflict_do_nothing(index_elements=key)
        )
    return sqlite.insert(hll_spends).values(values).on_conflict_do_nothing(index_elements=key)


@functools.cache
def _spent_among(count: int) -> TextClause:
    """The pairs as a VALUES list joined to the spends: SQLite then looks each pair up by
    the primary key (a row-value ``IN`` list made it scan the whole table)."""
    pairs = ", ".join(f"(:c{i}, :n{i})" for i in range(count))
    return text(
        f"WITH k(card_id, counter) AS (VALUES {pairs})"  # noqa: S608 (only placeholders)
        " SELECT s.card_id, s.counter FROM k JOIN hll_spends AS s"
        " ON s.card_id = k.card_id AND s.counter = k.counter"
    )


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


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
        """One card as this transaction sees it (:meth:`HotHllArea.card`)."""
        return self._online().card(card_id)

    def _online(self) -> HotHllArea:
        """The online verification's statements, on this transaction's own connection."""
        conn = self._ctx.conn
        return HotHllArea(FastBatch(conn.connection), conn.dialect)

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
        return set_card_status(self._ctx, hll_cards, card_id, CardStatus(status).value)

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

    def spend_online(
        self,
        card_id: bytes,
        counter: int,
        merchant_id: str,
        amount_units: int,
        at: int,
        offer_digest: bytes,
    ) -> bool:
        """An online verification's spend (:meth:`HotHllArea.spend_online`), in this
        transaction."""
        return self._online().spend_online(
            card_id, counter, merchant_id, amount_units, at, offer_digest
        )

    # --- clearing: a deposit batch's spends in a few statements ------------------------------

    def cards_for_update(self, card_ids: Collection[bytes]) -> dict[bytes, HllCardRow]:
        """The known cards among ``card_ids``, locked until the transaction ends so that no
        concurrent spend changes what the caller reads (PostgreSQL: ``FOR UPDATE``, taken in
        card id order so two batches never deadlock on each other; SQLite: the write
        transaction already excludes every other writer)."""
        found: dict[bytes, HllCardRow] = {}
        for chunk in _chunks(sorted(card_ids)):
            stmt = (
                select(hll_cards)
                .where(hll_cards.c.card_id.in_(chunk))
                .order_by(hll_cards.c.card_id)
                .with_for_update()
            )
            for row in self._ctx.conn.execute(stmt).mappings():
                found[row["card_id"]] = build(HllCardRow, row, status=CardStatus(row["status"]))
        return found

    def spent_before(self, spends: Collection[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which of these (card, counter) pairs are recorded already."""
        if self._ctx.conn.dialect.name == "postgresql":
            # Two array parameters: one statement text whatever the batch (psycopg
            # prepares it once), instead of a row-value list of 2 parameters per pair.
            pairs = list(spends)
            rows = self._ctx.conn.exec_driver_sql(
                _SPENT_AMONG_PG,
                {"cards": [card for card, _ in pairs], "counters": [n for _, n in pairs]},
            )
            return {(bytes(row.card_id), row.counter) for row in rows}
        found: set[tuple[bytes, int]] = set()
        for chunk in _chunks(list(spends)):
            values: dict[str, object] = {}
            for i, (card_id, counter) in enumerate(chunk):
                values[f"c{i}"], values[f"n{i}"] = card_id, counter
            rows = self._ctx.conn.execute(_spent_among(len(chunk)), values)
            found.update((row.card_id, row.counter) for row in rows)
        return found

    def record_spends(
        self, spends: Iterable[tuple[bytes, int, int]], merchant_id: str, batch_id: bytes, at: int
    ) -> None:
        """Record deposited spends (card, counter, units) the caller judged new and covered,
        with the cards it locked by :meth:`cards_for_update`, and charge them to their cards.

        No savepoint per spend: a (card, counter) recorded meanwhile fails the primary key
        and the loaded value still bounds each card (CHECK ``within_loaded``), so a wrong
        judgement raises and the whole transaction rolls back, never charging twice."""
        accepted = list(spends)
        charges: dict[bytes, int] = {}
        for card_id, _, units in accepted:
            require_positive(units, "amount_units")
            charges[card_id] = charges.get(card_id, 0) + units
        if self._ctx.conn.dialect.name == "postgresql":
            self._record_spends_pg(accepted, charges, merchant_id, batch_id, at)
            return
        rows = []
        for card_id, counter, units in accepted:
            rows.append(
                {
                    "card_id": card_id,
                    "counter": counter,
                    "merchant_id": merchant_id,
                    "amount_units": units,
                    "batch_id": batch_id,
                    "at": at,
                    "offer_digest": None,
                }
            )
        for chunk in _chunks(rows):
            self._ctx.conn.execute(_SPEND_ROWS, list(chunk))
        per_card = [
            {"b_card_id": card, "b_units": units} for card, units in sorted(charges.items())
        ]
        for chunk in _chunks(per_card):
            self._ctx.conn.execute(_CHARGE_CARDS, list(chunk))

    def _record_spends_pg(
        self,
        spends: list[tuple[bytes, int, int]],
        charges: dict[bytes, int],
        merchant_id: str,
        batch_id: bytes,
        at: int,
    ) -> None:
        if not spends:
            return
        conn = self._ctx.conn
        conn.exec_driver_sql(
            _RECORD_SPENDS_PG,
            {
                "cards": [card for card, _, _ in spends],
                "counters": [counter for _, counter, _ in spends],
                "units": [units for _, _, units in spends],
                "merchant_id": merchant_id,
                "batch_id": batch_id,
                "at": at,
            },
        )
        cards = sorted(charges)  # in card id order, as the cards were locked
        conn.exec_driver_sql(
            _CHARGE_CARDS_PG, {"cards": cards, "units": [charges[c] for c in cards]}
        )

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
        """The recorded spend (card, counter), if any (:meth:`HotHllArea.spend`)."""
        return self._online().spend(card_id, counter)

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

    # --- the operator's views (dashboard) ------------------------------------------------

    def deposit_batches(self, *, limit: int = 100) -> list[HllBatchRow]:
        """The newest deposit batches first (merchants' deposits)."""
        stmt = select(hll_deposit_batches).order_by(hll_deposit_batches.c.at.desc()).limit(limit)
        return [
            build(HllBatchRow, row, report=load_json(row["report"]))
            for row in self._ctx.conn.execute(stmt).mappings()
        ]


@final
class HotHllArea:
    """The bank's online verification, statement by statement: precompiled (see
    :mod:`farthing.store._driver`) and run on a hot batch's connection, so that a batch of
    verifications commits as the vendor's payments do (on SQLite on the event loop, see
    :class:`~farthing.store.writer.StoreWriter`), or inside a transaction (:class:`HllArea`
    runs the same methods on its own connection). No savepoint: each write decides by
    itself (``ON CONFLICT DO NOTHING``, a conditional UPDATE) and a refused spend deletes
    what it wrote, so the batch goes on."""

    __slots__ = ("_batch", "_online")

    def __init__(self, batch: FastBatch, dialect: Dialect) -> None:
        self._batch = batch
        self._online = _ONLINE.get(dialect)

    def card(self, card_id: bytes) -> HllCardRow | None:
        """One card as this batch sees it (online verification reads one per purchase)."""
        row = self._batch.fetch_one(self._online.card, {"card_id": card_id})
        if row is None:
            return None
        return build(
            HllCardRow, row, card_id=bytes(row["card_id"]), status=CardStatus(row["status"])
        )

    def spend_online(
        self,
        card_id: bytes,
        counter: int,
        merchant_id: str,
        amount_units: int,
        at: int,
        offer_digest: bytes,
    ) -> bool:
        """An online verification's spend: record (card, counter) and charge it to the
        card, as :meth:`HllArea.record_spend` does, in two statements and no savepoint.

        True: recorded and charged. False, changing nothing: (card, counter) was recorded
        before (``INSERT ... ON CONFLICT DO NOTHING``). InsufficientFunds if the card cannot
        cover it: its spend row is deleted again, nothing of it remains and the batch goes
        on. The card and the merchant must exist (the caller has read them): a foreign-key
        failure is a store error that ends the batch.
        """
        require_positive(amount_units, "amount_units")
        batch, online = self._batch, self._online
        spend = {
            "card_id": card_id,
            "counter": counter,
            "merchant_id": merchant_id,
            "amount_units": amount_units,
            "at": at,
            "offer_digest": offer_digest,
        }
        if batch.rowcount(online.spend, spend) != 1:
            return False
        if batch.rowcount(online.charge, {"card_id": card_id, "units": amount_units}) != 1:
            batch.rowcount(online.unspend, {"card_id": card_id, "counter": counter})
            raise InsufficientFunds("the card cannot cover this spend")
        return True

    def spend(self, card_id: bytes, counter: int) -> HllSpendRow | None:
        """The recorded spend (card, counter), if any."""
        row = self._batch.fetch_one(self._online.spent, {"card_id": card_id, "counter": counter})
        if row is None:
            return None
        return build(HllSpendRow, row, card_id=bytes(row["card_id"]))
