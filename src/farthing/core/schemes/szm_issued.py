"""An issued SZM card as its issuer knows it: the card code rebuilt from what is stored, and
the card's status.

The issuer stores no card secret: it derives it again from its master key and the card id
(``card_secret`` of :mod:`~farthing.core.schemes.szm_chain` and
:mod:`~farthing.core.schemes.szm_prbg`).
Both the issuer (exports, the holder's short-code lookup, card status) and a vendor that is
the card's issuer (the browser wallet's card check) rebuild a card this way, so the rule
lives here once, pure: stored values in, a :class:`~farthing.core.cardcode.CardCode` and a
status word out.
"""

from __future__ import annotations

from typing import Final, Protocol

from farthing.core.cardcode import CardCode, Generator
from farthing.core.cardcode import Protocol as CardProtocol
from farthing.core.schemes import szm_chain, szm_prbg

__all__ = ["ACTIVE", "StoredCard", "card_code", "card_status"]

ACTIVE: Final = "active"


class StoredCard(Protocol):
    """What the issuer keeps of a card (``farthing.store.SzmCardRow`` has these)."""

    @property
    def protocol(self) -> str: ...  # "szm:chain" or "szm:prbg"
    @property
    def card_id(self) -> bytes: ...
    @property
    def generator(self) -> str | None: ...  # PRBG: hmac-ctr or bbs (None: hmac-ctr)
    @property
    def currency(self) -> str: ...
    @property
    def unit_micros(self) -> int: ...
    @property
    def units(self) -> int: ...
    @property
    def spent(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def status(self) -> str: ...  # as stored: "active" or "blocked"


def card_code(card: StoredCard, *, master: bytes, realm: str, bbs_modulus: bytes) -> CardCode:
    """The card's whole code (secret included) from what is stored and the master key of
    its protocol. ``bbs_modulus``: the issuer's Blum-Blum-Shub modulus, put in the code of a
    ``bbs`` card only (the card needs it to make its blocks)."""
    protocol = CardProtocol(card.protocol)
    if protocol is CardProtocol.CHAIN:
        generator, secret = Generator.SHA256_CHAIN, szm_chain.card_secret(master, card.card_id)
    else:
        generator = Generator(card.generator or Generator.HMAC_CTR.value)
        secret = szm_prbg.card_secret(master, card.card_id)
    return CardCode(
        protocol=protocol,
        card_id=card.card_id,
        secret=secret,
        units=card.units,
        currency=card.currency,
        unit_micros=card.unit_micros,
        expires_at=card.expires_at,
        generator=generator,
        realm=realm,
        modulus=bbs_modulus if generator is Generator.BBS else b"",
    )


def card_status(card: StoredCard, *, now: int) -> str:
    """``active``, ``blocked``, ``expired`` or ``exhausted``: a stored block first, then the
    expiry (an expired card pays nothing, whatever is left), then what is left."""
    if card.status != ACTIVE:
        return str(card.status)
    if now >= card.expires_at:
        return "expired"
    if card.spent >= card.units:
        return "exhausted"
    return ACTIVE
