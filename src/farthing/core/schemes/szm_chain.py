"""SZM protocol 1: an anonymous prepaid card as a one-way hash chain, with key distribution.

Theory of operation
===================

Source: K. Szczypiorski, P. Zwierko, I. Margasinski, "Micropayments with Privacy - a New
Proposal for E-commerce", Springer 2005. The project has only the abstract. The *paper's
claims* are: a pre-paid card without a trusted third party, user privacy, a first protocol
built on a secure one-way hash function, a second on a cryptographically secure
pseudorandom bit generator (:mod:`farthing.core.schemes.szm_prbg`), and, as the main
advantage, cryptographic key distribution within the micropayment process. Everything
below is *our reconstruction* of how such a protocol works, and our choices.

Parties and card. The vendor is the card's issuer; nobody else takes part. A card is sold
anonymously (cash, printed code, :mod:`farthing.core.cardcode`) and carries a public
16-byte card id and a 32-byte card secret S, never an identity. The issuer keeps one
32-byte master key and re-derives every card's secret on demand::

    s    = the card's printed short secret, from HMAC-SHA256(master, card_id)
           (:mod:`farthing.core.shortcode`: 115 bits, what a person types)
    S    = HKDF-SHA256(s, info=canonical("farthing/szm-chain/card-secret", card_id))
    w_N  = HMAC-SHA256(S, canonical("farthing/szm-chain/chain-seed", card_id))
    w_i  = SHA-256(tag || w_{i+1}),  tag = "farthing/szm-chain\\x00",  down to w_0

A leaked card database therefore reveals no card secret (it holds only anchors); a leaked
master key reveals all of them. The issuer stores per card ``(card_id, anchor = w_spent,
spent, N, denomination, expires_at)``.

Payment. To pay k units from ``spent`` the card sends ``(card_id, index = spent + k,
w_index)``. The issuer checks h^k(w_index) = anchor (k hashes) and moves the anchor to
w_index. A replay or an older value fails (index <= spent); a value for a higher index
cannot be made without inverting SHA-256, so neither an eavesdropper nor a vendor can
spend ahead of the card. Paying k units at once is a skip ahead.

Key distribution. Card and issuer both know S, nobody else does, so each payment yields a
fresh shared key with no key exchange; the issuer seals what was bought under it
(:mod:`farthing.core.sealing`), and a seal that opens also proves to the card holder that
it spoke with the real issuer. Two key modes:

- ``KeyMode.DERIVED`` (default): K = HKDF-SHA256(S, info=canonical("farthing/szm-chain/key",
  card_id, index)). The wire only ever carries chain values, which are derived from S one
  way and never feed HKDF, so no later payment exposes an earlier key.
- ``KeyMode.NEXT_VALUE``: the literal reading K = w_{index+1}. It works with nothing but the
  chain, but the *next* payment reveals w_{index+j} and hence w_{index+1} = h^(j-1)(...):
  an eavesdropper who recorded a sealed body opens it once the card pays again. No forward
  secrecy; kept for fidelity and tests. The last unit (index = N) has no w_{N+1}; it falls
  back to the derived key.

Why S is not w_N itself: the last payment puts w_N on the wire, which would expose every
key derived from it. The extra HMAC step costs nothing.

Privacy. The issuer never learns who holds a card; but every payment names the card id, so
all payments of one card are linkable (the card is a pseudonym). An eavesdropper sees card
id, index and chain value, learns nothing of the sealed content and cannot reuse a value.

Errors. Cryptographic failure, replay, stale index, wrong or unknown card: InvalidPayment
(one vague message). index > N: InsufficientFunds. index - spent != price:
InsufficientFunds(AMOUNT_MISMATCH). Past ``expires_at``: PaymentExpired(CARD_EXPIRED).
A payment the card made already (a copy of the card paid since) is refused the same way;
:func:`stale_position` then tells its sender where the card is, once its value proves it is
the card's own (the vendor answers PAYMENT_STALE with that position).
The public checks run before hashing, so a hostile index costs at most ``units`` hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final, NamedTuple, final

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer, header
from farthing.core.errors import (
    CardExhausted,
    InvalidPayment,
    PaymentExpired,
)
from farthing.core.hashchain import ChainWalker, chain_anchor, chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq, hkdf_sha256, hmac_sha256
from farthing.core.schemes._advance import (
    Acceptance,
    IndexPaymentCodec,
    Parsed,
    accept,
    chain_advance,
    chain_stale,
    retried_units,
)

__all__ = [
    "CHAIN_TAG",
    "DEFAULT_MAX_UNITS",
    "KEY_DOMAIN",
    "MAX_LENGTH",
    "METHOD",
    "PAYMENT_DOMAIN",
    "ChainAccepted",
    "ChainCard",
    "ChainCardState",
    "KeyMode",
    "Parsed",
    "Payment",
    "advance",
    "card_from_code",
    "card_payment_key",
    "card_secret",
    "card_walker",
    "chain_seed",
    "decode_payment",
    "encode_payment",
    "initial_state",
    "issue_card",
    "issuer_payment_key",
    "next_payment",
    "parse_payment",
    "payment_key",
    "stale_position",
    "to_card_code",
    "verify_payment",
    "verify_payment_bytes",
    "verify_retry",
]

METHOD: Final = Protocol.CHAIN.value
CHAIN_TAG: Final = b"farthing/szm-chain\x00"
PAYMENT_DOMAIN: Final = "farthing/szm-chain/payment"
DERIVATION_DOMAIN: Final = shortcode.SECRET_DOMAINS[
    Protocol.CHAIN
]  # "farthing/szm-chain/card-secret"
SEED_DOMAIN: Final = "farthing/szm-chain/chain-seed"
KEY_DOMAIN: Final = "farthing/szm-chain/key"
MAX_LENGTH: Final = 1 << 20  # bounds the issuer's anchor and the card's first walk
DEFAULT_MAX_UNITS: Final = 10_000

_ID_LEN: Final = 16
_SECRET_LEN: Final = 32
_VALUE_LEN: Final = 32
_LEN16: Final = b"\x00\x10"
# canonical(domain, card_id) = header(domain) || u16(16) || card_id, precomputed.
_SEED_PREFIX: Final = header(SEED_DOMAIN) + _LEN16
# Fast path: a payment has exactly one layout, unpacked in one call.
_CODEC: Final = IndexPaymentCodec(PAYMENT_DOMAIN, key_len=_ID_LEN)

_RECEIPT: Final = object()  # only this module's verifier holds it


class KeyMode(StrEnum):
    """How the per-payment key is derived (see the module docstring)."""

    DERIVED = "derived"
    NEXT_VALUE = "next-value"


# --- card secrets and issuance -----------------------------------------------------------


def card_secret(master_key: bytes, card_id: bytes) -> bytes:
    """S = HKDF(short, canonical("farthing/szm-chain/card-secret", card_id)), short being
    the card's printed short secret, HMAC(master, ...) (:mod:`farthing.core.shortcode`)."""
    if len(master_key) != _SECRET_LEN or len(card_id) != _ID_LEN:
        raise ValueError("master key must be 32 bytes and card id 16 bytes")
    return shortcode.card_secret(
        shortcode.short_secret(master_key, card_id), DERIVATION_DOMAIN, card_id
    )


