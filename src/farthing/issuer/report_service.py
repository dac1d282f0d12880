"""The operator's view of the books: balances by account kind per currency, and the audit.

Balances are the store's signed sums (positive: the issuer holds or is owed it; negative:
the issuer owes it). The system and merchant accounts are read directly; the customers'
total is derived, as the one remainder of a ledger whose entries sum to zero per currency
(``check_ledger`` verifies that). Outstanding card value is the float liability: for HLL
the value still on cards, for SZM the face value not yet recognised as revenue.
"""

from __future__ import annotations

from dataclasses import dataclass

from farthing.issuer.accounts_service import AccountsService, MerchantView
from farthing.issuer.books import SystemAccounts
from farthing.store import AccountKind, LedgerCheck, Store, Tx

__all__ = ["CurrencyReport", "IssuerReport", "ReportService"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrencyReport:
    currency: str
    balances: dict[AccountKind, int]
    """Signed balance per account kind, in micros (customer: derived)."""

    @property
    def hll_outstanding_micros(self) -> int:
        """Value loaded on HLL cards and not yet spent."""
        return -self.balances[AccountKind.CARD_FLOAT]

    @property
    def szm_outstanding_micros(self) -> int:
        """Face value of sold SZM cards not yet recognised as revenue."""
        return -self.balances[AccountKind.PREPAID_FLOAT]

    @property
    def merchants_owed_micros(self) -> int:
        return -self.balances[AccountKind.MERCHANT]


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerReport:
    currencies: tuple[CurrencyReport, ...]
    merchants: tuple[MerchantView, ...]
    ledger: LedgerCheck


class ReportService:
    def __init__(self, store: Store, system: SystemAccounts, accounts: AccountsService) -> None:
        self._store = store
        self._system = system
        self._accounts = accounts

    def check(self) -> LedgerCheck:
        return self._store.check_ledger()

    def report(self) -> IssuerReport:
        merchants = tuple(self._accounts.merchants())
        with self._store.transaction(readonly=True) as tx:
            currencies = tuple(
                self._currency(tx, currency, merchants) for currency in self._system.currencies
            )
        return IssuerReport(currencies=currencies, merchants=merchants, ledger=self.check())

    def _currency(
        self, tx: Tx, currency: str, merchants: tuple[MerchantView, ...]
    ) -> CurrencyReport:
        books = self._system.books(tx, currency)
        owed = sum(m.owed_micros for m in merchants if m.currency == currency)
        balances = {
            AccountKind.CASH: tx.ledger.balance(books.cash),
            AccountKind.CARD_FLOAT: tx.ledger.balance(books.hll_float),
            AccountKind.PREPAID_FLOAT: tx.ledger.balance(books.szm_float),
            AccountKind.REVENUE: tx.ledger.balance(books.szm_revenue),
            AccountKind.MERCHANT: -owed,
        }
        # Every currency's entries sum to zero, so the customers hold the remainder.
        balances[AccountKind.CUSTOMER] = -sum(balances.values())
        return CurrencyReport(currency=currency, balances=balances)
