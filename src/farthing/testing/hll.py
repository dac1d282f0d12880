"""HLL's parties in memory: a card (:class:`SoftwareCard`), the bank (:class:`HllBank`) and
a deferred-mode merchant (:class:`HllMerchant`), each driven by the core's pure rules
(:mod:`farthing.core.schemes.hll`). They are the reference the issuer's HLL service and the
paywall's HLL method follow; the differential test runs the same batches through both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer
from farthing.core.errors import (
    CardLocked,
    Conflict,
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    NotFound,
    WrongPin,
)
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq, sha256
from farthing.core.schemes.hll import (
    BATCH_ID_LEN,
    CARD_ID_LEN,
    DEFAULT_DEPOSIT_WINDOW,
    KEY_LEN,
    MAX_BATCH_ITEMS,
    MAX_MERCHANT_ID_LEN,
    MAX_PIN_TRIES,
    BankCard,
    CardKey,
    CardState,
    DeferredDecision,
    DeferredRisk,
    DepositBatch,
    DepositItem,
    DepositRefusal,
    DepositReport,
    DepositTally,
    Offer,
    Purchase,
    SpendRecord,
    VerifiedPurchase,
    authorize_purchase,
    batch_tag,
    card_may_pay,
    check_fresh,
    check_merchant_repeat,
    check_resent_batch,
    check_spend,
    complete_purchase,
    decide_deferred,
    encode_batch,
    encode_card_certificate,
    encode_offer,
    is_online_retry,
    is_text,
    is_u64,
    issue_card_certificate,
    judge_deposit_item,
    judge_spend,
    make_offer,
    refused_items,
    take_random,
    verify_batch_tag,
    verify_purchase,
)

__all__ = ["HllBank", "HllMerchant", "OnlineSettlement", "SoftwareCard"]

_DOMAIN_PIN = "farthing/hll/pin"


def _pin_digest(card_id: bytes, pin: str) -> bytes:
    return sha256(Writer(_DOMAIN_PIN).bytes(card_id).text(pin).finish())


class SoftwareCard:
    """An in-memory card (key + state + PIN) for tests and the demo.

    ``verify_pin`` opens the card for purchases until a wrong PIN; after
    :data:`MAX_PIN_TRIES` wrong PINs in a row the card locks for good. A PIN digest is no
    defence against offline guessing: the try counter (tamper resistance) is.
    """

    __slots__ = ("_key", "_pin_digest", "_state", "_unlocked")

    def __init__(self, *, key: CardKey, state: CardState, pin: str) -> None:
        self._key = key
        self._state = state
        self._pin_digest = _pin_digest(state.card_id, pin)
        self._unlocked = False

    @property
    def state(self) -> CardState:
        return self._state

    def verify_pin(self, pin: str) -> None:
        """Returns None, or raises WrongPin (with tries_left) or CardLocked."""
        if self._state.pin_tries_left <= 0:
            raise CardLocked("the card is locked")
        if constant_time_eq(_pin_digest(self._state.card_id, pin), self._pin_digest):
            self._state = replace(self._state, pin_tries_left=MAX_PIN_TRIES)
            self._unlocked = True
            return
        tries_left = self._state.pin_tries_left - 1
        self._state = replace(self._state, pin_tries_left=tries_left)
        self._unlocked = False
        if tries_left == 0:
            raise CardLocked("too many wrong PINs; the card is locked")
        raise WrongPin("wrong PIN", tries_left=tries_left)

    def purchase(self, offer: Offer, now: int) -> Purchase:
        """Pay ``offer``: the state moves first, then the MAC is released."""
        if self._state.pin_tries_left <= 0:
            raise CardLocked("the card is locked")
        if not self._unlocked:
            raise LocalProtocolError("verify the PIN first")
        new_state, message = authorize_purchase(self._state, offer, now)
        self._state = new_state
        return complete_purchase(
            new_state.card_id, new_state.counter, offer.challenge, self._key, message
        )


# --- the bank -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnlineSettlement:
    """The bank's answer to an online payment: what it verified, and whether this was an
    exact resend of a purchase it had settled (then nothing more was charged)."""

    verified: VerifiedPurchase
    repeated: bool


class HllBank:
    """The bank B in memory: the reference for the storage-backed issuer, judging every
    payment by the same core rules (:func:`~farthing.core.schemes.hll.card_may_pay`,
    :func:`~farthing.core.schemes.hll.judge_deposit_item`,
    :func:`~farthing.core.schemes.hll.judge_spend`).

    Accepts each (card, counter) once, online or by deposit (an exact online resend of a
    settled purchase is answered as settled again, charging nothing); never lets a card's spent
    total exceed its loaded value; remembers each deposit by (merchant, batch id) so a
    resent batch gets the same report. One denomination per bank; each merchant is paid in
    one currency (the bank's unless told). Deposited items are accepted up to
    ``deposit_window`` seconds after their offer expired.
    """

    def __init__(
        self,
        *,
        denomination: Denomination,
        deposit_window: int = DEFAULT_DEPOSIT_WINDOW,
        certification_key: bytes | None = None,
    ) -> None:
        self._denomination = denomination
        self._certification_key = certification_key
        self._deposit_window = deposit_window
        self._cards: dict[bytes, BankCard] = {}
        self._spends: dict[tuple[bytes, int], SpendRecord] = {}
        self._merchants: dict[str, tuple[bytes, str]] = {}  # id -> (K_M, currency)
        self._credited: dict[str, int] = {}
        self._batches: dict[tuple[str, bytes], tuple[bytes, DepositReport]] = {}

    def register_card(self, card_id: bytes, card_key: bytes, loaded: int) -> None:
        if len(card_id) != CARD_ID_LEN or len(card_key) != KEY_LEN or not is_u64(loaded):
            raise ValueError("card id 16 bytes, key 32 bytes, loaded value a u64")
        if card_id in self._cards:
            raise Conflict("card already registered")
        self._cards[card_id] = BankCard(
            key=card_key, denomination=self._denomination, active=True, loaded=loaded, spent=0
        )

    def block_card(self, card_id: bytes) -> None:
        """The card pays nothing more, online or by deposit (as the issuer's card status)."""
        self._cards[card_id] = replace(self._cards[card_id], active=False)

    def certify(self, card_id: bytes, expires_at: int) -> bytes:
        """The encoded certificate of a registered card (needs ``certification_key``)."""
        if self._certification_key is None or card_id not in self._cards:
            raise LocalProtocolError("no certification key or no such card")
        cert = issue_card_certificate(
            self._certification_key,
            card_id=card_id,
            denomination=self._denomination,
            expires_at=expires_at,
        )
        return encode_card_certificate(cert)

    def register_merchant(
        self, merchant_id: str, merchant_key: bytes, *, currency: str | None = None
    ) -> None:
        if not is_text(merchant_id, MAX_MERCHANT_ID_LEN) or len(merchant_key) != KEY_LEN:
            raise ValueError("merchant id must be canonical text and the key 32 bytes")
        if merchant_id in self._merchants:
            raise Conflict("merchant already registered")
        paid_in = self._denomination.currency if currency is None else currency
        self._merchants[merchant_id] = (merchant_key, paid_in)
        self._credited[merchant_id] = 0

    def spent(self, card_id: bytes) -> int:
        return self._cards[card_id].spent

    def credited(self, merchant_id: str) -> int:
        return self._credited[merchant_id]

    def verify_online(self, offer: Offer, purchase: Purchase, now: int) -> VerifiedPurchase:
        """:meth:`settle_online`, answering only what was verified."""
        return self.settle_online(offer, purchase, now).verified

    def settle_online(self, offer: Offer, purchase: Purchase, now: int) -> OnlineSettlement:
        """Verify and settle one payment now, crediting ``offer.merchant_id``.

        The caller (the HTTP edge) must have authenticated that merchant. Raises NotFound
        (unknown merchant), PaymentExpired, InvalidPayment (also for an unknown, blocked
        or foreign card), UnsupportedMethod (the merchant is paid in another currency),
        Conflict(DUPLICATE_SPEND) for a (card, counter) already accepted, InsufficientFunds
        past the loaded value; in the issuer's order (the MAC first).
        """
        merchant = self._merchants.get(offer.merchant_id)
        if merchant is None:
            raise NotFound("unknown merchant")
        card = self._cards.get(purchase.card_id)
        if card is None:
            raise InvalidPayment()
        verified = verify_purchase(card.key, offer, purchase, now)
        card_may_pay(card, offer, merchant_currency=merchant[1])
        offer_digest = sha256(encode_offer(offer))
        earlier = self._spends.get((verified.card_id, verified.counter))
        if is_online_retry(earlier, merchant_id=offer.merchant_id, offer_digest=offer_digest):
            return OnlineSettlement(verified=verified, repeated=True)
        check_spend(
            spent_before=earlier is not None, remaining=card.remaining, amount=verified.amount
        )
        self._charge(verified, offer_digest)
        return OnlineSettlement(verified=verified, repeated=False)

    def deposit(self, batch: DepositBatch, tag: bytes, now: int) -> DepositReport:
        """Settle a merchant's batch. Raises InvalidPayment(DEPOSIT_INVALID) for a bad
        tag or unknown merchant, Conflict for a reused batch id with other contents;
        the same batch again returns the first report and credits nothing new."""
        merchant = self._merchants.get(batch.merchant_id)
        if merchant is None:
            raise InvalidPayment("deposit did not verify", code=ErrorCode.DEPOSIT_INVALID)
        merchant_key, currency = merchant
        verify_batch_tag(merchant_key, batch, tag)
        digest = sha256(encode_batch(batch))
        earlier = self._batches.get((batch.merchant_id, batch.batch_id))
        if earlier is not None:
            check_resent_batch(earlier[0], digest)
            return earlier[1]
        tally = DepositTally()
        for item in batch.items:
            judged = self._deposit_item(batch.merchant_id, currency, item, now)
            if isinstance(judged, DepositRefusal):
                tally.refuse(item, judged)
            else:
                tally.accept(judged)
        report = tally.report(batch.batch_id)
        self._batches[(batch.merchant_id, batch.batch_id)] = (digest, report)
        return report

    def _deposit_item(
        self, merchant_id: str, currency: str, item: DepositItem, now: int
    ) -> VerifiedPurchase | DepositRefusal:
        """Judge one item by the core's rules and charge it if accepted."""
        judged = judge_deposit_item(
            self._cards.get(item.purchase.card_id),
            item,
            merchant_id=merchant_id,
            merchant_currency=currency,
            now=now,
            deposit_window=self._deposit_window,
        )
        if isinstance(judged, DepositRefusal):
            return judged
        account = self._cards[judged.card_id]
        refusal = judge_spend(
            spent_before=(judged.card_id, judged.counter) in self._spends,
            remaining=account.remaining,
            amount=judged.amount,
        )
        if refusal is not None:
            return refusal
        self._charge(judged, None)
        return judged

    def _charge(self, verified: VerifiedPurchase, offer_digest: bytes | None) -> None:
        """Record (card, counter) as spent (with the offer's digest if online, so an exact
        resend is recognised) and move its value to the merchant."""
        record = SpendRecord(merchant_id=verified.merchant_id, offer_digest=offer_digest)
        self._spends[(verified.card_id, verified.counter)] = record
        card = self._cards[verified.card_id]
        self._cards[verified.card_id] = replace(card, spent=card.spent + verified.amount)
        self._credited[verified.merchant_id] += verified.amount


# --- the merchant (deferred mode) ---------------------------------------------------------


class HllMerchant:
    """The merchant M in memory: makes offers, accepts payments, builds deposit batches.

    Deferred mode (:meth:`accept_deferred`) cannot check sigma (no K_C): it checks that
    the offer is unexpired, judges a (card, counter) taken before by
    :func:`check_merchant_repeat` (its own request's retry, or refused), that a new one
    comes on its own open offer, and asks :func:`decide_deferred` (B's card certificate,
    the per-card and per-merchant caps).
    When the answer is ONLINE it raises RISK_LIMIT with nothing changed, so the caller
    goes online with the same payment (:meth:`accept_online`); :meth:`accept` does both.
    """

    def __init__(
        self,
        *,
        merchant_id: str,
        merchant_key: bytes,
        rng: RandomSource,
        risk: DeferredRisk,
        bank_public_key: bytes,
        offer_ttl: int = 300,
    ) -> None:
        self.merchant_id = merchant_id
        self._key = merchant_key
        self._rng = rng
        self._risk = risk
        self._bank_public_key = bank_public_key
        self._ttl = offer_ttl
        self._open: dict[bytes, Offer] = {}
        # per (card, counter) taken: the request that carried it and how it was taken
        self._seen: dict[tuple[bytes, int], tuple[bytes | None, DeferredDecision]] = {}
        self._refused: set[tuple[bytes, int]] = set()  # by the bank, at deposit
        self._outstanding: dict[bytes, int] = {}  # per card: not accepted by the bank
        self._unanswered = 0  # all cards: not yet answered by the bank
        self._pending: list[DepositItem] = []
        self._unsettled: dict[bytes, DepositBatch] = {}

    def offer(
        self,
        *,
        good: str,
        amount: int,
        denomination: Denomination,
        now: int,
        challenge: bytes | None = None,
    ) -> Offer:
        """A new open offer; its challenge T from the merchant's ``rng`` unless given (a
        paywall's signed challenge id, for the differential test)."""
        self._open = {t: o for t, o in self._open.items() if now < o.expires_at}
        offer = make_offer(
            merchant_id=self.merchant_id,
            good=good,
            amount=amount,
            denomination=denomination,
            rng=self._rng,
            now=now,
            ttl=self._ttl,
            challenge=challenge,
        )
        self._open[offer.challenge] = offer
        return offer

    def outstanding(self, card_id: bytes) -> int:
        return self._outstanding.get(card_id, 0)

    def _retried(
        self, offer: Offer, purchase: Purchase, now: int, request: bytes | None
    ) -> DeferredDecision | None:
        """How a (card, counter) taken before was taken, if this is its retry (the core's
        :func:`check_merchant_repeat`, which refuses any other repeat); None if new."""
        check_fresh(offer, now)
        key = (purchase.card_id, purchase.counter)
        seen = self._seen.get(key)
        if seen is None:
            return None
        check_merchant_repeat(
            earlier_request=seen[0], refused=key in self._refused, request=request
        )
        return seen[1]

    def _check_acceptable(self, offer: Offer, purchase: Purchase) -> None:
        if self._open.get(offer.challenge) != offer:
            raise InvalidPayment("unknown or used offer", code=ErrorCode.CHALLENGE_INVALID)
        if purchase.counter == 0:
            raise InvalidPayment()

    def _consume(
        self, offer: Offer, purchase: Purchase, request: bytes | None, how: DeferredDecision
    ) -> None:
        del self._open[offer.challenge]
        self._seen[(purchase.card_id, purchase.counter)] = (request, how)

    def outstanding_total(self) -> int:
        """Units all cards owe this merchant in deferred payments the bank has not answered."""
        return self._unanswered

    def accept_deferred(
        self,
        offer: Offer,
        purchase: Purchase,
        now: int,
        *,
        certificate: bytes | None,
        request: bytes | None = None,
    ) -> None:
        """Accept without the bank (the payment joins the next deposit batch), or raise
        InsufficientFunds(RISK_LIMIT) when :func:`decide_deferred` says go online.
        ``request``: the tag of the request carrying it, for :meth:`accept`'s retries."""
        if self._retried(offer, purchase, now, request) is not None:
            return  # this very request again: taken already
        self._check_acceptable(offer, purchase)
        card_outstanding = self.outstanding(purchase.card_id)
        decision = decide_deferred(
            risk=self._risk,
            bank_public_key=self._bank_public_key,
            certificate=certificate,
            offer=offer,
            purchase=purchase,
            now=now,
            card_outstanding=card_outstanding,
            merchant_outstanding=self.outstanding_total(),
        )
        if decision is not DeferredDecision.DEFER:
            raise InsufficientFunds(
                "not vouched for or over the deferred risk caps: verify online",
                code=ErrorCode.RISK_LIMIT,
            )
        self._consume(offer, purchase, request, DeferredDecision.DEFER)
        self._outstanding[purchase.card_id] = card_outstanding + offer.amount
        self._unanswered += offer.amount
        self._pending.append(DepositItem(offer=offer, purchase=purchase))

    def accept(
        self,
        offer: Offer,
        purchase: Purchase,
        now: int,
        *,
        certificate: bytes | None,
        verify_online: Callable[[Offer, Purchase, int], VerifiedPurchase],
        request: bytes | None = None,
    ) -> tuple[DeferredDecision, bool]:
        """Deferred where :func:`decide_deferred` allows it, else online: how it was taken,
        and whether this was a retry (the same ``request`` again: nothing new is taken)."""
        earlier = self._retried(offer, purchase, now, request)
        if earlier is not None:
            return earlier, True
        try:
            self.accept_deferred(offer, purchase, now, certificate=certificate, request=request)
        except InsufficientFunds as error:
            if error.code is not ErrorCode.RISK_LIMIT:
                raise
            self.accept_online(offer, purchase, now, verify_online, request=request)
            return DeferredDecision.ONLINE, False
        return DeferredDecision.DEFER, False

    def accept_online(
        self,
        offer: Offer,
        purchase: Purchase,
        now: int,
        verify_online: Callable[[Offer, Purchase, int], VerifiedPurchase],
        *,
        request: bytes | None = None,
    ) -> VerifiedPurchase:
        """Ask the bank first (e.g. ``bank.verify_online``); it settles, so no deposit."""
        if self._retried(offer, purchase, now, request) is not None:
            return verify_online(offer, purchase, now)  # the bank answers its retry alike
        self._check_acceptable(offer, purchase)
        verified = verify_online(offer, purchase, now)
        self._consume(offer, purchase, request, DeferredDecision.ONLINE)
        return verified

    def make_deposit(self) -> tuple[DepositBatch, bytes]:
        """Everything accepted in deferred mode since the last batch, with its tag.

        Keep resending the same (batch, tag) until a report arrives; the bank is idempotent.
        """
        batch = DepositBatch(
            batch_id=take_random(self._rng, BATCH_ID_LEN),
            merchant_id=self.merchant_id,
            items=tuple(self._pending[:MAX_BATCH_ITEMS]),
        )
        del self._pending[:MAX_BATCH_ITEMS]
        self._unsettled[batch.batch_id] = batch
        return batch, batch_tag(self._key, batch)

    def settle(self, report: DepositReport) -> None:
        """The bank answered for a batch: its items leave the merchant's total; those it
        accepted also leave their card's (:func:`~farthing.core.schemes.hll.refused_items`
        stay charged to theirs)."""
        batch = self._unsettled.pop(report.batch_id, None)
        if batch is None:
            raise LocalProtocolError("no such unsettled batch")
        refused = refused_items(report)
        self._refused |= refused
        for item in batch.items:
            amount, card_id = item.offer.amount, item.purchase.card_id
            self._unanswered = self._risk.settle(self._unanswered, amount)
            if (card_id, item.purchase.counter) not in refused:
                self._outstanding[card_id] = self._risk.settle(self.outstanding(card_id), amount)
