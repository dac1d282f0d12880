"""Cryptographic primitives, each a thin call into a maintained library.

- SHA-256 and HMAC-SHA256: the standard library's OpenSSL one-shot calls (``hashlib``,
  ``hmac.digest``). They are the same OpenSSL code ``cryptography`` wraps, but without a
  Python object per call, which matters on the vendor's hot path (one MAC per request).
- HKDF-SHA256, ChaCha20-Poly1305, AES-256-GCM and Ed25519: ``cryptography``.
- Big integers: ``gmpy2`` (see :mod:`farthing.core.prbg`).

Nothing here is hand-rolled. Secrets are compared with :func:`constant_time_eq` only.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from farthing.core.errors import ErrorCode, InvalidPayment

__all__ = [
    "AEAD_KEY_LEN",
    "AEAD_NONCE_LEN",
    "DIGEST_LEN",
    "aead_open",
    "aead_seal",
    "aes_gcm_open",
    "aes_gcm_seal",
    "constant_time_eq",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "sha256",
]

DIGEST_LEN: Final = 32
AEAD_KEY_LEN: Final = 32
AEAD_NONCE_LEN: Final = 12
_SHA256: Final = "sha256"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, _SHA256)


constant_time_eq: Final = hmac.compare_digest
"""Compare two secrets in time independent of where they differ (``hmac.compare_digest``
itself, not a wrapper: verifiers call it once per payment)."""


def hkdf_sha256(ikm: bytes, *, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439); returns ciphertext || 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`aead_seal`; any tampering or wrong key raises InvalidPayment."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise InvalidPayment("sealed content did not open", code=ErrorCode.SEAL_BROKEN) from None


def aes_gcm_seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM (NIST SP 800-38D, 96-bit nonce); returns ciphertext || 16-byte tag.

    The seal of bought content uses it rather than ChaCha20-Poly1305 because every
    browser's WebCrypto has it (docs/browser.md)."""
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aes_gcm_open(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`aes_gcm_seal`; any tampering or wrong key raises InvalidPayment."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise InvalidPayment("sealed content did not open", code=ErrorCode.SEAL_BROKEN) from None


def ed25519_public_key(private_key: bytes) -> bytes:
    """The 32-byte public key of a 32-byte Ed25519 private key (seed)."""
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    return key.public_key().public_bytes_raw()


def ed25519_sign(private_key: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_key).sign(message)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Returns None or raises InvalidPayment (also for a malformed key or signature)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise InvalidPayment("signature did not verify", code=ErrorCode.SIGNATURE_INVALID) from None
