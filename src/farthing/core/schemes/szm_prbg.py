"""SZM protocol 2: an anonymous prepaid card driven by a pseudorandom bit generator.

Theory of operation
===================

Source: K. Szczypiorski, P. Zwierko, I. Margasinski, "Micropayments with Privacy - a New
Proposal for E-commerce", Springer 2005. The project has only the abstract. The *paper's
claims* are: a pre-paid card without a trusted third party, user privacy, a second protocol
based on a cryptographically secure pseudorandom bit generator (the first uses a hash
chain, :mod:`farthing.core.schemes.szm_chain`), and cryptographic key distribution within
the micropayment process as the main advantage. The paper cites the Handbook of Applied
Cryptography, the source of the Blum-Blum-Shub generator. Everything below is *our
reconstruction* and our choices.

Card. The vendor is the issuer; no third party. A card, bought anonymously, carries a public
16-byte card id and a 32-byte secret S (the generator's seed), never an identity. The
issuer keeps one 32-byte master key and derives S = HKDF-SHA256(short,
canonical("farthing/szm-prbg/card-secret", card_id)) from the card's printed short secret
short = HMAC-SHA256(master, ...) (:mod:`farthing.core.shortcode`), so it stores per card only
``(card_id, spent, units N, generator, denomination, expires_at)``: a leaked database
reveals no seed; a leaked master key reveals all.

Stream. The generator's output is cut into 32-byte blocks, used alternately as payment
token and key::

    T_i = block 2(i - 1),    K_i = block 2i - 1,    i = 1 .. N

The generator is chosen per card (:mod:`farthing.core.prbg`):

- ``hmac-ctr``: block j = HMAC-SHA256(S, canonical("farthing/szm-prbg/stream", j)); random
  access for everyone who knows S. The default: one HMAC per verification.
- ``bbs``: Blum-Blum-Shub with 8 output bits per squaring under the issuer's Blum modulus
  n (printed on the card). The card, knowing only n, walks forward from its saved state x;
  the issuer, holding p and q, jumps to block 2(i - 1) directly (two half-size modular
  exponentiations and 32 squarings). One modulus serves all of an issuer's BBS cards.

Payment. To pay k units from ``spent`` the card sends ``(card_id, index = spent + k,
T_index)``; the issuer regenerates T_index from S and compares in constant time. Only a
holder of S can produce any T_i, so T_index proves the right to every unit up to index, and
the payment pays index - spent. A replay or lower index fails (index <= spent); an
eavesdropper who saw T_1..T_i cannot compute T_{i+1} (the stream is unpredictable).

Key distribution. The key of payment i is K_i, a block never sent on the wire: the issuer
seals the bought content under it (:mod:`farthing.core.sealing`) and only the card holder
can open it, which also proves to the holder that it dealt with the real issuer. Seeing
tokens (or even other keys) does not reveal K_i.

Privacy. The issuer cannot tie a card to a person, but all payments of one card carry its
id and are linkable (the card is a pseudonym). An eavesdropper learns neither the content
nor a reusable token.

Errors. Cryptographic failure, replay, stale index, wrong or unknown card: InvalidPayment
(one vague message). index > N: InsufficientFunds. index - spent != price:
InsufficientFunds(AMOUNT_MISMATCH). Past ``expires_at``: PaymentExpired(CARD_EXPIRED).
A payment the card made already (a copy of the card paid since) is refused the same way;
:func:`stale_position` then tells its sender where the card is, once its value proves it is
the card's own (the vendor answers PAYMENT_STALE with that position).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, final

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.clock import RandomSource
from farthing.core.errors import (
    CardExhausted,
    InvalidPayment,
    LocalProtocolError,
    PaymentExpired,
)
from farthing.core.money import Denomination
from farthing.core.prbg import (
    BLOCK_LEN,
    BbsKey,
    BbsPublic,
    HmacCounterPrbg,
    bbs_advance,
    bbs_block,
    bbs_read,
    bbs_seed,
    bbs_steps_per_block,
    require_strong_modulus,
)
from farthing.core.primitives import constant_time_eq
from farthing.core.schemes._advance import (
    Acceptance,
    IndexPaymentCodec,
    accept,
    passed_index,
    retried_units,
    units_paid,
)

__all__ = [
    "BBS_BITS_PER_STEP",
    "DEFAULT_MAX_UNITS",
    "MAX_CARD_UNITS",
    "METHOD",
    "PAYMENT_DOMAIN",
    "STREAM_DOMAIN",
    "Payment",
    "PrbgAccepted",
    "PrbgCard",
    "PrbgCardState",
    "card_from_code",
    "card_payment_key",
    "card_secret",
    "decode_payment",
    "encode_payment",
    "issue_card",
    "issuer_payment_key",
    "new_card",
    "next_payment",
    "parse_payment",
    "skip_to",
    "stale_position",
    "stream_block",
    "to_card_code",
    "verify_payment",
    "verify_payment_bytes",
    "verify_retry",
]

METHOD: Final = Protocol.PRBG.value
PAYMENT_DOMAIN: Final = "farthing/szm-prbg/payment"
DERIVATION_DOMAIN: Final = shortcode.SECRET_DOMAINS[
    Protocol.PRBG
]  # "farthing/szm-prbg/card-secret"
STREAM_DOMAIN: Final = "farthing/szm-prbg/stream"
BBS_BITS_PER_STEP: Final = 8  # needs lg lg n >= 8; every usable n has 2048 bits or more
MAX_CARD_UNITS: Final = 1 << 30
DEFAULT_MAX_UNITS: Final = 10_000

_GENERATORS: Final = frozenset({Generator.HMAC_CTR, Generator.BBS})
_ID_LEN: Final = 16
_SECRET_LEN: Final = 32
# Fast path: a payment has exactly one layout, unpacked in one call.
_CODEC: Final = IndexPaymentCodec(PAYMENT_DOMAIN, key_len=_ID_LEN)

_RECEIPT: Final = object()  # only this module's verifier holds it


def _token_block(index: int) -> int:
    return 2 * (index - 1)


def _key_block(index: int) -> int:
    return 2 * index - 1


# --- card secrets, cards and issuance ------------------------------------------------------


def card_secret(master_key: bytes, card_id: bytes) -> bytes:
    """S = HKDF(short, canonical("farthing/szm-prbg/card-secret", card_id)), short being
    the card's printed short secret, HMAC(master, ...) (:mod:`farthing.core.shortcode`)."""
    if len(master_key) != _SECRET_LEN or len(card_id) != _ID_LEN:
        raise ValueError("master key must be 32 bytes and card id 16 bytes")
    return shortcode.card_secret(
        shortcode.short_secret(master_key, card_id), DERIVATION_DOMAIN, card_id
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrbgCardState:
    """What the issuer stores per card; ``units`` is the card's total N. No secret.

    ``last_request`` and ``last_units``: the tag of the request that carried the payment
    that moved ``spent`` last and the units it took (see :func:`verify_retry`).
    """

    card_id: bytes
    spent: int
    units: int
    generator: Generator
    denomination: Denomination
    expires_at: int
    last_request: bytes | None = None
    last_units: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PrbgCard:
    """The card holder's state value: persist it (write-ahead) before sending a payment.

    For BBS, ``bbs_x`` is the generator state after the last block used so far (x_0 for a
    fresh card), so the next payment continues the walk instead of restarting it.
    """

    card_id: bytes
    secret: bytes = field(repr=False)
    units: int
    spent: int
    generator: Generator
    denomination: Denomination
    expires_at: int
    modulus: BbsPublic | None = None
    bbs_x: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.card_id) != _ID_LEN or len(self.secret) != _SECRET_LEN:
            raise ValueError("card id must be 16 bytes and secret 32 bytes")
        if not 1 <= self.units <= MAX_CARD_UNITS or not 0 <= self.spent <= self.units:
            raise ValueError("card units or spent out of range")
        if self.generator not in _GENERATORS:
            raise ValueError("not a szm:prbg generator")
        is_bbs = self.generator is Generator.BBS
        if is_bbs != (self.modulus is not None) or is_bbs != (self.bbs_x is not None):
            raise ValueError("a BBS card needs its modulus and state, others neither")

    @property
    def remaining(self) -> int:
        return self.units - self.spent


