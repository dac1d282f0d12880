"""The importable app factory for uvicorn workers: ``farthing.paywall.serve:app_from_env``.

``python -m farthing.serving farthing.paywall.serve:app_from_env --workers 4`` (what
``farthing vendor serve`` runs; plain ``uvicorn --workers`` leaves Nagle on, see
:mod:`farthing.serving`) with ``FARTHING_VENDOR_CONFIG=/path/vendor.toml``. Each worker
process builds its own app and opens its own connections to the one shared store; the
store's conditional updates keep payments atomic across them.

Once its app is built, a worker collects the garbage of its start-up and freezes the rest
(``gc.freeze``: the imports, the app, its keys and statements stay alive for the worker's
life). The collector's full passes then scan only what was made since: before, each one
scanned the ~105,000 objects of the start-up, ~55 ms of CPU on the event loop, 2-4 times
a minute at half load in bench/tail.py, every request in flight waiting for it.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from pathlib import Path

from starlette.types import ASGIApp

from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.errors import LocalProtocolError
from farthing.http.issuer_client import IssuerClient
from farthing.observe.admin import serve_admin
from farthing.paywall.app import VendorApps, build_vendor
from farthing.paywall.config import CONFIG_ENV, VendorConfig, load_vendor_config
from farthing.paywall.deposits import Depositor
from farthing.paywall.goods import GoodsApp
from farthing.paywall.middleware import QuickContent
from farthing.paywall.sales import SalesLog, SalesRecorder
from farthing.store import Store, open_store

__all__ = [
    "app_from_config",
    "app_from_env",
    "depositor_for",
    "deposits_missing",
    "freeze_startup_heap",
    "vendor_from_config",
]

log = logging.getLogger("farthing.paywall")


def _bank(config: VendorConfig) -> IssuerClient | None:
    hll = config.settings.hll
    if hll is None or config.issuer_url is None:
        return None
    from farthing.http.issuer_client import IssuerClient

    return IssuerClient(
        config.issuer_url, merchant_id=hll.merchant_id, merchant_key=hll.merchant_key
    )


def app_from_config(config: VendorConfig) -> ASGIApp:
    """The content port's app a uvicorn worker serves."""
    return vendor_from_config(config).app


def vendor_from_config(
    config: VendorConfig, *, clock: Clock | None = None, rng: RandomSource = os.urandom
) -> VendorApps:
    """The vendor's apps (content port, the paywall inside it, admin) as ``config`` says.
    ``clock`` and ``rng``: the paywall's (the system's by default; a test passes
    :mod:`farthing.testing`'s to get the same bytes on every run, as tests/http/http_doc.py)."""
    store = open_store(config.database)
    bank = _bank(config)
    closers = [bank.aclose] if bank is not None else []
    background = []
    broker = None
    deposits = depositor_for(config, store=store)
    if deposits is None and deposits_missing(config):
        log.warning("PayWord is sold but not redeemed: set [payword] issuer_url and key file")
    if deposits is not None:
        depositor, client = deposits
        closers.append(client.aclose)
        background.append(functools.partial(depositor.run, config.deposit_interval))
        if config.settings.payword is not None:
            broker = client  # PayWord commitments are admitted where they are redeemed
    goods = GoodsApp(config.content_dir)
    content: ASGIApp = goods
    quick: QuickContent = goods.quick
    if config.sales_log is not None:
        sales = SalesLog(config.sales_log)
        closers.append(sales.aclose)  # the lines still pending
        recorder = SalesRecorder(
            goods, sales, prices=config.prices, clock=SystemClock(), quick=goods.quick
        )
        content, quick = recorder, recorder.quick
    vendor = build_vendor(
        config.settings,
        content=content,
        prices=config.prices,
        store=store,
        bank=bank,
        broker=broker,
        closers=closers,
        offers=goods.offers,
        quick=quick,
        background=background,
        clock=clock,
        rng=rng,
    )
    if config.admin_port is not None:  # the lifespan reads ``background`` at start-up
        background.append(functools.partial(serve_admin, vendor.admin, port=config.admin_port))
    return vendor


def app_from_env() -> ASGIApp:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise LocalProtocolError(f"set {CONFIG_ENV} to the vendor config file")
    app = app_from_config(load_vendor_config(Path(path)))
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Collect the start-up's garbage, then take every object left out of the collector's
    scans for good (see the module's doc); once per worker, after its app is built."""
    gc.collect()
    gc.freeze()


def deposits_missing(config: VendorConfig) -> bool:
    """True if the vendor takes payments it should deposit but cannot (no issuer set)."""
    settings = config.settings
    return config.deposits is None and (settings.hll is not None or settings.payword is not None)


def depositor_for(
    config: VendorConfig, *, store: Store | None = None
) -> tuple[Depositor, IssuerClient] | None:
    """The depositor of a configured vendor and its issuer client (close it when done), or
    None if the config names no issuer to deposit at (see :func:`deposits_missing`)."""
    deposits = config.deposits
    if deposits is None:
        return None
    merchant_id, merchant_key = deposits.merchant_id, deposits.merchant_key
    client = IssuerClient(deposits.issuer_url, merchant_id=merchant_id, merchant_key=merchant_key)
    depositor = Depositor(
        store if store is not None else open_store(config.database),
        client,
        clock=SystemClock(),
        rng=os.urandom,
        merchant_id=merchant_id,
        merchant_key=merchant_key,
    )
    return depositor, client
