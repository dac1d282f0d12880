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
from typing import final

from sqlalchemy import insert, select

from farthing.core.errors import Conflict, LocalProtocolError, NotFound
from farthing.store._check import check_ledger
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
    "LedgerArea",
]


def _check_shape(postings: Sequence[tuple[int, int]]) -> None:
    if len(postings) < 2:
        raise LocalProtocolError("a posting needs at least two entries")
    for _, amount in postings:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise LocalProtocolError("entry amounts are non-zero integers")
    if sum(amount for _, amount in postings) != 0:
        raise LocalProtocolError("postings do not sum to zero")


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
