"""Who may ask the issuer how much of an SZM card is spent: only its holder.

Theory of operation
===================

Every SZM payment carries the card id in the clear (in the ``Authorization`` header a
vendor, a proxy or a log sees). If the issuer told anyone the status of any card id, that
id would be a tracking handle: whoever saw it could ask again and again and learn when,
and how much, the card is used. So the issuer answers only to someone who proves that it
holds the card secret S, without sending S (our design; the SZM paper says nothing on
card status)::

    K_status = HMAC-SHA256(S, canonical("farthing/szm/status-key", card_id))
    proof    = HMAC-SHA256(K_status, canonical("farthing/szm/status-proof", card_id, at))

``at`` is the holder's clock (unix seconds); the issuer accepts it within
:data:`MAX_SKEW` seconds of its own. Both SZM protocols derive S from the issuer's master
key and the card id (:func:`farthing.core.schemes.szm_chain.card_secret`,
:func:`farthing.core.schemes.szm_prbg.card_secret`), so the issuer recomputes the proof and
stores nothing new. The two domains differ from every other use of S (chain seed, stream
blocks, payment keys), so a proof gives no payment token or key away.

A proof seen by someone else (the request goes to the issuer over TLS, so only the issuer
and the holder should ever see one) can be replayed for at most ``MAX_SKEW`` seconds and
tells the status at that moment only. Errors: a time outside the window is
``AccessDenied``; a wrong proof is told apart neither from an unknown card
(``NotFound("no such card")`` for both), so the answer is no oracle for which ids exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from farthing.core.encoding import Writer
from farthing.core.errors import AccessDenied, NotFound
from farthing.core.primitives import constant_time_eq, hmac_sha256

__all__ = [
    "MAX_SKEW",
    "PROOF_DOMAIN",
    "STATUS_KEY_DOMAIN",
    "StatusRequest",
    "check_time",
    "status_proof",
    "status_request",
    "verify_status_request",
]

STATUS_KEY_DOMAIN: Final = "farthing/szm/status-key"
PROOF_DOMAIN: Final = "farthing/szm/status-proof"
MAX_SKEW: Final = 300
_ID_LEN: Final = 16
_SECRET_LEN: Final = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """What the holder sends: the card id, its clock, and the proof for both."""

    card_id: bytes
    at: int
    proof: bytes = field(repr=False)


def status_proof(secret: bytes, card_id: bytes, at: int) -> bytes:
    """HMAC(K_status, canonical(PROOF_DOMAIN, card_id, at)), K_status derived from S."""
    if len(secret) != _SECRET_LEN or len(card_id) != _ID_LEN or not 0 <= at < 2**63:
        raise ValueError("card secret 32 bytes, card id 16 bytes, time a u63")
    key = hmac_sha256(secret, Writer(STATUS_KEY_DOMAIN).bytes(card_id).finish())
    return hmac_sha256(key, Writer(PROOF_DOMAIN).bytes(card_id).u64(at).finish())


def status_request(secret: bytes, card_id: bytes, *, now: int) -> StatusRequest:
    """The holder's side: a fresh request for the status of its card."""
    return StatusRequest(card_id=card_id, at=now, proof=status_proof(secret, card_id, now))


def check_time(request: StatusRequest, *, now: int, max_skew: int = MAX_SKEW) -> None:
    """AccessDenied unless ``request.at`` lies within ``max_skew`` seconds of ``now``.
    Checked before any card is looked up: it says nothing about a card."""
    if abs(now - request.at) > max_skew:
        raise AccessDenied("the card status request's time is too far from the issuer's clock")


def verify_status_request(
    request: StatusRequest, secret: bytes | None, *, now: int, max_skew: int = MAX_SKEW
) -> None:
    """The issuer's side; ``secret`` is None for a card it does not know. Returns None or
    raises AccessDenied (stale time) or NotFound (unknown card or wrong proof, alike)."""
    check_time(request, now=now, max_skew=max_skew)
    if secret is None or len(request.card_id) != _ID_LEN or len(request.proof) != 32:
        raise _no_such_card()
    expected = status_proof(secret, request.card_id, request.at)
    if not constant_time_eq(expected, request.proof):
        raise _no_such_card()


def _no_such_card() -> NotFound:
    return NotFound("no such card")
