"""HLL: a smart card MACs each purchase under a key it shares with the bank.

Theory of operation
===================

Source. Hwang, Lin and Li, "A simple micro-payment scheme", Journal of Systems and
Software 55 (2001) 221-229. Only the abstract is available to us. It claims a scheme for
buying information goods on a network, built on a tamper-resistant device (a smart card)
and an efficient MAC, that authenticates legal users, keeps transaction messages intact
and prevents duplicate spending, and that is simple, efficient and cheap. It claims no
anonymity. Everything below the abstract's level is OUR RECONSTRUCTION, not the paper's
text; the field list of the MAC (ID_C, ID_M, G, a, T, CNT) follows the scheme's usual
description.

Parties and keys
----------------
- Bank B (the issuer) holds a master key K_B and derives each card key
  K_C = HMAC-SHA256(K_B, canonical("farthing/hll/card-key", ID_C)) (:func:`derive_card_key`).
  K_C is written into card C at personalisation and is never readable afterwards.
- Merchant M shares a random 32-byte key K_M with B (:func:`new_merchant_key`); it only
  authenticates M's deposit batches.
- Card C keeps ID_C, K_C, a balance BAL, a monotonic counter CNT and a PIN. The only thing
  the tamper-resistant part must do is ``mac(message) = HMAC-SHA256(K_C, message)``
  (:class:`CardKey`); a PKCS#11 token does that inside itself with CKM_SHA256_HMAC, and
  :class:`SoftwareCardKey` does it in memory for tests.

One purchase
------------
1. M makes an :class:`Offer`: merchant id ID_M, good G (the resource), price a in units
   of a :class:`~farthing.core.money.Denomination`, a fresh challenge T and an expiry.
2. The card, after its PIN, checks the offer (:func:`authorize_purchase`): not expired,
   same denomination, 0 < a <= BAL. It moves to CNT + 1 and BAL - a, and the host persists
   that new state BEFORE the MAC is released (write-ahead), so a crash can lose money for
   the holder but never spend the same counter twice.
3. The card returns sigma = HMAC(K_C, canonical("farthing/hll/purchase", ID_C, ID_M, G,
   a, currency, unit_micros, T, CNT, expiry)) (:func:`complete_purchase`). Binding the
   denomination and the expiry goes beyond the paper's fields; it is our choice, so that a
   MAC made for one currency or one time window cannot be read under another.
4. C sends the :class:`Purchase` (ID_C, CNT, sigma). M knows its own offer, so the
   payment does not repeat it.
5. M cannot check sigma (it lacks K_C). Online mode: M forwards to B, which verifies
   and settles at once (:func:`card_may_pay`, then :func:`judge_spend`). Deferred mode:
   M delivers without B only for a card B vouches for, and only within two caps; otherwise
   it goes online
   (:func:`decide_deferred`). It rejects local replays of (ID_C, CNT), and later deposits
   a :class:`DepositBatch` tagged with K_M; B verifies every sigma and reports each item
   accepted, duplicate or invalid (:func:`judge_deposit_item`, :func:`judge_spend`,
   :class:`DepositTally`; idempotent by batch id). The in-memory parties that play these
   roles in tests are in :mod:`farthing.testing.hll`.

The card certificate (our addition; the paper's abstract does not say how a merchant
that delivers before B verifies knows a card exists). At personalisation B signs, with an
Ed25519 key derived from K_B (:func:`card_certification_key`), the card id, its
denomination and an expiry (:class:`CardCertificate`). The card presents it with each
payment. M checks it offline against B's public key, so a made-up card id never gets a
deferred delivery. Deferred exposure is then bounded twice (:class:`DeferredRisk`): per
card by ``limit`` and per merchant by ``merchant_cap``, the total value M has delivered
and B has not yet answered for. The certificate proves the card was issued, not that it
is unblocked or funded: a blocked or emptied card (or a stolen K_C) can still be served
deferred until its certificate expires, within those two caps.

Duplicate spending is stopped three times: inside the card (the counter only grows and
the balance only shrinks), by the MAC (it binds merchant, challenge and counter, so a
payment cannot be moved to another offer), and at B (each (ID_C, CNT) is accepted once;
storage enforces it with a UNIQUE constraint). B also never lets a card's total exceed
its loaded value (defence in depth against a broken card).

Known weaknesses (the scheme's, not fixed here)
-----------------------------------------------
- Everything rests on tamper resistance: whoever extracts K_C can mint payments up to
  the card's loaded value (B's cap bounds the loss). With a PKCS#11 token the counter and
  balance live beside the token, so the token alone does not enforce them.
- B knows every K_C, so B can forge any payment: there is no non-repudiation.
- B sees every purchase (card, merchant, good): no privacy from the bank.
- No fair exchange: the card pays before the good is delivered; a merchant that refuses
  afterwards (e.g. over its risk limit) leaves the holder out of pocket until B
  reconciles the card.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final, Protocol, TypeAlias, final

from farthing.core.clock import RandomSource
from farthing.core.encoding import Reader, Writer, header
from farthing.core.errors import (
    CardExhausted,
    CardLocked,
    Conflict,
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    PaymentExpired,
    UnsupportedMethod,
)
from farthing.core.money import Denomination, decoded_denomination
from farthing.core.primitives import (
    constant_time_eq,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    hmac_sha256,
)
from farthing.core.retry import same_request

__all__ = [
    "BATCH_ID_LEN",
    "CARD_ID_LEN",
    "DEFAULT_CHALLENGE_LEN",
    "DEFAULT_DEPOSIT_WINDOW",
    "DOMAIN_CARD_CERTIFICATE",
    "DOMAIN_CARD_CERTIFICATE_BODY",
    "DOMAIN_CARD_CERTIFICATION_KEY",
    "DOMAIN_CARD_KEY",
    "DOMAIN_DEPOSIT",
    "DOMAIN_OFFER",
    "DOMAIN_PAYMENT",
    "DOMAIN_PURCHASE",
    "DOMAIN_REPORT",
    "KEY_LEN",
    "MAC_LEN",
    "MAX_BATCH_ITEMS",
    "MAX_CHALLENGE_LEN",
    "MAX_GOOD_LEN",
    "MAX_MERCHANT_ID_LEN",
    "MAX_PIN_TRIES",
    "MIN_CHALLENGE_LEN",
    "BankCard",
    "CardCertificate",
    "CardKey",
    "CardKeyLookup",
    "CardState",
    "DeferredDecision",
    "DeferredRisk",
    "DepositBatch",
    "DepositItem",
    "DepositRefusal",
    "DepositReport",
    "DepositTally",
    "Offer",
    "Purchase",
    "SoftwareCardKey",
    "SpendRecord",
    "VerifiedPurchase",
    "authorize_purchase",
    "batch_tag",
    "card_certificate_body",
    "card_certification_key",
    "card_certification_public_key",
    "card_may_pay",
    "check_fresh",
    "check_merchant_repeat",
    "check_resent_batch",
    "check_spend",
    "complete_purchase",
    "decide_deferred",
    "decode_batch",
    "decode_card_certificate",
    "decode_offer",
    "decode_payment",
    "decode_report",
    "derive_card_key",
    "encode_batch",
    "encode_card_certificate",
    "encode_offer",
    "encode_payment",
    "encode_report",
    "is_online_retry",
    "is_text",
    "is_u64",
    "issue_card_certificate",
    "judge_deposit_item",
    "judge_spend",
    "make_offer",
    "new_card_id",
    "new_merchant_key",
    "purchase_message",
    "refused_items",
    "take_random",
    "verify_batch_tag",
    "verify_card_certificate",
    "verify_deposit_item",
    "verify_purchase",
    "verify_purchase_bytes",
    "verify_received_batch_tag",
]

CARD_ID_LEN: Final = 16
KEY_LEN: Final = 32
MAC_LEN: Final = 32
BATCH_ID_LEN: Final = 16
MIN_CHALLENGE_LEN: Final = 16
MAX_CHALLENGE_LEN: Final = 64
DEFAULT_CHALLENGE_LEN: Final = 16
MAX_MERCHANT_ID_LEN: Final = 64
MAX_GOOD_LEN: Final = 512
MAX_PIN_TRIES: Final = 3
MAX_BATCH_ITEMS: Final = 1000
SIGNATURE_LEN: Final = 64
_U64_MAX: Final = (1 << 64) - 1
DEFAULT_DEPOSIT_WINDOW: Final = 30 * 86400

DOMAIN_CARD_KEY: Final = "farthing/hll/card-key"
DOMAIN_CARD_CERTIFICATION_KEY: Final = "farthing/hll/card-certification-key"
DOMAIN_CARD_CERTIFICATE: Final = "farthing/hll/card-certificate"
DOMAIN_CARD_CERTIFICATE_BODY: Final = "farthing/hll/card-certificate-body"
DOMAIN_OFFER: Final = "farthing/hll/offer"
DOMAIN_PURCHASE: Final = "farthing/hll/purchase"
DOMAIN_PAYMENT: Final = "farthing/hll/payment"
DOMAIN_DEPOSIT: Final = "farthing/hll/deposit"
DOMAIN_REPORT: Final = "farthing/hll/deposit-report"

CardKeyLookup: TypeAlias = Callable[[bytes], bytes | None]
"""Maps a card id to its key K_C, or None for an unknown card (e.g. ``keys.get``)."""

_U16: Final = struct.Struct(">H")

# The purchase MAC input, built by concatenation on the bank's hot path. It is exactly
# Writer(DOMAIN_PURCHASE).bytes(ID_C).text(ID_M).text(G).u64(a).text(currency)
# .u64(unit_micros).bytes(T).u64(CNT).u64(expires_at).finish() (a test checks this).
_PURCHASE_PREFIX: Final = header(DOMAIN_PURCHASE) + _U16.pack(CARD_ID_LEN)
_PURCHASE_MIDDLE: Final = struct.Struct(">QH3sQH")  # a, len(cur)=3, currency, unit, len(T)
_PURCHASE_TAIL: Final = struct.Struct(">QQ")  # CNT, expires_at

# The payment has one fixed layout; the fast path unpacks it in one call, not a Reader.
_PAYMENT_PREFIX: Final = header(DOMAIN_PAYMENT) + _U16.pack(CARD_ID_LEN)
_PAYMENT_LAYOUT: Final = struct.Struct(f">{len(_PAYMENT_PREFIX)}s{CARD_ID_LEN}sQ2s{MAC_LEN}s")
_PAYMENT_LEN: Final = _PAYMENT_LAYOUT.size
_SIGMA_LEN_FIELD: Final = _U16.pack(MAC_LEN)

_MAX_OFFER_LEN: Final = (
    len(header(DOMAIN_OFFER))
    + (2 + MAX_MERCHANT_ID_LEN)
    + (2 + MAX_GOOD_LEN)
    + 8
    + (2 + 3)
    + 8
    + (2 + MAX_CHALLENGE_LEN)
    + 8
)
_MAX_BATCH_LEN: Final = 256 + MAX_BATCH_ITEMS * (2 + _MAX_OFFER_LEN + 2 + _PAYMENT_LEN)
_MAX_REPORT_LEN: Final = 256 + MAX_BATCH_ITEMS * (2 + CARD_ID_LEN + 16)


# --- keys and small helpers ---------------------------------------------------------------


def derive_card_key(master_key: bytes, card_id: bytes) -> bytes:
    """K_C = HMAC-SHA256(K_B, canonical(DOMAIN_CARD_KEY, ID_C)); 32 bytes."""
    if len(master_key) != KEY_LEN or len(card_id) != CARD_ID_LEN:
        raise ValueError("derive_card_key needs a 32-byte master key and a 16-byte card id")
    return hmac_sha256(master_key, Writer(DOMAIN_CARD_KEY).bytes(card_id).finish())


def new_merchant_key(rng: RandomSource) -> bytes:
    """A fresh K_M, made by the bank and shared with one merchant."""
    return take_random(rng, KEY_LEN)


def new_card_id(rng: RandomSource) -> bytes:
    """A fresh random card id."""
    return take_random(rng, CARD_ID_LEN)


def take_random(rng: RandomSource, n: int) -> bytes:
    value = rng(n)
    if len(value) != n:
        raise ValueError("random source returned the wrong number of bytes")
    return value


_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value <= _U64_MAX


def is_text(value: object, max_len: int) -> bool:
    """Non-empty canonical text (NFC, no control characters) of at most max_len bytes."""
    if not isinstance(value, str) or not value:
        return False
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return False
    # ASCII is NFC; the Cc category is exactly U+0000-U+001F and U+007F-U+009F, one
    # regular-expression search instead of a category lookup per character (a deposit
    # checks three texts per item).
    return (
        size <= max_len
        and (value.isascii() or unicodedata.is_normalized("NFC", value))
        and _CONTROL_CHARS.search(value) is None
    )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise MalformedMessage(f"invalid {what}", code=ErrorCode.BAD_FIELD)


def check_fresh(offer: Offer, now: int) -> None:
    if now >= offer.expires_at:
        raise PaymentExpired("the offer has expired", code=ErrorCode.CHALLENGE_EXPIRED)


# --- the offer ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """What the merchant asks: ``amount`` units of ``denomination`` for ``good``.

    ``challenge`` is T: 16..64 unpredictable single-use bytes (the HTTP layer passes its
    challenge id). The offer is valid while ``now < expires_at``.
    """

    merchant_id: str
    good: str
    amount: int
    denomination: Denomination
    challenge: bytes
    expires_at: int
    # The offer's part of the purchase MAC input, encoded once per offer (hot path).
    _mac_body: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(is_text(self.merchant_id, MAX_MERCHANT_ID_LEN), "merchant id")
        _require(is_text(self.good, MAX_GOOD_LEN), "good")
        _require(is_u64(self.amount) and self.amount > 0, "amount")
        _require(isinstance(self.denomination, Denomination), "denomination")
        _require(
            isinstance(self.challenge, bytes)
            and MIN_CHALLENGE_LEN <= len(self.challenge) <= MAX_CHALLENGE_LEN,
            "challenge",
        )
        _require(is_u64(self.expires_at), "expiry")
        object.__setattr__(self, "_mac_body", _offer_mac_body(self))


def make_offer(
    *,
    merchant_id: str,
    good: str,
    amount: int,
    denomination: Denomination,
    rng: RandomSource,
    now: int,
    ttl: int,
    challenge: bytes | None = None,
) -> Offer:
    """A fresh offer valid for ``ttl`` seconds; T comes from ``rng`` unless given."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    return Offer(
        merchant_id=merchant_id,
        good=good,
        amount=amount,
        denomination=denomination,
        challenge=challenge if challenge is not None else take_random(rng, DEFAULT_CHALLENGE_LEN),
        expires_at=now + ttl,
    )


