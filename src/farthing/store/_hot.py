"""Prebuilt statements for the vendor's per-request writes and reads.

Built once per store (not per call and not at import). Inside a transaction (``Tx``)
SQLAlchemy finds their compiled SQL in its cache; the store's own hot-path methods run
them precompiled on the fast lane (see :mod:`farthing.store._fastlane`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Delete,
    Dialect,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from farthing.store._fastlane import FastBatch, FastStatement
from farthing.store._rows import CardStatus, SpendOutcome, Spent
from farthing.store._schema import szm_cards, vendor_payword_commitments, vendor_used_challenges

__all__ = ["HotArea", "HotStatements", "PreparedHot"]

R = TypeVar("R")


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
    payword_insert: FastStatement
    challenge_use: FastStatement
    challenge_release: FastStatement
    challenge_used: FastStatement
    challenge_used_at: FastStatement
    challenge_request: FastStatement
    challenge_prune: FastStatement
    # PostgreSQL: a payment's whole write as one statement (None on SQLite, which has no
    # data-modifying WITH: there the challenge id and the compare-and-set are two).
    szm_spend: FastStatement | None
    payword_spend: FastStatement | None

    @classmethod
    def build(cls, hot: HotStatements, dialect: Dialect) -> PreparedHot:
        used = vendor_used_challenges.c
        return cls(
            szm_advance=FastStatement.prepare(hot.szm_advance, dialect),
            szm_card=FastStatement.prepare(hot.szm_card, dialect),
            payword_advance=FastStatement.prepare(hot.payword_advance, dialect),
            payword_commitment=FastStatement.prepare(hot.payword_commitment, dialect),
            payword_insert=FastStatement.prepare(_payword_insert(dialect), dialect),
            challenge_use=FastStatement.prepare(_challenge_use(dialect), dialect),
            challenge_release=FastStatement.prepare(
                delete(vendor_used_challenges).where(used.challenge_id == bindparam("key_id")),
                dialect,
            ),
            challenge_used=FastStatement.prepare(
                select(used.challenge_id).where(used.challenge_id == bindparam("key_id")),
                dialect,
            ),
            challenge_used_at=FastStatement.prepare(
                select(func.coalesce(used.used_at, 0).label("used_at")).where(
                    used.challenge_id == bindparam("key_id")
                ),
                dialect,
            ),
            challenge_request=FastStatement.prepare(
                select(used.request).where(used.challenge_id == bindparam("key_id")), dialect
            ),
            challenge_prune=FastStatement.prepare(_challenge_prune(), dialect),
            szm_spend=_spend_for(dialect, hot.szm_advance, szm_cards, "card_id"),
            payword_spend=_spend_for(
                dialect, hot.payword_advance, vendor_payword_commitments, "commitment_id"
            ),
        )


class HotArea:
    """One area's hot-path writes, bound to one :class:`FastBatch` (a hot batch)."""

    __slots__ = ("_batch", "_prepared")

    def __init__(self, batch: FastBatch, prepared: PreparedHot) -> None:
        self._batch = batch
        self._prepared = prepared

    def _spend(
        self,
        spend: FastStatement | None,
        compare_and_set: FastStatement,
        params: dict[str, object],
        challenge: tuple[bytes, int, int],
        read: FastStatement,
        row_of: Callable[[Mapping[str, Any]], R],
    ) -> Spent[R]:
        """A payment's write: take the challenge id ``(id, expires_at, used_at)`` and
        compare-and-set, both or neither; if the compare-and-set lost, the stored row it
        found (:class:`Spent`; ``row_of`` builds it, ``read`` reads it on SQLite).
        PostgreSQL: one statement, the job's last (:func:`_spend`). SQLite: the id's
        INSERT, the compare-and-set, and if the row had moved the id given back and the
        row read (in the batch's transaction, which holds the write lock: current)."""
        challenge_id, expires_at, used_at = challenge
        taken = {"key_id": challenge_id, "expires_at": expires_at, "used_at": used_at}
        if spend is not None:
            row = self._batch.fetch_one(spend, {**params, **taken, "request": None}, final=True)
            if row is None:
                raise RuntimeError("the spend statement returned no row")
            if row.pop("moved"):
                return Spent(SpendOutcome.WON)
            if row.pop("used"):
                return Spent(SpendOutcome.USED)
            del row["taken"]
            return _lost(row, params, row_of)
        use = {**taken, "request": None}
        if self._batch.rowcount(self._prepared.challenge_use, use) != 1:
            return Spent(SpendOutcome.USED)
        if self._batch.rowcount(compare_and_set, params) != 1:
            self._batch.rowcount(self._prepared.challenge_release, {"key_id": challenge_id})
            return _lost(self._batch.fetch_one(read, params), params, row_of)
        return Spent(SpendOutcome.WON)


