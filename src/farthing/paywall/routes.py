"""Per-route prices for Starlette/FastAPI apps: a decorator and a dependency.

::

    @app.get("/articles/{slug}")
    @paid(micros=2_000, currency="EUR")
    async def article(slug: str, payment: Settlement = Depends(payment)) -> str: ...

    prices = priced_routes(app)          # PriceTable with "/articles/*" -> 2000 EUR
    app.add_middleware(...) or Paywall(app, prices=prices, ...)

The decorator only marks the endpoint; :func:`priced_routes` reads the marks from the app's
routes (path templates become ``*`` patterns), so the price lives next to the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from farthing.core.errors import LocalProtocolError
from farthing.paywall.methods.base import Settlement
from farthing.paywall.pricing import Price, PriceTable, template_to_pattern

__all__ = ["paid", "payment", "priced_routes"]

_PRICE_ATTR: Final = "__farthing_price__"
F = TypeVar("F", bound=Callable[..., object])


def paid(*, micros: int, currency: str) -> Callable[[F], F]:
    """Mark an endpoint as costing ``micros`` millionths of ``currency``."""
    price = Price(micros=micros, currency=currency)

    def mark(endpoint: F) -> F:
        setattr(endpoint, _PRICE_ATTR, price)
        return endpoint

    return mark


def priced_routes(routes: Iterable[BaseRoute], table: PriceTable | None = None) -> PriceTable:
    """A price table built from the ``@paid`` marks on ``routes`` (e.g. ``app.routes``)."""
    table = table if table is not None else PriceTable()
    for route in routes:
        if isinstance(route, Route):
            price = getattr(route.endpoint, _PRICE_ATTR, None)
            if isinstance(price, Price):
                table.add(template_to_pattern(route.path), price)
    return table


def payment(request: Request) -> Settlement:
    """FastAPI dependency: the settled payment of this request (set by the Paywall); 404 if
    the Paywall's ``offers`` said there is nothing here to sell."""
    from farthing.paywall.middleware import NOT_OFFERED_SCOPE_KEY, PAYMENT_SCOPE_KEY

    if request.scope.get(NOT_OFFERED_SCOPE_KEY):
        raise HTTPException(status_code=404)
    settlement = request.scope.get(PAYMENT_SCOPE_KEY)
    if not isinstance(settlement, Settlement):
        raise LocalProtocolError("route is priced with @paid but no Paywall settled it")
    return settlement