def new_card(
    card_id: bytes,
    secret: bytes,
    *,
    units: int,
    generator: Generator,
    denomination: Denomination,
    expires_at: int,
    modulus: BbsPublic | None = None,
) -> PrbgCard:
    """A fresh card value (spent = 0); for BBS this seeds x_0 from the secret and n."""
    bbs_x = None
    if generator is Generator.BBS:
        if modulus is None:
            raise ValueError("a BBS card needs the issuer's modulus")
        require_strong_modulus(modulus.n)
        bbs_x = bbs_seed(modulus, secret)
    return PrbgCard(
        card_id=card_id,
        secret=secret,
        units=units,
        spent=0,
        generator=generator,
        denomination=denomination,
        expires_at=expires_at,
        modulus=modulus,
        bbs_x=bbs_x,
    )


def issue_card(
    master_key: bytes,
    rng: RandomSource,
    *,
    units: int,
    denomination: Denomination,
    expires_at: int,
    generator: Generator = Generator.HMAC_CTR,
    bbs: BbsPublic | None = None,
) -> tuple[PrbgCardState, PrbgCard]:
    """A new card: the issuer's record to store and the card to hand over (as a code)."""
    card_id = rng(_ID_LEN)
    card = new_card(
        card_id,
        card_secret(master_key, card_id),
        units=units,
        generator=generator,
        denomination=denomination,
        expires_at=expires_at,
        modulus=bbs if generator is Generator.BBS else None,
    )
    state = PrbgCardState(
        card_id=card_id,
        spent=0,
        units=units,
        generator=generator,
        denomination=denomination,
        expires_at=expires_at,
    )
    return state, card


