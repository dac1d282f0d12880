"""The wallet's side of each payment method: which cards can pay a challenge, and paying it.

Each method offers two steps, so the wallet can keep its write-ahead rule:

``quote(card, challenge, now)``
    Whether this card can pay this challenge, for how many units and micros; no side
    effects. None when the card does not fit (method, realm, currency, unit, expiry, units).
``reserve(tx, quote, good, now)``
    Inside the wallet's ``BEGIN IMMEDIATE`` transaction: re-read the card, compute the
    payment with the pure core, and write the card's new position. Returns a
    :class:`Reservation` whose ``release()`` gives the credential payload. The wallet calls
    it only after the transaction committed; only HLL does real work there (the card, or the
    token, MACs the purchase after its counter is on disk).

Each challenge's request is read, and each payload written, by the method's wire module
(:mod:`farthing.http.methods`), the one the paywall uses: ``{"method", "payment"}`` and,
for the first PayWord payments under a commitment, ``"commitment"``; an HLL card's
``"certificate"``. A request that does not parse is a challenge this wallet cannot pay.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, TypeVar

from farthing.core.cardcode import Generator
from farthing.core.clock import RandomSource
from farthing.core.encoding import Reader, Writer, b64url_decode
from farthing.core.errors import CardExhausted, ErrorCode, LocalProtocolError, MalformedMessage
from farthing.core.hashchain import ChainWalker
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.http.methods import SCHEME_OF
from farthing.http.methods.common import PricedRequest
from farthing.http.methods.hll import HllPayload, HllRequest
from farthing.http.methods.payword import PaywordPayload, PaywordRequest
from farthing.http.methods.szm import SzmPayload, SzmRequest
from farthing.http.payment_auth import Challenge, JsonObject
from farthing.wallet.cards import (
    hll_certificate,
    payword_certificate,
    payword_private_key,
    secret_record,
    szm_code,
)
from farthing.wallet.secretbox import SecretBox, record_id
from farthing.wallet.store import CardRow, CommitmentRow, WriteTx

__all__ = [
    "DEFAULT_COMMITMENT_TTL",
    "DEFAULT_COMMITMENT_UNITS",
    "CardKeySource",
    "HllMethod",
    "PaywordMethod",
    "Quote",
    "Reservation",
    "Skipped",
    "StaleAt",
    "SzmChainMethod",
    "SzmPrbgMethod",
    "WalletMethod",
]

DEFAULT_COMMITMENT_UNITS: Final = 1000
DEFAULT_COMMITMENT_TTL: Final = 86_400  # the paper's "per vendor per day"
_COMMITMENT_MARGIN: Final = 60
_CREDIT_SHARES: Final = 4  # a commitment takes at most a quarter of the credit line
_BBS_STATE_DOMAIN: Final = "farthing/wallet/bbs-state"
_MAX_BBS_BYTES: Final = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """One way to pay one challenge: this card, this many units, this much money."""

    method: str
    challenge: Challenge
    card: CardRow
    units: int
    price_micros: int
    charged_micros: int
    currency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A payment whose card position is written (not yet committed) but not yet sent."""

    position: int
    release: Callable[[], JsonObject] = field(repr=False)
    sealing_key: bytes | None = field(default=None, repr=False)
    sealing_card_id: bytes | None = None
    commitment_id: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """Units a copy of the card paid elsewhere, skipped to where the vendor says it is."""

    units: int
    position: int
    unit_micros: int


class WalletMethod(Protocol):
    name: str

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None: ...

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation: ...

    def catch_up(
        self, tx: WriteTx, card: CardRow, stale: StaleAt, commitment_id: bytes | None
    ) -> Skipped | None:
        """Inside the wallet's write transaction: move the card (PayWord: the commitment)
        forward to where the vendor said it is (PAYMENT_STALE); None if it cannot (not
        ahead, past its end, a PayWord value that is not the commitment's own)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleAt:
    """A PAYMENT_STALE answer: the card's position at the vendor (PayWord: and the
    vendor's last payword there)."""

    position: int
    last_value: bytes | None = None


def _szm_ahead(card: CardRow, stale: StaleAt) -> bool:
    """The vendor is the card's issuer (it could burn the card anyway): its word is taken,
    but only forward and within the card."""
    return card.spent < stale.position <= card.total


# --- reading a challenge's request ---------------------------------------------------------

R = TypeVar("R", bound=PricedRequest)


