"""The HTTP binding of method ``hll`` (Hwang-Lin-Li smart-card MAC, ``hll:mac`` cards), and
the offer it implies.

The card MACs an offer that neither side sends: both rebuild it from the challenge's
request, the request path (the good) and the raw challenge id (T), with
:meth:`HllRequest.offer`, so the paywall and the wallet cannot drift apart on what was
signed. ``payment`` is the canonical purchase (:func:`farthing.core.schemes.hll.encode_payment`);
``certificate``, the bank's card certificate, lets a deferred-mode vendor serve without
asking the bank first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.methods.common import (
    MAX_POSITION,
    UnitPricedRequest,
    payload_members,
    receipt_members,
    request_members,
)
from farthing.http.payment_auth import JsonObject

__all__ = ["METHOD", "SCHEME", "HllMode", "HllPayload", "HllReceipt", "HllRequest"]

METHOD: Final = "hll"
SCHEME: Final = "hll:mac"  # the card kind it pays with
MAX_PAYMENT_LEN: Final = 512  # base64url characters the paywall reads, each blob
_MAX_MERCHANT: Final = 64
_BANK_KEY_LEN: Final = 32  # Ed25519


class HllMode(StrEnum):
    """How the vendor settles: the bank verifies before delivery, or deposits later."""

    ONLINE = "online"
    DEFERRED = "deferred"


_MODES: Final = frozenset(mode.value for mode in HllMode)


@dataclass(frozen=True, slots=True, kw_only=True)
class HllRequest(UnitPricedRequest):
    """A challenge's request: the price, also in the bank's units, the merchant at the bank,
    the vendor's settlement mode and, when the vendor knows it, its bank's public key."""

    merchant: str
    mode: HllMode
    bank: bytes | None = None  # the bank's card-certification key: a wallet pays only its cards

    def offer(self, *, good: str, challenge: bytes, expires_at: int) -> hll.Offer:
        """The offer the card signs: this request's merchant and price, the request path
        as the good, the raw challenge id as T and the challenge's expiry."""
        return hll.Offer(
            merchant_id=self.merchant,
            good=good,
            amount=self.units,
            denomination=Denomination(currency=self.currency, unit_micros=self.unit_micros),
            challenge=challenge,
            expires_at=expires_at,
        )

    def to_json(self) -> JsonObject:
        details: JsonObject = {"mode": self.mode.value}
        if self.bank is not None:
            details["bank"] = b64url_encode(self.bank)
        return self._request_json(details, recipient=self.merchant)

    @classmethod
    def from_json(cls, obj: JsonObject) -> HllRequest:
        members = request_members(obj)
        details = members.details()
        return cls(
            **cls._read_price(members, details),
            merchant=members.text("recipient", max_len=_MAX_MERCHANT),
            mode=HllMode(details.choice("mode", _MODES)),
            bank=details.optional_identifier("bank", size=_BANK_KEY_LEN),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HllPayload:
    """A credential's payload: the purchase and, optionally, the card's certificate."""

    payment: bytes = field(repr=False)
    certificate: bytes | None = field(default=None, repr=False)

    def to_json(self) -> JsonObject:
        obj: JsonObject = {"payment": b64url_encode(self.payment)}
        if self.certificate is not None:
            obj["certificate"] = b64url_encode(self.certificate)
        return obj

    @classmethod
    def from_json(cls, obj: JsonObject) -> HllPayload:
        members = payload_members(obj)
        certificate = None
        if obj.get("certificate") is not None:  # null is read as absent, as it always was
            certificate = members.blob("certificate", max_len=MAX_PAYMENT_LEN)
        return cls(
            payment=members.blob("payment", max_len=MAX_PAYMENT_LEN), certificate=certificate
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HllReceipt:
    """The receipt's members: the card, its counter after the purchase, the units paid
    and how the bank settled it."""

    units: int
    card: bytes
    counter: int
    mode: HllMode

    @property
    def reference(self) -> str:
        return f"{b64url_encode(self.card)}:{self.counter}"

    def to_json(self) -> JsonObject:
        return {
            "units": self.units,
            "card": b64url_encode(self.card),
            "counter": self.counter,
            "mode": self.mode.value,
        }

    @classmethod
    def from_json(cls, obj: JsonObject) -> HllReceipt:
        members = receipt_members(obj)
        return cls(
            units=members.count("units"),
            card=members.identifier("card", size=16),
            counter=members.count("counter", most=MAX_POSITION),
            mode=HllMode(members.choice("mode", _MODES)),
        )
