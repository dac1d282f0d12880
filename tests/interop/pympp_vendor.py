"""A vendor written with pympp's own server code, taking farthing's payments.

``app_from_env`` is an ASGI app factory for ``python -m farthing.serving`` (uvicorn): a
Starlette app whose ``/articles/{name}`` is priced with pympp's ``Mpp`` handlers, where
each method is farthing's (:class:`farthing.mpp.server.VendorMethods` over the vendor's
own ``build_methods``: both SZM protocols, and PayWord without a broker), settling in the
SQLite store ``FARTHING_MPP_DATABASE`` names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from mpp.server.decorator import to_framework_response, to_request
from mpp.server.http import PaymentRequired, Response
from mpp.server.mpp import Mpp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from farthing.core.clock import SystemClock
from farthing.core.primitives import ed25519_public_key
from farthing.mpp.server import VendorMethods
from farthing.paywall.app import PaywordSettings, VendorSettings, build_methods
from farthing.paywall.pricing import Price, PricedRoute
from farthing.store import open_store
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import KEYS

REALM = "news"
ROUTE = PricedRoute(scope="/articles/*", price=Price(micros=2000, currency="EUR"))
SECRET = "pympp-vendor-test-secret"
BROKER_KEY = b"B" * 32  # the PayWord broker's Ed25519 seed (tests only)
PAYWORD_VENDOR, PAYWORD_BROKER = "shop", "broker"


def app_from_env() -> Starlette:
    store = open_store(os.environ["FARTHING_MPP_DATABASE"])
    writer = StoreWriter(store)
    settings = VendorSettings(
        realm=REALM,
        challenge_secret=b"unused by pympp" * 2,
        szm=KEYS,
        payword=PaywordSettings(
            vendor_id=PAYWORD_VENDOR,
            broker_id=PAYWORD_BROKER,
            broker_public=ed25519_public_key(BROKER_KEY),
            unit_micros=1000,
        ),
    )
    methods = VendorMethods(build_methods(settings, store, writer, bank=None), clock=SystemClock())
    server = Mpp(methods.server_methods, realm=REALM, secret_key=SECRET)
    charge = methods.charge(server, ROUTE)

    async def article(request: Request) -> StarletteResponse:
        paid = await charge(await to_request(request, read_body=False), resource=request.url.path)
        if isinstance(paid, PaymentRequired):
            return to_framework_response(paid.challenge)  # type: ignore[no-any-return]
        name = request.path_params["name"]
        body = Response(status=200, headers={"content-type": "text/plain"}, body=f"article {name}")
        return to_framework_response(paid.with_receipt(body))  # type: ignore[no-any-return]

    async def healthz(request: Request) -> StarletteResponse:
        return StarletteResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await writer.aclose()
        store.close()

    routes = [Route("/articles/{name}", article), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)
