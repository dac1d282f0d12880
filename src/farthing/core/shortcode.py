"""The short card code a person types from a printed SZM card: 115 bits of secret, one check.

A printed card carries only its *short secret* ``s``: 23 symbols of Crockford's base32
(``0-9 A-Z`` without ``I L O U``; 5 bits each, 115 bits) and one check symbol, in six
groups of four::

    text   = "7K3M-0QXD-9VAT-E2HN-4PCW-R8JB"        (29 characters, 24 symbols)

Everything else about the card (protocol, units, unit value, currency, expiry, generator,
realm, the BBS modulus, its card id) lives at the issuer, which the wallet asks with the
*lookup id*, and the answer is checked against the short secret (its *tag*)::

    short    = HMAC-SHA256(master, canonical("farthing/szm/short-secret", card_id)),
               its first 115 bits as 23 symbols                      (the issuer only)
    S        = HKDF-SHA256(ikm=short, info=canonical(secret_domain, card_id))
                                                          (the card secret of the protocol)
    lookup   = HKDF-SHA256(ikm=short, info=canonical("farthing/szm/card-lookup"))[:16]
    tag      = HKDF-SHA256(ikm=short, info=canonical("farthing/szm/card-answer")
                                              || encode_card(card))[:16]

``short`` enters HKDF as its 23 ASCII symbols. The issuer and the vendor re-derive ``S``
from the master key and the card id (:func:`short_secret` then :func:`card_secret`), as
before; the holder derives it from what is printed. The lookup id is a one-way function of
the short secret: it names the card to the issuer, which knows the short secret already,
and to nobody else (the card id, which every payment carries, does not lead to it). The
tag lets the wallet refuse an answer about another card or with changed terms.

The check symbol. Read the 24 symbols as elements of GF(32) (x^5 + x^2 + 1) with weights
``alpha^23 .. alpha^1`` for the secret and ``1`` for the check: a code is valid when the
weighted sum is 0. The check is linear, so whether an error is caught does not depend on
the code it hits: a single wrong symbol adds ``w * e`` with ``w`` and ``e`` non-zero (never
0 in a field), and a swap of two different neighbours adds ``(w_i - w_{i+1}) (a - b)``,
non-zero because neighbouring weights differ (alpha has order 31 > 24). So every single
typo and every swap of neighbours is caught; ``tests/core/test_shortcode.py`` checks all
24 x 31 single errors and all 23 swaps. Reading ignores case, spaces and dashes and takes
``I L`` as ``1`` and ``O`` as ``0`` (Crockford's rule: they are not typos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from farthing.core.cardcode import CardCode, Generator, Protocol, encode_card
from farthing.core.encoding import Writer
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.primitives import constant_time_eq, hkdf_sha256, hmac_sha256

__all__ = [
    "ALPHABET",
    "CHECK_LEN",
    "LOOKUP_LEN",
    "SECRET_BITS",
    "SECRET_DOMAINS",
    "SECRET_LEN",
    "TAG_LEN",
    "TEXT_LEN",
    "CardTerms",
    "ShortSecret",
    "answer_tag",
    "card_from_answer",
    "card_secret",
    "check_answer",
    "format_code",
    "lookup_id",
    "parse_code",
    "short_secret",
    "syndrome",
]

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SECRET_LEN: Final = 23  # symbols
SECRET_BITS: Final = 5 * SECRET_LEN  # 115
CHECK_LEN: Final = 1
_SYMBOLS: Final = SECRET_LEN + CHECK_LEN
_GROUP: Final = 4
TEXT_LEN: Final = _SYMBOLS + _SYMBOLS // _GROUP - 1  # 29 with the dashes
LOOKUP_LEN: Final = 16
TAG_LEN: Final = 16
SHORT_DOMAIN: Final = "farthing/szm/short-secret"
LOOKUP_DOMAIN: Final = "farthing/szm/card-lookup"
ANSWER_DOMAIN: Final = "farthing/szm/card-answer"
SECRET_DOMAINS: Final = {
    Protocol.CHAIN: "farthing/szm-chain/card-secret",
    Protocol.PRBG: "farthing/szm-prbg/card-secret",
}
_CARD_ID_LEN: Final = 16
_MAX_INPUT: Final = 128
_VALUE: Final = {symbol: value for value, symbol in enumerate(ALPHABET)} | {
    "I": 1,
    "L": 1,
    "O": 0,
}
_POLY: Final = 0b100101  # x^5 + x^2 + 1, primitive: alpha = x has order 31
_IGNORED: Final = frozenset(" -\t\n\r")


@dataclass(frozen=True, slots=True)
class ShortSecret:
    """The 23 canonical symbols of a card's short secret (no check symbol, no dashes)."""

    symbols: str

    def __post_init__(self) -> None:
        if len(self.symbols) != SECRET_LEN or any(c not in ALPHABET for c in self.symbols):
            raise MalformedMessage("a short secret is 23 base32 symbols", code=ErrorCode.BAD_FIELD)

    def __repr__(self) -> str:
        return "ShortSecret(...)"

    @property
    def ikm(self) -> bytes:
        return self.symbols.encode("ascii")


# --- the check symbol ------------------------------------------------------------------------


def _times_alpha(value: int) -> int:
    value <<= 1
    return value ^ _POLY if value & 0b100000 else value


