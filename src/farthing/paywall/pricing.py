"""Prices for routes: exact paths and ``*`` patterns, first match wins.

A priced route's *scope* is its pattern (``/articles/*``). Challenges are bound to the
scope, not to one URL, so a wallet holding a challenge for ``/articles/*`` can pay up front
for any article at that price without another 402 round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from farthing.core.money import Denomination

__all__ = ["Price", "PriceTable", "PricedRoute", "template_to_pattern"]

_TEMPLATE_PARAM: Final = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """``micros`` millionths of ``currency`` (1000 EUR-micros = 0.1 cent)."""

    micros: int
    currency: str

    def __post_init__(self) -> None:
        Denomination(currency=self.currency, unit_micros=1)  # validates the currency code
        if not isinstance(self.micros, int) or self.micros <= 0:
            raise ValueError("price must be a positive integer of micro-units")

    @property
    def label(self) -> str:
        return f"{self.micros} {self.currency}"


@dataclass(frozen=True, slots=True)
class PricedRoute:
    scope: str
    price: Price


def template_to_pattern(template: str) -> str:
    """``/items/{item_id}`` (Starlette/FastAPI) -> ``/items/*``."""
    return _TEMPLATE_PARAM.sub("*", template)


def _compile(pattern: str) -> re.Pattern[str]:
    chunks = []
    for chunk in pattern.split("**"):
        chunks.append("[^/]+".join(re.escape(part) for part in chunk.split("*")))
    return re.compile(r"\A" + ".*".join(chunks) + r"\Z")


class PriceTable:
    """Maps request paths to prices. ``*`` matches one path segment, ``**`` any suffix."""

    def __init__(self) -> None:
        self._exact: dict[str, PricedRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], PricedRoute]] = []

    def add(self, pattern: str, price: Price) -> None:
        if not pattern.startswith("/"):
            raise ValueError("route patterns start with /")
        route = PricedRoute(pattern, price)
        if "*" in pattern:
            self._patterns.append((_compile(pattern), route))
        else:
            self._exact[pattern] = route

    def match(self, path: str) -> PricedRoute | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for regex, candidate in self._patterns:
            if regex.match(path):
                return candidate
        return None

    def routes(self) -> list[PricedRoute]:
        return [*self._exact.values(), *(route for _, route in self._patterns)]

    def __len__(self) -> int:
        return len(self._exact) + len(self._patterns)
