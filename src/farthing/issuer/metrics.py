"""The issuer's Prometheus metrics (served at ``/metrics`` to operators only).

Read from the store when scraped (the same in every worker): the float by currency and
card kind, cards expiring within 7 days, what the ledger has posted by transaction kind
(``hll_deposit``: merchants' deposits; ``payword_redeem``: redemptions; ``hll_spend``:
online HLL payments; ``szm_sale``, ``load``, ...), and the ledger check's verdict (run at
most once a minute: it reads the whole ledger). Counted by this process: HTTP requests by
route template and status (HLL verifications are ``/v1/hll/verify``), rate-limit refusals,
group commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from farthing.core.clock import Clock
from farthing.issuer.service import IssuerServices
from farthing.observe.access import HttpMetrics
from farthing.observe.metrics import FnCollector, StoreMetrics

__all__ = ["EXPIRY_WINDOW", "IssuerMetrics"]

EXPIRY_WINDOW: Final = 7 * 86_400
LEDGER_CHECK_EVERY: Final = 60.0


@dataclass(slots=True)
class _Cached:
    at: float
    balanced: bool


class IssuerMetrics:
    def __init__(
        self,
        services: IssuerServices,
        clock: Clock,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.store = StoreMetrics(self.registry, services.store)
        self._services = services
        self._clock = clock
        self._monotonic = monotonic
        self._ledger: _Cached | None = None
        self.registry.register(FnCollector("books", self._books))

    def _books(self) -> Iterator[Metric]:
        floats = GaugeMetricFamily(
            "farthing_float_micros",
            "Value outstanding on cards (HLL: loaded, not spent; SZM: sold, not recognised)",
            labels=["currency", "kind"],
        )
        for currency, kind, outstanding in self._services.reports.floats():
            floats.add_metric([currency, kind], outstanding)
        yield floats
        now = self._clock.now()
        store = self._services.store
        with store.transaction(readonly=True) as tx:
            expiring = tx.szm.cards_expiring(now=now, until=now + EXPIRY_WINDOW)
            totals = tx.ledger.posted_totals()
        cards = GaugeMetricFamily(
            "farthing_cards_expiring",
            "Active SZM cards expiring within 7 days",
            labels=["protocol"],
        )
        for protocol, count in expiring:
            cards.add_metric([protocol], count)
        yield cards
        micros = GaugeMetricFamily(
            "farthing_ledger_posted_micros",
            "Value the ledger has posted, by transaction kind and currency",
            labels=["kind", "currency"],
        )
        txns = GaugeMetricFamily(
            "farthing_ledger_posted_txns",
            "Ledger transactions posted, by kind and currency",
            labels=["kind", "currency"],
        )
        for kind, currency, count, value in totals:
            micros.add_metric([kind, currency], value)
            txns.add_metric([kind, currency], count)
        yield micros
        yield txns
        yield GaugeMetricFamily(
            "farthing_ledger_balanced",
            "1 if the last ledger check (at most a minute old) found the books balanced",
            value=1 if self._ledger_balanced() else 0,
        )

    def _ledger_balanced(self) -> bool:
        now = self._monotonic()
        cached = self._ledger
        if cached is None or now - cached.at >= LEDGER_CHECK_EVERY:
            cached = self._ledger = _Cached(now, self._services.reports.check().balanced)
        return cached.balanced
