"""Money as integers: a denomination (currency + value of one unit) and unit counts.

Amounts are never floats. A card or account has a :class:`Denomination`; every amount in
the core is a whole number of that denomination's units. Prices at the vendor are given in
micro-units of a currency (millionths of one EUR, say) and turned into card units by
:meth:`Denomination.units_for`, rounding up: a card never pays less than the price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from farthing.core.errors import ErrorCode, MalformedMessage

__all__ = ["Denomination"]

_CURRENCY: Final = re.compile(r"\A[A-Z]{3}\Z")
MAX_UNIT_MICROS: Final = 10**12


@dataclass(frozen=True, slots=True, kw_only=True)
class Denomination:
    """``currency`` is an ISO 4217-style code; one unit is worth ``unit_micros`` millionths."""

    currency: str
    unit_micros: int

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not _CURRENCY.match(self.currency):
            raise MalformedMessage(
                "currency must be three capital letters", code=ErrorCode.BAD_FIELD
            )
        if not isinstance(self.unit_micros, int) or not 0 < self.unit_micros <= MAX_UNIT_MICROS:
            raise MalformedMessage("unit value out of range", code=ErrorCode.BAD_FIELD)

    def units_for(self, price_micros: int) -> int:
        """Whole units that cover ``price_micros`` (at least 1 for a positive price)."""
        if price_micros <= 0:
            raise ValueError("price must be positive")
        return -(-price_micros // self.unit_micros)

    def micros(self, units: int) -> int:
        return units * self.unit_micros