def to_card_code(card: PrbgCard, *, realm: str) -> CardCode:
    """The printable form of a fresh card (its ``spent`` must be 0)."""
    if card.spent != 0:
        raise ValueError("only a fresh card has a card code")
    return CardCode(
        protocol=Protocol.PRBG,
        card_id=card.card_id,
        secret=card.secret,
        units=card.units,
        currency=card.denomination.currency,
        unit_micros=card.denomination.unit_micros,
        expires_at=card.expires_at,
        generator=card.generator,
        realm=realm,
        modulus=card.modulus.n_bytes if card.modulus is not None else b"",
    )


def card_from_code(code: CardCode) -> PrbgCard:
    if code.protocol is not Protocol.PRBG or code.units > MAX_CARD_UNITS:
        raise ValueError("not a usable szm:prbg card code")
    modulus = BbsPublic(n=int.from_bytes(code.modulus, "big")) if code.modulus else None
    return new_card(
        code.card_id,
        code.secret,
        units=code.units,
        generator=code.generator,
        denomination=code.denomination,
        expires_at=code.expires_at,
        modulus=modulus,
    )


# --- the stream ----------------------------------------------------------------------------


def stream_block(
    generator: Generator, secret: bytes, block: int, *, bbs_key: BbsKey | None = None
) -> bytes:
    """Block number ``block`` of a card's stream, by random access (the issuer's way).

    BBS needs the factors (``bbs_key``); the card holder walks instead (:func:`next_payment`).
    """
    if generator is Generator.HMAC_CTR:
        return HmacCounterPrbg(secret, domain=STREAM_DOMAIN).block(block)
    if generator is not Generator.BBS:
        raise ValueError("not a szm:prbg generator")
    if bbs_key is None:
        raise LocalProtocolError("this issuer holds no BBS key")
    x0 = bbs_seed(bbs_key.public, secret)
    return bbs_block(bbs_key, x0, block, BBS_BITS_PER_STEP)


# --- payments on the wire ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """(card_id, index, T_index): pays index - spent units."""

    card_id: bytes
    index: int
    token: bytes


def encode_payment(payment: Payment) -> bytes:
    return _CODEC.encode(payment.card_id, payment.index, payment.token)


def decode_payment(data: bytes) -> Payment:
    card_id, index, token = parse_payment(data)
    return Payment(card_id=card_id, index=index, token=token)


parse_payment: Final = _CODEC.parse
"""``(card_id, index, token)`` of an encoded payment (MalformedMessage as
:func:`decode_payment`)."""


# --- the issuer: verification --------------------------------------------------------------


@final
class PrbgAccepted(Acceptance):
    """Receipt for one accepted payment. Only this module's verifier can create it."""

    __slots__ = ()
    _TOKEN = _RECEIPT
    _SCHEME = "szm:prbg"
    _KEY_NAME = "card_id"

    def __init__(self, card_id: bytes, index: int, units: int, _token: object = None) -> None:
        super().__init__(card_id, index, units, _token)

    @property
    def card_id(self) -> bytes:
        return self._key


