"""The vendor application: a paywall around any ASGI app, wired to the store and the bank.

:func:`create_vendor_app` builds everything from explicit settings (no globals): the price
table, the enabled methods with their store-backed books, ``/metrics`` (Prometheus) and
``/healthz``. Methods are enabled by what the settings hold:

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

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.prbg import BbsKey
from farthing.core.schemes.hll import DeferredRisk
from farthing.paywall.books import ChainBook, HllDeferredBook, PaywordBook, PaywordBroker, PrbgBook
from farthing.paywall.browser import CardChecker, wallet_routes
from farthing.paywall.methods.base import PaymentMethod
from farthing.paywall.methods.hll import HllBankClient, HllMethod, HllMode
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.payword import PaywordScheme
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.metrics import PaywallMetrics
from farthing.paywall.middleware import Offers, Paywall
from farthing.paywall.pricing import PriceTable
from farthing.store import Store
from farthing.store.writer import StoreWriter

__all__ = ["HllSettings", "PaywordSettings", "SzmKeys", "VendorSettings", "create_vendor_app"]


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
        methods.append(OfflineMethod(chain, ChainBook(store, writer)))
        prbg = SzmScheme.prbg(settings.szm.prbg_master, bbs_key=settings.szm.bbs)
        methods.append(OfflineMethod(prbg, PrbgBook(store, writer)))
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
        methods.append(OfflineMethod(scheme, PaywordBook(store, writer, broker=broker)))
    return methods


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
) -> Paywall:
    """The vendor's ASGI app: ``content`` behind the paywall, plus /metrics and /healthz.

    Through the ASGI lifespan, ``background`` tasks (e.g. the deposit loop) start with the
    server and are cancelled when it stops; then ``closers`` run (e.g. a client's
    ``aclose``). ``offers(method, path)``, if given, names what ``content`` sells: a priced
    path it does not offer is answered by ``content`` (404) without asking for payment.
    ``broker`` (the PayWord broker's client) admits each new PayWord commitment before
    paywords under it are accepted; give it whenever the vendor redeems there.
    """
    metrics = PaywallMetrics()
    writer = StoreWriter(store)

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
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", health),
            *wallet_routes(_card_checker(settings, store, clock or SystemClock())),
            *extra_routes,
            Mount("/", app=content),
        ],
        lifespan=lifespan,
    )
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
    )
    return paywall
