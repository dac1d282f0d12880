"""Prebuilt statements for the vendor's per-request writes and reads.

Built once per store (not per call and not at import). Inside a transaction (``Tx``)
SQLAlchemy finds their compiled SQL in its cache; the store's own hot-path methods run
them precompiled on the fast lane (see :mod:`farthing.store._fastlane`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Dialect, Select, Update, bindparam, select, update

from farthing.store._fastlane import FastBatch, FastStatement
from farthing.store._rows import CardStatus
from farthing.store._schema import szm_cards, vendor_payword_commitments

__all__ = ["HotArea", "HotStatements", "PreparedHot"]


@dataclass(frozen=True, slots=True)
class HotStatements:
    szm_advance: Update
    szm_card: Select[tuple[object, ...]]
    payword_advance: Update
    payword_commitment: Select[tuple[object, ...]]

    @classmethod
    def build(cls) -> HotStatements:
        return cls(
            szm_advance=_szm_advance(),
            szm_card=select(szm_cards).where(szm_cards.c.card_id == bindparam("key_card_id")),
            payword_advance=_payword_advance(),
            payword_commitment=select(vendor_payword_commitments).where(
                vendor_payword_commitments.c.commitment_id == bindparam("key_commitment_id")
            ),
        )


@dataclass(frozen=True, slots=True)
class PreparedHot:
    """The same statements compiled for one dialect, for :class:`FastLane`."""

    szm_advance: FastStatement
    szm_card: FastStatement
    payword_advance: FastStatement
    payword_commitment: FastStatement

    @classmethod
    def build(cls, hot: HotStatements, dialect: Dialect) -> PreparedHot:
        return cls(
            szm_advance=FastStatement.prepare(hot.szm_advance, dialect),
            szm_card=FastStatement.prepare(hot.szm_card, dialect),
            payword_advance=FastStatement.prepare(hot.payword_advance, dialect),
            payword_commitment=FastStatement.prepare(hot.payword_commitment, dialect),
        )


class HotArea:
    """One area's hot-path writes, bound to one :class:`FastBatch` (a hot batch)."""

    __slots__ = ("_batch", "_prepared")

    def __init__(self, batch: FastBatch, prepared: PreparedHot) -> None:
        self._batch = batch
        self._prepared = prepared


def _szm_advance() -> Update:
    """UPDATE szm_cards SET spent, anchor, last_request, last_units WHERE card_id AND
    spent = old (compare-and-set)."""
    c = szm_cards.c
    new_spent = bindparam("new_spent", type_=c.spent.type)
    return (
        update(szm_cards)
        .where(
            c.card_id == bindparam("key_card_id"),
            c.spent == bindparam("old_spent"),
            c.units >= new_spent,
            c.status == CardStatus.ACTIVE.value,
        )
        .values(
            spent=new_spent,
            anchor=bindparam("new_anchor", type_=c.anchor.type),
            # What a retry of this payment needs, in the same write (no extra round trip).
            last_request=bindparam("new_request", type_=c.last_request.type),
            last_units=bindparam("new_units", type_=c.last_units.type),
        )
    )


def _payword_advance() -> Update:
    c = vendor_payword_commitments.c
    new_spent = bindparam("new_spent", type_=c.spent.type)
    return (
        update(vendor_payword_commitments)
        .where(
            c.commitment_id == bindparam("key_commitment_id"),
            c.spent == bindparam("old_spent"),
            c.length >= new_spent,
        )
        .values(
            spent=new_spent,
            last_value=bindparam("new_last_value", type_=c.last_value.type),
            last_request=bindparam("new_request", type_=c.last_request.type),
            last_units=bindparam("new_units", type_=c.last_units.type),
        )
    )
