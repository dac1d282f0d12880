"""Prometheus metrics of the paywall, on a registry the caller owns (no globals).

They are served by the vendor's admin app (:func:`farthing.paywall.app.build_vendor`), on
its own loopback listener, never on the content port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from farthing.observe.metrics import render
from farthing.paywall.pricing import Price

__all__ = ["PaywallMetrics"]

_Children = tuple[Counter, Histogram, Counter | None]
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class PaywallMetrics:
    """``farthing_payments_total{method,outcome}``, ``farthing_verify_seconds{method}`` and
    ``farthing_revenue_micros_total{method,currency}`` (prices of accepted payments).

    ``outcome`` is ``accepted``, ``retried`` (a paid request sent again after a lost
    answer, served without a new charge) or the lower-case error code name of the refusal
    (``payment_invalid``, ``challenge_expired``, ...); no secret ever becomes a label.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.payments = Counter(
            "farthing_payments",
            "Payments seen by the paywall",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.verify_seconds = Histogram(
            "farthing_verify_seconds",
            "Time to verify and record a payment",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.revenue = Counter(
            "farthing_revenue_micros",
            "Price of the payments accepted (retries not counted again), in micro-units",
            ["method", "currency"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str | None], _Children] = {}

    def observe(
        self, method: str, outcome: str, seconds: float, price: Price | None = None
    ) -> None:
        # Labelled children are cached: ``labels()`` costs a lock and a tuple per call.
        currency = price.currency if price is not None and outcome == "accepted" else None
        key = (method, outcome, currency)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (
                self.payments.labels(method=method, outcome=outcome),
                self.verify_seconds.labels(method=method),
                None if currency is None else self.revenue.labels(method=method, currency=currency),
            )
        child[0].inc()
        child[1].observe(seconds)
        if child[2] is not None and price is not None:
            child[2].inc(price.micros)

    def render(self) -> bytes:
        return render(self.registry)  # summed over the workers, if several