def _lost(
    row: dict[str, Any] | None,
    params: Mapping[str, object],
    row_of: Callable[[Mapping[str, Any]], R],
) -> Spent[R]:
    """LOST, with the found row if it shows why (its spent is not the one compared)."""
    if row is None or row["spent"] is None or row["spent"] == params["old_spent"]:
        return Spent(SpendOutcome.LOST)
    return Spent(SpendOutcome.LOST, row_of(row))


def _szm_advance() -> Update:
    """UPDATE szm_cards SET spent, anchor, ... WHERE card_id AND spent = old AND units >= new
    AND the card is active."""
    return _compare_and_set(
        szm_cards, "card_id", "units", "anchor", szm_cards.c.status == CardStatus.ACTIVE.value
    )


def _payword_advance() -> Update:
    """UPDATE vendor_payword_commitments SET spent, last_value, ... WHERE commitment_id AND
    spent = old AND length >= new."""
    return _compare_and_set(vendor_payword_commitments, "commitment_id", "length", "last_value")


def _compare_and_set(
    table: Table, key: str, size: str, proof: str, *more: ColumnElement[bool]
) -> Update:
    """Move ``spent`` from ``old_spent`` to ``new_spent`` (not past ``size``) and store the
    payment's ``proof``, iff ``spent`` is still ``old_spent`` (compare-and-set). Parameters:
    ``key_<key>``, ``old_spent``, ``new_spent``, ``new_<proof>``, ``new_request``,
    ``new_units``."""
    c = table.c
    new_spent = bindparam("new_spent", type_=c.spent.type)
    return (
        update(table)
        .where(
            c[key] == bindparam(f"key_{key}"),
            c.spent == bindparam("old_spent"),
            c[size] >= new_spent,
            *more,
        )
        .values(
            {
                "spent": new_spent,
                proof: bindparam(f"new_{proof}", type_=c[proof].type),
                # What a retry of this payment needs, in the same write (no extra round trip).
                "last_request": bindparam("new_request", type_=c.last_request.type),
                "last_units": bindparam("new_units", type_=c.last_units.type),
            }
        )
    )


_COMMITMENT_COLUMNS = (
    "commitment_id",
    "commitment",
    "last_value",
    "spent",
    "length",
    "currency",
    "unit_micros",
    "expires_at",
    "redeemed_spent",
)


def _payword_insert(dialect: Dialect) -> ClauseElement:
    """INSERT a new commitment ... ON CONFLICT DO NOTHING: its first payment's batch stores
    it and moves it in one commit; a commitment known already is never reset."""
    values: dict[str, object] = {name: bindparam(name) for name in _COMMITMENT_COLUMNS}
    if dialect.name == "postgresql":
        pg = postgresql.insert(vendor_payword_commitments).values(values)
        return pg.on_conflict_do_nothing(index_elements=["commitment_id"])
    lite = sqlite.insert(vendor_payword_commitments).values(values)
    return lite.on_conflict_do_nothing(index_elements=["commitment_id"])


def _spend_for(
    dialect: Dialect, compare_and_set: Update, table: Table, key: str
) -> FastStatement | None:
    if dialect.name != "postgresql":
        return None
    return FastStatement.prepare(_spend(compare_and_set, table, key), dialect)