def encode_offer(offer: Offer) -> bytes:
    return (
        Writer(DOMAIN_OFFER)
        .text(offer.merchant_id)
        .text(offer.good)
        .u64(offer.amount)
        .text(offer.denomination.currency)
        .u64(offer.denomination.unit_micros)
        .bytes(offer.challenge)
        .u64(offer.expires_at)
        .finish()
    )


def decode_offer(data: bytes) -> Offer:
    reader = Reader(data, DOMAIN_OFFER)
    merchant_id = reader.text(max_len=MAX_MERCHANT_ID_LEN)
    good = reader.text(max_len=MAX_GOOD_LEN)
    amount = reader.u64()
    currency = reader.text(max_len=3)
    unit_micros = reader.u64()
    challenge = reader.bytes(max_len=MAX_CHALLENGE_LEN)
    expires_at = reader.u64()
    reader.finish()
    denomination = decoded_denomination(currency, unit_micros)
    return Offer(
        merchant_id=merchant_id,
        good=good,
        amount=amount,
        denomination=denomination,
        challenge=challenge,
        expires_at=expires_at,
    )


def purchase_message(card_id: bytes, offer: Offer, counter: int) -> bytes:
    """The bytes the card MACs for ``offer`` at position ``counter`` (see the module doc)."""
    if len(card_id) != CARD_ID_LEN or not 0 <= counter <= _U64_MAX:
        raise ValueError("card id must be 16 bytes and counter a u64")
    return (
        _PURCHASE_PREFIX
        + card_id
        + offer._mac_body
        + _PURCHASE_TAIL.pack(counter, offer.expires_at)
    )


