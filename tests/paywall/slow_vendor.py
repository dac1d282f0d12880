"""A vendor whose goods are slow to send, for races that must be real: uvicorn serves
``app_from_env`` (tests/servers.py). The database is ``FARTHING_TEST_VENDOR_DB``; the
methods are ``szmchain``/``szmprbg`` (tests/paywall/helpers.py's keys) and ``payword``
(broker key ``BROKER_KEY``, vendor ``shop``, no broker to admit: signatures alone) and
``hll`` in deferred mode (cards certified by ``BANK_MASTER``; a bank that is never reached).

``GET /articles/<slug>`` answers ``secret article <slug>`` in ``CHUNKS`` pieces, ``PAUSE``
seconds apart, so a delivery is in flight long enough for copies of its request to meet it.
If ``FARTHING_TEST_GATE`` names a file, the last piece waits until that file exists: a test
holds a delivery in flight until the copies it sent are answered, however late a loaded
machine lets them arrive.
``POST /orders/<slug>`` (priced too) takes ``ORDER_PAUSE`` seconds, counts its calls in
``orders`` and answers the count.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from starlette.types import Receive, Scope, Send

from farthing.core.errors import ErrorCode, Unavailable
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll
from farthing.paywall.app import HllSettings, PaywordSettings, VendorSettings, build_vendor
from farthing.paywall.methods.hll import HllMode
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import open_store
from tests.paywall.helpers import KEYS

BROKER_KEY: Final = b"B" * 32
BANK_MASTER: Final = b"K" * 32
CHUNKS: Final = 5
PAUSE: Final = 0.1
# An order runs this long: copies of its request sent at once reach the vendor while it runs,
# even when a loaded machine spreads their arrival over 0.1 s (seen with PAUSE).
ORDER_PAUSE: Final = 0.4
GATE_ENV: Final = "FARTHING_TEST_GATE"
SETTINGS: Final = VendorSettings(
    realm="news",
    challenge_secret=b"s" * 32,
    szm=KEYS,
    payword=PaywordSettings(
        vendor_id="shop",
        broker_id="broker",
        broker_public=ed25519_public_key(BROKER_KEY),
        unit_micros=1000,
    ),
    hll=HllSettings(
        merchant_id="shop",
        merchant_key=b"m" * 32,
        unit_micros=1000,
        mode=HllMode.DEFERRED,
        risk_limit=100,
        merchant_cap=1000,
        bank_public_key=hll.card_certification_public_key(BANK_MASTER),
    ),
)


class BankDown:
    """The bank, unreachable: every purchase here is certified, so none goes online."""

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        raise Unavailable("the bank is down", retry_after=5, code=ErrorCode.ISSUER_UNAVAILABLE)


class SlowGoods:
    """The content app: slow articles, and an order endpoint that counts its runs."""

    def __init__(self) -> None:
        self.orders = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] == "POST" and path.startswith("/orders/"):
            await self._order(receive, send)
            return
        if not path.startswith("/articles/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"secret article " + path.rsplit("/", 1)[-1].encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = -(-len(body) // CHUNKS)
        for start in range(0, len(body), step):
            await asyncio.sleep(PAUSE)
            piece = body[start : start + step]
            more = start + step < len(body)
            if not more:
                await held_at_gate()
            await send({"type": "http.response.body", "body": piece, "more_body": more})

    async def _order(self, receive: Receive, send: Send) -> None:
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await asyncio.sleep(ORDER_PAUSE)
        self.orders += 1
        body = b"order %d of %d bytes" % (self.orders, len(received))
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def held_at_gate() -> None:
    # A file, polled: the gate is shared by the test and every worker process.
    gate = os.environ.get(GATE_ENV)
    while gate is not None and not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.01)


def prices() -> PriceTable:
    table = PriceTable()
    table.add("/articles/*", Price(micros=2000, currency="EUR"))
    table.add("/orders/*", Price(micros=2000, currency="EUR"))
    return table


def app_from_env() -> object:
    store = open_store(os.environ["FARTHING_TEST_VENDOR_DB"])
    goods = SlowGoods()
    return build_vendor(SETTINGS, content=goods, prices=prices(), store=store, bank=BankDown()).app