def _spend(compare_and_set: Update, table: Table, key: str) -> Select[tuple[object, ...]]:
    """A payment's write in one statement (PostgreSQL): the compare-and-set, only if the
    challenge id was not used before, and the id's INSERT only if the row moved; if it
    did not move (and the id was unused), the row as found, to judge the payment again::

        WITH moved AS (UPDATE ... WHERE <compare-and-set> AND NOT EXISTS (<id used>)
                       RETURNING key),
             taken AS (INSERT INTO vendor_used_challenges SELECT :id, ... FROM moved
                       RETURNING challenge_id)
        SELECT (SELECT count(*) FROM moved) AS moved, EXISTS (<id used>) AS used,
               (SELECT count(*) FROM taken) AS taken, <table>.*
        FROM (SELECT 1) AS one LEFT JOIN <table>
             ON key = :key AND NOT EXISTS (SELECT FROM moved) AND NOT EXISTS (<id used>)

    Nothing to give back when the card had moved (the id is inserted only with the move),
    so a payment is one statement and a batch of them one round trip with its COMMIT. The
    INSERT has no ON CONFLICT: if another transaction takes the same id for another card
    at the same moment, the statement fails and the whole batch rolls back (the writer
    then runs each job alone, and this one finds the id used). The row is read in the
    statement's snapshot: if the UPDATE lost to a transaction that committed after the
    snapshot was taken (it then re-checks the newer row), the row read still shows the old
    spent, and the caller reads the row again (:func:`_lost`). Parameters: those of the
    compare-and-set, and ``key_id``, ``expires_at``, ``used_at``, ``request``."""
    used = vendor_used_challenges.c
    challenge = bindparam("key_id", type_=used.challenge_id.type)
    used_before = select(used.challenge_id).where(used.challenge_id == challenge).exists()
    moved = compare_and_set.where(~used_before).returning(table.c[key]).cte("moved")
    row = select(
        challenge,
        bindparam("expires_at", type_=used.expires_at.type),
        bindparam("used_at", type_=used.used_at.type),
        bindparam("request", type_=used.request.type),
    ).select_from(moved)
    taken = (
        insert(vendor_used_challenges)
        .from_select(["challenge_id", "expires_at", "used_at", "request"], row)
        .returning(used.challenge_id)
        .cte("taken")
    )
    one = select(literal_column("1").label("one")).subquery("one")
    found = and_(
        table.c[key] == bindparam(f"key_{key}", type_=table.c[key].type),
        ~select(moved.c[key]).exists(),
        ~used_before,
    )
    return select(
        select(func.count()).select_from(moved).scalar_subquery().label("moved"),
        used_before.label("used"),
        select(func.count()).select_from(taken).scalar_subquery().label("taken"),
        *table.c,
    ).select_from(one.outerjoin(table, found))


def _challenge_use(dialect: Dialect) -> ClauseElement:
    """INSERT the challenge id ... ON CONFLICT DO NOTHING: one row if this call took the
    id, none if it was taken already (by any worker; the primary key decides)."""
    values: dict[str, object] = {
        "challenge_id": bindparam("key_id"),
        "expires_at": bindparam("expires_at"),
        "used_at": bindparam("used_at"),
        "request": bindparam("request"),
    }
    if dialect.name == "postgresql":
        pg = postgresql.insert(vendor_used_challenges).values(values)
        return pg.on_conflict_do_nothing(index_elements=["challenge_id"])
    lite = sqlite.insert(vendor_used_challenges).values(values)
    return lite.on_conflict_do_nothing(index_elements=["challenge_id"])


def _challenge_prune() -> Delete:
    """Forget ids past their expiry: an expired challenge is refused before its id is looked
    up, so its row guards nothing any more."""
    return delete(vendor_used_challenges).where(
        vendor_used_challenges.c.expires_at <= bindparam("now")
    )
