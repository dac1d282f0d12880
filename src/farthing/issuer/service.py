"""The issuer's business operations, composed from small services over one store.

:func:`build_services` is the one place that wires keys, store, clock and randomness into
the services; the HTTP app and the CLI both use it, so both run the same code::

    services = build_services(config, store, clock=SystemClock(), rng=os.urandom)
    services.accounts.create_customer("cli:alice", "c-42", "EUR")
    services.szm.issue_batch("cli:alice", spec)

No HTTP here: errors are farthing's own (:mod:`farthing.core.errors`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from farthing.core.clock import Clock, RandomSource
from farthing.issuer.accounts_service import AccountsService
from farthing.issuer.auth import MerchantDirectory, OperatorAuth
from farthing.issuer.books import SystemAccounts
from farthing.issuer.config import IssuerConfig
from farthing.issuer.hll_service import HllService
from farthing.issuer.payword_service import PaywordService
from farthing.issuer.report_service import ReportService
from farthing.issuer.szm_service import SzmService
from farthing.store import Store

__all__ = ["IssuerServices", "build_services"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerServices:
    config: IssuerConfig
    store: Store
    operators: OperatorAuth
    merchants: MerchantDirectory
    system: SystemAccounts
    accounts: AccountsService
    hll: HllService
    szm: SzmService
    payword: PaywordService
    reports: ReportService


def build_services(
    config: IssuerConfig,
    store: Store,
    *,
    clock: Clock,
    rng: RandomSource,
    on_spend_recorded: Callable[[int], None] | None = None,
) -> IssuerServices:
    """Wire every service; makes the system accounts of each configured currency."""
    keys = config.keys
    system = SystemAccounts(store, config.currencies)
    system.prepare()
    merchants = MerchantDirectory(store, keys.merchant_key_wrap)
    accounts = AccountsService(store, system, wrap_key=keys.merchant_key_wrap, rng=rng)
    return IssuerServices(
        config=config,
        store=store,
        operators=OperatorAuth(store),
        merchants=merchants,
        system=system,
        accounts=accounts,
        hll=HllService(
            store,
            system,
            merchants,
            master_key=keys.hll_master,
            clock=clock,
            rng=rng,
            deposit_window=config.hll_deposit_window,
            on_spend_recorded=on_spend_recorded,
        ),
        szm=SzmService(
            store,
            system,
            chain_master=keys.szm_chain_master,
            prbg_master=keys.szm_prbg_master,
            bbs=keys.bbs,
            realm=keys.realm,
            clock=clock,
            rng=rng,
        ),
        payword=PaywordService(
            store,
            merchants,
            broker_id=keys.broker_id,
            broker_key=keys.payword_broker_key,
            broker_public=keys.broker_public_key,
            certificate_ttl=config.certificate_ttl,
            clock=clock,
        ),
        reports=ReportService(store, system, accounts),
    )