def verify_payment(
    state: PrbgCardState,
    payment: Payment,
    *,
    master_key: bytes,
    units: int,
    now: int,
    bbs_key: BbsKey | None = None,
    max_units: int = DEFAULT_MAX_UNITS,
    request: bytes | None = None,
    secret: bytes | None = None,
) -> tuple[PrbgCardState, PrbgAccepted]:
    """Accept at least ``units`` units: T_index must be the card's token block. A payment
    over a gap (units lost in flight) is accepted for all it pays; the receipt says how many.

    Returns the new state (persist it conditionally on the old ``spent``) and a receipt.
    ``bbs_key`` is needed for BBS cards only. ``request`` is the tag of the request
    carrying it (kept in the new state for :func:`verify_retry`). ``secret``: the card's
    secret S (:func:`card_secret` of ``master_key`` and the card id) if the caller kept
    it; its derivation costs several times the token block, so a verifier that sees a
    card again keeps it (derived here otherwise).
    """
    return _verify(
        state,
        payment.card_id,
        payment.index,
        payment.token,
        master_key,
        bbs_key,
        units,
        now,
        max_units,
        request,
        secret,
    )


def verify_retry(
    state: PrbgCardState,
    payment: Payment,
    *,
    master_key: bytes,
    request: bytes | None,
    bbs_key: BbsKey | None = None,
    secret: bytes | None = None,
) -> PrbgAccepted:
    """The card's last accepted payment, sent again by the same request (its answer was
    lost): the receipt it had, and no new state (nothing is taken). Else InvalidPayment.

    The request tag is checked first, so a plain replay costs no generator block.
    """
    units = retried_units(
        same_key=payment.card_id == state.card_id, spent=state.spent, index=payment.index,
        last_request=state.last_request, last_units=state.last_units, request=request,
    )  # fmt: skip
    if secret is None:
        secret = card_secret(master_key, payment.card_id)
    expected = stream_block(state.generator, secret, _token_block(payment.index), bbs_key=bbs_key)
    if not constant_time_eq(expected, payment.token):
        raise InvalidPayment()
    return PrbgAccepted(payment.card_id, payment.index, units, _RECEIPT)


def stale_position(
    state: PrbgCardState,
    payment: Payment,
    *,
    master_key: bytes,
    bbs_key: BbsKey | None = None,
    secret: bytes | None = None,
    max_back: int = DEFAULT_MAX_UNITS,
) -> int:
    """The card's position (``spent``) if ``payment`` is a payment this card made already,
    at most ``max_back`` units behind (a copy of the card paid since): T_index must be the
    card's token block, so only a holder of the card's secret hears where it is. Else
    InvalidPayment. One token block, as a payment's verification (for BBS the issuer's
    direct jump); the public checks come first."""
    passed_index(payment.card_id == state.card_id, state.spent, payment.index, max_back)
    if secret is None:
        secret = card_secret(master_key, payment.card_id)
    expected = stream_block(state.generator, secret, _token_block(payment.index), bbs_key=bbs_key)
    if not constant_time_eq(expected, payment.token):
        raise InvalidPayment()
    return state.spent


def verify_payment_bytes(
    lookup: Callable[[bytes], PrbgCardState | None],
    data: bytes,
    *,
    master_key: bytes,
    units: int,
    now: int,
    bbs_key: BbsKey | None = None,
    max_units: int = DEFAULT_MAX_UNITS,
    secrets: Callable[[bytes], bytes] | None = None,
) -> tuple[PrbgCardState, PrbgAccepted]:
    """Decode and verify in one step; ``lookup`` maps a card id to its state (or None),
    ``secrets`` (if given) to its secret S as :func:`card_secret` derives it."""
    card_id, index, token = parse_payment(data)
    state = lookup(card_id)
    if state is None:
        raise InvalidPayment()
    secret = None if secrets is None else secrets(card_id)
    return _verify(
        state, card_id, index, token, master_key, bbs_key, units, now, max_units, None, secret
    )


