"""Accounts and the double-entry ledger.

Sign convention: an entry's ``amount_micros`` is signed and every transaction sums to
zero. An account's balance is the sum of its entries: positive means the issuer holds or
is owed that value (cash, a customer's debt), negative means the issuer owes it (card
floats, merchants, revenue). So a float's liability is ``-balance``.

A posting's ``reference`` is its idempotency key (UNIQUE): posting the same reference
twice raises :class:`~farthing.core.errors.Conflict` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from sqlalchemy import BindParameter, ColumnElement, Dialect, bindparam, case, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from farthing.core.errors import Conflict, LocalProtocolError, NotFound
from farthing.store._check import check_ledger
from farthing.store._driver import Compiled
from farthing.store._fastlane import FastBatch, FastStatement
from farthing.store._rows import (
    AccountKind,
    AccountRow,
    LedgerCheck,
    LedgerEntryRow,
    LedgerTxnRow,
)
from farthing.store._schema import accounts, ledger_entries, ledger_txns
from farthing.store._sql import Area, build, inserted_id, total

__all__ = [
    "HotLedgerArea",
    "LedgerArea",
]


def _debit() -> ColumnElement[int]:
    """An entry's amount if it is a debit, else 0."""
    amount = ledger_entries.c.amount_micros
    return case((amount > 0, amount), else_=0)


def _check_shape(postings: Sequence[tuple[int, int]]) -> None:
    if len(postings) < 2:
        raise LocalProtocolError("a posting needs at least two entries")
    for _, amount in postings:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise LocalProtocolError("entry amounts are non-zero integers")
    if sum(amount for _, amount in postings) != 0:
        raise LocalProtocolError("postings do not sum to zero")


@dataclass(frozen=True, slots=True)
class _PostStatements:
    """:meth:`LedgerArea.post_in`'s two statements, compiled for one dialect."""

    txn: FastStatement
    entry: FastStatement

    @classmethod
    def build(cls, dialect: Dialect) -> _PostStatements:
        values: dict[str, BindParameter[object]] = {
            name: bindparam(name) for name in ("kind", "reference", "created_at")
        }
        txn = (
            postgresql.insert(ledger_txns)
            if dialect.name == "postgresql"
            else sqlite.insert(ledger_txns)
        )
        new_txn = txn.values(values).on_conflict_do_nothing(index_elements=["reference"])
        # An entry is written only for an account of the posting's currency: the check
        # and the write are one statement.
        entry = insert(ledger_entries).from_select(
            ["txn_id", "account_id", "amount_micros"],
            select(
                bindparam("txn_id", type_=ledger_entries.c.txn_id.type),
                accounts.c.id,
                bindparam("amount", type_=ledger_entries.c.amount_micros.type),
            ).where(
                accounts.c.id == bindparam("account_id"),
                accounts.c.currency == bindparam("currency"),
            ),
        )
        return cls(
            txn=FastStatement.prepare(new_txn.returning(ledger_txns.c.id), dialect),
            entry=FastStatement.prepare(entry, dialect),
        )


_POST: Final = Compiled(_PostStatements.build)