def chain_seed(secret: bytes, card_id: bytes) -> bytes:
    """w_N = HMAC(S, canonical("farthing/szm-chain/chain-seed", card_id))."""
    if len(secret) != _SECRET_LEN or len(card_id) != _ID_LEN:
        raise ValueError("card secret must be 32 bytes and card id 16 bytes")
    return hmac_sha256(secret, _SEED_PREFIX + card_id)


class ChainCardState(NamedTuple):
    """What the issuer stores per card; ``anchor`` is w_spent. No secret, no identity.

    ``last_request`` and ``last_units`` describe the payment that moved ``spent`` last:
    the tag of the request that carried it (:mod:`farthing.core.retry`; None if it may
    not be retried) and the units it took, so that request sent again is served again.

    An immutable value, built once per verified payment: a NamedTuple, not a frozen
    dataclass, because the dataclass's constructor alone cost three times the payment's
    hash (bench/core.py). Build it with keywords; change it with ``_replace`` (it is not a
    dataclass, so ``dataclasses.replace`` does not apply).
    """

    card_id: bytes
    anchor: bytes
    spent: int
    length: int
    denomination: Denomination
    expires_at: int
    last_request: bytes | None = None
    last_units: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainCard:
    """The card holder's state value: persist it (write-ahead) before sending a payment."""

    card_id: bytes
    secret: bytes = field(repr=False)
    length: int
    spent: int
    denomination: Denomination
    expires_at: int

    def __post_init__(self) -> None:
        if len(self.card_id) != _ID_LEN or len(self.secret) != _SECRET_LEN:
            raise ValueError("card id must be 16 bytes and secret 32 bytes")
        if not 1 <= self.length <= MAX_LENGTH or not 0 <= self.spent <= self.length:
            raise ValueError("card length or spent out of range")

    @property
    def remaining(self) -> int:
        return self.length - self.spent


def initial_state(
    master_key: bytes, card_id: bytes, *, length: int, denomination: Denomination, expires_at: int
) -> ChainCardState:
    """The issuer's record of a fresh card (costs ``length`` hashes)."""
    if not 1 <= length <= MAX_LENGTH:
        raise ValueError("chain length out of range")
    seed = chain_seed(card_secret(master_key, card_id), card_id)
    return ChainCardState(
        card_id=card_id,
        anchor=chain_anchor(CHAIN_TAG, seed, length),
        spent=0,
        length=length,
        denomination=denomination,
        expires_at=expires_at,
    )


