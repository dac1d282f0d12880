"""Secrets at rest: a key derived from the wallet passphrase seals every secret record.

The wallet file holds card secrets, HLL card keys and PINs and PayWord private keys. Each
is sealed with ChaCha20-Poly1305 under one 32-byte key that scrypt derives from the
passphrase (random 16-byte salt and the cost parameters stored in the file, so they can be
raised later without breaking old wallets). The associated data of each sealed value is the
id of the record it belongs to, so a sealed value copied into another row does not open.

Wire form of a sealed value: ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``.

A wrong passphrase is detected with a sealed check value written at creation; it raises
``LocalProtocolError("wrong passphrase", code=WALLET_LOCKED)`` before anything else is read.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, LocalProtocolError, MalformedMessage
from farthing.core.primitives import AEAD_KEY_LEN, AEAD_NONCE_LEN, aead_open, aead_seal

__all__ = [
    "DEFAULT_SCRYPT_N",
    "KdfParams",
    "SecretBox",
    "record_id",
]

DEFAULT_SCRYPT_N: Final = 1 << 15  # about 32 MiB and 0.1 s: once per wallet opening
_SALT_LEN: Final = 16
_TAG_LEN: Final = 16
_RECORD_DOMAIN: Final = "farthing/wallet/record"
_CHECK_RECORD: Final = "wallet-check"
_CHECK_PLAINTEXT: Final = b"farthing wallet passphrase check v1"


def record_id(table: str, key: bytes, member: str) -> bytes:
    """The associated data of one sealed value: which table, which row, which column."""
    return Writer(_RECORD_DOMAIN).text(table).bytes(key).text(member).finish()


@dataclass(frozen=True, slots=True, kw_only=True)
class KdfParams:
    """scrypt's cost parameters and salt, stored in the wallet file in the clear."""

    n: int = DEFAULT_SCRYPT_N
    r: int = 8
    p: int = 1
    salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise MalformedMessage("scrypt parameters out of range", code=ErrorCode.BAD_FIELD)
        if len(self.salt) != _SALT_LEN:
            raise MalformedMessage("scrypt salt must be 16 bytes", code=ErrorCode.BAD_FIELD)

    @classmethod
    def fresh(cls, rng: RandomSource, *, n: int = DEFAULT_SCRYPT_N) -> KdfParams:
        return cls(n=n, salt=rng(_SALT_LEN))

    def to_json(self) -> dict[str, object]:
        return {
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": b64url_encode(self.salt),
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> KdfParams:
        n, r, p, salt = obj.get("n"), obj.get("r"), obj.get("p"), obj.get("salt")
        if obj.get("kdf") != "scrypt" or not isinstance(salt, str):
            raise MalformedMessage("unknown key derivation in wallet", code=ErrorCode.BAD_FIELD)
        if not (type(n) is int and type(r) is int and type(p) is int):
            raise MalformedMessage("bad scrypt parameters in wallet", code=ErrorCode.BAD_FIELD)
        return cls(n=n, r=r, p=p, salt=b64url_decode(salt))


class SecretBox:
    """Seals and opens secret values under the passphrase key. Holds the key, never the
    passphrase."""

    __slots__ = ("_key", "_rng")

    def __init__(self, key: bytes, rng: RandomSource) -> None:
        if len(key) != AEAD_KEY_LEN:
            raise ValueError("the wallet key must be 32 bytes")
        self._key = key
        self._rng = rng

    @classmethod
    def derive(cls, passphrase: str, params: KdfParams, rng: RandomSource) -> SecretBox:
        """scrypt over the passphrase (NFC-normalised UTF-8: it types the same everywhere)."""
        if not passphrase:
            raise LocalProtocolError("the passphrase must not be empty", code=ErrorCode.MISUSE)
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        kdf = Scrypt(salt=params.salt, length=AEAD_KEY_LEN, n=params.n, r=params.r, p=params.p)
        return cls(kdf.derive(secret), rng)

    def seal(self, record: bytes, plaintext: bytes) -> bytes:
        nonce = self._rng(AEAD_NONCE_LEN)
        return nonce + aead_seal(self._key, nonce, plaintext, record)

    def open(self, record: bytes, sealed: bytes) -> bytes:
        """The plaintext, or LocalProtocolError(WALLET_LOCKED) if it does not open here."""
        if len(sealed) < AEAD_NONCE_LEN + _TAG_LEN:
            raise LocalProtocolError("a wallet secret is damaged", code=ErrorCode.WALLET_LOCKED)
        try:
            return aead_open(self._key, sealed[:AEAD_NONCE_LEN], sealed[AEAD_NONCE_LEN:], record)
        except InvalidPayment:
            raise LocalProtocolError(
                "a wallet secret does not open: damaged, or moved to another record",
                code=ErrorCode.WALLET_LOCKED,
            ) from None

    def check_value(self) -> bytes:
        """A sealed constant written at creation; :meth:`verify_check` proves the passphrase."""
        return self.seal(_check_record(), _CHECK_PLAINTEXT)

    def verify_check(self, sealed: bytes) -> None:
        try:
            self.open(_check_record(), sealed)
        except LocalProtocolError:
            raise LocalProtocolError("wrong passphrase", code=ErrorCode.WALLET_LOCKED) from None

    def __repr__(self) -> str:
        return "SecretBox(<key>)"


def _check_record() -> bytes:
    return record_id("meta", b"", _CHECK_RECORD)
