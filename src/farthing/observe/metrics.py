"""Prometheus metrics shared by the issuer and the vendor, on registries the apps own.

Labels are bounded: payment methods, outcomes (error-code names), price-table routes,
currencies; never a card id, a customer or a free path. The business gauges (float,
cards expiring, deposits, redemptions) are read from the store when scraped, so every
worker answers the same for them.

With several workers, ``farthing.serving`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
folder per server start) before they start: prometheus_client then keeps each process's
counters and histograms in files there, and a scrape (:func:`families`) reports their sum
over all workers, whichever worker answers it. The gauges read at scrape (the collectors
of :class:`FnCollector`) are not summed: they are this worker's view (its pool) or the
store's, which all workers share.

Store metrics: ``farthing_store_batch_size`` and ``farthing_store_commit_seconds`` (one
observation per group commit, from :class:`farthing.store.writer.StoreWriter`),
``farthing_store_pool_in_use`` / ``farthing_store_pool_size`` and
``farthing_store_probe_seconds`` (one round trip to the store, timed at scrape).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from farthing.store import Store

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "FnCollector", "StoreMetrics", "families", "render"]

log = logging.getLogger("farthing.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client at import
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)


def render(registry: CollectorRegistry) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Scrape(registry))
    return generate_latest(scrape)


def families(registry: CollectorRegistry) -> list[Metric]:
    """What a scrape of ``registry`` reports: its metrics, the counters and histograms
    summed over all worker processes when they share a multiprocess folder."""
    if not os.environ.get(MULTIPROC_ENV):
        return list(registry.collect())
    # prometheus_client's multiprocess module has no type annotations.
    workers = MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    summed: list[Metric] = list(workers.collect())  # type: ignore[no-untyped-call]
    # This process's own values of the same metrics are in the sum already.
    names = {family.name for family in summed}
    return [family for family in registry.collect() if family.name not in names] + summed


class _Scrape(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from families(self._registry)


class FnCollector(Collector):
    """Metrics computed when scraped by ``collect`` (a store query, a pool's state); if it
    fails (the store is down), the scrape goes on without them and ``up`` says so."""

    def __init__(self, name: str, collect: Callable[[], Iterable[Metric]]) -> None:
        self._name = name
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"farthing_{self._name}_scrape_ok", f"1 if the {self._name} metrics could be read"
        )
        try:
            metrics = list(self._collect())
        except Exception as error:
            log.warning("%s metrics not read (%s)", self._name, type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics


class StoreMetrics:
    """Group-commit batches, commit time, pool use and a probe of the store's latency."""

    def __init__(self, registry: CollectorRegistry, store: Store) -> None:
        self._store = store
        self.batch_size = Histogram(
            "farthing_store_batch_size",
            "Writes committed together in one group commit",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "farthing_store_commit_seconds",
            "Time of one group commit (the writes and the durable commit)",
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        registry.register(FnCollector("store", self._scrape))

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)

    def _scrape(self) -> Iterator[Metric]:
        in_use, size = self._store.pool_use()
        yield _gauge("farthing_store_pool_in_use", "Store connections in use", in_use)
        yield _gauge("farthing_store_pool_size", "Store connections the pool may hold", size)
        started = time.perf_counter()
        self._store.schema_is_current()
        yield _gauge(
            "farthing_store_probe_seconds",
            "Time of one round trip to the store, at scrape",
            time.perf_counter() - started,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
