"""Readers in a browser: the 402 page, the wallet's files, and the card check (docs/browser.md).

Everything here lives under one reserved path, :data:`WALLET_PREFIX` (``/_farthing/``),
which the paywall never prices, whatever the price table says:

- ``GET /_farthing/<file>``: the wallet's static files, shipped as package data in
  ``farthing/paywall/web/`` (plain ES modules, one stylesheet, the wallet page). The service
  worker (``sw.js``) is sent with ``Service-Worker-Allowed: /`` so that it may control the
  whole site from its reserved folder.
- ``POST /_farthing/card``: the reader's card code, checked by the vendor, who is the card's
  issuer: the card must be one of its own (known to its store, active, of this realm, its
  secret the one the issuer's master key gives). The answer is what the page's wallet needs
  to pay (including the secret the code already carried) and the card's balance.

A priced request that accepts ``text/html`` (a browser navigation) and carries no payment
gets its 402 as an HTML page (:func:`payment_page`): the price in the reader's terms, the
methods accepted, a field for a card code; the challenges stay in ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal
from html import escape
from importlib import resources
from string import Template
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from farthing.core import cardcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, InvalidPayment, MalformedMessage
from farthing.core.primitives import constant_time_eq
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.payment_auth import Challenge
from farthing.http.problems import CONTENT_TYPE as PROBLEM_TYPE
from farthing.http.problems import problem_for
from farthing.paywall.pricing import PricedRoute
from farthing.store import CardStatus, Store, SzmProtocol

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
MAX_CODE_LEN: Final = 4096
_WEB = resources.files("farthing.paywall") / "web"
# name -> media type: only these files are served, each read once.
_FILES: Final = {
    "core.js": "text/javascript; charset=utf-8",
    "wire.js": "text/javascript; charset=utf-8",
    "store.js": "text/javascript; charset=utf-8",
    "sw.js": "text/javascript; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "wallet.html": "text/html; charset=utf-8",
}
_METHOD_NAMES: Final = {
    "szm:chain": "a farthing card (hash chain)",
    "szm:prbg": "a farthing card (generator)",
    "hll:mac": "a bank smart card (HLL)",
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


@dataclass(frozen=True, slots=True)
class CardChecker:
    """Checks a reader's card code against the vendor's own cards (it is their issuer)."""

    store: Store
    realm: str
    chain_master: bytes
    prbg_master: bytes

    def check(self, text: str) -> dict[str, object]:
        """The wallet's view of the card, or a FarthingError in words a reader understands."""
        code = _parse(text)
        if code.realm != self.realm:
            raise InvalidPayment(f"this card is for another shop ({code.realm})")
        if code.protocol is Protocol.PRBG and code.generator is not Generator.HMAC_CTR:
            raise MalformedMessage(
                "this browser wallet cannot pay with a BBS card; use the farthing CLI",
                code=ErrorCode.UNSUPPORTED_METHOD,
            )
        row = self.store.szm_card(code.card_id)
        protocol = SzmProtocol.CHAIN if code.protocol is Protocol.CHAIN else SzmProtocol.PRBG
        if row is None or row.protocol is not protocol or not self._genuine(code):
            raise InvalidPayment("this shop did not issue that card")
        if row.status is not CardStatus.ACTIVE:
            raise InvalidPayment("this card is blocked at the shop")
        return {
            "method": code.protocol.value,
            "card": b64url_encode(code.card_id),
            "secret": b64url_encode(code.secret),
            "units": row.units,
            "spent": row.spent,
            "unitMicros": row.unit_micros,
            "currency": row.currency,
            "expiresAt": row.expires_at,
            "realm": code.realm,
        }

    def _genuine(self, code: CardCode) -> bool:
        if code.protocol is Protocol.CHAIN:
            expected = szm_chain.card_secret(self.chain_master, code.card_id)
        else:
            expected = szm_prbg.card_secret(self.prbg_master, code.card_id)
        return constant_time_eq(expected, code.secret)


def _parse(text: str) -> CardCode:
    text = text.strip()
    if not text:
        raise MalformedMessage("type the card code printed on your card")
    try:
        if text.upper().startswith(cardcode.TEXT_PREFIX):
            return cardcode.from_text(text)
        return cardcode.from_compact(text)
    except FarthingError:
        raise MalformedMessage("that is not a card code: check it for a typo") from None


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
            return _refusal(MalformedMessage("this shop sells no farthing cards"), 404)
        body = await request.body()
        try:
            if len(body) > MAX_CODE_LEN:
                raise MalformedMessage("that is not a card code", code=ErrorCode.OVERSIZED)
            try:
                sent = json.loads(body)
            except ValueError:
                raise MalformedMessage('send {"code": ...}') from None
            if not isinstance(sent, dict) or not isinstance(sent.get("code"), str):
                raise MalformedMessage('send {"code": ...}')
            answer = await asyncio.to_thread(checker.check, sent["code"])
        except FarthingError as error:
            return _refusal(error)
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    return [
        Route(WALLET_PREFIX + "card", card, methods=["POST"]),
        Route(WALLET_PREFIX + "{name}", static, methods=["GET", "HEAD"]),
    ]


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