def _gf_mul(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        a = _times_alpha(a)
        b >>= 1
    return product


def _weights() -> tuple[int, ...]:
    """alpha^23 .. alpha^1 for the secret symbols, then 1 for the check symbol."""
    powers = [1]
    for _ in range(SECRET_LEN):
        powers.append(_times_alpha(powers[-1]))
    return tuple(reversed(powers))


_WEIGHTS: Final = _weights()


def syndrome(values: list[int]) -> int:
    """The weighted GF(32) sum of 24 symbol values: 0 exactly for a valid code."""
    total = 0
    for weight, value in zip(_WEIGHTS, values, strict=True):
        total ^= _gf_mul(weight, value)
    return total


def _check_value(secret: ShortSecret) -> int:
    # The check's weight is 1, so it is the sum of the weighted secret symbols (char 2).
    return syndrome([_VALUE[c] for c in secret.symbols] + [0])


# --- text -----------------------------------------------------------------------------------


def format_code(secret: ShortSecret) -> str:
    """The printed code: 23 secret symbols and the check, in groups of four."""
    symbols = secret.symbols + ALPHABET[_check_value(secret)]
    return "-".join(symbols[i : i + _GROUP] for i in range(0, _SYMBOLS, _GROUP))


def parse_code(text: str) -> ShortSecret:
    """The short secret of a typed code. MalformedMessage, in words, for a symbol that is not
    base32, a wrong length, or a code whose check does not match (``CARD_CODE_TYPO``)."""
    if len(text) > _MAX_INPUT:
        raise MalformedMessage("a card code is 24 symbols", code=ErrorCode.OVERSIZED)
    values = []
    for position, char in enumerate(text, start=1):
        if char in _IGNORED:
            continue
        value = _VALUE.get(char.upper())
        if value is None:
            raise MalformedMessage(
                f"{char!r} (character {position}) is not a card code symbol: a code has only"
                " digits and the letters A-Z without U",
                code=ErrorCode.CARD_CODE_TYPO,
            )
        values.append(value)
    if len(values) != _SYMBOLS:
        raise MalformedMessage(
            f"a card code has {_SYMBOLS} symbols (not counting dashes), this one {len(values)}",
            code=ErrorCode.CARD_CODE_TYPO,
        )
    if syndrome(values) != 0:
        raise MalformedMessage(
            "the card code has a typo: its check symbol does not match; compare it with the card",
            code=ErrorCode.CARD_CODE_TYPO,
        )
    return ShortSecret("".join(ALPHABET[v] for v in values[:SECRET_LEN]))


# --- derivations ------------------------------------------------------------------------------


def short_secret(master_key: bytes, card_id: bytes) -> ShortSecret:
    """The issuer's (and vendor's) short secret of a card: 115 bits of an HMAC."""
    if len(card_id) != _CARD_ID_LEN:
        raise ValueError("card id must be 16 bytes")
    mac = hmac_sha256(master_key, Writer(SHORT_DOMAIN).bytes(card_id).finish())
    number = int.from_bytes(mac, "big") >> (256 - SECRET_BITS)
    symbols = "".join(
        ALPHABET[(number >> (5 * (SECRET_LEN - 1 - i))) & 31] for i in range(SECRET_LEN)
    )
    return ShortSecret(symbols)


def card_secret(secret: ShortSecret, domain: str, card_id: bytes) -> bytes:
    """The protocol's 32-byte card secret S, from the short secret."""
    if len(card_id) != _CARD_ID_LEN:
        raise ValueError("card id must be 16 bytes")
    return hkdf_sha256(secret.ikm, info=Writer(domain).bytes(card_id).finish())


def lookup_id(secret: ShortSecret) -> bytes:
    """What the wallet sends the issuer to find the card: a one-way function of the code."""
    return hkdf_sha256(secret.ikm, info=Writer(LOOKUP_DOMAIN).finish(), length=LOOKUP_LEN)


def answer_tag(secret: ShortSecret, card: CardCode) -> bytes:
    """The issuer's proof that its answer is about this card, with these terms."""
    info = Writer(ANSWER_DOMAIN).finish() + encode_card(card)
    return hkdf_sha256(secret.ikm, info=info, length=TAG_LEN)


def check_answer(secret: ShortSecret, card: CardCode, tag: bytes) -> None:
    """MalformedMessage unless ``tag`` is this short secret's tag for ``card``."""
    if not constant_time_eq(answer_tag(secret, card), tag):
        raise MalformedMessage(
            "the issuer's answer does not match this card code", code=ErrorCode.WRONG_ISSUER
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CardTerms:
    """What the issuer says about the card a short code names (no secret)."""

    card_id: bytes
    protocol: Protocol
    units: int
    currency: str
    unit_micros: int
    expires_at: int
    generator: Generator
    realm: str
    modulus: bytes


def card_from_answer(secret: ShortSecret, terms: CardTerms, tag: bytes) -> CardCode:
    """The whole card: the issuer's terms with the card secret derived from the short code,
    checked against the issuer's tag (MalformedMessage(WRONG_ISSUER) if it does not match:
    an answer about another card, or with changed terms)."""
    if len(terms.card_id) != _CARD_ID_LEN:
        raise MalformedMessage("a card id is 16 bytes", code=ErrorCode.BAD_FIELD)
    card = CardCode(
        protocol=terms.protocol,
        card_id=terms.card_id,
        secret=card_secret(secret, SECRET_DOMAINS[terms.protocol], terms.card_id),
        units=terms.units,
        currency=terms.currency,
        unit_micros=terms.unit_micros,
        expires_at=terms.expires_at,
        generator=terms.generator,
        realm=terms.realm,
        modulus=terms.modulus,
    )
    check_answer(secret, card, tag)
    return card
