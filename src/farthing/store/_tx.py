"""``Tx``: one unit of work, and ``HotTx``: one hot batch; each exposes its areas.

A ``Tx`` comes only from :meth:`farthing.store.Store.transaction` (or
``run_in_transaction``): everything done through it commits together when the ``with``
block ends normally and rolls back if it raises. Its operations live in one area object
per repository module, bound to the transaction::

    tx.ledger.post(...)      # _ledger: accounts, postings, balances, the audit of the books
    tx.admin.audit(...)      # _admin: operators, the audit log, merchants
    tx.hll.add_card(...)     # _hll: the issuer's HLL cards, spends, deposit batches
    tx.szm.insert_cards(...) # _szm: SZM batches and cards, revenue recognition
    tx.payword.redeem(...)   # _payword: the broker's users, certificates, commitments
    tx.vendor.hll_record(...)  # _vendor: the paywall's commitments, HLL payments, outbox

A ``HotTx`` comes only from :meth:`farthing.store.Store.hot_batch` and holds the two
compare-and-set writes of the paid path (``hot.szm.advance``,
``hot.vendor.payword_advance``), each written once, in its area module. Neither holds a
connection type in its API: arguments and results are ints, bytes, str, enums and the row
dataclasses of :mod:`farthing.store._rows`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

from sqlalchemy import Dialect

from farthing.store._admin import AdminArea
from farthing.store._fastlane import FastBatch
from farthing.store._hll import HllArea, HotHllArea
from farthing.store._hot import PreparedHot
from farthing.store._ledger import HotLedgerArea, LedgerArea
from farthing.store._payword import PaywordArea
from farthing.store._sql import Ctx, lock_key, lock_keys
from farthing.store._szm import HotSzmArea, SzmArea
from farthing.store._vendor import HotVendorArea, VendorArea

__all__ = ["HotTx", "Tx"]


@final
class Tx:
    """The areas' operations inside one database transaction."""

    __slots__ = ("_ctx", "admin", "hll", "ledger", "payword", "szm", "vendor")

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self.ledger = LedgerArea(ctx)
        self.admin = AdminArea(ctx)
        self.hll = HllArea(ctx)
        self.szm = SzmArea(ctx)
        self.payword = PaywordArea(ctx)
        self.vendor = VendorArea(ctx)

    def now(self) -> int:
        """The store's clock (used for every ``created_at`` the caller does not pass)."""
        return self._ctx.clock.now()

    def lock_key(self, name: bytes) -> None:
        """Hold the lock ``name`` until the transaction ends (see :func:`_sql.lock_key`):
        read-then-write units over one key serialize on it without SERIALIZABLE's aborts."""
        lock_key(self._ctx, name)

    def lock_keys(self, names: Iterable[bytes]) -> None:
        """Hold every lock in ``names`` until the transaction ends, taken in one order
        that every transaction shares (see :func:`_sql.lock_keys`): units that lock
        several keys at once never deadlock with one another."""
        lock_keys(self._ctx, names)


@final
class HotTx:
    """The hot-path writes of one :meth:`Store.hot_batch` (each a compare-and-set), and
    the bank's online settlement (``hot.hll``, ``hot.ledger``: made when first asked for,
    so the vendor's batches do not build them)."""

    __slots__ = ("_batch", "_hll", "_ledger", "_prepared", "szm", "vendor")

    def __init__(self, batch: FastBatch, prepared: PreparedHot) -> None:
        self._batch = batch
        self._prepared = prepared
        self.szm = HotSzmArea(batch, prepared)
        self.vendor = HotVendorArea(batch, prepared)
        self._hll: HotHllArea | None = None
        self._ledger: HotLedgerArea | None = None

    @property
    def hll(self) -> HotHllArea:
        if self._hll is None:
            self._hll = HotHllArea(self._batch, self._dialect())
        return self._hll

    @property
    def ledger(self) -> HotLedgerArea:
        if self._ledger is None:
            self._ledger = HotLedgerArea(self._batch, self._dialect())
        return self._ledger

    def _dialect(self) -> Dialect:
        """The store's dialect, which its hot statements were compiled for."""
        return self._prepared.szm_card.compiled.dialect
