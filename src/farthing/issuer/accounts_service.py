"""Customers, cash-in, merchants and operator tokens: plain operations over the store.

Every write runs in one transaction together with its audit entry. Nothing here knows
HTTP; the routes and the CLI call these functions alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farthing.core.clock import RandomSource
from farthing.core.errors import Conflict, NotFound
from farthing.core.schemes import hll
from farthing.issuer.auth import new_operator_token, seal_merchant_key, token_hash
from farthing.issuer.books import SystemAccounts, customer_account_name, merchant_account_name
from farthing.store import AccountKind, AccountRow, Store, Tx

__all__ = [
    "AccountsService",
    "CustomerView",
    "LoadResult",
    "MerchantView",
    "NewMerchant",
    "NewOperatorToken",
    "find_customer",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerView:
    customer_id: str
    currency: str
    available_micros: int
    """What the issuer owes the customer (negative once PayWord credit is used)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    customer_id: str
    reference: str
    amount_micros: int
    available_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMerchant:
    merchant_id: str
    currency: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MerchantView:
    merchant_id: str
    currency: str
    owed_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOperatorToken:
    operator_id: int
    name: str
    token: str = field(repr=False)


def find_customer(tx: Tx, customer_id: str) -> AccountRow:
    row = tx.ledger.account_by_name(customer_account_name(customer_id))
    if row is None or row.kind is not AccountKind.CUSTOMER:
        raise NotFound("no such customer")
    return row


class AccountsService:
    def __init__(
        self, store: Store, system: SystemAccounts, *, wrap_key: bytes, rng: RandomSource
    ) -> None:
        self._store = store
        self._system = system
        self._wrap_key = wrap_key
        self._rng = rng

    # --- customers ----------------------------------------------------------------------

    def create_customer(self, actor: str, customer_id: str, currency: str) -> CustomerView:
        self._system.require_currency(currency)

        def unit(tx: Tx) -> CustomerView:
            name = customer_account_name(customer_id)
            if tx.ledger.account_by_name(name) is not None:
                raise Conflict("this customer exists")
            tx.ledger.create_account(name, AccountKind.CUSTOMER, currency)
            tx.admin.audit(
                actor, "customer.create", {"customer": customer_id, "currency": currency}
            )
            return CustomerView(customer_id=customer_id, currency=currency, available_micros=0)

        return self._store.run_in_transaction(unit)

    def customer(self, customer_id: str) -> CustomerView:
        with self._store.transaction(readonly=True) as tx:
            row = find_customer(tx, customer_id)
            balance = tx.ledger.balance(row.id)
        return CustomerView(
            customer_id=customer_id, currency=row.currency, available_micros=-balance
        )

    def load(self, actor: str, customer_id: str, amount_micros: int, reference: str) -> LoadResult:
        """Cash-in: cash received, owed to the customer. Idempotent by ``reference``: the
        same reference and amount again changes nothing; another amount is a Conflict."""
        ledger_ref = f"load:{customer_id}:{reference}"

        def unit(tx: Tx) -> LoadResult:
            row = find_customer(tx, customer_id)
            books = self._system.books(tx, row.currency)
            earlier = tx.ledger.txn(ledger_ref)
            if earlier is None:
                tx.ledger.post(
                    "load", ledger_ref, [(books.cash, amount_micros), (row.id, -amount_micros)]
                )
                detail = {"customer": customer_id, "reference": reference, "micros": amount_micros}
                tx.admin.audit(actor, "customer.load", detail)
            elif not _same_load(tx, earlier.id, row.id, amount_micros):
                raise Conflict("this load reference was used for another amount")
            return LoadResult(
                customer_id=customer_id,
                reference=reference,
                amount_micros=amount_micros,
                available_micros=-tx.ledger.balance(row.id),
            )

        return self._store.run_in_transaction(unit)

    # --- merchants ----------------------------------------------------------------------

    def create_merchant(self, actor: str, merchant_id: str, currency: str) -> NewMerchant:
        """Register a merchant; its key K_M is returned here and never again."""
        self._system.require_currency(currency)
        key = hll.new_merchant_key(self._rng)
        sealed = seal_merchant_key(self._wrap_key, merchant_id, key, self._rng)

        def unit(tx: Tx) -> None:
            if tx.admin.merchant(merchant_id) is not None:
                raise Conflict("this merchant exists")
            name = merchant_account_name(merchant_id)
            account_id = tx.ledger.create_account(name, AccountKind.MERCHANT, currency)
            tx.admin.add_merchant(merchant_id, account_id, sealed)
            tx.admin.audit(
                actor, "merchant.create", {"merchant": merchant_id, "currency": currency}
            )

        self._store.run_in_transaction(unit)
        return NewMerchant(merchant_id=merchant_id, currency=currency, key=key)

    def merchants(self) -> list[MerchantView]:
        with self._store.transaction(readonly=True) as tx:
            return [
                _merchant_view(tx, row.merchant_id, row.account_id) for row in tx.admin.merchants()
            ]

    def merchant(self, merchant_id: str) -> MerchantView:
        with self._store.transaction(readonly=True) as tx:
            row = tx.admin.merchant(merchant_id)
            if row is None:
                raise NotFound("no such merchant")
            return _merchant_view(tx, merchant_id, row.account_id)

    # --- operators ----------------------------------------------------------------------

    def create_operator_token(self, actor: str, name: str) -> NewOperatorToken:
        """A new bearer token for operator ``name``; only its SHA-256 is stored."""
        token = new_operator_token(self._rng)

        def unit(tx: Tx) -> int:
            operator_id = tx.admin.add_operator_token(name, token_hash(token))
            tx.admin.audit(actor, "operator.token.create", {"operator": name, "id": operator_id})
            return operator_id

        operator_id = self._store.run_in_transaction(unit)
        return NewOperatorToken(operator_id=operator_id, name=name, token=token)

    def revoke_operator_token(self, actor: str, operator_id: int) -> bool:
        def unit(tx: Tx) -> bool:
            revoked = tx.admin.revoke_operator_token(operator_id)
            tx.admin.audit(actor, "operator.token.revoke", {"id": operator_id, "revoked": revoked})
            return revoked

        return self._store.run_in_transaction(unit)


def _same_load(tx: Tx, txn_id: int, account_id: int, amount_micros: int) -> bool:
    entries = tx.ledger.entries(txn_id)
    return any(e.account_id == account_id and e.amount_micros == -amount_micros for e in entries)


def _merchant_view(tx: Tx, merchant_id: str, account_id: int) -> MerchantView:
    account = tx.ledger.account(account_id)
    if account is None:
        raise NotFound("no such merchant account")
    return MerchantView(
        merchant_id=merchant_id,
        currency=account.currency,
        owed_micros=-tx.ledger.balance(account_id),
    )
