"""Readers in a browser: the 402 page, the wallet's files, and the card check (docs/browser.md).

Everything here lives under one reserved path, :data:`WALLET_PREFIX` (``/_farthing/``),
which the paywall never prices, whatever the price table says:

- ``GET /_farthing/<file>``: the wallet's static files, shipped as package data in
  ``farthing/paywall/web/`` (plain ES modules, one stylesheet, the wallet page). The service
  worker (``sw.js``) is sent with ``Service-Worker-Allowed: /`` so that it may control the
  whole site from its reserved folder.
- ``POST /_farthing/card``: ``{"lookup": ...}``, the lookup id of the reader's short card code
  (:mod:`farthing.core.shortcode`), answered by the vendor, who is the card's issuer and
  shares its database, exactly as the issuer's ``POST /v1/szm/cards/lookup`` answers: the
  card's terms, the tag binding them to the code, and what is left. The code itself and the
  card secret never leave the page.

A priced request that accepts ``text/html`` (a browser navigation) and carries no payment
gets its 402 as an HTML page (:func:`payment_page`): the price in the reader's terms, the
methods accepted, a field for a card code; the challenges stay in ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from importlib import resources
from string import Template
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from farthing.core import shortcode
from farthing.core.clock import Clock, SystemClock
from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode, FarthingError, MalformedMessage, NotFound
from farthing.core.schemes import szm_issued
from farthing.http.issuer_wire import card_lookup_json
from farthing.http.payment_auth import Challenge
from farthing.http.problems import CONTENT_TYPE as PROBLEM_TYPE
from farthing.http.problems import problem_for
from farthing.paywall.pricing import PricedRoute
from farthing.store import Store, SzmProtocol

__all__ = [
    "WALLET_PREFIX",
    "CardChecker",
    "accepts_html",
    "is_wallet_path",
    "payment_page",
    "reader_price",
    "wallet_routes",
]

WALLET_PREFIX: Final = "/_farthing/"
MAX_BODY: Final = 1024
_WEB = resources.files("farthing.paywall") / "web"
# name -> media type: only these files are served, each read once.
_FILES: Final = {
    "core.js": "text/javascript; charset=utf-8",
    "shortcode.js": "text/javascript; charset=utf-8",
    "wire.js": "text/javascript; charset=utf-8",
    "store.js": "text/javascript; charset=utf-8",
    "sw.js": "text/javascript; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "wallet.html": "text/html; charset=utf-8",
}
_METHOD_NAMES: Final = {  # the wire's method ids (docs/http.md), in a reader's words
    "szmchain": "a farthing card (hash chain)",
    "szmprbg": "a farthing card (generator)",
    "hll": "a bank smart card (HLL)",
    "payword": "PayWord",
}
_PAGE: Final = Template((_WEB / "payment-page.html.in").read_text(encoding="utf-8"))
_HEADERS: Final = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}


def is_wallet_path(path: str) -> bool:
    """True for the reserved folder (and its bare name): never priced."""
    return path.startswith(WALLET_PREFIX) or path == WALLET_PREFIX.rstrip("/")


def accepts_html(accept: str | None) -> bool:
    """Does an ``Accept`` header ask for HTML (a browser navigation)?"""
    if not accept:
        return False
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        if media.strip().lower() in ("text/html", "application/xhtml+xml"):
            return "q=0" not in params.replace(" ", "").split(";")
    return False


def reader_price(micros: int, currency: str) -> str:
    """``2000 EUR`` micros -> ``0.2 cent``; ``1_500_000`` -> ``1.50 EUR``."""
    if micros >= 1_000_000:
        return f"{Decimal(micros) / 1_000_000:.2f} {currency}"
    cents = (Decimal(micros) / 10_000).normalize()
    text = f"{cents:f}"
    return f"{text} cent" if cents <= 1 else f"{text} cents"


def payment_page(route: PricedRoute, path: str, challenges: list[Challenge]) -> bytes:
    """The HTML body of a browser's 402; every value is escaped before it is placed."""
    price = route.price
    words = reader_price(price.micros, price.currency)
    methods = "".join(
        f"<li>{escape(_METHOD_NAMES.get(c.method, c.method))} (<code>{escape(c.method)}</code>)"
        "</li>"
        for c in challenges
    )
    offer = {
        "path": path,
        "amount": price.micros,
        "currency": price.currency,
        "methods": [c.method for c in challenges],
    }
    page = _PAGE.substitute(
        prefix=WALLET_PREFIX.rstrip("/"),
        price=escape(words),
        path=escape(path),
        methods=methods,
        offer=escape(json.dumps(offer)),
    )
    return page.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class CardChecker:
    """Finds a reader's card by the lookup id of its short code (the vendor is the card's
    issuer and shares its database) and answers as the issuer's ``POST
    /v1/szm/cards/lookup`` does: the card's terms, the tag that binds them to the code, and
    what is left. No secret travels: the page derives the card secret from the typed code."""

    store: Store
    realm: str
    chain_master: bytes = field(repr=False)
    prbg_master: bytes = field(repr=False)
    bbs_modulus: bytes = b""
    clock: Clock = field(default_factory=SystemClock)

    def lookup(self, lookup_id: bytes) -> dict[str, object]:
        """The issuer's answer for ``lookup_id``; NotFound, in words, for any other id."""
        row = None
        if len(lookup_id) == shortcode.LOOKUP_LEN:
            with self.store.transaction(readonly=True) as tx:
                row = tx.szm.card_by_lookup(lookup_id)
        if row is None:
            raise NotFound("this shop knows no card with this code: compare it with the card")
        master = self.chain_master if row.protocol is SzmProtocol.CHAIN else self.prbg_master
        code = szm_issued.card_code(
            row, master=master, realm=self.realm, bbs_modulus=self.bbs_modulus
        )
        tag = shortcode.answer_tag(shortcode.short_secret(master, row.card_id), code)
        status = szm_issued.card_status(row, now=self.clock.now())
        return card_lookup_json(code, tag=tag, spent=row.spent, status=status)


