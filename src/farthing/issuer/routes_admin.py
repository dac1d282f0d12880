"""Operator routes: customers, cash-in, merchants, the ledger check and the report."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from farthing.core.encoding import b64url_encode
from farthing.issuer.accounts_service import CustomerView, MerchantView
from farthing.issuer.auth import Operator
from farthing.issuer.report_service import IssuerReport
from farthing.issuer.routes_common import operator_dependency
from farthing.issuer.schemas import (
    CashIn,
    CurrencyReportOut,
    CustomerOut,
    LedgerCheckOut,
    LoadOut,
    MerchantCreated,
    MerchantOut,
    NewCustomer,
    NewMerchant,
    ReportOut,
)
from farthing.issuer.service import IssuerServices
from farthing.store import LedgerCheck

__all__ = ["build_admin_router"]


def _customer_out(view: CustomerView) -> CustomerOut:
    return CustomerOut(
        customer_id=view.customer_id, currency=view.currency, available_micros=view.available_micros
    )


def _merchant_out(view: MerchantView) -> MerchantOut:
    return MerchantOut(
        merchant_id=view.merchant_id, currency=view.currency, owed_micros=view.owed_micros
    )


def _check_out(check: LedgerCheck) -> LedgerCheckOut:
    return LedgerCheckOut(
        balanced=check.balanced,
        problems=list(check.problems),
        txn_count=check.txn_count,
        entry_count=check.entry_count,
    )


def _report_out(report: IssuerReport) -> ReportOut:
    currencies = [
        CurrencyReportOut(
            currency=c.currency,
            balances_micros={kind.value: micros for kind, micros in c.balances.items()},
            hll_outstanding_micros=c.hll_outstanding_micros,
            szm_outstanding_micros=c.szm_outstanding_micros,
            merchants_owed_micros=c.merchants_owed_micros,
        )
        for c in report.currencies
    ]
    return ReportOut(
        currencies=currencies,
        merchants=[_merchant_out(m) for m in report.merchants],
        ledger=_check_out(report.ledger),
    )


def build_admin_router(services: IssuerServices) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["operators"])
    require_operator = operator_dependency(services.operators)
    accounts = services.accounts

    @router.post("/customers", status_code=201)
    def create_customer(body: NewCustomer, op: Operator = Depends(require_operator)) -> CustomerOut:
        return _customer_out(accounts.create_customer(op.actor, body.customer_id, body.currency))

    @router.get("/customers/{customer_id}")
    def get_customer(customer_id: str, op: Operator = Depends(require_operator)) -> CustomerOut:
        return _customer_out(accounts.customer(customer_id))

    @router.post("/customers/{customer_id}/loads", status_code=201)
    def load_customer(
        customer_id: str, body: CashIn, op: Operator = Depends(require_operator)
    ) -> LoadOut:
        result = accounts.load(op.actor, customer_id, body.amount_micros, body.reference)
        return LoadOut(
            customer_id=result.customer_id,
            reference=result.reference,
            amount_micros=result.amount_micros,
            available_micros=result.available_micros,
        )

    @router.post("/merchants", status_code=201)
    def create_merchant(
        body: NewMerchant, op: Operator = Depends(require_operator)
    ) -> MerchantCreated:
        made = accounts.create_merchant(op.actor, body.merchant_id, body.currency)
        return MerchantCreated(
            merchant_id=made.merchant_id, currency=made.currency, key=b64url_encode(made.key)
        )

    @router.get("/merchants/{merchant_id}")
    def get_merchant(merchant_id: str, op: Operator = Depends(require_operator)) -> MerchantOut:
        return _merchant_out(accounts.merchant(merchant_id))

    @router.get("/ledger/check")
    def check_ledger(op: Operator = Depends(require_operator)) -> LedgerCheckOut:
        return _check_out(services.reports.check())

    @router.get("/report")
    def report(op: Operator = Depends(require_operator)) -> ReportOut:
        return _report_out(services.reports.report())

    return router
