"""``hll:mac``: Hwang-Lin-Li smart-card payments, verified by the bank.

The merchant cannot check sigma itself (it lacks K_C), so there are two modes:

- ``online`` (the default, safe): before delivering, ask the bank to verify the purchase;
  the bank records (card, counter) once and credits the merchant in the same transaction.
- ``deferred``: deliver at once and deposit later in batches. The vendor records each
  purchase durably (a repeat (card, counter) is refused by a unique key) and bounds its risk
  per card: the value of a card's purchases not yet cleared may not exceed ``risk_limit``.

The offer the card signed is rebuilt from the request, never sent: merchant id, the request
path as the good, the price in the bank's units, the raw challenge id as T and its expiry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import anyio.to_thread

from farthing.core.encoding import b64url_encode
from farthing.core.errors import Conflict, ErrorCode, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.payment_auth import JsonObject
from farthing.vendor.methods.base import PaymentContext, Settlement, payload_bytes
from farthing.vendor.pricing import PricedRoute

__all__ = ["DeferredLog", "HllBankClient", "HllMethod", "HllMode", "PendingPurchase"]


class HllMode(StrEnum):
    ONLINE = "online"
    DEFERRED = "deferred"


class HllBankClient(Protocol):
    """The bank, as the vendor reaches it (over HTTP in production)."""

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        """Verify and settle one purchase, or raise a FarthingError. True if the bank had
        settled this very purchase (same offer, same MAC) before: a retry, not charged."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingPurchase:
    """``request``: the tag of the request that carried it (farthing.core.retry)."""

    card_id: bytes
    counter: int
    amount: int
    offer: bytes
    payment: bytes
    request: bytes | None = None


class DeferredLog(Protocol):
    """The vendor store's record of delivered, not yet deposited purchases (blocking)."""

    def record(self, purchase: PendingPurchase, *, risk_limit: int) -> bool:
        """Store it and return False; or return True, storing nothing, if this very request
        was recorded before (a retry after a lost answer). Raise InvalidPayment for another
        repeat of (card, counter) and InsufficientFunds(RISK_LIMIT) when the card's
        uncleared value would pass the limit."""
        ...


class HllMethod:
    """The vendor adapter of ``hll:mac``."""

    name = "hll:mac"

    def __init__(
        self,
        *,
        merchant_id: str,
        unit_micros: int,
        mode: HllMode,
        bank: HllBankClient | None = None,
        deferred: DeferredLog | None = None,
        risk_limit: int = 0,
    ) -> None:
        if mode is HllMode.ONLINE and bank is None:
            raise ValueError("online mode needs a bank client")
        if mode is HllMode.DEFERRED and (deferred is None or risk_limit <= 0):
            raise ValueError("deferred mode needs a log and a positive risk limit")
        self._merchant_id = merchant_id
        self._unit_micros = unit_micros
        self._mode = mode
        self._bank = bank
        self._deferred = deferred
        self._risk_limit = risk_limit

    def _units(self, route: PricedRoute) -> int:
        return -(-route.price.micros // self._unit_micros)

    def request(self, route: PricedRoute) -> JsonObject:
        return {
            "amount": str(route.price.micros),
            "currency": route.price.currency,
            "resource": route.scope,
            "merchant": self._merchant_id,
            "units": self._units(route),
            "unitMicros": self._unit_micros,
            "mode": self._mode.value,
        }

    def offer_for(self, context: PaymentContext) -> hll.Offer:
        """The offer the card must have signed for this request."""
        return hll.Offer(
            merchant_id=self._merchant_id,
            good=context.resource,
            amount=self._units(context.route),
            denomination=Denomination(
                currency=context.route.price.currency, unit_micros=self._unit_micros
            ),
            challenge=context.challenge.raw,
            expires_at=context.challenge.expires,
        )

    async def settle(self, context: PaymentContext) -> Settlement:
        raw = payload_bytes(context.payload, "payment", max_len=512)
        purchase = hll.decode_payment(raw)
        offer = self.offer_for(context)
        if self._mode is HllMode.ONLINE:
            retried = await self._verify_online(offer, raw, context)
        else:
            retried = await self._record_deferred(purchase, offer, raw, context.request)
        card = b64url_encode(purchase.card_id)
        return Settlement(
            method=self.name,
            reference=f"{card}:{purchase.counter}",
            units=offer.amount,
            receipt={"card": card, "counter": purchase.counter, "mode": self._mode.value},
            retried=retried,
        )

    async def _verify_online(self, offer: hll.Offer, raw: bytes, context: PaymentContext) -> bool:
        """The bank settles each purchase once; the same purchase again (its offer binds the
        path and the challenge) is a retry, served only for a request that may be retried."""
        assert self._bank is not None
        retried = await self._bank.verify_online(hll.encode_offer(offer), raw)
        if retried and context.request is None:
            raise Conflict("payment already spent", code=ErrorCode.DUPLICATE_SPEND)
        return retried

    async def _record_deferred(
        self, purchase: hll.Purchase, offer: hll.Offer, raw: bytes, request: bytes | None
    ) -> bool:
        log = self._deferred
        assert log is not None
        if purchase.counter == 0:
            raise InvalidPayment("payment did not verify", code=ErrorCode.PAYMENT_INVALID)
        pending = PendingPurchase(
            card_id=purchase.card_id,
            counter=purchase.counter,
            amount=offer.amount,
            offer=hll.encode_offer(offer),
            payment=raw,
            request=request,
        )
        record = functools.partial(log.record, pending, risk_limit=self._risk_limit)
        return await anyio.to_thread.run_sync(record)
