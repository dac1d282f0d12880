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

What goes into each payload is docs/http.md's: ``{"method", "payment"}`` and, for the first
PayWord payments under a commitment, ``"commitment"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from farthing.core.cardcode import Generator
from farthing.core.clock import RandomSource
from farthing.core.encoding import Reader, Writer, b64url_decode, b64url_encode
from farthing.core.errors import CardExhausted, ErrorCode, LocalProtocolError, MalformedMessage
from farthing.core.hashchain import ChainWalker
from farthing.core.money import Denomination
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
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
    "SzmChainMethod",
    "SzmPrbgMethod",
    "WalletMethod",
    "price_micros",
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


class WalletMethod(Protocol):
    name: str

    def quote(self, card: CardRow, challenge: Challenge, now: int) -> Quote | None: ...

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation: ...


# --- reading a challenge's request ---------------------------------------------------------


def price_micros(challenge: Challenge) -> int | None:
    """The asked price (``amount``, a decimal string of micros), or None if malformed."""
    amount = challenge.request.get("amount")
    if not isinstance(amount, str) or not amount.isdigit() or len(amount) > 18:
        return None
    value = int(amount)
    return value if value > 0 else None


def _currency(challenge: Challenge) -> str | None:
    currency = challenge.request.get("currency")
    return currency if isinstance(currency, str) else None


def _positive(challenge: Challenge, name: str) -> int | None:
    value = challenge.request.get(name)
    return value if type(value) is int and 0 < value < 1 << 62 else None


def _text(challenge: Challenge, name: str) -> str | None:
    value = challenge.request.get(name)
    return value if isinstance(value, str) and value else None


def _fits(card: CardRow, challenge: Challenge, method: str, now: int) -> bool:
    return (
        challenge.method == method == card.method
        and challenge.intent == "charge"
        and now < card.expires_at
        and _currency(challenge) == card.currency
    )


def _payload(method: str, payment: bytes, **extra: str) -> JsonObject:
    return {"method": method, "payment": b64url_encode(payment), **extra}


# --- SZM -----------------------------------------------------------------------------------


def _szm_quote(card: CardRow, challenge: Challenge, now: int) -> Quote | None:
    price = price_micros(challenge)
    if price is None or not _fits(card, challenge, card.method, now):
        return None
    if challenge.realm != card.realm:
        return None  # the vendor is the card's issuer: its realm is printed on the card
    units = -(-price // card.unit_micros)
    if units > card.balance:
        return None
    return Quote(
        method=card.method,
        challenge=challenge,
        card=card,
        units=units,
        price_micros=price,
        charged_micros=units * card.unit_micros,
        currency=card.currency,
    )


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
        payload = _payload(self.name, szm_chain.encode_payment(payment))
        return Reservation(
            position=payment.index,
            release=lambda: payload,
            sealing_key=key,
            sealing_card_id=card.card_id,
        )

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
        payload = _payload(self.name, szm_prbg.encode_payment(payment))
        return Reservation(
            position=payment.index,
            release=lambda: payload,
            sealing_key=key,
            sealing_card_id=card.card_id,
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
        price = price_micros(challenge)
        units = _positive(challenge, "units")
        unit_micros = _positive(challenge, "unitMicros")
        if price is None or units is None or unit_micros is None:
            return None
        if not _fits(card, challenge, self.name, now) or unit_micros != card.unit_micros:
            return None
        if _text(challenge, "merchant") is None or units > card.balance:
            return None
        return Quote(
            method=self.name,
            challenge=challenge,
            card=card,
            units=units,
            price_micros=price,
            charged_micros=units * unit_micros,
            currency=card.currency,
        )

    def reserve(self, tx: WriteTx, quote: Quote, good: str, now: int) -> Reservation:
        key = self._keys(quote.card)  # before any change: a wrong PIN spends nothing
        certificate = hll_certificate(quote.card)
        row = tx.card(quote.card.id)
        offer = offer_for(quote, good)
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
            payload = _payload(self.name, hll.encode_payment(purchase))
            if certificate is not None:  # lets a deferred-mode vendor serve without the bank
                payload["certificate"] = b64url_encode(certificate)
            return payload

        return Reservation(position=new_state.counter, release=release)


def offer_for(quote: Quote, good: str) -> hll.Offer:
    """The offer the vendor will rebuild: good = request path, T = the raw challenge id."""
    request = quote.challenge.request
    try:
        challenge = b64url_decode(quote.challenge.id, max_len=128)
        return hll.Offer(
            merchant_id=str(request["merchant"]),
            good=good,
            amount=quote.units,
            denomination=Denomination(currency=quote.currency, unit_micros=quote.card.unit_micros),
            challenge=challenge,
            expires_at=quote.challenge.expires,
        )
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
        price = price_micros(challenge)
        units = _positive(challenge, "units")
        unit_micros = _positive(challenge, "unitMicros")
        if price is None or units is None or unit_micros is None:
            return None
        if (
            not _fits(card, challenge, self.name, now)
            or challenge.request.get("broker") != card.realm
        ):
            return None
        if _text(challenge, "vendor") is None or units > self._capacity(card, unit_micros):
            return None
        return Quote(
            method=self.name,
            challenge=challenge,
            card=card,
            units=units,
            price_micros=price,
            charged_micros=units * unit_micros,
            currency=card.currency,
        )

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
        vendor = str(quote.challenge.request["vendor"])
        unit_micros = quote.charged_micros // quote.units  # the vendor's unit, from quote()
        row = self._open_commitment(tx, quote, vendor, unit_micros, now)
        index = row.spent + quote.units
        value = self._walker(row).value(index)
        tx.advance_commitment(row, index)
        payment = payword.Payment(commitment_id=row.id, index=index, value=value)
        extra = {} if row.acknowledged else {"commitment": b64url_encode(row.encoded)}
        payload = _payload(self.name, payword.encode_payment(payment), **extra)
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

    def _walker(self, row: CommitmentRow) -> ChainWalker:
        walker = self._walkers.get(row.id)
        if walker is None:
            seed = self._box.open(record_id("commitments", row.id, "seed"), row.seed)
            walker = self._walkers[row.id] = ChainWalker(payword.CHAIN_TAG, seed, row.length)
        return walker
