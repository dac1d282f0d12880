"""The spending policy: how much the wallet may pay without asking, per request, host and day.

Limits are in micro-units of one currency (1 EUR = 1,000,000 micros) and apply to what a
payment actually charges (the card's units times its unit value, which may round the asked
price up). ``per_host`` and ``per_day`` count everything paid in the last ``window`` seconds
(24 hours by default), to that host or to anyone, including payments the vendor refused
(their units are gone). A currency without limits of its own uses ``default``; a ``default``
of None refuses every other currency.

The policy is checked before anything is spent: a refusal raises
:class:`~farthing.core.errors.PolicyRefused` and leaves every card as it was. An optional
``confirm`` callback is asked about each payment above ``confirm_above`` micros (a CLI asks
the person; a program may log or decide). ``retry_after_refusal`` says whether a request
whose payment the vendor refused may be paid once more (default: no).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from farthing.core.errors import ErrorCode, MalformedMessage, PolicyRefused
from farthing.core.money import parse_amount

__all__ = [
    "DAY",
    "STARTER_LIMITS",
    "ConfirmCallback",
    "Limits",
    "PriceOffer",
    "SpendingPolicy",
    "Usage",
    "format_micros",
    "parse_amount",
]

DAY: Final = 86_400
_MICROS: Final = 1_000_000


def format_micros(micros: int, currency: str) -> str:
    """``2500`` EUR micros -> ``"0.0025 EUR"`` (at least two decimals, no float)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), _MICROS)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits} {currency}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Maxima in micros of one currency; None means no limit."""

    per_request: int | None = None
    per_host: int | None = None
    per_day: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {"perRequest": self.per_request, "perHost": self.per_host, "perDay": self.per_day}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> Limits:
        return cls(
            per_request=_optional_int(obj.get("perRequest")),
            per_host=_optional_int(obj.get("perHost")),
            per_day=_optional_int(obj.get("perDay")),
        )


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise MalformedMessage("a spending limit must be a whole number", code=ErrorCode.BAD_FIELD)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Micros of one currency already paid in the window: to everyone, and to this host."""

    day: int = 0
    host: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceOffer:
    """One payment the wallet is about to make, as the policy and the confirm callback see it."""

    url: str
    host: str
    method: str
    card_label: str
    units: int
    charged_micros: int
    price_micros: int
    currency: str

    def describe(self) -> str:
        money = format_micros(self.charged_micros, self.currency)
        return f"{money} for {self.url} ({self.method}, card {self.card_label})"


ConfirmCallback = Callable[[PriceOffer], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendingPolicy:
    """What the wallet may spend. The default has no limits and never asks."""

    limits: Mapping[str, Limits] = field(default_factory=dict, hash=False)
    default: Limits | None = field(default_factory=Limits)
    confirm: ConfirmCallback | None = field(default=None, compare=False)
    confirm_above: int = 0
    retry_after_refusal: bool = False
    window: int = DAY

    def limits_for(self, currency: str) -> Limits:
        limits = self.limits.get(currency, self.default)
        if limits is None:
            raise PolicyRefused(f"the spending policy allows no payments in {currency}")
        return limits

    def check(self, offer: PriceOffer, usage: Usage) -> None:
        """None, or PolicyRefused saying which limit the payment would pass."""
        limits = self.limits_for(offer.currency)
        amount, currency = offer.charged_micros, offer.currency
        if limits.per_request is not None and amount > limits.per_request:
            raise _refused(
                f"the price {format_micros(amount, currency)} is above the per-request limit "
                f"of {format_micros(limits.per_request, currency)}"
            )
        if limits.per_host is not None and usage.host + amount > limits.per_host:
            raise _refused(
                f"paying {format_micros(amount, currency)} would bring today's spending at "
                f"{offer.host} to {format_micros(usage.host + amount, currency)}, above the "
                f"per-host limit of {format_micros(limits.per_host, currency)}"
            )
        if limits.per_day is not None and usage.day + amount > limits.per_day:
            raise _refused(
                f"paying {format_micros(amount, currency)} would bring today's spending to "
                f"{format_micros(usage.day + amount, currency)}, above the daily limit of "
                f"{format_micros(limits.per_day, currency)}"
            )

    def ask(self, offer: PriceOffer) -> None:
        """Run the confirm callback where the policy wants one; PolicyRefused on "no"."""
        if self.confirm is None or offer.charged_micros <= self.confirm_above:
            return
        if not self.confirm(offer):
            raise _refused(f"payment of {offer.describe()} declined")

    def with_per_request(self, micros: int, currency: str | None) -> SpendingPolicy:
        """A copy whose per-request limit is ``micros`` in ``currency`` (every one if None)."""
        currencies = [currency] if currency else list(self.limits)
        limits = dict(self.limits)
        for code in currencies:
            limits[code] = _replace_per_request(limits.get(code, self.default), micros)
        keep_default = currency is not None or self.default is None
        default = self.default if keep_default else _replace_per_request(self.default, micros)
        return SpendingPolicy(
            limits=limits,
            default=default,
            confirm=self.confirm,
            confirm_above=self.confirm_above,
            retry_after_refusal=self.retry_after_refusal,
            window=self.window,
        )

    def to_json(self) -> dict[str, object]:
        """The saved form (the callback is not saved)."""
        return {
            "limits": {code: limits.to_json() for code, limits in self.limits.items()},
            "default": None if self.default is None else self.default.to_json(),
            "retryAfterRefusal": self.retry_after_refusal,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> SpendingPolicy:
        raw_limits = obj.get("limits", {})
        raw_default = obj.get("default")
        if not isinstance(raw_limits, dict) or not isinstance(raw_default, dict | None):
            raise MalformedMessage("the saved policy is damaged", code=ErrorCode.BAD_FIELD)
        return cls(
            limits={str(code): Limits.from_json(value) for code, value in raw_limits.items()},
            default=None if raw_default is None else Limits.from_json(raw_default),
            retry_after_refusal=obj.get("retryAfterRefusal") is True,
        )


# What a wallet made by ``farthing wallet init`` may spend without being told more, in any
# currency: a slip (a wrong price, a loop) costs at most this much a day.
STARTER_LIMITS: Final = Limits(per_request=100_000, per_host=1_000_000, per_day=5_000_000)


def _replace_per_request(limits: Limits | None, micros: int) -> Limits:
    base = limits if limits is not None else Limits()
    return Limits(per_request=micros, per_host=base.per_host, per_day=base.per_day)


def _refused(message: str) -> PolicyRefused:
    return PolicyRefused(message)