def _request(challenge: Challenge, parse: Callable[[JsonObject], R]) -> R | None:
    """The challenge's request as the method's wire module reads it, or None if it does not."""
    try:
        return parse(challenge.request)
    except MalformedMessage:
        return None


def _fits(card: CardRow, challenge: Challenge, request: PricedRequest, now: int) -> bool:
    return (
        SCHEME_OF.get(challenge.method) == card.method
        and challenge.intent == "charge"
        and now < card.expires_at
        and request.currency == card.currency
    )


def _quote(
    card: CardRow, challenge: Challenge, request: PricedRequest, units: int, unit_micros: int
) -> Quote:
    """Paying ``request`` with ``card``: ``units`` of ``unit_micros`` each."""
    return Quote(
        method=card.method,
        challenge=challenge,
        card=card,
        units=units,
        price_micros=request.amount,
        charged_micros=units * unit_micros,
        currency=card.currency,
    )


# --- SZM -----------------------------------------------------------------------------------


def _szm_quote(card: CardRow, challenge: Challenge, now: int) -> Quote | None:
    request = _request(challenge, SzmRequest.from_json)
    if request is None or not _fits(card, challenge, request, now):
        return None
    if challenge.realm != card.realm:
        return None  # the vendor is the card's issuer: its realm is printed on the card
    denomination = Denomination(currency=card.currency, unit_micros=card.unit_micros)
    units = denomination.units_for(request.amount)
    if units > card.balance:
        return None
    return _quote(card, challenge, request, units, card.unit_micros)


class SzmChainMethod:
    """``szm:chain``: reveal the chain value at the new index; the key seals the response."""

    name = szm_chain.METHOD

    def __init__(self, box: SecretBox) -> None:
        self._box = box
        self._walkers: dict[bytes, ChainWalker] = {}

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None:
        return _szm_quote(card, challenge, now) if card.method == self.name else None

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation:
        row = tx.card(quote.card.id)
        card = replace(szm_chain.card_from_code(szm_code(self._box, row)), spent=row.spent)
        walker = self._walker(card)
        new, payment, key = szm_chain.next_payment(card, quote.units, now=now, walker=walker)
        tx.advance_card(row, spent=new.spent, balance=new.remaining, state=None)
        payload = SzmPayload(payment=szm_chain.encode_payment(payment)).to_json()
        return Reservation(
            position=payment.index,
            release=lambda: payload,
            sealing_key=key,
            sealing_card_id=card.card_id,
        )

    def catch_up(
        self, tx: WriteTx, card: CardRow, stale: StaleAt, commitment_id: bytes | None
    ) -> Skipped | None:
        if not _szm_ahead(card, stale):
            return None
        position = stale.position
        tx.advance_card(card, spent=position, balance=card.total - position, state=None)
        return Skipped(units=position - card.spent, position=position, unit_micros=card.unit_micros)

    def _walker(self, card: szm_chain.ChainCard) -> ChainWalker:
        walker = self._walkers.get(card.card_id)
        if walker is None:
            walker = self._walkers[card.card_id] = szm_chain.card_walker(card)
        return walker


