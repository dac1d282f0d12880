"""The HTTP binding of ``payword`` (Rivest-Shamir PayWord).

The request names the vendor that commitments must name, the broker that certifies users,
and the price in the vendor's units. ``payment`` is the canonical payment
(:func:`farthing.core.schemes.payword.encode_payment`); ``commitment``, the signed commitment
with the broker's certificate inside, is sent until the vendor has accepted a payment
under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.http.methods.common import (
    MAX_COUNT,
    MAX_POSITION,
    PricedRequest,
    payload_members,
    receipt_members,
    request_members,
)
from farthing.http.payment_auth import JsonObject

__all__ = ["METHOD", "PaywordPayload", "PaywordReceipt", "PaywordRequest"]

METHOD: Final = "payword"
MAX_PAYMENT_LEN: Final = 512  # base64url characters the paywall reads
MAX_COMMITMENT_LEN: Final = 4096
_MAX_NAME: Final = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordRequest(PricedRequest):
    """A challenge's request: the price, the vendor and broker ids, and the price in the
    vendor's units (``units`` of ``unit_micros``, rounded up)."""

    vendor: str
    broker: str
    units: int
    unit_micros: int

    @classmethod
    def priced(
        cls,
        *,
        amount: int,
        currency: str,
        resource: str,
        vendor: str,
        broker: str,
        unit_micros: int,
    ) -> PaywordRequest:
        """The request for a price: the units that cover it (never less than the price)."""
        units = Denomination(currency=currency, unit_micros=unit_micros).units_for(amount)
        return cls(
            amount=amount,
            currency=currency,
            resource=resource,
            vendor=vendor,
            broker=broker,
            units=units,
            unit_micros=unit_micros,
        )

    def to_json(self) -> JsonObject:
        return {
            **self._price_json(),
            "vendor": self.vendor,
            "broker": self.broker,
            "units": self.units,
            "unitMicros": self.unit_micros,
        }

    @classmethod
    def from_json(cls, obj: JsonObject) -> PaywordRequest:
        members = request_members(obj)
        return cls(
            amount=members.amount(),
            currency=members.currency(),
            resource=members.resource(),
            vendor=members.text("vendor", max_len=_MAX_NAME),
            broker=members.text("broker", max_len=_MAX_NAME),
            units=members.count("units"),
            unit_micros=members.count("unitMicros", most=MAX_COUNT),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordPayload:
    """A credential's payload: the payment and, until acknowledged, the commitment."""

    payment: bytes = field(repr=False)
    commitment: bytes | None = field(default=None, repr=False)
    method: Literal["payword"] = "payword"

    def to_json(self) -> JsonObject:
        obj: JsonObject = {"method": self.method, "payment": b64url_encode(self.payment)}
        if self.commitment is not None:
            obj["commitment"] = b64url_encode(self.commitment)
        return obj

    @classmethod
    def from_json(cls, obj: JsonObject) -> PaywordPayload:
        members = payload_members(obj)
        members.const("method", METHOD)
        return cls(
            payment=members.blob("payment", max_len=MAX_PAYMENT_LEN),
            commitment=members.optional_blob("commitment", max_len=MAX_COMMITMENT_LEN),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordReceipt:
    """The receipt's members: the commitment, the chain index reached, the units paid."""

    units: int
    commitment: bytes
    index: int

    @property
    def reference(self) -> str:
        return f"{b64url_encode(self.commitment)}:{self.index}"

    def to_json(self) -> JsonObject:
        return {
            "units": self.units,
            "commitment": b64url_encode(self.commitment),
            "index": self.index,
        }

    @classmethod
    def from_json(cls, obj: JsonObject) -> PaywordReceipt:
        members = receipt_members(obj)
        return cls(
            units=members.count("units"),
            commitment=members.identifier("commitment", size=32),
            index=members.count("index", most=MAX_POSITION),
        )
