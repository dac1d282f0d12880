"""The HTTP binding of SZM: methods ``szmchain`` (protocol 1, ``szm:chain`` cards) and
``szmprbg`` (protocol 2, ``szm:prbg`` cards), one shape for both.

The vendor is the card issuer, so the request names only the price; the response body is
sealed under the key the payment distributed (the receipt's ``sealed`` member,
:class:`~farthing.http.methods.common.SealedBody`). ``payment`` is the canonical payment
message of the protocol (:func:`farthing.core.schemes.szm_chain.encode_payment`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.methods.common import (
    MAX_POSITION,
    PricedRequest,
    payload_members,
    receipt_members,
    request_members,
)
from farthing.http.payment_auth import JsonObject

__all__ = [
    "CHAIN_METHOD",
    "MAX_PAYMENT_LEN",
    "METHODS",
    "PRBG_METHOD",
    "SzmPayload",
    "SzmReceipt",
    "SzmRequest",
]

CHAIN_METHOD: Final = "szmchain"  # the draft's method id of szm_chain (letters only)
PRBG_METHOD: Final = "szmprbg"
METHODS: Final = {CHAIN_METHOD: szm_chain.METHOD, PRBG_METHOD: szm_prbg.METHOD}
"""Method id on the wire -> the scheme (card kind) it pays with."""
MAX_PAYMENT_LEN: Final = 512  # base64url characters the paywall reads


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmRequest(PricedRequest):
    """A challenge's request: the price; ``methodDetails.sealed`` is always true."""

    sealed: Literal[True] = True

    def to_json(self) -> JsonObject:
        return self._request_json({"sealed": self.sealed})

    @classmethod
    def from_json(cls, obj: JsonObject) -> SzmRequest:
        members = request_members(obj)
        details = members.details()
        details.const("sealed", True)
        return cls(
            amount=members.amount(), currency=members.currency(), resource=details.resource()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmPayload:
    """A credential's payload: the encoded payment (of the challenge's method)."""

    payment: bytes = field(repr=False)

    def to_json(self) -> JsonObject:
        return {"payment": b64url_encode(self.payment)}

    @classmethod
    def from_json(cls, obj: JsonObject) -> SzmPayload:
        members = payload_members(obj)
        return cls(payment=members.blob("payment", max_len=MAX_PAYMENT_LEN))


@dataclass(frozen=True, slots=True, kw_only=True)
class SzmReceipt:
    """The receipt's members: the card, the chain index it reached and the units paid."""

    units: int
    card: bytes
    index: int

    @property
    def reference(self) -> str:
        return f"{b64url_encode(self.card)}:{self.index}"

    def to_json(self) -> JsonObject:
        return {"units": self.units, "card": b64url_encode(self.card), "index": self.index}

    @classmethod
    def from_json(cls, obj: JsonObject) -> SzmReceipt:
        members = receipt_members(obj)
        return cls(
            units=members.count("units"),
            card=members.identifier("card", size=16),
            index=members.count("index", most=MAX_POSITION),
        )