def _verify(
    state: PrbgCardState,
    card_id: bytes,
    index: int,
    token: bytes,
    master_key: bytes,
    bbs_key: BbsKey | None,
    units: int,
    now: int,
    max_units: int,
    request: bytes | None,
    secret: bytes | None,
) -> tuple[PrbgCardState, PrbgAccepted]:
    # same key, spent, index, length, expires at, units, now, max units, what
    paid = units_paid(
        card_id == state.card_id, state.spent, index, state.units, state.expires_at, units,
        now, max_units, "card",
    )  # fmt: skip
    if secret is None:
        secret = card_secret(master_key, card_id)
    expected = stream_block(state.generator, secret, _token_block(index), bbs_key=bbs_key)
    if not constant_time_eq(expected, token):
        raise InvalidPayment()
    new_state = PrbgCardState(
        card_id=state.card_id,
        spent=index,
        units=state.units,
        generator=state.generator,
        denomination=state.denomination,
        expires_at=state.expires_at,
        last_request=request,
        last_units=0 if request is None else paid,
    )
    return new_state, accept(PrbgAccepted, _RECEIPT, card_id, index, paid)


# --- per-payment keys --------------------------------------------------------------------


def issuer_payment_key(
    master_key: bytes,
    state: PrbgCardState,
    index: int,
    *,
    bbs_key: BbsKey | None = None,
    secret: bytes | None = None,
) -> bytes:
    """K_index of the card ``state`` describes: block 2*index - 1, never sent on the wire.
    ``secret``: the card's S if the caller kept it (see :func:`verify_payment`)."""
    if not 1 <= index <= state.units:
        raise ValueError("no payment with this index")
    if secret is None:
        secret = card_secret(master_key, state.card_id)
    return stream_block(state.generator, secret, _key_block(index), bbs_key=bbs_key)


def card_payment_key(card: PrbgCard, index: int) -> bytes:
    """The card holder's K_index, for any index (BBS re-walks from x_0: linear cost)."""
    if not 1 <= index <= card.units:
        raise ValueError("no payment with this index")
    if card.modulus is None:
        return stream_block(card.generator, card.secret, _key_block(index))
    steps = bbs_steps_per_block(card.modulus, BBS_BITS_PER_STEP)
    x = bbs_advance(card.modulus, bbs_seed(card.modulus, card.secret), _key_block(index) * steps)
    key, _ = bbs_read(card.modulus, x, BLOCK_LEN, BBS_BITS_PER_STEP)
    return key


# --- the card holder -----------------------------------------------------------------------


def next_payment(card: PrbgCard, units: int, *, now: int) -> tuple[PrbgCard, Payment, bytes]:
    """The next payment of ``units`` units: (new card state, payment, key K_index).

    Persist the new card state before sending the payment (write-ahead), so a crash can
    skip units but never reuse an index: the next payment covers the gap.
    """
    if units < 1:
        raise ValueError("a payment pays at least one unit")
    if now >= card.expires_at:
        raise PaymentExpired("card expired")
    index = card.spent + units
    if index > card.units:
        raise CardExhausted("card has too few units left")
    bbs_x = card.bbs_x
    if card.modulus is None or bbs_x is None:
        token = stream_block(card.generator, card.secret, _token_block(index))
        key = stream_block(card.generator, card.secret, _key_block(index))
    else:
        token, key, bbs_x = _walk_bbs(card.modulus, bbs_x, units)
    payment = Payment(card_id=card.card_id, index=index, token=token)
    return replace(card, spent=index, bbs_x=bbs_x), payment, key


def skip_to(card: PrbgCard, spent: int) -> PrbgCard:
    """The card moved forward to ``spent`` (units a copy of it paid elsewhere, as its issuer
    said): for BBS the generator walks over the blocks of those units, so the next payment
    continues from there. Never backward, never past the card's units (ValueError)."""
    if not card.spent <= spent <= card.units:
        raise ValueError("a card moves forward, within its units")
    bbs_x = card.bbs_x
    if card.modulus is not None and bbs_x is not None and spent > card.spent:
        steps = bbs_steps_per_block(card.modulus, BBS_BITS_PER_STEP)
        bbs_x = bbs_advance(card.modulus, bbs_x, 2 * (spent - card.spent) * steps)
    return replace(card, spent=spent, bbs_x=bbs_x)


def _walk_bbs(modulus: BbsPublic, x: int, units: int) -> tuple[bytes, bytes, int]:
    """Skip the 2*(units-1) blocks of the units paid over, then read T and K."""
    steps = bbs_steps_per_block(modulus, BBS_BITS_PER_STEP)
    x = bbs_advance(modulus, x, 2 * (units - 1) * steps)
    token, x = bbs_read(modulus, x, BLOCK_LEN, BBS_BITS_PER_STEP)
    key, x = bbs_read(modulus, x, BLOCK_LEN, BBS_BITS_PER_STEP)
    return token, key, x
