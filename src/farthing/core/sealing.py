"""Sealing bought content under the key a payment distributed (SZM's key distribution).

Both the card holder and the issuing vendor can derive the per-payment key K from the card
secret; nobody else can. The vendor encrypts the response body with AES-256-GCM under
K, with associated data that binds the payment (method, card id, index), the resource, and
the answer's HTTP status and original content type. A sealed body therefore opens only with
the key of *that* payment for *that* resource as *that* kind of answer: replaying it to
answer another payment, serving it for another path, turning a 404 page into a 200, or
relabelling ``text/plain`` as ``text/html`` on the way, all fail the tag check.
Each key seals at most one body (a retry seals the same body again, with a fresh nonce),
so a random 96-bit nonce is ample; it is passed in.

Why AES-256-GCM (binding version 3) and not ChaCha20-Poly1305 (version 2, until issue 15):
a reader's browser must open the seal, and only Chromium's WebCrypto has ChaCha20-Poly1305;
AES-GCM is in every browser's WebCrypto, so the page's wallet needs no bundled cipher code.
A version-2 seal does not open under version 3: the version is the first byte of the
associated data, so the tag check fails (SEAL_BROKEN), never a silent fallback.

Wire form: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. The binding
(:func:`seal_binding`) is the canonical message (:mod:`farthing.core.encoding`)::

    version 3, domain "farthing/seal":
        text method || bytes card_id || u64 index || text resource
        || u64 status || text content_type
"""

from __future__ import annotations

from typing import Final

from farthing.core.encoding import Writer
from farthing.core.errors import ErrorCode, InvalidPayment
from farthing.core.primitives import AEAD_KEY_LEN, AEAD_NONCE_LEN, aes_gcm_open, aes_gcm_seal

__all__ = ["SEAL_BINDING_VERSION", "SEAL_OVERHEAD", "open_sealed", "seal", "seal_binding"]

SEAL_OVERHEAD = AEAD_NONCE_LEN + 16
# Version 1 bound method, card, index and resource only; 2 adds status and content type
# (both ChaCha20-Poly1305); 3 is the same binding under AES-256-GCM.
SEAL_BINDING_VERSION: Final = 3
_SEAL_DOMAIN: Final = "farthing/seal"


def seal_binding(
    *, method: str, card_id: bytes, index: int, resource: str, status: int, content_type: str
) -> bytes:
    """The associated data that ties a sealed body to one payment, resource and answer.

    ``status`` is the HTTP status sent with the body; ``content_type`` the body's original
    ``Content-Type`` value exactly as the app sent it ("" when it sent none). Raises
    ValueError for a resource or content type that is not canonical text.
    """
    if not 100 <= status <= 999:
        raise ValueError("an HTTP status is three digits")
    return (
        Writer(_SEAL_DOMAIN, SEAL_BINDING_VERSION)
        .text(method)
        .bytes(card_id)
        .u64(index)
        .text(resource)
        .u64(status)
        .text(content_type)
        .finish()
    )


def seal(
    key: bytes,
    plaintext: bytes,
    *,
    nonce: bytes,
    method: str,
    card_id: bytes,
    index: int,
    resource: str,
    status: int,
    content_type: str,
) -> bytes:
    if len(key) != AEAD_KEY_LEN or len(nonce) != AEAD_NONCE_LEN:
        raise ValueError("seal needs a 32-byte key and a 12-byte nonce")
    aad = seal_binding(
        method=method,
        card_id=card_id,
        index=index,
        resource=resource,
        status=status,
        content_type=content_type,
    )
    return nonce + aes_gcm_seal(key, nonce, plaintext, aad)


def open_sealed(
    key: bytes,
    sealed: bytes,
    *,
    method: str,
    card_id: bytes,
    index: int,
    resource: str,
    status: int,
    content_type: str,
) -> bytes:
    """Plaintext, or InvalidPayment(SEAL_BROKEN) for a wrong key, binding or any bit flip."""
    if len(sealed) < SEAL_OVERHEAD or len(key) != AEAD_KEY_LEN:
        raise InvalidPayment("sealed content did not open", code=ErrorCode.SEAL_BROKEN)
    try:
        aad = seal_binding(
            method=method,
            card_id=card_id,
            index=index,
            resource=resource,
            status=status,
            content_type=content_type,
        )
    except ValueError:
        raise InvalidPayment("sealed content did not open", code=ErrorCode.SEAL_BROKEN) from None
    return aes_gcm_open(key, sealed[:AEAD_NONCE_LEN], sealed[AEAD_NONCE_LEN:], aad)