def _offer_mac_body(offer: Offer) -> bytes:
    """ID_M, G, a, currency, unit_micros and T, encoded as Writer fields."""
    merchant = offer.merchant_id.encode()
    good = offer.good.encode()
    denomination = offer.denomination
    challenge = offer.challenge
    return b"".join(
        (
            _U16.pack(len(merchant)),
            merchant,
            _U16.pack(len(good)),
            good,
            _PURCHASE_MIDDLE.pack(
                offer.amount,
                3,
                denomination.currency.encode(),
                denomination.unit_micros,
                len(challenge),
            ),
            challenge,
        )
    )


# --- the payment --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Purchase:
    """The wire payment (ID_C, CNT, sigma); the merchant already holds the offer."""

    card_id: bytes
    counter: int
    sigma: bytes

    def __post_init__(self) -> None:
        _require(isinstance(self.card_id, bytes) and len(self.card_id) == CARD_ID_LEN, "card id")
        _require(is_u64(self.counter), "counter")
        _require(isinstance(self.sigma, bytes) and len(self.sigma) == MAC_LEN, "MAC")


def encode_payment(purchase: Purchase) -> bytes:
    return (
        Writer(DOMAIN_PAYMENT)
        .bytes(purchase.card_id)
        .u64(purchase.counter)
        .bytes(purchase.sigma)
        .finish()
    )