def issue_card(
    master_key: bytes,
    rng: RandomSource,
    *,
    length: int,
    denomination: Denomination,
    expires_at: int,
) -> tuple[ChainCardState, ChainCard]:
    """A new card: the issuer's record to store and the card to hand over (as a code)."""
    card_id = rng(_ID_LEN)
    state = initial_state(
        master_key, card_id, length=length, denomination=denomination, expires_at=expires_at
    )
    card = ChainCard(
        card_id=card_id,
        secret=card_secret(master_key, card_id),
        length=length,
        spent=0,
        denomination=denomination,
        expires_at=expires_at,
    )
    return state, card


def to_card_code(card: ChainCard, *, realm: str) -> CardCode:
    """The printable form of a fresh card (its ``spent`` must be 0)."""
    if card.spent != 0:
        raise ValueError("only a fresh card has a card code")
    return CardCode(
        protocol=Protocol.CHAIN,
        card_id=card.card_id,
        secret=card.secret,
        units=card.length,
        currency=card.denomination.currency,
        unit_micros=card.denomination.unit_micros,
        expires_at=card.expires_at,
        generator=Generator.SHA256_CHAIN,
        realm=realm,
    )


def card_from_code(code: CardCode) -> ChainCard:
    if code.protocol is not Protocol.CHAIN or code.units > MAX_LENGTH:
        raise ValueError("not a usable szm:chain card code")
    return ChainCard(
        card_id=code.card_id,
        secret=code.secret,
        length=code.units,
        spent=0,
        denomination=code.denomination,
        expires_at=code.expires_at,
    )


# --- payments on the wire ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """(card_id, index, w_index): pays index - spent units."""

    card_id: bytes
    index: int
    value: bytes


def encode_payment(payment: Payment) -> bytes:
    return _CODEC.encode(payment.card_id, payment.index, payment.value)


def decode_payment(data: bytes) -> Payment:
    card_id, index, value = parse_payment(data)
    return Payment(card_id=card_id, index=index, value=value)


parse_payment: Final = _CODEC.parse
"""``(card_id, index, value)`` of an encoded payment (MalformedMessage as
:func:`decode_payment`): what :func:`advance` takes, with no Payment built."""


# --- the issuer: verification --------------------------------------------------------------


@final
class ChainAccepted(Acceptance):
    """Receipt for one accepted payment. Only this module's verifier can create it."""

    __slots__ = ()
    _TOKEN = _RECEIPT
    _SCHEME = "szm:chain"
    _KEY_NAME = "card_id"

    def __init__(self, card_id: bytes, index: int, units: int, _token: object = None) -> None:
        super().__init__(card_id, index, units, _token)

    @property
    def card_id(self) -> bytes:
        return self._key


def verify_payment(
    state: ChainCardState,
    payment: Payment,
    *,
    units: int,
    now: int,
    max_units: int = DEFAULT_MAX_UNITS,
    request: bytes | None = None,
) -> tuple[ChainCardState, ChainAccepted]:
    """Accept at least ``units`` units: h^(index-spent)(w_index) must equal the anchor.

    Hashes only. A payment over a gap (units the wallet lost in flight, e.g. by crashing
    right after its write-ahead) is accepted for all it pays; the receipt says how many.
    ``request`` is the tag of the request carrying it (kept in the new state for
    :func:`verify_retry`).

    Returns the new state (persist it conditionally on the old ``spent``) and a receipt.
    """
    return _verify(
        state, payment.card_id, payment.index, payment.value, units, now, max_units, request
    )


def verify_retry(
    state: ChainCardState, payment: Payment, *, request: bytes | None
) -> ChainAccepted:
    """The card's last accepted payment, sent again by the same request (its answer was
    lost): the receipt it had, and no new state (nothing is taken). Else InvalidPayment.

    Its value must be the anchor (w_spent), and the request tag binds it to the path and
    the credential that carried it. Whoever copied the credential gets the body sealed
    under a key only the card holder has.
    """
    units = retried_units(
        same_key=payment.card_id == state.card_id, spent=state.spent, index=payment.index,
        last_request=state.last_request, last_units=state.last_units, request=request,
    )  # fmt: skip
    if not constant_time_eq(payment.value, state.anchor):
        raise InvalidPayment()
    return ChainAccepted(payment.card_id, payment.index, units, _RECEIPT)


def verify_payment_bytes(
    lookup: Callable[[bytes], ChainCardState | None],
    data: bytes,
    *,
    units: int,
    now: int,
    max_units: int = DEFAULT_MAX_UNITS,
) -> tuple[ChainCardState, ChainAccepted]:
    """Decode and verify in one step; ``lookup`` maps a card id to its state (or None)."""
    card_id, index, value = parse_payment(data)
    state = lookup(card_id)
    if state is None:
        raise InvalidPayment()
    return _verify(state, card_id, index, value, units, now, max_units, None)


