"""What the issuer and its clients must agree on byte for byte: merchant request tags.

A merchant (an HLL merchant or a PayWord vendor) authenticates each request with its key
K_M, shared with the issuer at registration, by an HMAC over a canonical message that
binds the merchant id and every byte of the request::

    verify tag = HMAC-SHA256(K_M, canonical("farthing/hll/verify-request",
                                            merchant_id, offer, payment))
    batch tag  = HMAC-SHA256(K_M, canonical("farthing/hll/verify-batch",
                                            merchant_id, n, offer_1, payment_1, ...,
                                            offer_n, payment_n))
    redeem tag = HMAC-SHA256(K_M, canonical("farthing/payword/redeem-request",
                                            merchant_id, redemption))
    lookup tag = HMAC-SHA256(K_M, canonical("farthing/hll/deposit-lookup",
                                            merchant_id, batch_id))
    admit tag  = HMAC-SHA256(K_M, canonical("farthing/payword/admit-request",
                                            merchant_id, commitment))
    admit batch tag = HMAC-SHA256(K_M, canonical("farthing/payword/admit-batch",
                                            merchant_id, n, commitment_1, ..., commitment_n))

HLL deposit batches carry their own tag (:func:`farthing.core.schemes.hll.batch_tag`). A
replayed request gains nothing: the issuer settles each (card, counter) and each
redemption index once. Pure functions only, shared by both ends: the issuer's app checks
the tags and :class:`farthing.http.issuer_client.IssuerClient` (the paywall's side) makes
them, so neither package imports the other.

The answer to an SZM card lookup (``POST /v1/szm/cards/lookup`` at the issuer, and ``POST
/_farthing/card`` at a vendor that is the card's issuer) has one JSON form, made by
:func:`card_lookup_json` for both servers and read by :func:`parse_card_lookup` (the
issuer client's ``lookup_card``)::

    {"card_id", "protocol", "units", "currency", "unit_micros", "expires_at", "generator",
     "realm", "modulus", "tag", "spent", "status"}

``card_id``, ``modulus`` (empty unless the generator is ``bbs``) and ``tag``
(:func:`farthing.core.shortcode.answer_tag`) in base64url; never the card secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.primitives import hmac_sha256

__all__ = [
    "ADMIT_BATCH_DOMAIN",
    "ADMIT_REQUEST_DOMAIN",
    "DEPOSIT_LOOKUP_DOMAIN",
    "REDEEM_REQUEST_DOMAIN",
    "VERIFY_BATCH_DOMAIN",
    "VERIFY_REQUEST_DOMAIN",
    "CardLookup",
    "admit_batch_tag",
    "admit_request_tag",
    "card_lookup_json",
    "deposit_lookup_tag",
    "parse_card_lookup",
    "redeem_request_tag",
    "verify_batch_tag",
    "verify_request_tag",
]

VERIFY_REQUEST_DOMAIN: Final = "farthing/hll/verify-request"
VERIFY_BATCH_DOMAIN: Final = "farthing/hll/verify-batch"
REDEEM_REQUEST_DOMAIN: Final = "farthing/payword/redeem-request"
DEPOSIT_LOOKUP_DOMAIN: Final = "farthing/hll/deposit-lookup"
ADMIT_REQUEST_DOMAIN: Final = "farthing/payword/admit-request"
ADMIT_BATCH_DOMAIN: Final = "farthing/payword/admit-batch"


def verify_request_tag(
    merchant_key: bytes, merchant_id: str, offer: bytes, payment: bytes
) -> bytes:
    message = Writer(VERIFY_REQUEST_DOMAIN).text(merchant_id).bytes(offer).bytes(payment).finish()
    return hmac_sha256(merchant_key, message)


def verify_batch_tag(
    merchant_key: bytes, merchant_id: str, items: Sequence[tuple[bytes, bytes]]
) -> bytes:
    """One tag for a batch of online verifications: it binds their number, order and every
    byte of each (offer, payment), so the batch is authenticated once."""
    message = Writer(VERIFY_BATCH_DOMAIN).text(merchant_id).u64(len(items))
    for offer, payment in items:
        message.bytes(offer).bytes(payment)
    return hmac_sha256(merchant_key, message.finish())


def redeem_request_tag(merchant_key: bytes, merchant_id: str, redemption: bytes) -> bytes:
    message = Writer(REDEEM_REQUEST_DOMAIN).text(merchant_id).bytes(redemption).finish()
    return hmac_sha256(merchant_key, message)


def deposit_lookup_tag(merchant_key: bytes, merchant_id: str, batch_id: bytes) -> bytes:
    """A merchant asking what the bank did with one of its deposit batches."""
    message = Writer(DEPOSIT_LOOKUP_DOMAIN).text(merchant_id).bytes(batch_id).finish()
    return hmac_sha256(merchant_key, message)


def admit_request_tag(merchant_key: bytes, merchant_id: str, commitment: bytes) -> bytes:
    message = Writer(ADMIT_REQUEST_DOMAIN).text(merchant_id).bytes(commitment).finish()
    return hmac_sha256(merchant_key, message)


def admit_batch_tag(merchant_key: bytes, merchant_id: str, commitments: Sequence[bytes]) -> bytes:
    """One tag for a batch of PayWord admissions: it binds their number, order and every
    byte of each commitment, so the batch is authenticated once."""
    message = Writer(ADMIT_BATCH_DOMAIN).text(merchant_id).u64(len(commitments))
    for commitment in commitments:
        message.bytes(commitment)
    return hmac_sha256(merchant_key, message.finish())


# --- the SZM card lookup's answer -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CardLookup:
    """The issuer's answer about the card a short code names (not yet checked: see
    :func:`farthing.core.shortcode.card_from_answer`)."""

    terms: shortcode.CardTerms
    tag: bytes
    spent: int
    status: str


def card_lookup_json(code: CardCode, *, tag: bytes, spent: int, status: str) -> dict[str, object]:
    """The lookup answer for the card ``code`` (its terms only: the secret stays out)."""
    return {
        "card_id": b64url_encode(code.card_id),
        "protocol": code.protocol.value,
        "units": code.units,
        "currency": code.currency,
        "unit_micros": code.unit_micros,
        "expires_at": code.expires_at,
        "generator": code.generator.value,
        "realm": code.realm,
        "modulus": b64url_encode(code.modulus),
        "tag": b64url_encode(tag),
        "spent": spent,
        "status": status,
    }


def parse_card_lookup(answer: Mapping[str, object]) -> CardLookup:
    """Read a lookup answer; MalformedMessage(BAD_FIELD) if a member is missing or wrong."""
    try:
        terms = shortcode.CardTerms(
            card_id=b64url_decode(str(answer["card_id"]), max_len=64),
            protocol=Protocol(str(answer["protocol"])),
            units=_integer(answer, "units"),
            currency=str(answer["currency"]),
            unit_micros=_integer(answer, "unit_micros"),
            expires_at=_integer(answer, "expires_at"),
            generator=Generator(str(answer["generator"])),
            realm=str(answer["realm"]),
            modulus=b64url_decode(str(answer["modulus"]), max_len=4096),
        )
        tag = b64url_decode(str(answer["tag"]), max_len=64)
    except (KeyError, ValueError) as exc:
        raise MalformedMessage("card lookup member", code=ErrorCode.BAD_FIELD) from exc
    return CardLookup(
        terms=terms, tag=tag, spent=_integer(answer, "spent"), status=str(answer.get("status"))
    )


def _integer(document: Mapping[str, object], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"card lookup {name}", code=ErrorCode.BAD_FIELD)
    return value
