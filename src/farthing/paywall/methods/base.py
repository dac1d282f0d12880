"""The contract between the paywall middleware and a payment method adapter.

The middleware owns HTTP: it matches the price, issues and checks challenge ids, parses the
credential and writes the response. A method adapter owns one scheme: it describes the
price in its challenge ``request`` and turns a credential payload into a :class:`Settlement`
by calling the pure scheme core and the store (one conditional update, durable before the
response leaves). It raises only :class:`~farthing.core.errors.FarthingError`. The JSON of
both (request, payload, receipt members) is the method's wire module's
(:mod:`farthing.http.methods`), which the wallet uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from farthing.http.methods.common import MethodReceipt, UnitPrice, unit_price
from farthing.http.payment_auth import ChallengeId, JsonObject
from farthing.paywall.pricing import PricedRoute

__all__ = ["PaymentContext", "PaymentMethod", "Sealing", "Settlement", "route_price"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentContext:
    """``request``: the tag of this paid request (:func:`farthing.core.retry.request_tag`),
    recorded with the payment so that the same request sent again gets the good again;
    None when it may not be retried."""

    payload: JsonObject = field(hash=False)
    route: PricedRoute
    resource: str
    challenge: ChallengeId
    now: int
    request: bytes | None = None
    # This process delivered this very request before and that delivery has ended: a
    # retry here is the resend of a lost answer, not a copy racing another worker's.
    delivered_here: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Sealing:
    """How to seal the body: the key the payment distributed and what it binds."""

    key: bytes = field(repr=False)
    card_id: bytes
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """A payment the method accepted: its receipt members (the wire module's), how to seal
    the body, and whether it was a retry (accepted before, served again, no new charge).
    The app sees it as the route's ``payment`` (:func:`farthing.paywall.routes.payment`)."""

    method: str
    receipt: MethodReceipt = field(hash=False)
    sealing: Sealing | None = None
    retried: bool = False

    @property
    def reference(self) -> str:
        return self.receipt.reference

    @property
    def units(self) -> int:
        return self.receipt.units


class PaymentMethod(Protocol):
    """A payment method: ``szm:chain``, ``szm:prbg``, ``hll:mac`` or ``payword``."""

    @property
    def name(self) -> str: ...

    def request(self, route: PricedRoute) -> JsonObject:
        """The method-specific ``request`` JSON of a challenge for this route."""
        ...

    async def settle(self, context: PaymentContext) -> Settlement:
        """Verify and durably record the payment in ``context.payload``, or raise."""
        ...


def route_price(route: PricedRoute, unit_micros: int) -> UnitPrice:
    """A route's price as request members, counted in whole units of ``unit_micros``."""
    price = route.price
    return unit_price(
        amount=price.micros, currency=price.currency, resource=route.scope, unit_micros=unit_micros
    )
