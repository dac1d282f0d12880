"""What the issuer and its clients must agree on byte for byte: merchant request tags.

A merchant (an HLL merchant or a PayWord vendor) authenticates each request with its key
K_M, shared with the issuer at registration, by an HMAC over a canonical message that
binds the merchant id and every byte of the request::

    verify tag = HMAC-SHA256(K_M, canonical("farthing/hll/verify-request",
                                            merchant_id, offer, payment))
    redeem tag = HMAC-SHA256(K_M, canonical("farthing/payword/redeem-request",
                                            merchant_id, redemption))
    lookup tag = HMAC-SHA256(K_M, canonical("farthing/hll/deposit-lookup",
                                            merchant_id, batch_id))
    admit tag  = HMAC-SHA256(K_M, canonical("farthing/payword/admit-request",
                                            merchant_id, commitment))

HLL deposit batches carry their own tag (:func:`farthing.core.schemes.hll.batch_tag`). A
replayed request gains nothing: the issuer settles each (card, counter) and each
redemption index once. Pure functions only, shared by both ends: the issuer's app checks
the tags and :class:`farthing.http.issuer_client.IssuerClient` (the paywall's side) makes
them, so neither package imports the other.
"""

from __future__ import annotations

from typing import Final

from farthing.core.encoding import Writer
from farthing.core.primitives import hmac_sha256

__all__ = [
    "ADMIT_REQUEST_DOMAIN",
    "DEPOSIT_LOOKUP_DOMAIN",
    "REDEEM_REQUEST_DOMAIN",
    "VERIFY_REQUEST_DOMAIN",
    "admit_request_tag",
    "deposit_lookup_tag",
    "redeem_request_tag",
    "verify_request_tag",
]

VERIFY_REQUEST_DOMAIN: Final = "farthing/hll/verify-request"
REDEEM_REQUEST_DOMAIN: Final = "farthing/payword/redeem-request"
DEPOSIT_LOOKUP_DOMAIN: Final = "farthing/hll/deposit-lookup"
ADMIT_REQUEST_DOMAIN: Final = "farthing/payword/admit-request"


def verify_request_tag(
    merchant_key: bytes, merchant_id: str, offer: bytes, payment: bytes
) -> bytes:
    message = Writer(VERIFY_REQUEST_DOMAIN).text(merchant_id).bytes(offer).bytes(payment).finish()
    return hmac_sha256(merchant_key, message)


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
