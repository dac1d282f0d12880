"""The HTTP binding of ``payword`` (Rivest-Shamir PayWord).

The request names the vendor that commitments must name, the broker that certifies users,
and the price in the vendor's units. ``payment`` is the canonical payment
(:func:`farthing.core.schemes.payword.encode_payment`); ``commitment``, the signed commitment
with the broker's certificate inside, is sent until the vendor has accepted a payment
under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from farthing.core.encoding import b64url_encode
from farthing.http.methods.common import (
    MAX_POSITION,
    UnitPricedRequest,
    payload_members,
    receipt_members,
    request_members,
)
from farthing.http.payment_auth import JsonObject

__all__ = ["METHOD", "SCHEME", "PaywordPayload", "PaywordReceipt", "PaywordRequest"]

METHOD: Final = "payword"
SCHEME: Final = "payword"  # the card kind it pays with
MAX_PAYMENT_LEN: Final = 512  # base64url characters the paywall reads
MAX_COMMITMENT_LEN: Final = 4096
_MAX_NAME: Final = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordRequest(UnitPricedRequest):
    """A challenge's request: the price, also in the vendor's units, the vendor id that
    commitments name and the broker that certifies users."""

    vendor: str
    broker: str

    def to_json(self) -> JsonObject:
        return self._request_json({"broker": self.broker}, recipient=self.vendor)

    @classmethod
    def from_json(cls, obj: JsonObject) -> PaywordRequest:
        members = request_members(obj)
        details = members.details()
        return cls(
            **cls._read_price(members, details),
            vendor=members.text("recipient", max_len=_MAX_NAME),
            broker=details.text("broker", max_len=_MAX_NAME),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PaywordPayload:
    """A credential's payload: the payment and, until acknowledged, the commitment."""

    payment: bytes = field(repr=False)
    commitment: bytes | None = field(default=None, repr=False)

    def to_json(self) -> JsonObject:
        obj: JsonObject = {"payment": b64url_encode(self.payment)}
        if self.commitment is not None:
            obj["commitment"] = b64url_encode(self.commitment)
        return obj

    @classmethod
    def from_json(cls, obj: JsonObject) -> PaywordPayload:
        members = payload_members(obj)
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
