"""The issuer's own ledger accounts, one set per currency, and the account naming scheme.

Sign convention (the store's): an account's balance is the sum of its entries; positive
means the issuer holds or is owed that value, negative means the issuer owes it. So:

- ``system:cash:C`` (cash): cash received; positive.
- ``system:hll-float:C`` (card_float): value loaded on HLL cards and not yet spent;
  negative, the issuer owes it to whoever holds the cards.
- ``system:szm-float:C`` (prepaid_float): value of sold SZM cards not yet recognised as
  revenue; negative.
- ``system:szm-revenue:C`` (revenue): spent SZM value recognised as revenue; negative.
- ``customer:NAME`` (customer): negative when the issuer owes the customer (loaded cash),
  positive when the customer owes the issuer (PayWord credit used).
- ``merchant:ID`` (merchant): what the issuer owes the merchant; negative.

The system accounts are made on first use, in their own short transaction, so the units
of work that post to them never race to create them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from farthing.core.errors import Conflict, LocalProtocolError, UnsupportedMethod
from farthing.store import AccountKind, Store, Tx

__all__ = ["Books", "SystemAccounts", "customer_account_name", "merchant_account_name"]


def customer_account_name(customer_id: str) -> str:
    return f"customer:{customer_id}"


def merchant_account_name(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Books:
    """The system account ids of one currency."""

    currency: str
    cash: int
    hll_float: int
    szm_float: int
    szm_revenue: int


_SYSTEM = (
    ("cash", "cash", AccountKind.CASH),
    ("hll_float", "hll-float", AccountKind.CARD_FLOAT),
    ("szm_float", "szm-float", AccountKind.PREPAID_FLOAT),
    ("szm_revenue", "szm-revenue", AccountKind.REVENUE),
)


class SystemAccounts:
    """Finds (or makes) the system accounts of each currency the issuer keeps.

    :meth:`prepare` makes them all in one short transaction when the app starts, so units
    of work never race to create them; :meth:`books` then answers from memory. Ids are
    cached only once they are known to be committed (found, not just created), so a
    rolled-back creation can never leave a stale id behind.
    """

    def __init__(self, store: Store, currencies: tuple[str, ...]) -> None:
        self._store = store
        self._currencies = tuple(dict.fromkeys(currencies))
        self._cache: dict[str, Books] = {}
        self._lock = threading.Lock()

    @property
    def currencies(self) -> tuple[str, ...]:
        return self._currencies

    def require_currency(self, currency: str) -> None:
        if currency not in self._currencies:
            raise UnsupportedMethod("this issuer keeps no books in that currency")

    def prepare(self) -> None:
        """Make every currency's system accounts (idempotent; safe with other workers)."""

        def unit(tx: Tx) -> None:
            for currency in self._currencies:
                _ensure(tx, currency)

        try:
            self._store.run_in_transaction(unit)
        except Conflict:  # another worker made them a moment ago
            self._store.run_in_transaction(unit)
        with self._store.transaction(readonly=True) as tx:
            for currency in self._currencies:
                self.books(tx, currency)

    def prepared(self, currency: str) -> Books:
        """The system accounts of ``currency``, made by :meth:`prepare` (for units of work
        that cannot make them: a hot batch); UnsupportedMethod if this issuer keeps no
        books in it."""
        self.require_currency(currency)
        with self._lock:
            cached = self._cache.get(currency)
        if cached is None:
            raise LocalProtocolError("the system accounts were not prepared")
        return cached

    def books(self, tx: Tx, currency: str) -> Books:
        """The system accounts of ``currency``, made inside ``tx`` if they do not exist."""
        self.require_currency(currency)
        with self._lock:
            cached = self._cache.get(currency)
        if cached is not None:
            return cached
        books, created = _ensure(tx, currency)
        if not created:
            with self._lock:
                self._cache[currency] = books
        return books


def _ensure(tx: Tx, currency: str) -> tuple[Books, bool]:
    ids: dict[str, int] = {}
    created = False
    for attribute, label, kind in _SYSTEM:
        name = f"system:{label}:{currency}"
        row = tx.ledger.account_by_name(name)
        if row is None:
            ids[attribute] = tx.ledger.create_account(name, kind, currency)
            created = True
        else:
            ids[attribute] = row.id
    return Books(currency=currency, **ids), created
