"""The printable card code of an SZM prepaid card, shared by both SZM protocols.

An SZM card is bought anonymously, e.g. printed on a voucher or shown as a QR code. The
code carries everything the card holder's wallet needs and nothing about the buyer::

    card    = canonical("farthing/szm/card", protocol, card_id, secret, units, currency,
                        unit_micros, expires_at, generator, realm, modulus)
    payload = card || SHA-256(card)[:4]                  (the checksum catches typos)
    text    = "FTH1-" || base32(payload), no padding, in dash-separated groups of 5
    compact = base64url(payload), no padding             (for QR codes)

``modulus`` is the public BBS modulus n (big-endian, no leading zero, 2048 bits or more)
for the "bbs" generator and empty otherwise. Parsing the text form ignores case, whitespace
and dashes; a wrong checksum, a non-canonical encoding or an unknown protocol is refused.
The checksum is not a MAC: it protects against typing mistakes, not against an attacker
(who would only be forging a card for himself).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from farthing.core.encoding import Reader, Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage, UnsupportedMethod
from farthing.core.money import Denomination
from farthing.core.prbg import BBS_MIN_MODULUS_BITS as BBS_MIN_BITS
from farthing.core.primitives import constant_time_eq, sha256

__all__ = [
    "CARD_DOMAIN",
    "TEXT_PREFIX",
    "CardCode",
    "Generator",
    "Protocol",
    "decode_card",
    "encode_card",
    "from_compact",
    "from_text",
    "to_compact",
    "to_text",
]

CARD_DOMAIN: Final = "farthing/szm/card"
TEXT_PREFIX: Final = "FTH1"
_CHECKSUM_LEN: Final = 4
_GROUP: Final = 5
_MAX_TEXT: Final = 8192
_MAX_MODULUS: Final = 2048
_MAX_REALM: Final = 255
_BASE32: Final = re.compile(r"\A[A-Z2-7]+\Z")
_IGNORED: Final = re.compile(r"[\s\-]+")
_E = TypeVar("_E", bound=StrEnum)


class Protocol(StrEnum):
    CHAIN = "szm:chain"
    PRBG = "szm:prbg"


class Generator(StrEnum):
    SHA256_CHAIN = "sha256-chain"
    HMAC_CTR = "hmac-ctr"
    BBS = "bbs"


_GENERATORS: Final = {
    Protocol.CHAIN: frozenset({Generator.SHA256_CHAIN}),
    Protocol.PRBG: frozenset({Generator.HMAC_CTR, Generator.BBS}),
}


def _bad(message: str) -> MalformedMessage:
    return MalformedMessage(message, code=ErrorCode.BAD_FIELD)


@dataclass(frozen=True, slots=True, kw_only=True)
class CardCode:
    """Everything printed on one SZM card. ``units`` is the card's total N."""

    protocol: Protocol
    card_id: bytes
    secret: bytes = field(repr=False)
    units: int
    currency: str
    unit_micros: int
    expires_at: int
    generator: Generator
    realm: str
    modulus: bytes = b""

    def __post_init__(self) -> None:
        if len(self.card_id) != 16 or len(self.secret) != 32:
            raise _bad("card id must be 16 bytes and secret 32 bytes")
        if not 0 < self.units < 2**63 or not 0 <= self.expires_at < 2**63:
            raise _bad("card units or expiry out of range")
        if self.generator not in _GENERATORS[self.protocol]:
            raise UnsupportedMethod("generator not used by this protocol")
        if (self.generator is Generator.BBS) != bool(self.modulus):
            raise _bad("a modulus goes with the bbs generator only")
        if len(self.modulus) > _MAX_MODULUS or self.modulus[:1] == b"\x00":
            raise _bad("modulus must be minimal big-endian bytes")
        if self.modulus and int.from_bytes(self.modulus, "big").bit_length() < BBS_MIN_BITS:
            raise _bad(f"a BBS modulus under {BBS_MIN_BITS} bits is refused")
        if not 0 < len(self.realm.encode("utf-8")) <= _MAX_REALM:
            raise _bad("realm must be 1..255 bytes")
        Denomination(currency=self.currency, unit_micros=self.unit_micros)  # validates both

    @property
    def denomination(self) -> Denomination:
        return Denomination(currency=self.currency, unit_micros=self.unit_micros)


