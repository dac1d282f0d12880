"""``hll:mac``: Hwang-Lin-Li smart-card payments, verified by the bank.

The merchant cannot check sigma itself (it lacks K_C), so there are two modes:

- ``online`` (the default, safe): before delivering, ask the bank to verify the purchase;
  the bank records (card, counter) once and credits the merchant in the same transaction.
- ``deferred``: deliver at once and deposit later in batches, but only for a card the bank
  vouches for and within two caps; everything else goes online (the core decides:
  :func:`farthing.core.schemes.hll.decide_deferred`). The card presents the bank's card
  certificate in the payload (``certificate``), checked offline against the bank's public
  key. The vendor records each deferred purchase durably (a repeat (card, counter) is
  refused by a unique key); the value of one card's purchases not yet cleared may not
  pass ``risk.limit``, nor the value of all cards' together ``risk.merchant_cap``.

The offer the card signed is rebuilt from the request, never sent: merchant id, the request
path as the good, the price in the bank's units, the raw challenge id as T and its expiry
(:meth:`farthing.http.methods.hll.HllRequest.offer`, which the wallet calls too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio.to_thread

from farthing.core.errors import Conflict, ErrorCode, FarthingError
from farthing.core.retry import same_request
from farthing.core.schemes import hll
from farthing.http.methods.hll import HllMode, HllPayload, HllReceipt, HllRequest
from farthing.http.payment_auth import ChallengeId, JsonObject
from farthing.paywall.methods.base import PaymentContext, Settlement, route_price
from farthing.paywall.methods.offline import DELIVERY_LEASE, challenge_used, payment_in_progress
from farthing.paywall.pricing import PricedRoute

__all__ = [
    "ChallengeLog",
    "DeferredLog",
    "DeferredPolicy",
    "DeferredRecord",
    "HllBankClient",
    "HllMethod",
    "HllMode",
    "PendingPurchase",
]


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
    challenge: ChallengeId | None = None  # taken (single use) with a deferred record


DeferredPolicy = Callable[[int, int], hll.DeferredDecision]
"""Given (card outstanding, merchant outstanding) in units, the core's decision."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferredRecord:
    """What the deferred log did: ``deferred``, recorded for deposit (else the bank must
    verify it online); ``retried``, this very request was recorded before (nothing new)."""

    deferred: bool
    retried: bool


class DeferredLog(Protocol):
    """The vendor store's record of delivered, not yet deposited purchases (blocking)."""

    def record(self, purchase: PendingPurchase, *, decide: DeferredPolicy) -> DeferredRecord:
        """In one transaction: read what the card and the merchant are owed unverified, ask
        ``decide``, and store the purchase only on DEFER. The same request recorded before
        (a retry after a lost answer) is reported as retried, nothing stored. Raises
        InvalidPayment for another repeat of (card, counter)."""
        ...

    def record_online(self, purchase: PendingPurchase) -> None:
        """Remember a purchase the bank verified online (a replay guard, not a claim)."""
        ...


