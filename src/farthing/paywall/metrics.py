"""Prometheus metrics of the paywall, on a registry the caller owns (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["PaywallMetrics"]

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class PaywallMetrics:
    """``farthing_payments_total{method,outcome}`` and ``farthing_verify_seconds{method}``.

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

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        self.payments.labels(method=method, outcome=outcome).inc()
        self.verify_seconds.labels(method=method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