def encode_card(code: CardCode) -> bytes:
    """The canonical bytes of a card (without the checksum)."""
    return (
        Writer(CARD_DOMAIN)
        .text(code.protocol.value)
        .bytes(code.card_id)
        .bytes(code.secret)
        .u64(code.units)
        .text(code.currency)
        .u64(code.unit_micros)
        .u64(code.expires_at)
        .text(code.generator.value)
        .text(code.realm)
        .bytes(code.modulus)
        .finish()
    )


def decode_card(data: bytes) -> CardCode:
    """Inverse of :func:`encode_card`; MalformedMessage or UnsupportedMethod on any defect."""
    reader = Reader(data, CARD_DOMAIN)
    protocol = _enum(Protocol, reader.text(max_len=32))
    card_id = reader.bytes(exact=16)
    secret = reader.bytes(exact=32)
    units = reader.u64()
    currency = reader.text(max_len=8)
    unit_micros = reader.u64()
    expires_at = reader.u64()
    generator = _enum(Generator, reader.text(max_len=32))
    realm = reader.text(max_len=_MAX_REALM)
    modulus = reader.bytes(max_len=_MAX_MODULUS)
    reader.finish()
    return CardCode(
        protocol=protocol,
        card_id=card_id,
        secret=secret,
        units=units,
        currency=currency,
        unit_micros=unit_micros,
        expires_at=expires_at,
        generator=generator,
        realm=realm,
        modulus=modulus,
    )


def _enum(kind: type[_E], value: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise UnsupportedMethod("unknown card protocol or generator") from None


def _with_checksum(code: CardCode) -> bytes:
    card = encode_card(code)
    return card + sha256(card)[:_CHECKSUM_LEN]


def _checked(payload: bytes) -> CardCode:
    card, checksum = payload[:-_CHECKSUM_LEN], payload[-_CHECKSUM_LEN:]
    if not card or not constant_time_eq(sha256(card)[:_CHECKSUM_LEN], checksum):
        raise MalformedMessage("card code checksum does not match")
    return decode_card(card)


def to_text(code: CardCode) -> str:
    """``FTH1-XXXXX-XXXXX-...``: base32 of the card and its checksum, in groups of 5."""
    body = base64.b32encode(_with_checksum(code)).decode("ascii").rstrip("=")
    groups = [body[i : i + _GROUP] for i in range(0, len(body), _GROUP)]
    return "-".join([TEXT_PREFIX, *groups])


def from_text(text: str) -> CardCode:
    """Parse :func:`to_text` output, ignoring case, whitespace and dashes."""
    if len(text) > _MAX_TEXT:
        raise MalformedMessage("card code too long", code=ErrorCode.OVERSIZED)
    compact = _IGNORED.sub("", text).upper()
    if not compact.startswith(TEXT_PREFIX):
        raise MalformedMessage("not a farthing card code", code=ErrorCode.UNKNOWN_VERSION)
    return _checked(_b32decode(compact[len(TEXT_PREFIX) :]))


def _b32decode(body: str) -> bytes:
    if not _BASE32.match(body) or len(body) % 8 in (1, 3, 6):
        raise MalformedMessage("card code is not base32", code=ErrorCode.NON_CANONICAL)
    try:
        payload = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise MalformedMessage("card code is not base32", code=ErrorCode.NON_CANONICAL) from None
    if base64.b32encode(payload).decode("ascii").rstrip("=") != body:
        raise MalformedMessage("non-canonical base32", code=ErrorCode.NON_CANONICAL)
    return payload


def to_compact(code: CardCode) -> str:
    """The same payload as :func:`to_text`, as base64url (denser in a QR code)."""
    return b64url_encode(_with_checksum(code))


def from_compact(text: str) -> CardCode:
    return _checked(b64url_decode(text, max_len=_MAX_TEXT))