def decode_payment(data: bytes) -> Purchase:
    reader = Reader(data, DOMAIN_PAYMENT)
    card_id = reader.bytes(exact=CARD_ID_LEN)
    counter = reader.u64()
    sigma = reader.bytes(exact=MAC_LEN)
    reader.finish()
    return Purchase(card_id=card_id, counter=counter, sigma=sigma)


def _split_payment(payment: bytes) -> tuple[bytes, int, bytes]:
    """(card id, counter, sigma) unpacked from the fixed layout; the Reader only on failure."""
    if type(payment) is bytes and len(payment) == _PAYMENT_LEN:
        prefix, card_id, counter, sigma_len, sigma = _PAYMENT_LAYOUT.unpack(payment)
        if prefix == _PAYMENT_PREFIX and sigma_len == _SIGMA_LEN_FIELD:
            return card_id, counter, sigma
    purchase = decode_payment(payment)  # raises the precise MalformedMessage
    return purchase.card_id, purchase.counter, purchase.sigma


# --- the card certificate -----------------------------------------------------------------


def card_certification_key(master_key: bytes) -> bytes:
    """B's Ed25519 signing key (seed) for card certificates, derived from K_B."""
    if len(master_key) != KEY_LEN:
        raise ValueError("card_certification_key needs a 32-byte master key")
    return hmac_sha256(master_key, Writer(DOMAIN_CARD_CERTIFICATION_KEY).finish())