advance: Final = chain_advance(CHAIN_TAG, ChainCardState, "card", DEFAULT_MAX_UNITS)
"""``advance(state, payment, units, now, request, max_units=DEFAULT_MAX_UNITS, /)``:
:func:`verify_payment` for the vendor's paid path, with the payment as
:func:`parse_payment` returns it and no receipt: the new state only (the card paid
``new.spent - state.spent`` units, up to ``new.spent``). Same decisions, same errors."""


def stale_position(
    state: ChainCardState, payment: Parsed, *, max_back: int = DEFAULT_MAX_UNITS
) -> int:
    """The card's position (``spent``) if ``payment`` (as :func:`parse_payment` returns it)
    is a payment this card made already, at most ``max_back`` units behind: a copy of the
    card (another wallet, a restored backup) paid since, and the one that sent it is behind.
    w_index must be h^(spent-index) of the anchor w_spent: only someone who knows a value of the
    card hears where it is. Else InvalidPayment, as vague as every refusal."""
    return chain_stale(CHAIN_TAG, state, payment, max_back)


def _verify(
    state: ChainCardState,
    card_id: bytes,
    index: int,
    value: bytes,
    units: int,
    now: int,
    max_units: int,
    request: bytes | None,
) -> tuple[ChainCardState, ChainAccepted]:
    new_state = advance(state, (card_id, index, value), units, now, request, max_units)
    return new_state, accept(ChainAccepted, _RECEIPT, card_id, index, index - state.spent)


# --- per-payment keys --------------------------------------------------------------------


def payment_key(
    secret: bytes,
    *,
    card_id: bytes,
    index: int,
    length: int,
    mode: KeyMode = KeyMode.DERIVED,
    walker: ChainWalker | None = None,
) -> bytes:
    """K for payment ``index`` of a card of ``length`` units; either side can compute it.

    ``walker`` (the card's) saves the chain walk in ``NEXT_VALUE`` mode.
    """
    if not 1 <= index <= length:
        raise ValueError("no payment with this index")
    if mode is KeyMode.NEXT_VALUE and index < length:
        if walker is not None:
            return walker.value(index + 1)
        return chain_walk(CHAIN_TAG, chain_seed(secret, card_id), length - index - 1)
    info = Writer(KEY_DOMAIN).bytes(card_id).u64(index).finish()
    return hkdf_sha256(secret, info=info)


def issuer_payment_key(
    master_key: bytes, state: ChainCardState, index: int, *, mode: KeyMode = KeyMode.DERIVED
) -> bytes:
    """The issuer's copy of K for payment ``index`` of the card ``state`` describes."""
    secret = card_secret(master_key, state.card_id)
    return payment_key(secret, card_id=state.card_id, index=index, length=state.length, mode=mode)


def card_payment_key(
    card: ChainCard,
    index: int,
    *,
    mode: KeyMode = KeyMode.DERIVED,
    walker: ChainWalker | None = None,
) -> bytes:
    """The card holder's copy of K for payment ``index``."""
    return payment_key(
        card.secret,
        card_id=card.card_id,
        index=index,
        length=card.length,
        mode=mode,
        walker=walker,
    )


# --- the card holder -----------------------------------------------------------------------


def card_walker(card: ChainCard) -> ChainWalker:
    """A walker over the card's chain; keep one per card to make later payments cheap."""
    return ChainWalker(CHAIN_TAG, chain_seed(card.secret, card.card_id), card.length)


def next_payment(
    card: ChainCard,
    units: int,
    *,
    now: int,
    walker: ChainWalker | None = None,
    key_mode: KeyMode = KeyMode.DERIVED,
) -> tuple[ChainCard, Payment, bytes]:
    """The next payment of ``units`` units: (new card state, payment, key).

    Persist the new card state before sending the payment (write-ahead), so a crash can
    skip units but never reuse an index: the next payment covers the gap. ``walker`` must
    be this card's (:func:`card_walker`); without one, a fresh walker costs ``length``
    hashes.
    """
    if units < 1:
        raise ValueError("a payment pays at least one unit")
    if now >= card.expires_at:
        raise PaymentExpired("card expired")
    index = card.spent + units
    if index > card.length:
        raise CardExhausted("card has too few units left")
    walker = walker if walker is not None else card_walker(card)
    if walker.length != card.length:
        raise ValueError("walker belongs to another card")
    payment = Payment(card_id=card.card_id, index=index, value=walker.value(index))
    key = card_payment_key(card, index, mode=key_mode, walker=walker)
    return replace(card, spent=index), payment, key
