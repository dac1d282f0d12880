"""An SZM card from its typed short code: check the code, ask its issuer, check the answer.

The printed code carries only the card's short secret (:mod:`farthing.core.shortcode`); its
terms live at the issuer. A typo is found here, before anything is sent (every single
wrong symbol and every swap of neighbours is caught by the check symbol); the issuer is
asked with the code's lookup id (a one-way function of it) and its answer is accepted only
with the tag that binds those terms to this code::

    found = asyncio.run(fetch_card("7K3M-0QXD-9VAT-E2HN-4PCW-R8JB", "https://issuer.example"))
    wallet.add_szm_card(found.card, spent=found.spent, site="https://news.example")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from farthing.core import shortcode
from farthing.core.cardcode import CardCode
from farthing.core.errors import (
    AccessDenied,
    CardExhausted,
    FarthingError,
    NotFound,
    PaymentExpired,
)
from farthing.http.issuer_client import IssuerClient

__all__ = ["FoundCard", "fetch_card", "looks_short"]

_MAX_SHORT_TEXT: Final = 40  # 29 printed; room for spaces a person adds
_NOT_ACTIVE: Final[dict[str, type[FarthingError]]] = {
    "expired": PaymentExpired,
    "exhausted": CardExhausted,
    "blocked": AccessDenied,
}


@dataclass(frozen=True, slots=True)
class FoundCard:
    """A card its issuer answered for: the card, and how many of its units are spent."""

    card: CardCode
    spent: int


def looks_short(text: str) -> bool:
    """Whether ``text`` is meant as a short code (not a long ``FTH1-`` or compact form)."""
    stripped = text.strip()
    return len(stripped) <= _MAX_SHORT_TEXT and not stripped.upper().startswith("FTH1")


async def fetch_card(text: str, issuer: str) -> FoundCard:
    """The card a typed short code names, from ``issuer`` (its base URL). MalformedMessage
    (CARD_CODE_TYPO) for a typo, NotFound for a code the issuer does not know, an error in
    words for a card that is not active there."""
    secret = shortcode.parse_code(text)
    async with IssuerClient(issuer, merchant_id=None, merchant_key=None) as client:
        try:
            answer = await client.lookup_card(shortcode.lookup_id(secret))
        except NotFound:
            raise NotFound(
                "the issuer knows no card with this code: check the issuer's address and the code"
            ) from None
    card = shortcode.card_from_answer(secret, answer.terms, answer.tag)
    if answer.status != "active":
        kind = _NOT_ACTIVE.get(answer.status, AccessDenied)
        raise kind(f"this card is {answer.status} at its issuer: it cannot pay")
    return FoundCard(card=card, spent=answer.spent)
