"""The vendor application: a paywall around any ASGI app, wired to the store and the bank.

:func:`build_vendor` builds everything from explicit settings (no globals): the price
table, the enabled methods with their store-backed books, ``/healthz`` and ``/readyz``
on the content port, the access log (:mod:`farthing.observe.access`), and a separate
admin app for the operator's loopback listener (``/metrics``, ``/healthz``, ``/readyz``):
metrics are never served on the content port. Methods are enabled by what the settings
hold:

- ``szm`` keys (the vendor is the card issuer and shares its store): ``szm:chain`` and
  ``szm:prbg``;
- ``hll`` (merchant id and key at the bank, unit, mode): ``hll:mac``;
- ``payword`` (vendor id, broker id and public key, unit): ``payword``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Scope, Send

from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.prbg import BbsKey
from farthing.core.schemes.hll import DeferredRisk
from farthing.observe.access import UNMATCHED, AccessLog, HttpMetrics
from farthing.observe.health import Probe, health_routes, keys_probe, store_probe
from farthing.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from farthing.observe.metrics import StoreMetrics, render
from farthing.paywall.books import (
    ChainBook,
    HllDeferredBook,
    PaywordBook,
    PaywordBroker,
    PrbgBook,
    UsedChallenges,
    staleness_for,
)
from farthing.paywall.browser import CardChecker, wallet_routes
from farthing.paywall.idempotency import IdempotencyKeys
from farthing.paywall.methods.base import PaymentMethod
from farthing.paywall.methods.hll import HllBankClient, HllMethod, HllMode
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.payword import PaywordScheme
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.metrics import PaywallMetrics
from farthing.paywall.middleware import Offers, Paywall, QuickContent
from farthing.paywall.pricing import PriceTable
from farthing.store import Store
from farthing.store.writer import StoreWriter

__all__ = [
    "HllSettings",
    "PaywordSettings",
    "SzmKeys",
    "VendorApps",
    "VendorSettings",
    "build_vendor",
    "create_vendor_app",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmKeys:
    """The SZM issuer's secrets, shared by the vendor (SZM has no third party)."""

    chain_master: bytes = field(repr=False)
    prbg_master: bytes = field(repr=False)
    bbs: BbsKey | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class HllSettings:
    merchant_id: str
    merchant_key: bytes = field(repr=False)
    unit_micros: int
    mode: HllMode = HllMode.ONLINE
    risk_limit: int = 0  # deferred: units one card may owe unverified
    merchant_cap: int = 0  # deferred: units all cards together may owe unverified
    bank_public_key: bytes | None = None  # deferred: the bank's card-certification key


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordSettings:
    vendor_id: str
    broker_id: str
    broker_public: bytes
    unit_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorSettings:
    realm: str
    challenge_secret: bytes = field(repr=False)
    challenge_ttl: int = 300
    szm: SzmKeys | None = None
    hll: HllSettings | None = None
    payword: PaywordSettings | None = None


def build_methods(
    settings: VendorSettings,
    store: Store,
    writer: StoreWriter,
    *,
    bank: HllBankClient | None,
    broker: PaywordBroker | None = None,
) -> list[PaymentMethod]:
    """The enabled payment methods, in the order challenges are offered."""
    methods: list[PaymentMethod] = []
    if settings.szm is not None:
        chain = SzmScheme.chain(settings.szm.chain_master)
        methods.append(
            OfflineMethod(chain, ChainBook(store, writer), staleness=staleness_for(store))
        )
        prbg = SzmScheme.prbg(settings.szm.prbg_master, bbs_key=settings.szm.bbs)
        methods.append(OfflineMethod(prbg, PrbgBook(store, writer), staleness=staleness_for(store)))
    if settings.hll is not None:
        hll = settings.hll
        deferred = hll.mode is HllMode.DEFERRED
        methods.append(
            HllMethod(
                merchant_id=hll.merchant_id,
                unit_micros=hll.unit_micros,
                mode=hll.mode,
                bank=bank,
                deferred=HllDeferredBook(store) if deferred else None,
                risk=DeferredRisk(limit=hll.risk_limit, merchant_cap=hll.merchant_cap)
                if deferred
                else None,
                bank_public_key=hll.bank_public_key,
                used=UsedChallenges(store, writer),
            )
        )
    if settings.payword is not None:
        pw = settings.payword
        scheme = PaywordScheme(
            vendor_id=pw.vendor_id,
            broker_id=pw.broker_id,
            broker_public=pw.broker_public,
            unit_micros=pw.unit_micros,
        )
        book = PaywordBook(store, writer, broker=broker)
        methods.append(OfflineMethod(scheme, book, staleness=staleness_for(store)))
    return methods


@dataclass(frozen=True, slots=True)
class VendorApps:
    """``app``: the content port's ASGI app (access log around the paywall); ``paywall``:
    the paywall inside it; ``admin``: the operator's app (``/metrics``, ``/healthz``,
    ``/readyz``), to be served on a loopback listener of its own."""

    app: ASGIApp
    paywall: Paywall
    admin: ASGIApp