@final
class LedgerArea(Area):
    """Accounts and the double-entry ledger, in one transaction."""

    __slots__ = ()

    def create_account(self, name: str, kind: AccountKind, currency: str) -> int:
        values = {
            "name": name,
            "kind": AccountKind(kind).value,
            "currency": currency,
            "created_at": self._ctx.clock.now(),
        }
        result = self._ctx.conn.execute(insert(accounts).values(values))
        return inserted_id(result)

    def account(self, account_id: int) -> AccountRow | None:
        stmt = select(accounts).where(accounts.c.id == account_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(AccountRow, row, kind=AccountKind(row["kind"]))

    def account_by_name(self, name: str) -> AccountRow | None:
        stmt = select(accounts).where(accounts.c.name == name)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(AccountRow, row, kind=AccountKind(row["kind"]))

    def accounts_of_kind(self, kind: AccountKind) -> list[AccountRow]:
        """Every account of ``kind``, by name."""
        stmt = (
            select(accounts)
            .where(accounts.c.kind == AccountKind(kind).value)
            .order_by(accounts.c.name)
        )
        return [
            build(AccountRow, row, kind=AccountKind(row["kind"]))
            for row in self._ctx.conn.execute(stmt).mappings()
        ]

    def balance(self, account_id: int) -> int:
        stmt = select(total(ledger_entries.c.amount_micros)).where(
            ledger_entries.c.account_id == account_id
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def txn(self, reference: str) -> LedgerTxnRow | None:
        stmt = select(ledger_txns).where(ledger_txns.c.reference == reference)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(LedgerTxnRow, row)

    def entries(self, txn_id: int) -> list[LedgerEntryRow]:
        stmt = (
            select(ledger_entries)
            .where(ledger_entries.c.txn_id == txn_id)
            .order_by(ledger_entries.c.id)
        )
        return [build(LedgerEntryRow, row) for row in self._ctx.conn.execute(stmt).mappings()]

    def post(self, kind: str, reference: str, postings: Sequence[tuple[int, int]]) -> int:
        """Record one balanced transaction; return its id.

        Refuses (LocalProtocolError) fewer than two postings, a zero or non-integer amount, a
        set that does not sum to zero, or accounts in different currencies; NotFound for an
        unknown account; Conflict if ``reference`` was posted before.
        """
        _check_shape(postings)
        self._check_single_currency({account_id for account_id, _ in postings})
        if self.txn(reference) is not None:
            raise Conflict("this ledger reference was already posted")
        txn = {"kind": kind, "reference": reference, "created_at": self._ctx.clock.now()}
        txn_id = inserted_id(self._ctx.conn.execute(insert(ledger_txns).values(txn)))
        entries = [
            {"txn_id": txn_id, "account_id": account_id, "amount_micros": amount}
            for account_id, amount in postings
        ]
        self._ctx.conn.execute(insert(ledger_entries), entries)
        return txn_id

    def post_in(
        self,
        currency: str,
        kind: str,
        reference: str,
        postings: Sequence[tuple[int, int]],
        created_at: int | None = None,
    ) -> int:
        """:meth:`post` for a caller that knows the posting's currency (the bank's online
        verification, one posting per purchase): :meth:`HotLedgerArea.post_in` in this
        transaction, with :meth:`post`'s precise refusal (NotFound, LocalProtocolError)
        for an account that is unknown or of another currency. ``created_at``: the
        store's clock unless given."""
        conn = self._ctx.conn
        hot = HotLedgerArea(FastBatch(conn.connection), conn.dialect)
        at = self._ctx.clock.now() if created_at is None else created_at
        try:
            return hot.post_in(currency, kind, reference, postings, at)
        except _NotInCurrency:
            self._check_single_currency({account_id for account_id, _ in postings})
            raise

    def _check_single_currency(self, account_ids: set[int]) -> None:
        stmt = select(accounts.c.id, accounts.c.currency).where(accounts.c.id.in_(account_ids))
        currencies = dict(self._ctx.conn.execute(stmt).all())
        if len(currencies) != len(account_ids):
            raise NotFound("no such account")
        if len(set(currencies.values())) != 1:
            raise LocalProtocolError("postings mix currencies")

    def check(self) -> LedgerCheck:
        """Audit the ledger against itself and the card tables (see :mod:`._check`)."""
        return check_ledger(self._ctx)

    # --- the operator's views (metrics, dashboard) -------------------------------------

    def posted_totals(self) -> list[tuple[str, str, int, int]]:
        """(kind, currency, transactions, micros moved) over the whole ledger, for the
        operator's metrics and dashboard; a transaction's value is the sum of its debits."""
        stmt = (
            select(
                ledger_txns.c.kind,
                accounts.c.currency,
                func.count(func.distinct(ledger_txns.c.id)),
                func.coalesce(func.sum(_debit()), 0),
            )
            .select_from(ledger_entries.join(ledger_txns).join(accounts))
            .group_by(ledger_txns.c.kind, accounts.c.currency)
            .order_by(ledger_txns.c.kind, accounts.c.currency)
        )
        return [(str(k), str(c), int(n), int(m)) for k, c, n, m in self._ctx.conn.execute(stmt)]

    def posted_series(self, *, since: int, bucket: int) -> list[tuple[str, str, int, int]]:
        """(kind, currency, bucket start, micros) of transactions at or after ``since``, in
        buckets of ``bucket`` seconds (the dashboard's charts)."""
        created = ledger_txns.c.created_at
        postgres = self._ctx.conn.dialect.name == "postgresql"
        start = (func.div(created, bucket) if postgres else created / bucket) * bucket
        stmt = (
            select(ledger_txns.c.kind, accounts.c.currency, start, func.sum(_debit()))
            .select_from(ledger_entries.join(ledger_txns).join(accounts))
            .where(created >= since)
            .group_by(ledger_txns.c.kind, accounts.c.currency, start)
            .order_by(start)
        )
        return [(str(k), str(c), int(b), int(m)) for k, c, b, m in self._ctx.conn.execute(stmt)]


class _NotInCurrency(LocalProtocolError):
    """A posting's account is unknown, or keeps another currency than the one given."""


@final
class HotLedgerArea:
    """:meth:`LedgerArea.post_in` on a hot batch's connection (the bank's online
    verification settles in hot batches: :class:`farthing.store._hll.HotHllArea`)."""

    __slots__ = ("_batch", "_post")

    def __init__(self, batch: FastBatch, dialect: Dialect) -> None:
        self._batch = batch
        self._post = _POST.get(dialect)

    def post_in(
        self,
        currency: str,
        kind: str,
        reference: str,
        postings: Sequence[tuple[int, int]],
        created_at: int,
    ) -> int:
        """Record one balanced transaction in ``currency``; return its id. The same
        refusals as :meth:`LedgerArea.post`, in a statement per row and no lookups first: a
        new reference (Conflict if not), and each account's currency (LocalProtocolError
        if unknown or another), are checked by the writes themselves; on a refusal the
        caller's batch must roll back (the exception does that when it leaves it)."""
        _check_shape(postings)
        batch, post = self._batch, self._post
        txn = {"kind": kind, "reference": reference, "created_at": created_at}
        row = batch.fetch_one(post.txn, txn)
        if row is None:
            raise Conflict("this ledger reference was already posted")
        txn_id = int(row["id"])
        for account_id, amount in postings:
            entry = {
                "txn_id": txn_id,
                "account_id": account_id,
                "amount": amount,
                "currency": currency,
            }
            if batch.rowcount(post.entry, entry) != 1:
                raise _NotInCurrency("postings are not in the currency given")
        return txn_id
