"""The issuer's HTTP API: :func:`create_issuer_app` builds a fresh FastAPI app per call.

Nothing is global: configuration, store, clock and randomness come in as arguments, and
every route closes over the services built from them. Layers, outermost first::

    AccessLog   one structured log line per request (farthing.observe.access), metrics
    CatchAll    any unexpected exception -> 500 problem with a correlation id
    RateLimit   token buckets per client address and per operator token -> 429
    BodyLimit   request bodies over the limit (64 KiB; deposits 2 MiB) -> 413;
                deposit-size bodies past the worker's budget (64 MiB) -> 503
    FastAPI     routes under /v1; domain errors -> RFC 9457 problems (http_errors)

``python -m farthing.serving farthing.issuer.app:app_from_env`` (what ``farthing issuer
serve`` runs; see :mod:`farthing.serving` for why not plain ``uvicorn --workers``)
builds the app from environment variables, so that every worker process builds its own
app, store pool and services.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import Depends, FastAPI
from fastapi.responses import Response

from farthing import __version__
from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.issuer.config import (
    DEFAULT_DB,
    DEFAULT_KEYS,
    ENV_BODY_BUDGET,
    ENV_CURRENCIES,
    ENV_DB,
    ENV_KEYS,
    ENV_RATE_LIMIT,
    IssuerConfig,
    RateLimits,
    load_issuer_keys,
)
from farthing.issuer.dashboard.app import PREFIX as DASHBOARD_PREFIX
from farthing.issuer.dashboard.app import build_dashboard
from farthing.issuer.http_errors import CatchAll, install_error_handlers
from farthing.issuer.limits import BodyLimit, RateLimit
from farthing.issuer.metrics import IssuerMetrics
from farthing.issuer.routes_admin import build_admin_router
from farthing.issuer.routes_common import operator_dependency
from farthing.issuer.routes_hll import DEPOSITS_PATH, build_hll_router, fast_verify_routes
from farthing.issuer.routes_payword import build_payword_router
from farthing.issuer.routes_szm import build_szm_router
from farthing.issuer.service import IssuerServices, build_services
from farthing.observe.access import AccessLog
from farthing.observe.health import health_routes, keys_probe, store_probe
from farthing.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from farthing.observe.metrics import render
from farthing.store import Store, open_store
from farthing.store.writer import StoreWriter

__all__ = [
    "ENV_CURRENCIES",
    "ENV_RATE_LIMIT",
    "app_from_env",
    "config_from_env",
    "create_issuer_app",
    "issuer_app",
]


def create_issuer_app(
    config: IssuerConfig,
    store: Store,
    *,
    clock: Clock,
    rng: RandomSource,
    owns_store: bool = False,
    rate_clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The issuer app over ``store``. ``owns_store``: close the store when the app stops.
    ``rate_clock``: the monotonic clock of the rate limiter (a parameter for tests)."""
    services = build_services(config, store, clock=clock, rng=rng)
    return issuer_app(services, owns_store=owns_store, rate_clock=rate_clock, clock=clock)


def issuer_app(
    services: IssuerServices,
    *,
    owns_store: bool = False,
    rate_clock: Callable[[], float] = time.monotonic,
    clock: Clock | None = None,
    fsync: Callable[[int], None] = os.fsync,
) -> FastAPI:
    """The issuer app over already built services (see :func:`create_issuer_app`).
    ``fsync``: SQLite, what makes the WAL file durable after the loop's commits of online
    verifications (a stand-in in tests, see :class:`~farthing.store.writer.StoreWriter`)."""
    config = services.config
    clock = clock if clock is not None else SystemClock()
    metrics = IssuerMetrics(services, clock)
    writer = StoreWriter(services.store, observe=metrics.store.observe_batch, fsync=fsync)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await writer.aclose()
        if owns_store:
            services.store.close()

    app = FastAPI(
        title="farthing issuer",
        version=__version__,
        summary="Bank of HLL, broker of PayWord, card issuer of SZM",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    probes = [store_probe(services.store), keys_probe(lambda: config.keys is not None)]
    for route in health_routes(probes):
        app.router.routes.append(route)
    require_operator = operator_dependency(services.operators)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_operator)])
    def metrics_endpoint() -> Response:
        return Response(render(metrics.registry), media_type=METRICS_CONTENT_TYPE)

    app.include_router(build_admin_router(services))
    dashboard = build_dashboard(
        services, metrics.registry, clock=clock, allow_remote=config.dashboard_remote
    )
    app.mount(DASHBOARD_PREFIX, dashboard)
    app.include_router(build_hll_router(services, writer))
    # First, so that the bank's busiest routes are matched before any other is tried.
    app.router.routes[0:0] = fast_verify_routes(services, writer)
    app.include_router(build_szm_router(services))
    app.include_router(build_payword_router(services))
    # add_middleware wraps from the inside out: the last added is the outermost.
    app.add_middleware(
        BodyLimit,
        limit=config.max_body_bytes,
        per_path={DEPOSITS_PATH: config.max_deposit_bytes},
        budget=config.body_budget_bytes,
    )
    app.add_middleware(RateLimit, limits=config.rate_limits, clock=rate_clock)
    app.add_middleware(CatchAll)
    app.add_middleware(AccessLog, metrics=metrics.http)
    return app


def config_from_env(environ: Mapping[str, str]) -> tuple[str, IssuerConfig]:
    """(store target, config) from ``FARTHING_ISSUER_*`` variables (see the CLI)."""
    target = environ.get(ENV_DB, DEFAULT_DB)
    keys = load_issuer_keys(environ.get(ENV_KEYS, DEFAULT_KEYS))
    currencies = tuple(
        c.strip() for c in environ.get(ENV_CURRENCIES, "EUR").split(",") if c.strip()
    )
    rate_on = environ.get(ENV_RATE_LIMIT, "on").lower() not in {"0", "off", "false", "no"}
    config = IssuerConfig(keys=keys, currencies=currencies, rate_limits=RateLimits(enabled=rate_on))
    budget = environ.get(ENV_BODY_BUDGET)
    if budget is not None:
        config = replace(config, body_budget_bytes=int(budget))
    return target, config


def app_from_env() -> FastAPI:
    """The uvicorn factory: one app, store and set of services per worker process."""
    target, config = config_from_env(os.environ)
    store = open_store(target, create=False)
    try:
        return create_issuer_app(
            config, store, clock=SystemClock(), rng=os.urandom, owns_store=True
        )
    except BaseException:
        store.close()
        raise