def card_certification_public_key(master_key: bytes) -> bytes:
    """What merchants configure to check card certificates offline (32 bytes)."""
    return ed25519_public_key(card_certification_key(master_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class CardCertificate:
    """B vouches that card ``card_id`` of ``denomination`` was issued; valid while
    ``now < expires_at``."""

    card_id: bytes
    denomination: Denomination
    expires_at: int
    signature: bytes

    def __post_init__(self) -> None:
        _require(isinstance(self.card_id, bytes) and len(self.card_id) == CARD_ID_LEN, "card id")
        _require(isinstance(self.denomination, Denomination), "denomination")
        _require(is_u64(self.expires_at), "expiry")
        _require(
            isinstance(self.signature, bytes) and len(self.signature) == SIGNATURE_LEN,
            "signature",
        )


def card_certificate_body(card_id: bytes, denomination: Denomination, expires_at: int) -> bytes:
    """The bytes B signs: card id, currency, unit and expiry, domain-separated."""
    return (
        Writer(DOMAIN_CARD_CERTIFICATE_BODY)
        .bytes(card_id)
        .text(denomination.currency)
        .u64(denomination.unit_micros)
        .u64(expires_at)
        .finish()
    )


def issue_card_certificate(
    signing_key: bytes, *, card_id: bytes, denomination: Denomination, expires_at: int
) -> CardCertificate:
    """B's certificate for a card it personalised (``signing_key``: the Ed25519 seed)."""
    if len(card_id) != CARD_ID_LEN or not is_u64(expires_at):
        raise ValueError("card id must be 16 bytes and the expiry a u64")
    body = card_certificate_body(card_id, denomination, expires_at)
    return CardCertificate(
        card_id=card_id,
        denomination=denomination,
        expires_at=expires_at,
        signature=ed25519_sign(signing_key, body),
    )


def encode_card_certificate(cert: CardCertificate) -> bytes:
    return (
        Writer(DOMAIN_CARD_CERTIFICATE)
        .bytes(cert.card_id)
        .text(cert.denomination.currency)
        .u64(cert.denomination.unit_micros)
        .u64(cert.expires_at)
        .bytes(cert.signature)
        .finish()
    )


def decode_card_certificate(data: bytes) -> CardCertificate:
    reader = Reader(data, DOMAIN_CARD_CERTIFICATE, max_size=256)
    card_id = reader.bytes(exact=CARD_ID_LEN)
    currency = reader.text(max_len=3)
    unit_micros = reader.u64()
    expires_at = reader.u64()
    signature = reader.bytes(exact=SIGNATURE_LEN)
    reader.finish()
    return CardCertificate(
        card_id=card_id,
        denomination=decoded_denomination(currency, unit_micros),
        expires_at=expires_at,
        signature=signature,
    )


def verify_card_certificate(
    bank_public_key: bytes,
    cert: CardCertificate,
    *,
    card_id: bytes,
    denomination: Denomination,
    now: int,
) -> None:
    """None if B signed ``cert`` for this card and denomination and it has not expired.

    Raises InvalidPayment (SIGNATURE_INVALID: not B's signature; PAYMENT_INVALID: another
    card or denomination) or PaymentExpired (CERTIFICATE_EXPIRED).
    """
    body = card_certificate_body(cert.card_id, cert.denomination, cert.expires_at)
    ed25519_verify(bank_public_key, cert.signature, body)
    if not constant_time_eq(cert.card_id, card_id) or cert.denomination != denomination:
        raise InvalidPayment()
    if now >= cert.expires_at:
        raise PaymentExpired("card certificate expired", code=ErrorCode.CERTIFICATE_EXPIRED)


# --- verification -------------------------------------------------------------------------

_VERIFIER: Final = object()


@final
class VerifiedPurchase:
    """A purchase whose MAC verified for ``offer``.

    Only this module's verifiers create it (they pass a private token). Holding one means
    the MAC check passed, nothing more: whether (card, counter) is new is the caller's
    (storage's) question. A read-only value (properties over private slots, equality by
    fields); a plain class rather than a frozen dataclass, whose constructor cost half as
    much as the MAC itself on the bank's hot path.
    """

    __slots__ = ("_card_id", "_counter", "_offer")

    def __init__(self, card_id: bytes, counter: int, offer: Offer, _token: object = None) -> None:
        if _token is not _VERIFIER:
            raise LocalProtocolError("only the HLL verifier creates VerifiedPurchase")
        self._card_id = card_id
        self._counter = counter
        self._offer = offer

    @property
    def card_id(self) -> bytes:
        return self._card_id

    @property
    def counter(self) -> int:
        return self._counter

    @property
    def offer(self) -> Offer:
        return self._offer

    @property
    def merchant_id(self) -> str:
        return self._offer.merchant_id

    @property
    def amount(self) -> int:
        return self._offer.amount

    @property
    def denomination(self) -> Denomination:
        return self._offer.denomination

    @property
    def good(self) -> str:
        return self._offer.good

    def _fields(self) -> tuple[bytes, int, Offer]:
        return self._card_id, self._counter, self._offer

    def __eq__(self, other: object) -> bool:
        if type(other) is not VerifiedPurchase:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "VerifiedPurchase(card_id={!r}, counter={!r}, offer={!r})".format(*self._fields())


def _check_mac(
    card_key: bytes, offer: Offer, card_id: bytes, counter: int, sigma: bytes
) -> VerifiedPurchase:
    if counter == 0 or len(card_key) != KEY_LEN:  # a card's first payment has CNT = 1
        raise InvalidPayment()
    expected = hmac_sha256(card_key, purchase_message(card_id, offer, counter))
    if not constant_time_eq(expected, sigma):
        raise InvalidPayment()
    return VerifiedPurchase(card_id, counter, offer, _VERIFIER)  # positional: cheaper


def verify_purchase(
    card_key: bytes, offer: Offer, purchase: Purchase, now: int
) -> VerifiedPurchase:
    """Check sigma for ``offer`` under K_C. Expired offer: PaymentExpired; anything else
    wrong: InvalidPayment. Does not check whether (ID_C, CNT) was seen before."""
    check_fresh(offer, now)
    return _check_mac(card_key, offer, purchase.card_id, purchase.counter, purchase.sigma)


def verify_purchase_bytes(
    key_for: CardKeyLookup, offer: Offer, payment: bytes, now: int
) -> VerifiedPurchase:
    """:func:`verify_purchase` straight from the encoded payment (the hot path).

    ``key_for`` finds K_C by card id (a dict's ``get``, or a derivation from K_B); an
    unknown card is an InvalidPayment. Malformed bytes raise MalformedMessage.
    """
    check_fresh(offer, now)
    card_id, counter, sigma = _split_payment(payment)
    card_key = key_for(card_id)
    if card_key is None:
        raise InvalidPayment()
    return _check_mac(card_key, offer, card_id, counter, sigma)


# --- the card -----------------------------------------------------------------------------


class CardKey(Protocol):
    """The tamper-resistant part: HMAC-SHA256 under K_C, the key never leaving it."""

    def mac(self, message: bytes) -> bytes: ...


class SoftwareCardKey:
    """K_C held in memory; for tests and the demo. A PKCS#11 token is the real thing."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise ValueError("card key must be 32 bytes")
        self._key = key

    def mac(self, message: bytes) -> bytes:
        return hmac_sha256(self._key, message)

    def __repr__(self) -> str:
        return "SoftwareCardKey(<secret>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class CardState:
    """What the card remembers between purchases; persisted by the wallet adapter."""

    card_id: bytes
    denomination: Denomination
    balance: int
    counter: int = 0
    pin_tries_left: int = MAX_PIN_TRIES

    def __post_init__(self) -> None:
        if not isinstance(self.card_id, bytes) or len(self.card_id) != CARD_ID_LEN:
            raise ValueError("card id must be 16 bytes")
        if not (is_u64(self.balance) and is_u64(self.counter)):
            raise ValueError("balance and counter must be u64")
        if not 0 <= self.pin_tries_left <= MAX_PIN_TRIES:
            raise ValueError("pin_tries_left out of range")


def authorize_purchase(state: CardState, offer: Offer, now: int) -> tuple[CardState, bytes]:
    """The card's checks. Returns (state after the purchase, the message to MAC).

    Persist the new state BEFORE calling :func:`complete_purchase`, so a released MAC
    always has its counter and balance recorded. Raises CardLocked, PaymentExpired
    (CHALLENGE_EXPIRED), UnsupportedMethod (another denomination), CardExhausted (balance
    or counter used up), MalformedMessage (non-positive amount).
    """
    if state.pin_tries_left <= 0:
        raise CardLocked("the card is locked")
    check_fresh(offer, now)
    if offer.denomination != state.denomination:
        raise UnsupportedMethod("the card holds another denomination")
    if offer.amount <= 0:  # Offer forbids it; the card does not trust its host anyway
        raise MalformedMessage("invalid amount", code=ErrorCode.BAD_FIELD)
    if offer.amount > state.balance:
        raise CardExhausted("the card's balance is too low")
    if state.counter >= _U64_MAX:
        raise CardExhausted("the card's counter is used up")
    counter = state.counter + 1
    new_state = replace(state, balance=state.balance - offer.amount, counter=counter)
    return new_state, purchase_message(state.card_id, offer, counter)


def complete_purchase(
    card_id: bytes, counter: int, challenge: bytes, key: CardKey, message: bytes
) -> Purchase:
    """MAC ``message`` with the card key and wrap it as the wire :class:`Purchase`.

    The message must be the purchase message for exactly this card, counter and
    challenge (as :func:`authorize_purchase` made it), so this is never a general MAC
    oracle for the host; anything else is a LocalProtocolError.
    """
    _check_is_purchase_message(message, card_id, counter, challenge)
    return Purchase(card_id=card_id, counter=counter, sigma=key.mac(message))


def _check_is_purchase_message(
    message: bytes, card_id: bytes, counter: int, challenge: bytes
) -> None:
    try:
        reader = Reader(message, DOMAIN_PURCHASE)
        fields_ok = constant_time_eq(reader.bytes(exact=CARD_ID_LEN), card_id)
        reader.text(max_len=MAX_MERCHANT_ID_LEN)
        reader.text(max_len=MAX_GOOD_LEN)
        reader.u64()
        reader.text(max_len=3)
        reader.u64()
        fields_ok &= reader.bytes(max_len=MAX_CHALLENGE_LEN) == challenge
        fields_ok &= reader.u64() == counter
        reader.u64()
        reader.finish()
    except MalformedMessage:
        fields_ok = False
    if not fields_ok:
        raise LocalProtocolError("not the purchase message to MAC")


# --- deposits -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositItem:
    offer: Offer
    purchase: Purchase


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositBatch:
    """Payments a merchant accepted in deferred mode, sent to the bank in one go."""

    batch_id: bytes
    merchant_id: str
    items: tuple[DepositItem, ...]

    def __post_init__(self) -> None:
        _require(
            isinstance(self.batch_id, bytes) and len(self.batch_id) == BATCH_ID_LEN, "batch id"
        )
        _require(is_text(self.merchant_id, MAX_MERCHANT_ID_LEN), "merchant id")
        _require(
            isinstance(self.items, tuple)
            and len(self.items) <= MAX_BATCH_ITEMS
            and all(isinstance(item, DepositItem) for item in self.items),
            "items",
        )


def encode_batch(batch: DepositBatch) -> bytes:
    writer = Writer(DOMAIN_DEPOSIT).bytes(batch.batch_id).text(batch.merchant_id)
    writer.u64(len(batch.items))
    for item in batch.items:
        writer.bytes(encode_offer(item.offer)).bytes(encode_payment(item.purchase))
    return writer.finish()


def decode_batch(data: bytes) -> DepositBatch:
    reader = Reader(data, DOMAIN_DEPOSIT, max_size=_MAX_BATCH_LEN)
    batch_id = reader.bytes(exact=BATCH_ID_LEN)
    merchant_id = reader.text(max_len=MAX_MERCHANT_ID_LEN)
    count = reader.u64()
    if count > MAX_BATCH_ITEMS:
        raise MalformedMessage("too many items in the batch", code=ErrorCode.OVERSIZED)
    items = []
    for _ in range(count):
        offer = decode_offer(reader.bytes(max_len=_MAX_OFFER_LEN))
        card_id, counter, sigma = _split_payment(reader.bytes(exact=_PAYMENT_LEN))
        purchase = Purchase(card_id=card_id, counter=counter, sigma=sigma)
        items.append(DepositItem(offer=offer, purchase=purchase))
    reader.finish()
    return DepositBatch(batch_id=batch_id, merchant_id=merchant_id, items=tuple(items))


def batch_tag(merchant_key: bytes, batch: DepositBatch) -> bytes:
    """HMAC-SHA256 under K_M over the canonical batch (its domain separates it)."""
    return hmac_sha256(merchant_key, encode_batch(batch))


def verify_batch_tag(merchant_key: bytes, batch: DepositBatch, tag: bytes) -> None:
    """Returns None or raises InvalidPayment(DEPOSIT_INVALID)."""
    if not constant_time_eq(batch_tag(merchant_key, batch), tag):
        raise InvalidPayment("deposit did not verify", code=ErrorCode.DEPOSIT_INVALID)


def verify_received_batch_tag(merchant_key: bytes, batch_bytes: bytes, tag: bytes) -> None:
    """:func:`verify_batch_tag` for a batch as it arrived (bytes :func:`decode_batch`
    accepted), without encoding it again: the encoding is canonical (fixed-width integers,
    length-prefixed fields, NFC UTF-8, no trailing bytes), so the bytes received are the
    bytes the merchant MACed. Returns None or raises InvalidPayment(DEPOSIT_INVALID)."""
    if not constant_time_eq(hmac_sha256(merchant_key, batch_bytes), tag):
        raise InvalidPayment("deposit did not verify", code=ErrorCode.DEPOSIT_INVALID)


def verify_deposit_item(
    key_for: CardKeyLookup, merchant_id: str, item: DepositItem
) -> VerifiedPurchase:
    """Check one deposited payment (no expiry check: the bank sees it after the fact).

    An item whose offer names another merchant is invalid: a merchant cannot deposit
    payments made to someone else.
    """
    if item.offer.merchant_id != merchant_id:
        raise InvalidPayment()
    card_key = key_for(item.purchase.card_id)
    if card_key is None:
        raise InvalidPayment()
    purchase = item.purchase
    return _check_mac(card_key, item.offer, purchase.card_id, purchase.counter, purchase.sigma)


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositReport:
    """The bank's answer to one batch; ``credited`` = sum of accepted amounts."""

    batch_id: bytes
    accepted: tuple[tuple[bytes, int, int], ...]  # (card id, counter, amount)
    duplicates: tuple[tuple[bytes, int], ...]  # (card id, counter)
    invalid: tuple[tuple[bytes, int], ...]  # (card id, counter)
    credited: int


def encode_report(report: DepositReport) -> bytes:
    writer = Writer(DOMAIN_REPORT).bytes(report.batch_id).u64(len(report.accepted))
    for card_id, counter, amount in report.accepted:
        writer.bytes(card_id).u64(counter).u64(amount)
    for pairs in (report.duplicates, report.invalid):
        writer.u64(len(pairs))
        for card_id, counter in pairs:
            writer.bytes(card_id).u64(counter)
    return writer.u64(report.credited).finish()


def decode_report(data: bytes) -> DepositReport:
    reader = Reader(data, DOMAIN_REPORT, max_size=_MAX_REPORT_LEN)
    batch_id = reader.bytes(exact=BATCH_ID_LEN)
    accepted = tuple(
        (reader.bytes(exact=CARD_ID_LEN), reader.u64(), reader.u64())
        for _ in range(_read_count(reader))
    )
    duplicates = _read_pairs(reader)
    invalid = _read_pairs(reader)
    credited = reader.u64()
    reader.finish()
    return DepositReport(
        batch_id=batch_id,
        accepted=accepted,
        duplicates=duplicates,
        invalid=invalid,
        credited=credited,
    )


def _read_count(reader: Reader) -> int:
    count = reader.u64()
    if count > MAX_BATCH_ITEMS:
        raise MalformedMessage("too many items in the report", code=ErrorCode.OVERSIZED)
    return count


def _read_pairs(reader: Reader) -> tuple[tuple[bytes, int], ...]:
    return tuple(
        (reader.bytes(exact=CARD_ID_LEN), reader.u64()) for _ in range(_read_count(reader))
    )


# --- the bank's rules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BankCard:
    """What the bank holds on one card when it judges a payment for it: K_C, the card's
    denomination, whether it may pay at all (not blocked), and the units loaded and spent."""

    key: bytes = field(repr=False)
    denomination: Denomination
    active: bool
    loaded: int
    spent: int

    @property
    def remaining(self) -> int:
        return self.loaded - self.spent


class DepositRefusal(StrEnum):
    """Why the bank did not accept one deposited item. The report says only duplicate or
    invalid (:attr:`is_duplicate`); the reason is for the bank's own records and tests."""

    DUPLICATE = "duplicate"  # (card, counter) accepted before
    UNKNOWN_CARD = "unknown card"
    BLOCKED = "card blocked"
    DENOMINATION = "another denomination"
    CURRENCY = "the merchant is paid in another currency"
    TOO_LATE = "deposited after the window"
    OVER_LOADED = "more than the card ever held"
    BAD_MAC = "MAC did not verify"
    OVERSPENT = "the card cannot cover it"

    @property
    def is_duplicate(self) -> bool:
        return self is DepositRefusal.DUPLICATE


def card_may_pay(card: BankCard | None, offer: Offer, *, merchant_currency: str) -> None:
    """Whether ``card`` may pay ``offer`` to a merchant paid in ``merchant_currency``:
    None, or raise. Unknown, blocked or of another denomination: InvalidPayment (the same
    answer as a bad MAC); the merchant is paid in another currency: UnsupportedMethod. The
    bank asks this after the MAC verified, then :func:`judge_spend` (spent before? covered?).
    """
    if card is None:
        raise InvalidPayment()
    refusal = _card_refusal(card, offer, merchant_currency=merchant_currency)
    if refusal is DepositRefusal.CURRENCY:
        raise UnsupportedMethod("this merchant is paid in another currency")
    if refusal is not None:
        raise InvalidPayment()


def judge_deposit_item(
    card: BankCard | None,
    item: DepositItem,
    *,
    merchant_id: str,
    merchant_currency: str,
    now: int,
    deposit_window: int,
) -> VerifiedPurchase | DepositRefusal:
    """The bank's judgement of one deposited item from the card alone (``card``: the item's
    card, None if unknown): the verified purchase, or why it is refused.

    Whether (card, counter) is new and the card still covers it is :func:`judge_spend`'s
    question, asked next (storage answers it atomically with the same order). The spent
    units are not read here, so a card's record may be loaded once per batch.
    """
    if card is None:
        return DepositRefusal.UNKNOWN_CARD
    refusal = _card_refusal(card, item.offer, merchant_currency=merchant_currency)
    if refusal is not None:
        return refusal
    if now >= item.offer.expires_at + deposit_window:
        return DepositRefusal.TOO_LATE
    if item.offer.amount > card.loaded:
        return DepositRefusal.OVER_LOADED
    try:
        return verify_deposit_item(lambda _card_id: card.key, merchant_id, item)
    except InvalidPayment:
        return DepositRefusal.BAD_MAC


def _card_refusal(card: BankCard, offer: Offer, *, merchant_currency: str) -> DepositRefusal | None:
    if not card.active:
        return DepositRefusal.BLOCKED
    if card.denomination != offer.denomination:
        return DepositRefusal.DENOMINATION
    if card.denomination.currency != merchant_currency:
        return DepositRefusal.CURRENCY
    return None


def judge_spend(*, spent_before: bool, remaining: int, amount: int) -> DepositRefusal | None:
    """Whether a verified purchase may be charged: a (card, counter) spent before is a
    duplicate (checked first, so a replay is reported as one whatever the balance), then
    the card must still cover ``amount``. None: charge it."""
    if spent_before:
        return DepositRefusal.DUPLICATE
    if amount > remaining:
        return DepositRefusal.OVERSPENT
    return None


def check_spend(*, spent_before: bool, remaining: int, amount: int) -> None:
    """:func:`judge_spend` for an online payment: None, or Conflict(DUPLICATE_SPEND), or
    InsufficientFunds."""
    refusal = judge_spend(spent_before=spent_before, remaining=remaining, amount=amount)
    if refusal is DepositRefusal.DUPLICATE:
        raise Conflict("payment already spent", code=ErrorCode.DUPLICATE_SPEND)
    if refusal is not None:
        raise InsufficientFunds("card overspent")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendRecord:
    """What the bank keeps of an accepted (card, counter): the merchant paid, and for an
    online spend the digest of its offer (None for a deposited one)."""

    merchant_id: str
    offer_digest: bytes | None


def is_online_retry(earlier: SpendRecord | None, *, merchant_id: str, offer_digest: bytes) -> bool:
    """Is a duplicate (card, counter) this very purchase, settled online before for the
    same merchant and offer (the merchant lost the answer and sent it again)? Then the bank
    answers it as settled and charges nothing: the draft's idempotent retry, bounded by the
    offer's expiry (checked with the MAC). Any other duplicate is refused."""
    if earlier is None or earlier.merchant_id != merchant_id:
        return False
    return same_request(earlier.offer_digest, offer_digest)


def check_merchant_repeat(
    *, earlier_request: bytes | None, refused: bool, request: bytes | None
) -> None:
    """A merchant's rule for a (card, counter) it took before: returns if this is the same
    request sent again (its answer was lost) and the bank has not refused the purchase
    since, a retry to serve again taking nothing; else raises the vague refusal. Without
    K_C the merchant cannot tell a replay from a cloned card's payment, so it says no more
    than that the payment did not verify (docs/http.md: 401)."""
    if refused or not same_request(earlier_request, request):
        raise InvalidPayment("payment did not verify")


@dataclass(slots=True)
class DepositTally:
    """The bank's answer to one batch, built item by item in the batch's order."""

    accepted: list[tuple[bytes, int, int]] = field(default_factory=list)
    duplicates: list[tuple[bytes, int]] = field(default_factory=list)
    invalid: list[tuple[bytes, int]] = field(default_factory=list)

    def accept(self, verified: VerifiedPurchase) -> None:
        self.accepted.append((verified.card_id, verified.counter, verified.amount))

    def refuse(self, item: DepositItem, refusal: DepositRefusal) -> None:
        pair = (item.purchase.card_id, item.purchase.counter)
        (self.duplicates if refusal.is_duplicate else self.invalid).append(pair)

    def report(self, batch_id: bytes) -> DepositReport:
        return DepositReport(
            batch_id=batch_id,
            accepted=tuple(self.accepted),
            duplicates=tuple(self.duplicates),
            invalid=tuple(self.invalid),
            credited=sum(units for _, _, units in self.accepted),
        )


def check_resent_batch(earlier_digest: bytes, digest: bytes) -> None:
    """A batch id sent again must come with the same batch (then the first report is the
    answer); Conflict if it came with other items."""
    if not constant_time_eq(earlier_digest, digest):
        raise Conflict("batch id reused for another batch")


# --- the merchant's rules (deferred mode) ------------------------------------


class DeferredDecision(StrEnum):
    """What a deferred-mode merchant does with a payment it has not refused."""

    DEFER = "deferred"  # deliver now; B verifies at deposit
    ONLINE = "online"  # ask B to verify before delivering


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferredRisk:
    """How much a merchant may be owed in unverified deferred payments (units): at most
    ``limit`` by one card and at most ``merchant_cap`` by all cards together."""

    limit: int
    merchant_cap: int

    def __post_init__(self) -> None:
        if not (is_u64(self.limit) and is_u64(self.merchant_cap)):
            raise ValueError("deferred risk limits must be u64")
        if self.limit <= 0 or self.merchant_cap <= 0:
            raise ValueError("deferred risk limits must be positive")

    def fits(self, card_outstanding: int, merchant_outstanding: int, amount: int) -> bool:
        """Whether ``amount`` more stays within both caps."""
        return (
            amount > 0
            and card_outstanding + amount <= self.limit
            and merchant_outstanding + amount <= self.merchant_cap
        )

    def settle(self, outstanding: int, amount: int) -> int:
        """The outstanding total once the bank has answered for ``amount``."""
        return max(0, outstanding - amount)


def refused_items(report: DepositReport) -> frozenset[tuple[bytes, int]]:
    """The (card, counter) pairs the bank did not accept in ``report`` (duplicates and
    invalid). Once a batch is answered, every item leaves the merchant's outstanding total
    (``merchant_outstanding`` of :func:`decide_deferred`), but these stay charged against
    their card's ``card_outstanding`` for good: a card that cheated stays charged."""
    return frozenset((*report.duplicates, *report.invalid))


def decide_deferred(
    *,
    risk: DeferredRisk,
    bank_public_key: bytes,
    certificate: bytes | None,
    offer: Offer,
    purchase: Purchase,
    now: int,
    card_outstanding: int,
    merchant_outstanding: int,
) -> DeferredDecision:
    """Deliver without B (DEFER), ask B first (ONLINE), or refuse (raise).

    DEFER only when ``certificate`` is B's valid, unexpired certificate for this card and
    the offer's denomination, and the amount fits both caps of ``risk``. A missing,
    forged, foreign or expired certificate, or a cap reached, means ONLINE: B then judges
    the MAC, so an honest card whose certificate is stale still buys. Refused outright:
    counter 0 (no card ever MACs it; InvalidPayment) and certificate bytes that do not
    decode (MalformedMessage).
    """
    if purchase.counter == 0:
        raise InvalidPayment()
    if certificate is None:
        return DeferredDecision.ONLINE
    cert = decode_card_certificate(certificate)
    try:
        verify_card_certificate(
            bank_public_key,
            cert,
            card_id=purchase.card_id,
            denomination=offer.denomination,
            now=now,
        )
    except (InvalidPayment, PaymentExpired):
        return DeferredDecision.ONLINE
    if not risk.fits(card_outstanding, merchant_outstanding, offer.amount):
        return DeferredDecision.ONLINE
    return DeferredDecision.DEFER
