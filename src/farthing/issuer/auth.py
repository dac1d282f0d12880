"""Who may call the issuer: operators (bearer tokens) and merchants (their key K_M).

Operators. A token is 32 random bytes, base64url, prefixed ``fop_``; it is shown once
when created and only SHA-256(token) is stored. A missing, unknown or revoked token is
``AccessDenied(UNAUTHENTICATED)`` (HTTP 401), with one message for all three.

Merchants. K_M is made by the issuer at registration, returned once, and stored sealed
(ChaCha20-Poly1305 under the key file's ``merchant_key_wrap``, bound to the merchant id
so a sealed key cannot be moved to another merchant's row). :class:`MerchantDirectory`
opens keys on demand and caches them: a merchant row never changes after it is made.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer, b64url_encode
from farthing.core.errors import AccessDenied, ErrorCode, InvalidPayment, LocalProtocolError
from farthing.core.primitives import (
    AEAD_NONCE_LEN,
    aead_open,
    aead_seal,
    constant_time_eq,
    sha256,
)
from farthing.store import Store

__all__ = [
    "TOKEN_PREFIX",
    "Merchant",
    "MerchantDirectory",
    "Operator",
    "OperatorAuth",
    "new_operator_token",
    "open_merchant_key",
    "seal_merchant_key",
    "token_hash",
    "unauthenticated",
]

TOKEN_PREFIX: Final = "fop_"  # noqa: S105 (a prefix, not a secret)
_TOKEN_BYTES: Final = 32
_MAX_TOKEN: Final = 128
_BEARER: Final = re.compile(r"\ABearer +([A-Za-z0-9_-]{1,128})\Z", re.IGNORECASE)
_SEAL_DOMAIN: Final = "farthing/issuer/merchant-key"


def unauthenticated() -> AccessDenied:
    return AccessDenied("authentication required", code=ErrorCode.UNAUTHENTICATED)


def new_operator_token(rng: RandomSource) -> str:
    return TOKEN_PREFIX + b64url_encode(rng(_TOKEN_BYTES))


def token_hash(token: str) -> bytes:
    return sha256(token.encode("utf-8"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Operator:
    id: int
    name: str

    @property
    def actor(self) -> str:
        """How the audit log names this operator."""
        return f"operator:{self.name}"


class OperatorAuth:
    """Checks ``Authorization: Bearer <token>`` against the stored token hashes."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def authenticate(self, authorization: str | None) -> Operator:
        token = _bearer_token(authorization)
        if token is None:
            raise unauthenticated()
        digest = token_hash(token)
        with self._store.transaction(readonly=True) as tx:
            row = tx.admin.operator_by_token_hash(digest)
        if row is None or not row.active or not constant_time_eq(row.token_hash, digest):
            raise unauthenticated()
        return Operator(id=row.id, name=row.name)


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None or len(authorization) > _MAX_TOKEN + 16:
        return None
    match = _BEARER.match(authorization.strip())
    return match.group(1) if match else None


# --- merchants ----------------------------------------------------------------------------


def _seal_aad(merchant_id: str) -> bytes:
    return Writer(_SEAL_DOMAIN).text(merchant_id).finish()


def seal_merchant_key(wrap_key: bytes, merchant_id: str, key: bytes, rng: RandomSource) -> bytes:
    """nonce || ChaCha20-Poly1305(wrap_key, key, aad = canonical(merchant id))."""
    nonce = rng(AEAD_NONCE_LEN)
    return nonce + aead_seal(wrap_key, nonce, key, _seal_aad(merchant_id))


def open_merchant_key(wrap_key: bytes, merchant_id: str, sealed: bytes) -> bytes:
    """Inverse of :func:`seal_merchant_key`; a key that does not open is our fault (500)."""
    nonce, ciphertext = sealed[:AEAD_NONCE_LEN], sealed[AEAD_NONCE_LEN:]
    try:
        return aead_open(wrap_key, nonce, ciphertext, _seal_aad(merchant_id))
    except InvalidPayment:
        raise LocalProtocolError(
            "a merchant key does not open: wrong key file for this database?"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Merchant:
    """A registered merchant with its opened key and its ledger account."""

    merchant_id: str
    account_id: int
    currency: str
    key: bytes = field(repr=False)


class MerchantDirectory:
    """Merchants by id, keys opened once and cached (rows are immutable once made)."""

    def __init__(self, store: Store, wrap_key: bytes) -> None:
        self._store = store
        self._wrap_key = wrap_key
        self._cache: dict[str, Merchant] = {}
        self._lock = threading.Lock()

    def get(self, merchant_id: str) -> Merchant | None:
        with self._lock:
            cached = self._cache.get(merchant_id)
        if cached is not None:
            return cached
        merchant = self._load(merchant_id)
        if merchant is not None:
            with self._lock:
                self._cache[merchant_id] = merchant
        return merchant

    def _load(self, merchant_id: str) -> Merchant | None:
        with self._store.transaction(readonly=True) as tx:
            row = tx.admin.merchant(merchant_id)
            account = None if row is None else tx.ledger.account(row.account_id)
        if row is None or account is None:
            return None
        return Merchant(
            merchant_id=merchant_id,
            account_id=row.account_id,
            currency=account.currency,
            key=open_merchant_key(self._wrap_key, merchant_id, row.key_sealed),
        )

    def authenticate(
        self, merchant_id: str, tag: bytes, expected_tag: Callable[[bytes], bytes]
    ) -> Merchant:
        """The merchant whose key makes ``expected_tag(key) == tag``, else 401.

        An unknown merchant and a wrong tag are refused alike.
        """
        merchant = self.get(merchant_id)
        if merchant is None or not constant_time_eq(expected_tag(merchant.key), tag):
            raise unauthenticated()
        return merchant
