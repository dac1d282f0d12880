"""What every method's wire form shares: the price members, the seal, strict readers.

Every challenge ``request`` is the ``charge`` intent's: ``amount`` (a decimal string),
``currency`` and, for farthing's own members, ``methodDetails``. farthing prices are in
millionths of a currency, which no ISO 4217 minor unit holds, so the currency is
method-defined: ``micro-<iso 4217 code, lowercase>`` (``micro-eur``), and ``amount`` counts
millionths of that currency (``"1000"`` of ``micro-eur`` is 0.001 EUR). A client that knows
only ISO 4217 codes does not know ``micro-eur`` and so cannot read it as cents.

Parsing is strict about what it reads: each member the schema requires must be present,
with its exact JSON type and range (a bool is no integer, an amount is a decimal string of
micros, a blob is canonical base64url); anything else raises MalformedMessage with the
caller's error code. Members this version does not know are ignored, as before these
modules, so a vendor may add one before every wallet reads it; the schemas describe what is
sent and refuse them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol, TypedDict

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.money import Denomination
from farthing.http.payment_auth import JsonObject

__all__ = [
    "CURRENCY_PREFIX",
    "MAX_COUNT",
    "SEAL_ALG",
    "Members",
    "MethodReceipt",
    "PricedRequest",
    "SealedBody",
    "UnitPrice",
    "UnitPricedRequest",
    "payload_members",
    "receipt_members",
    "request_members",
    "unit_price",
    "wire_currency",
]

MAX_COUNT: Final = (1 << 62) - 1  # units and unit values: below 2^62 (common.json)
MAX_POSITION: Final = (1 << 64) - 1  # a chain index or card counter: an unsigned 64-bit
SEAL_ALG: Final = "aes-256-gcm"
_AMOUNT: Final = re.compile(r"\A[1-9][0-9]{0,17}\Z")
CURRENCY_PREFIX: Final = "micro-"
_CURRENCY: Final = re.compile(r"\Amicro-([a-z]{3})\Z")
_RESOURCE: Final = re.compile(r"\A/\S*\Z")


class Members:
    """Reads the members of one received JSON object, refusing with ``code``."""

    __slots__ = ("_code", "_obj", "_what")

    def __init__(self, obj: JsonObject, what: str, code: ErrorCode) -> None:
        self._obj = obj
        self._what = what
        self._code = code

    def _bad(self, name: str, why: str) -> MalformedMessage:
        return MalformedMessage(f"{self._what} {name} {why}", code=self._code)

    def _get(self, name: str) -> object:
        if name not in self._obj:
            raise self._bad(name, "is missing")
        return self._obj[name]

    def has(self, name: str) -> bool:
        return name in self._obj

    def amount(self, name: str = "amount") -> int:
        """A price in micros: a positive decimal string of at most 18 digits."""
        value = self._get(name)
        if not isinstance(value, str) or not _AMOUNT.match(value):
            raise self._bad(name, "is not a positive decimal string")
        return int(value)

    def count(self, name: str, *, most: int = MAX_COUNT) -> int:
        """A positive JSON integer (not a bool) of at most ``most``."""
        value = self._get(name)
        if type(value) is not int or not 0 < value <= most:
            raise self._bad(name, "is not a positive integer in range")
        return value

    def text(self, name: str, *, max_len: int) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise self._bad(name, "is not a non-empty string in range")
        return value

    def string(self, name: str) -> str:
        """Any string, the empty one too."""
        value = self._get(name)
        if not isinstance(value, str):
            raise self._bad(name, "is not a string")
        return value

    def matching(self, name: str, pattern: re.Pattern[str]) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not pattern.match(value):
            raise self._bad(name, "is not well formed")
        return value

    def currency(self) -> str:
        """``micro-eur`` on the wire: the ISO 4217 code (``EUR``) farthing counts in."""
        return self.matching("currency", _CURRENCY)[len(CURRENCY_PREFIX) :].upper()

    def details(self) -> Members:
        """The ``methodDetails`` object, read with the same strictness."""
        value = self._get("methodDetails")
        if not isinstance(value, dict):
            raise self._bad("methodDetails", "is not an object")
        return Members(value, f"{self._what} methodDetails", self._code)

    def resource(self) -> str:
        return self.matching("resource", _RESOURCE)

    def choice(self, name: str, options: frozenset[str]) -> str:
        value = self._get(name)
        if not isinstance(value, str) or value not in options:
            raise self._bad(name, "is not one of the known values")
        return value

    def const(self, name: str, constant: object) -> None:
        """The member must be this JSON constant (``true``, a method name)."""
        value = self._get(name)
        if type(value) is not type(constant) or value != constant:
            raise self._bad(name, f"is not {constant!r}")

    def blob(self, name: str, *, max_len: int) -> bytes:
        """base64url (at most ``max_len`` characters), decoded."""
        value = self._get(name)
        if not isinstance(value, str):
            raise self._bad(name, "is not a string")
        try:
            return b64url_decode(value, max_len=max_len)
        except MalformedMessage:
            raise self._bad(name, "is not base64url") from None

    def identifier(self, name: str, *, size: int) -> bytes:
        """A base64url id of exactly ``size`` bytes (a card or commitment id)."""
        value = self.blob(name, max_len=2 * size)  # a bound; the decoded size is checked
        if len(value) != size:
            raise self._bad(name, f"is not {size} bytes")
        return value

    def optional_identifier(self, name: str, *, size: int) -> bytes | None:
        """Like :meth:`identifier`, or None when the member is absent."""
        return self.identifier(name, size=size) if name in self._obj else None

    def optional_blob(self, name: str, *, max_len: int) -> bytes | None:
        """Like :meth:`blob`, or None when the member is absent."""
        return self.blob(name, max_len=max_len) if name in self._obj else None


def wire_currency(currency: str) -> str:
    """The ``currency`` member for prices in millionths of ``currency`` (``EUR``)."""
    return CURRENCY_PREFIX + currency.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class PricedRequest:
    """The members every challenge request has: ``amount`` micros of ``currency``
    (``EUR``, sent as ``micro-eur``) and, in ``methodDetails``, the priced route
    ``resource`` (its scope, ``/articles/*``)."""

    amount: int
    currency: str
    resource: str

    def _details_json(self) -> JsonObject:
        return {"resource": self.resource}

    def _request_json(self, details: JsonObject, recipient: str | None = None) -> JsonObject:
        obj: JsonObject = {
            "amount": str(self.amount),
            "currency": wire_currency(self.currency),
            "methodDetails": {**self._details_json(), **details},
        }
        if recipient is not None:
            obj["recipient"] = recipient
        return obj


class UnitPrice(TypedDict):
    """The members of a :class:`UnitPricedRequest`, as keyword arguments."""

    amount: int
    currency: str
    resource: str
    units: int
    unit_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitPricedRequest(PricedRequest):
    """A request that also counts the price in the vendor's units: ``units`` of
    ``unit_micros`` (HLL: the bank's unit; PayWord: the vendor's)."""

    units: int
    unit_micros: int

    def _details_json(self) -> JsonObject:
        return {
            **PricedRequest._details_json(self),
            "units": self.units,
            "unitMicros": self.unit_micros,
        }

    @staticmethod
    def _read_price(members: Members, details: Members) -> UnitPrice:
        return UnitPrice(
            amount=members.amount(),
            currency=members.currency(),
            resource=details.resource(),
            units=details.count("units"),
            unit_micros=details.count("unitMicros"),
        )


def unit_price(*, amount: int, currency: str, resource: str, unit_micros: int) -> UnitPrice:
    """The price members for ``amount`` micros: the whole units that cover it (rounded up,
    so a card never pays less than the price)."""
    units = Denomination(currency=currency, unit_micros=unit_micros).units_for(amount)
    return UnitPrice(
        amount=amount, currency=currency, resource=resource, units=units, unit_micros=unit_micros
    )


def request_members(obj: JsonObject) -> Members:
    """A challenge's request as the wallet reads it."""
    return Members(obj, "challenge request", ErrorCode.BAD_FIELD)


def payload_members(obj: JsonObject) -> Members:
    """A credential's payload as the paywall reads it."""
    return Members(obj, "payload", ErrorCode.INVALID_PAYLOAD)


def receipt_members(obj: JsonObject) -> Members:
    """A Payment-Receipt's method members as the wallet reads them."""
    return Members(obj, "receipt", ErrorCode.MALFORMED)


class MethodReceipt(Protocol):
    """A method's ``Payment-Receipt`` members beyond the envelope (status, method,
    timestamp, reference): what the payment settled."""

    @property
    def units(self) -> int: ...

    @property
    def reference(self) -> str:
        """What the payment settled, ``<id>:<position>``; unique per payment."""
        ...

    def to_json(self) -> JsonObject: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedBody:
    """The receipt's ``sealed`` member: how the body was sealed, and what its content type
    was before (empty if it had none). Added by the paywall when it seals (SZM)."""

    content_type: str
    alg: str = SEAL_ALG

    def to_json(self) -> JsonObject:
        return {"alg": self.alg, "contentType": self.content_type}

    @classmethod
    def from_json(cls, obj: object) -> SealedBody:
        if not isinstance(obj, dict):
            raise MalformedMessage("receipt sealed is not an object")
        members = receipt_members(obj)
        members.const("alg", SEAL_ALG)
        return cls(content_type=members.string("contentType"))
