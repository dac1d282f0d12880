"""Sealing bought content under the key a payment distributed (SZM's key distribution).

Both the card holder and the issuing vendor can derive the per-payment key K from the card
secret; nobody else can. The vendor encrypts the response body with ChaCha20-Poly1305 under
K, with associated data that binds the payment (method, card id, index) and the resource.
A sealed body therefore opens only with the key of *that* payment for *that* resource:
replaying it to answer another payment, or serving it for another path, fails the tag check.
Each key seals at most one body, so a random 96-bit nonce is ample; it is passed in.

Wire form: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``.
"""

from __future__ import annotations

from farthing.core.encoding import Writer
from farthing.core.errors import ErrorCode, InvalidPayment
from farthing.core.primitives import AEAD_KEY_LEN, AEAD_NONCE_LEN, aead_open, aead_seal

__all__ = ["SEAL_OVERHEAD", "open_sealed", "seal", "seal_binding"]

SEAL_OVERHEAD = AEAD_NONCE_LEN + 16


def seal_binding(*, method: str, card_id: bytes, index: int, resource: str) -> bytes:
    """The associated data that ties a sealed body to one payment and one resource."""
    return Writer("farthing/seal").text(method).bytes(card_id).u64(index).text(resource).finish()


def seal(
    key: bytes,
    plaintext: bytes,
    *,
    nonce: bytes,
    method: str,
    card_id: bytes,
    index: int,
    resource: str,
) -> bytes:
    if len(key) != AEAD_KEY_LEN or len(nonce) != AEAD_NONCE_LEN:
        raise ValueError("seal needs a 32-byte key and a 12-byte nonce")
    aad = seal_binding(method=method, card_id=card_id, index=index, resource=resource)
    return nonce + aead_seal(key, nonce, plaintext, aad)


def open_sealed(
    key: bytes, sealed: bytes, *, method: str, card_id: bytes, index: int, resource: str
) -> bytes:
    """Plaintext, or InvalidPayment(SEAL_BROKEN) for a wrong key, binding or any bit flip."""
    if len(sealed) < SEAL_OVERHEAD or len(key) != AEAD_KEY_LEN:
        raise InvalidPayment("sealed content did not open", code=ErrorCode.SEAL_BROKEN)
    aad = seal_binding(method=method, card_id=card_id, index=index, resource=resource)
    return aead_open(key, sealed[:AEAD_NONCE_LEN], sealed[AEAD_NONCE_LEN:], aad)