def _card_checker(settings: VendorSettings, store: Store, clock: Clock) -> CardChecker | None:
    szm = settings.szm
    if szm is None:
        return None
    return CardChecker(
        store=store,
        realm=settings.realm,
        chain_master=szm.chain_master,
        prbg_master=szm.prbg_master,
        bbs_modulus=szm.bbs.public.n_bytes if szm.bbs is not None else b"",
        clock=clock,
    )


def create_vendor_app(
    settings: VendorSettings,
    **kwargs: Any,
) -> Paywall:
    """The paywall of :func:`build_vendor` alone (no access log, no admin app)."""
    return build_vendor(settings, **kwargs).paywall


def _keys_loaded(settings: VendorSettings) -> bool:
    has_method = any(m is not None for m in (settings.szm, settings.hll, settings.payword))
    return has_method and len(settings.challenge_secret) >= 32


def _vendor_route(scope: Scope) -> str:
    """The access log's label for a request the paywall did not price."""
    route = scope.get("route")
    if isinstance(route, Route):
        return route.path
    return "unpriced" if isinstance(route, Mount) else UNMATCHED


def _unrouted(quick: QuickContent, routes: Sequence[Route]) -> QuickContent:
    """``quick`` for the requests the router would hand to the content mount: none of
    ``routes`` (those before it) matches them, even partly (a partial match, another
    HTTP method, is still that route's to answer). Remembered per path: a ``Route``
    matches by path and method alone, and ``quick`` is asked for GETs only."""
    content_only: dict[str, bool] = {}

    async def unrouted(scope: Scope, path: str, send: Send) -> int | None:
        if scope.get("root_path"):
            return None  # mounted under a prefix: the router's business
        route_path = scope["path"]
        mine = content_only.get(route_path)
        if mine is None:
            if len(content_only) >= _ROUTED_KEPT:
                content_only.clear()
            mine = content_only[route_path] = all(
                route.matches(scope)[0] is Match.NONE for route in routes
            )
        return await quick(scope, path, send) if mine else None

    return unrouted


_ROUTED_KEPT = 65_536  # paths whose routing is remembered


def build_vendor(
    settings: VendorSettings,
    *,
    content: ASGIApp,
    prices: PriceTable,
    store: Store,
    bank: HllBankClient | None = None,
    broker: PaywordBroker | None = None,
    clock: Clock | None = None,
    rng: RandomSource = os.urandom,
    extra_routes: Sequence[Route] = (),
    closers: Sequence[Callable[[], Awaitable[None]]] = (),
    background: Sequence[Callable[[], Coroutine[object, object, None]]] = (),
    offers: Offers | None = None,
    quick: QuickContent | None = None,
) -> VendorApps:
    """The vendor's ASGI apps: ``content`` behind the paywall, and the admin app.

    Through the ASGI lifespan, ``background`` tasks (e.g. the deposit loop) start with the
    server and are cancelled when it stops; then ``closers`` run (e.g. a client's
    ``aclose``). ``offers(method, path)``, if given, names what ``content`` sells: a priced
    path it does not offer is answered by ``content`` (404) without asking for payment.
    ``broker`` (the PayWord broker's client) admits each new PayWord commitment before
    paywords under it are accepted; give it whenever the vendor redeems there.
    ``quick`` (``content``'s shortcut, :data:`~farthing.paywall.middleware.QuickContent`)
    answers a paid GET without Starlette's routing and exception layers, for a path none of
    the routes before ``content`` (health, wallet, ``extra_routes``) would take.
    """
    metrics = PaywallMetrics()
    http_metrics = HttpMetrics(metrics.registry)
    store_metrics = StoreMetrics(metrics.registry, store)
    writer = StoreWriter(store, observe=store_metrics.observe_batch)
    probes: list[Probe] = [store_probe(store), keys_probe(lambda: _keys_loaded(settings))]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(job()) for job in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await writer.aclose()
            for close in closers:
                await close()

    async def metrics_endpoint(request: Request) -> Response:
        return Response(render(metrics.registry), media_type=METRICS_CONTENT_TYPE)

    admin_routes: list[BaseRoute] = [Route("/metrics", metrics_endpoint), *health_routes(probes)]
    before_content: list[Route] = [
        *health_routes(probes),
        *wallet_routes(_card_checker(settings, store, clock or SystemClock())),
        *extra_routes,
    ]
    inner = Starlette(routes=[*before_content, Mount("/", app=content)], lifespan=lifespan)
    # The paywall is the outermost layer: an unpriced path costs it one dict lookup.
    paywall = Paywall(
        inner,
        realm=settings.realm,
        prices=prices,
        methods=build_methods(settings, store, writer, bank=bank, broker=broker),
        challenge_secret=settings.challenge_secret,
        clock=clock if clock is not None else SystemClock(),
        rng=rng,
        challenge_ttl=settings.challenge_ttl,
        metrics=metrics,
        offers=offers,
        idempotency=IdempotencyKeys(store, writer),
        quick=None if quick is None else _unrouted(quick, before_content),
    )
    return VendorApps(
        app=AccessLog(paywall, metrics=http_metrics, route_of=_vendor_route),
        paywall=paywall,
        admin=Starlette(routes=admin_routes),
    )