class SzmPrbgMethod:
    """``szm:prbg``: send token T_i; key K_i (never sent) seals the response."""

    name = szm_prbg.METHOD

    def __init__(self, box: SecretBox) -> None:
        self._box = box

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None:
        return _szm_quote(card, challenge, now) if card.method == self.name else None

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation:
        row = tx.card(quote.card.id)
        card = self._card(row)
        new, payment, key = szm_prbg.next_payment(card, quote.units, now=now)
        tx.advance_card(
            row, spent=new.spent, balance=new.remaining, state=self._seal_state(row, new.bbs_x)
        )
        payload = SzmPayload(payment=szm_prbg.encode_payment(payment)).to_json()
        return Reservation(
            position=payment.index,
            release=lambda: payload,
            sealing_key=key,
            sealing_card_id=card.card_id,
        )

    def catch_up(
        self, tx: WriteTx, card: CardRow, stale: StaleAt, commitment_id: bytes | None
    ) -> Skipped | None:
        if not _szm_ahead(card, stale):
            return None
        moved = szm_prbg.skip_to(self._card(card), stale.position)
        tx.advance_card(
            card,
            spent=moved.spent,
            balance=moved.remaining,
            state=self._seal_state(card, moved.bbs_x),
        )
        return Skipped(
            units=moved.spent - card.spent, position=moved.spent, unit_micros=card.unit_micros
        )

    def _card(self, row: CardRow) -> szm_prbg.PrbgCard:
        fresh = szm_prbg.card_from_code(szm_code(self._box, row))
        bbs_x = fresh.bbs_x
        if fresh.generator is Generator.BBS and row.state is not None:
            bbs_x = self._open_state(row)
        return replace(fresh, spent=row.spent, bbs_x=bbs_x)

    def _open_state(self, row: CardRow) -> int:
        assert row.state is not None
        raw = self._box.open(secret_record(row.method, row.card_key, "state"), row.state)
        reader = Reader(raw, _BBS_STATE_DOMAIN)
        x = int.from_bytes(reader.bytes(max_len=_MAX_BBS_BYTES), "big")
        reader.finish()
        return x

    def _seal_state(self, row: CardRow, bbs_x: int | None) -> bytes | None:
        if bbs_x is None:
            return None
        raw = bbs_x.to_bytes(max(1, (bbs_x.bit_length() + 7) // 8), "big")
        plain = Writer(_BBS_STATE_DOMAIN).bytes(raw).finish()
        return self._box.seal(secret_record(row.method, row.card_key, "state"), plain)


# --- HLL -----------------------------------------------------------------------------------


class CardKeySource(Protocol):
    """Finds the tamper-resistant part of an HLL card (software key or PKCS#11 token)."""

    def __call__(self, card: CardRow) -> hll.CardKey: ...


class HllMethod:
    """``hll:mac``: the card MACs the offer rebuilt from the challenge (docs/http.md)."""

    name = "hll:mac"

    def __init__(self, box: SecretBox, keys: CardKeySource) -> None:
        self._box = box
        self._keys = keys

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None:
        request = _request(challenge, HllRequest.from_json)
        if request is None or card.method != self.name:
            return None
        if not _fits(card, challenge, request, now) or request.unit_micros != card.unit_micros:
            return None
        if request.units > card.balance:
            return None
        return _quote(card, challenge, request, request.units, request.unit_micros)

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation:
        key = self._keys(quote.card)  # before any change: a wrong PIN spends nothing
        certificate = hll_certificate(quote.card)
        row = tx.card(quote.card.id)
        offer = _offer(quote, good)
        state = hll.CardState(
            card_id=row.card_key,
            denomination=Denomination(currency=row.currency, unit_micros=row.unit_micros),
            balance=row.balance,
            counter=row.spent,
        )
        new_state, message = hll.authorize_purchase(state, offer, now)
        tx.advance_card(row, spent=new_state.counter, balance=new_state.balance, state=None)

        def release() -> JsonObject:
            purchase = hll.complete_purchase(
                new_state.card_id, new_state.counter, offer.challenge, key, message
            )
            # The certificate lets a deferred-mode vendor serve without asking the bank.
            return HllPayload(
                payment=hll.encode_payment(purchase), certificate=certificate
            ).to_json()

        return Reservation(position=new_state.counter, release=release)

    def catch_up(
        self, tx: WriteTx, card: CardRow, stale: StaleAt, commitment_id: bytes | None
    ) -> Skipped | None:
        return None  # an HLL vendor never answers PAYMENT_STALE: counters are the bank's


def _offer(quote: Quote, good: str) -> hll.Offer:
    """The offer the vendor will rebuild from the same request: good = request path,
    T = the raw challenge id (:meth:`farthing.http.methods.hll.HllRequest.offer`)."""
    try:
        request = HllRequest.from_json(quote.challenge.request)
        challenge = b64url_decode(quote.challenge.id, max_len=128)
        if quote.challenge.expires is None:
            raise MalformedMessage("an HLL challenge must expire")
        return request.offer(good=good, challenge=challenge, expires_at=quote.challenge.expires)
    except MalformedMessage as exc:
        raise LocalProtocolError(
            "the vendor's HLL challenge cannot be paid (malformed offer)", code=ErrorCode.BAD_FIELD
        ) from exc


# --- PayWord -------------------------------------------------------------------------------


class PaywordMethod:
    """``payword``: one commitment per vendor, made on the first payment to it."""

    name = "payword"

    def __init__(
        self,
        box: SecretBox,
        *,
        rng: RandomSource = os.urandom,
        commitment_units: int = DEFAULT_COMMITMENT_UNITS,
        commitment_ttl: int = DEFAULT_COMMITMENT_TTL,
    ) -> None:
        self._box = box
        self._rng = rng
        self._commitment_units = commitment_units
        self._ttl = commitment_ttl
        self._walkers: dict[bytes, ChainWalker] = {}

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None:
        request = _request(challenge, PaywordRequest.from_json)
        if request is None or card.method != self.name:
            return None
        if not _fits(card, challenge, request, now) or request.broker != card.realm:
            return None
        if request.units > self._capacity(card, request.unit_micros):
            return None
        return _quote(card, challenge, request, request.units, request.unit_micros)

    def _capacity(self, card: CardRow, unit_micros: int) -> int:
        """The most units one commitment to a vendor with this unit may hold."""
        credit = card.total * card.unit_micros
        return min(self._commitment_units, credit // unit_micros, payword.MAX_LENGTH)

    def _length(self, card: CardRow, unit_micros: int, units: int) -> int:
        """The length of a new commitment: at most a share of the credit line (the broker
        caps the sum of a user's open commitments, so one vendor must not take it all),
        and at least the price."""
        share = card.total * card.unit_micros // (_CREDIT_SHARES * unit_micros)
        return max(units, min(share, self._capacity(card, unit_micros)))

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation:
        request = PaywordRequest.from_json(quote.challenge.request)  # parsed in quote()
        vendor, unit_micros = request.vendor, request.unit_micros
        row = self._open_commitment(tx, quote, vendor, unit_micros, now)
        index = row.spent + quote.units
        value = self._walker(row).value(index)
        tx.advance_commitment(row, index)
        payment = payword.Payment(commitment_id=row.id, index=index, value=value)
        commitment = None if row.acknowledged else row.encoded
        sent = PaywordPayload(payment=payword.encode_payment(payment), commitment=commitment)
        payload = sent.to_json()
        return Reservation(position=index, release=lambda: payload, commitment_id=row.id)

    def _open_commitment(
        self, tx: WriteTx, quote: Quote, vendor: str, unit_micros: int, now: int
    ) -> CommitmentRow:
        for row in tx.open_commitments(quote.card.id, vendor, unit_micros):
            if row.remaining >= quote.units and row.expires_at > now + _COMMITMENT_MARGIN:
                return row
        row = self._new_commitment(quote.card, vendor, unit_micros, quote.units, now)
        if row.length < quote.units:
            raise CardExhausted("the credit limit does not cover this price")
        tx.insert_commitment(row)
        return row

    def _new_commitment(
        self, card: CardRow, vendor: str, unit_micros: int, units: int, now: int
    ) -> CommitmentRow:
        certificate = payword_certificate(card)
        seed = self._rng(32)
        commitment = payword.commit(
            payword_private_key(self._box, card),
            certificate,
            vendor_id=vendor,
            seed=seed,
            length=self._length(card, unit_micros, units),
            now=now,
            ttl=self._ttl,
            rng=self._rng,
            denomination=Denomination(currency=card.currency, unit_micros=unit_micros),
        )
        cid = payword.commitment_id(commitment)
        return CommitmentRow(
            id=cid,
            card=card.id,
            vendor_id=vendor,
            encoded=payword.encode_commitment(commitment),
            seed=self._box.seal(record_id("commitments", cid, "seed"), seed),
            length=commitment.length,
            spent=0,
            unit_micros=unit_micros,
            expires_at=commitment.expires_at,
            acknowledged=False,
            retired=False,
            created_at=now,
        )

    def catch_up(
        self, tx: WriteTx, card: CardRow, stale: StaleAt, commitment_id: bytes | None
    ) -> Skipped | None:
        """The vendor is not the user's issuer: it must show its last payword, which must be
        this commitment's own value at the position it names (else the commitment is not
        moved)."""
        row = None if commitment_id is None else tx.commitment(commitment_id)
        if row is None or stale.last_value is None:
            return None
        if not row.spent < stale.position <= row.length:
            return None
        if not constant_time_eq(self._walker(row).value(stale.position), stale.last_value):
            return None
        tx.advance_commitment(row, stale.position)
        return Skipped(
            units=stale.position - row.spent, position=stale.position, unit_micros=row.unit_micros
        )

    def _walker(self, row: CommitmentRow) -> ChainWalker:
        walker = self._walkers.get(row.id)
        if walker is None:
            seed = self._box.open(record_id("commitments", row.id, "seed"), row.seed)
            walker = self._walkers[row.id] = ChainWalker(payword.CHAIN_TAG, seed, row.length)
        return walker
