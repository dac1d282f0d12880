"""Money as integers: a denomination (currency + value of one unit) and unit counts.

Amounts are never floats. A card or account has a :class:`Denomination`; every amount in
the core is a whole number of that denomination's units. Prices at the vendor are given in
micro-units of a currency (millionths of one EUR, say) and turned into card units by
:meth:`Denomination.units_for`, rounding up: a card never pays less than the price.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from farthing.core.errors import ErrorCode, MalformedMessage

__all__ = ["Denomination", "decoded_denomination", "parse_amount"]

_CURRENCY: Final = re.compile(r"\A[A-Z]{3}\Z")
MAX_UNIT_MICROS: Final = 10**12
_MICROS_PER_WHOLE: Final = 1_000_000


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


@functools.lru_cache(maxsize=256, typed=True)
def decoded_denomination(currency: str, unit_micros: int) -> Denomination:
    """The denomination of a decoded message, checked once per distinct value: a deposit
    batch carries one per item, nearly always the same (a frozen value, safe to share)."""
    return Denomination(currency=currency, unit_micros=unit_micros)


def parse_amount(text: str) -> tuple[int, str | None]:
    """``"0.05"``, ``"0.05 EUR"`` or ``"0.05EUR"`` -> (50000, "EUR" or None). No floats."""
    cleaned = text.strip().upper()
    number = cleaned.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    currency = cleaned[len(number) :].strip() or None
    whole, _, frac = number.partition(".")
    if not whole.isdigit() and not (whole == "" and frac.isdigit()):
        raise MalformedMessage(f"not an amount: {text!r}", code=ErrorCode.BAD_FIELD)
    if (frac and not frac.isdigit()) or len(frac) > 6 or (currency and len(currency) != 3):
        raise MalformedMessage(f"not an amount: {text!r}", code=ErrorCode.BAD_FIELD)
    return int(whole or "0") * _MICROS_PER_WHOLE + int(frac.ljust(6, "0") or "0"), currency
