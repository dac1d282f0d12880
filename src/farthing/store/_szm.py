"""SZM prepaid cards: batches, bulk issue, the vendor's one-statement spend, revenue.

The hot path, :meth:`HotSzmArea.advance`, is a single compare-and-set UPDATE
``... SET spent = new, anchor = a WHERE card_id = c AND spent = old AND units >= new AND
status = 'active'``; of two payments racing from the same ``spent``, exactly one sees
``rowcount == 1``. It posts no ledger entries.

Revenue recognition is separate and periodic: :meth:`SzmArea.recognize_revenue` posts, as one
balanced transaction (prepaid float -> revenue), the spent value not yet recognised,
and moves the per-currency watermark ``szm_recognised`` by the same amount. Selling a
batch is the caller's posting (cash -> prepaid float, for ``units * unit_micros`` of every
card), made in the transaction that inserts the cards. See ``docs/storage.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Final, final

from sqlalchemy import BigInteger, cast, func, insert, select, update

from farthing.core.errors import ErrorCode, LocalProtocolError, NotFound
from farthing.store._errors import unique_violation_as
from farthing.store._hot import HotArea
from farthing.store._ledger import LedgerArea
from farthing.store._rows import (
    AccountKind,
    CardStatus,
    Spent,
    SzmBatchRow,
    SzmCardRow,
    SzmProtocol,
)
from farthing.store._schema import szm_batches, szm_card_lookups, szm_cards, szm_recognised
from farthing.store._sql import (
    Area,
    build,
    insert_if_absent,
    require_forward,
    set_card_status,
    total,
)

__all__ = [
    "HotSzmArea",
    "SzmArea",
    "card_row",
]

_CHUNK: Final = 5000


def _card_values(row: SzmCardRow) -> dict[str, object]:
    return {
        "card_id": row.card_id,
        "batch_id": row.batch_id,
        "protocol": row.protocol.value,
        "generator": row.generator,
        "currency": row.currency,
        "unit_micros": row.unit_micros,
        "units": row.units,
        "spent": row.spent,
        "anchor": row.anchor,
        "secret_sealed": row.secret_sealed,
        "expires_at": row.expires_at,
        "status": row.status.value,
        "issued_at": row.issued_at,
    }


def _chunks(rows: Iterable[SzmCardRow]) -> Iterator[list[dict[str, object]]]:
    iterator = iter(rows)
    while chunk := [_card_values(row) for row in islice(iterator, _CHUNK)]:
        yield chunk


def card_row(row: Mapping[Any, Any]) -> SzmCardRow:
    return build(
        SzmCardRow,
        row,
        protocol=SzmProtocol(row["protocol"]),
        status=CardStatus(row["status"]),
    )


def _advance_params(
    card_id: bytes,
    old_spent: int,
    new_spent: int,
    new_anchor: bytes | None,
    request: bytes | None = None,
) -> dict[str, object]:
    """``request``: the tag of the paid request, kept with the units it took so that the
    same request sent again can be recognised (None: it may not be retried)."""
    require_forward(old_spent, new_spent)
    return {
        "key_card_id": card_id,
        "old_spent": old_spent,
        "new_spent": new_spent,
        "new_anchor": new_anchor,
        "new_request": request,
        "new_units": None if request is None else new_spent - old_spent,
    }


@final
class SzmArea(Area):
    """SZM batches and cards, and revenue recognition, in one transaction."""

    __slots__ = ()

    def insert_batch(self, row: SzmBatchRow) -> None:
        values = {
            "batch_id": row.batch_id,
            "protocol": SzmProtocol(row.protocol).value,
            "count": row.count,
            "units": row.units,
            "currency": row.currency,
            "unit_micros": row.unit_micros,
            "expires_at": row.expires_at,
            "created_at": row.created_at,
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this batch exists"):
            self._ctx.conn.execute(insert(szm_batches).values(values))

    def batch(self, batch_id: bytes) -> SzmBatchRow | None:
        stmt = select(szm_batches).where(szm_batches.c.batch_id == batch_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return (
            None if row is None else build(SzmBatchRow, row, protocol=SzmProtocol(row["protocol"]))
        )

    def batches(self) -> list[SzmBatchRow]:
        """Every batch, newest first."""
        stmt = select(szm_batches).order_by(szm_batches.c.created_at.desc(), szm_batches.c.batch_id)
        return [
            build(SzmBatchRow, row, protocol=SzmProtocol(row["protocol"]))
            for row in self._ctx.conn.execute(stmt).mappings()
        ]

    def value_summary(self, currency: str, now: int) -> tuple[int, int, int]:
        """Face value of the cards sold in ``currency``, in micros: (spent, unspent on cards
        still valid at ``now``, unspent on expired cards). Blocked cards count by expiry."""
        c = szm_cards.c
        unspent = (c.units - c.spent) * c.unit_micros
        query = select(
            total(c.spent * c.unit_micros),
            cast(func.sum(unspent).filter(c.expires_at > now), BigInteger),
            cast(func.sum(unspent).filter(c.expires_at <= now), BigInteger),
        ).where(c.currency == currency)
        row = self._ctx.conn.execute(query).one()
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    def insert_cards(self, rows: Iterable[SzmCardRow]) -> int:
        """Insert cards with executemany in chunks; return how many. Conflict on a repeated id."""
        count = 0
        statement = insert(szm_cards)
        with unique_violation_as(ErrorCode.CONFLICT, "a card id exists"):
            for chunk in _chunks(rows):
                self._ctx.conn.execute(statement, chunk)
                count += len(chunk)
        return count

    def card(self, card_id: bytes) -> SzmCardRow | None:
        row = (
            self._ctx.conn.execute(self._ctx.hot.szm_card, {"key_card_id": card_id})
            .mappings()
            .one_or_none()
        )
        return None if row is None else card_row(row)

    def insert_lookups(self, pairs: Iterable[tuple[bytes, bytes]]) -> int:
        """Insert ``(lookup_id, card_id)`` of the cards' printed short codes; return how many."""
        count = 0
        statement = insert(szm_card_lookups)
        iterator = iter(pairs)
        with unique_violation_as(ErrorCode.CONFLICT, "a card lookup id exists"):
            while chunk := [
                {"lookup_id": lookup, "card_id": card_id}
                for lookup, card_id in islice(iterator, _CHUNK)
            ]:
                self._ctx.conn.execute(statement, chunk)
                count += len(chunk)
        return count

    def card_by_lookup(self, lookup_id: bytes) -> SzmCardRow | None:
        """The card whose printed short code has this lookup id."""
        stmt = (
            select(szm_cards)
            .join(szm_card_lookups, szm_card_lookups.c.card_id == szm_cards.c.card_id)
            .where(szm_card_lookups.c.lookup_id == lookup_id)
        )
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else card_row(row)

    def active_card_count(self, now: int) -> int:
        """How many cards could still pay: active, unexpired, units left."""
        c = szm_cards.c
        stmt = select(func.count()).where(
            c.status == CardStatus.ACTIVE.value, c.expires_at > now, c.spent < c.units
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def set_status(self, card_id: bytes, status: CardStatus) -> bool:
        return set_card_status(self._ctx, szm_cards, card_id, CardStatus(status).value)

    def recognize_revenue(
        self, revenue_account_id: int, prepaid_float_account_id: int, reference: str
    ) -> int:
        """Post the spent value not yet recognised (float -> revenue); return it in micros."""
        currency = self._recognition_currency(revenue_account_id, prepaid_float_account_id)
        recognised = self._lock_watermark(currency)
        c = szm_cards.c
        spent_value = self._ctx.conn.execute(
            select(total(c.spent * c.unit_micros)).where(c.currency == currency)
        ).scalar_one()
        delta = int(spent_value) - recognised
        if delta < 0:
            raise LocalProtocolError("recognised revenue exceeds spent value")
        if delta == 0:
            return 0
        self._ctx.conn.execute(
            update(szm_recognised)
            .where(szm_recognised.c.currency == currency)
            .values(recognised_micros=recognised + delta)
        )
        postings = [(prepaid_float_account_id, delta), (revenue_account_id, -delta)]
        LedgerArea(self._ctx).post("szm_revenue", reference, postings)
        return delta

    def _recognition_currency(self, revenue_id: int, float_id: int) -> str:
        ledger = LedgerArea(self._ctx)
        revenue, prepaid = ledger.account(revenue_id), ledger.account(float_id)
        if revenue is None or prepaid is None:
            raise NotFound("no such account")
        if revenue.kind is not AccountKind.REVENUE or prepaid.kind is not AccountKind.PREPAID_FLOAT:
            raise LocalProtocolError("need a revenue and a prepaid float account")
        if revenue.currency != prepaid.currency:
            raise LocalProtocolError("accounts differ in currency")
        return prepaid.currency

    def _lock_watermark(self, currency: str) -> int:
        """The recognised watermark, row-locked (PostgreSQL) so recognitions run one at a time."""
        stmt = (
            select(szm_recognised.c.recognised_micros)
            .where(szm_recognised.c.currency == currency)
            .with_for_update()
        )
        recognised = self._ctx.conn.execute(stmt).scalar_one_or_none()
        if recognised is not None:
            return int(recognised)
        insert_if_absent(self._ctx, szm_recognised, {"currency": currency, "recognised_micros": 0})
        return int(self._ctx.conn.execute(stmt).scalar_one())

    # --- the operator's views (metrics, dashboard) -------------------------------------

    def cards_expiring(self, *, now: int, until: int) -> list[tuple[str, int]]:
        """(protocol, active cards whose expiry falls in [now, until))."""
        stmt = (
            select(szm_cards.c.protocol, func.count())
            .where(szm_cards.c.status == CardStatus.ACTIVE.value)
            .where(szm_cards.c.expires_at >= now, szm_cards.c.expires_at < until)
            .group_by(szm_cards.c.protocol)
        )
        return [(str(p), int(n)) for p, n in self._ctx.conn.execute(stmt)]

    def cards_page(
        self, *, card_id: bytes | None = None, batch_id: bytes | None = None, limit: int = 100
    ) -> list[SzmCardRow]:
        """Cards for the operator's dashboard: one card, a batch's, or the newest issued."""
        stmt = select(szm_cards)
        if card_id is not None:
            stmt = stmt.where(szm_cards.c.card_id == card_id)
        if batch_id is not None:
            stmt = stmt.where(szm_cards.c.batch_id == batch_id)
        stmt = stmt.order_by(szm_cards.c.issued_at.desc(), szm_cards.c.card_id).limit(limit)
        return [card_row(row) for row in self._ctx.conn.execute(stmt).mappings()]

    def batches_list(self, *, limit: int = 100) -> list[SzmBatchRow]:
        """The newest batches first."""
        stmt = select(szm_batches).order_by(szm_batches.c.created_at.desc()).limit(limit)
        return [
            build(SzmBatchRow, row, protocol=SzmProtocol(row["protocol"]))
            for row in self._ctx.conn.execute(stmt).mappings()
        ]


@final
class HotSzmArea(HotArea):
    """The card's compare-and-set, in one :meth:`~farthing.store.Store.hot_batch` (the
    paywall's paid path; its only write of a card's spent counter)."""

    __slots__ = ()

    def advance(
        self,
        card_id: bytes,
        old_spent: int,
        new_spent: int,
        new_anchor: bytes | None,
        request: bytes | None = None,
    ) -> bool:
        """Compare-and-set the card's spent counter; True iff this call won (False: stale
        ``old_spent``, card blocked or unknown, or past its value)."""
        params = _advance_params(card_id, old_spent, new_spent, new_anchor, request)
        return self._batch.rowcount(self._prepared.szm_advance, params) == 1

    def spend(
        self,
        card_id: bytes,
        old_spent: int,
        new_spent: int,
        new_anchor: bytes | None,
        request: bytes | None,
        challenge: tuple[bytes, int, int],
    ) -> Spent[SzmCardRow]:
        """A payment's whole write: take the challenge id ``(id, expires_at, used_at)``
        (single use, every worker) and :meth:`advance` the card, both or neither; when
        it lost because the card had moved, the card as found (:class:`Spent`). On
        PostgreSQL one statement, which must be the job's last in the batch."""
        params = _advance_params(card_id, old_spent, new_spent, new_anchor, request)
        prepared = self._prepared
        return self._spend(
            prepared.szm_spend, prepared.szm_advance, params, challenge, prepared.szm_card, card_row
        )