def wallet_routes(checker: CardChecker | None) -> list[Route]:
    """The reserved folder's routes; ``checker`` is None when the vendor sells no SZM."""

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media = _FILES.get(name)
        if media is None:
            return Response(status_code=404)
        headers = dict(_HEADERS)
        if name == "sw.js":
            headers["service-worker-allowed"] = "/"
        return Response((_WEB / name).read_bytes(), media_type=media, headers=headers)

    async def card(request: Request) -> Response:
        if checker is None:
            return _refusal(NotFound("this shop sells no farthing cards"))
        body = await request.body()
        try:
            if len(body) > MAX_BODY:
                raise MalformedMessage('send {"lookup": ...}', code=ErrorCode.OVERSIZED)
            answer = await asyncio.to_thread(checker.lookup, _lookup_id(body))
        except FarthingError as error:
            return _refusal(error)
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    return [
        Route(WALLET_PREFIX + "card", card, methods=["POST"]),
        Route(WALLET_PREFIX + "{name}", static, methods=["GET", "HEAD"]),
    ]


def _lookup_id(body: bytes) -> bytes:
    try:
        sent = json.loads(body)
    except ValueError:
        sent = None
    lookup = sent.get("lookup") if isinstance(sent, dict) else None
    if not isinstance(lookup, str):
        raise MalformedMessage('send {"lookup": ...}')
    return b64url_decode(lookup, max_len=64)


def _refusal(error: FarthingError, status: int | None = None) -> Response:
    """A problem whose ``detail`` is the error's own words (they name no secret)."""
    problem = problem_for(error)
    body = problem.to_json()
    body["detail"] = str(error)
    return Response(
        json.dumps(body),
        status_code=status or problem.status,
        media_type=PROBLEM_TYPE,
        headers={"cache-control": "no-store"},
    )