class ChallengeLog(Protocol):
    """The vendor's single-use challenge ids (``vendor_used_challenges``), for purchases the
    bank verifies online: the id is taken before the bank is asked."""

    async def take(self, challenge: ChallengeId, now: int, request: bytes | None) -> bool:
        """Take the id for the request of tag ``request``; False if it was taken before."""
        ...

    async def release(self, challenge: ChallengeId) -> None:
        """Give back an id whose purchase the bank did not settle."""
        ...

    async def request_of(self, challenge: ChallengeId) -> bytes | None:
        """The tag of the request that took the id (None: none kept)."""
        ...

    async def used_at(self, challenge: ChallengeId) -> int | None:
        """When a payment was accepted under the id (None: never, or not kept)."""
        ...

    async def durable(self) -> None:
        """Return once every id this process took so far is durable (a resend is answered
        from a read, which may see a take still being synced)."""
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
        risk: hll.DeferredRisk | None = None,
        bank_public_key: bytes | None = None,
        used: ChallengeLog | None = None,
    ) -> None:
        if bank is None:
            raise ValueError("both modes need a bank client (deferred goes online too)")
        if mode is HllMode.DEFERRED and (
            deferred is None or risk is None or bank_public_key is None
        ):
            raise ValueError("deferred mode needs a log, the risk caps and the bank's public key")
        self._merchant_id = merchant_id
        self._unit_micros = unit_micros
        self._mode = mode
        self._bank: HllBankClient = bank
        self._deferred = deferred
        self._risk = risk
        self._bank_public_key = bank_public_key
        self._used = used

    def _request(self, route: PricedRoute) -> HllRequest:
        price = route_price(route, self._unit_micros)
        return HllRequest(
            **price, merchant=self._merchant_id, mode=self._mode, bank=self._bank_public_key
        )

    def request(self, route: PricedRoute) -> JsonObject:
        return self._request(route).to_json()

    def offer_for(self, context: PaymentContext) -> hll.Offer:
        """The offer the card must have signed for this request."""
        return self._request(context.route).offer(
            good=context.resource,
            challenge=context.challenge.raw,
            expires_at=context.challenge.expires,
        )

    async def settle(self, context: PaymentContext) -> Settlement:
        sent = HllPayload.from_json(context.payload)
        purchase = hll.decode_payment(sent.payment)
        offer = self.offer_for(context)
        pending = PendingPurchase(
            card_id=purchase.card_id,
            counter=purchase.counter,
            amount=offer.amount,
            offer=hll.encode_offer(offer),
            payment=sent.payment,
            request=context.request,
            challenge=context.challenge,
        )
        mode, retried = HllMode.ONLINE, False
        if self._mode is HllMode.DEFERRED:
            record = await self._record_deferred(
                purchase, offer, pending, sent.certificate, context
            )
            mode = HllMode.DEFERRED if record.deferred else HllMode.ONLINE
            retried = record.retried
        if mode is HllMode.ONLINE and not retried:
            retried = await self._verify_online(pending, context)
        if retried and not context.delivered_here:
            await self._not_in_flight_elsewhere(context)
        receipt = HllReceipt(
            units=offer.amount, card=purchase.card_id, counter=purchase.counter, mode=mode
        )
        return Settlement(method=self.name, receipt=receipt, retried=retried)

    async def _verify_online(self, pending: PendingPurchase, context: PaymentContext) -> bool:
        """The bank settles each purchase once; the same purchase again (its offer binds the
        path and the challenge) is a retry, served only for a request that may be retried.
        The challenge id is taken first (single use, as for every method): under an id
        taken before, only the very request that took it is sent to the bank again."""
        took = await self._take(context)
        try:
            retried = await self._bank.verify_online(pending.offer, pending.payment)
        except FarthingError:
            if took and self._used is not None:
                await self._used.release(context.challenge)  # nothing was paid under it
            raise
        if retried and context.request is None:
            raise Conflict("payment already spent", code=ErrorCode.DUPLICATE_SPEND)
        if self._deferred is not None:  # deferred mode went online: guard replays here
            await anyio.to_thread.run_sync(self._deferred.record_online, pending)
        return retried

    async def _not_in_flight_elsewhere(self, context: PaymentContext) -> None:
        """A resend this process did not deliver first: another worker accepted it, and its
        delivery may still run (-02 "Concurrent Request Handling": one delivery), as
        :meth:`OfflineMethod._not_in_flight_elsewhere` decides for the other methods."""
        if self._used is None:
            return
        used_at = await self._used.used_at(context.challenge)
        if used_at is not None and context.now - used_at < DELIVERY_LEASE:
            raise payment_in_progress()

    async def _take(self, context: PaymentContext) -> bool:
        """Take the challenge id for this request; False if this very request took it
        before (a resend); else, taken before, the draft's ``invalid-challenge``."""
        if self._used is None:
            return False
        if await self._used.take(context.challenge, context.now, context.request):
            return True
        if same_request(await self._used.request_of(context.challenge), context.request):
            await self._used.durable()
            return False
        raise challenge_used()

    async def _record_deferred(
        self,
        purchase: hll.Purchase,
        offer: hll.Offer,
        pending: PendingPurchase,
        certificate: bytes | None,
        context: PaymentContext,
    ) -> DeferredRecord:
        """Recorded for deposit if the core allows it; else the bank must verify it."""
        log, risk, bank_key = self._deferred, self._risk, self._bank_public_key
        assert log is not None
        assert risk is not None
        assert bank_key is not None
        now = context.now

        def decide(card_outstanding: int, merchant_outstanding: int) -> hll.DeferredDecision:
            return hll.decide_deferred(
                risk=risk,
                bank_public_key=bank_key,
                certificate=certificate,
                offer=offer,
                purchase=purchase,
                now=now,
                card_outstanding=card_outstanding,
                merchant_outstanding=merchant_outstanding,
            )

        decide(0, 0)  # refuse malformed input before touching the store
        return await anyio.to_thread.run_sync(lambda: log.record(pending, decide=decide))
