"""Secrets at rest: a key derived from the wallet passphrase seals every secret record.

The wallet file holds card secrets, HLL card keys and PINs and PayWord private keys. Each
is sealed with ChaCha20-Poly1305 under one 32-byte key that Argon2id (RFC 9106, from
``cryptography``) derives from the passphrase, with a random 16-byte salt and the cost
parameters stored in the file. The associated data of each sealed value is the id of the
record it belongs to, so a sealed value copied into another row does not open.

Cost. A new wallet uses :data:`DEFAULT_COST` (RFC 9106's second recommended setting:
64 MiB, 3 passes, 4 lanes; about 0.15 s, once per opening). A file is read only if its
cost is at least :data:`MINIMUM_COST` (19 MiB and 2 passes, OWASP's floor for Argon2id)
and at most a sane maximum (a hostile file must not make us allocate gigabytes): anything
weaker, and any wallet from before Argon2id (scrypt with N = 2^15), is refused with
``KDF_TOO_WEAK`` and told to run ``farthing wallet upgrade``, which re-seals every secret
under fresh, strong parameters (:meth:`~farthing.wallet.store.WalletStore.upgrade`). Tests
get cheap parameters only through :func:`farthing.wallet.testing.cheap_wallet_kdf`; there is no
flag for it.

Wire form of a sealed value: ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``.

A wrong passphrase is detected with a sealed check value written at creation; it raises
``LocalProtocolError("wrong passphrase", code=WRONG_PASSPHRASE)`` before anything else is read.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, LocalProtocolError, MalformedMessage
from farthing.core.primitives import AEAD_KEY_LEN, AEAD_NONCE_LEN, aead_open, aead_seal

__all__ = [
    "DEFAULT_COST",
    "MINIMUM_COST",
    "KdfCost",
    "KdfParams",
    "SecretBox",
    "record_id",
]

_SALT_LEN: Final = 16
_TAG_LEN: Final = 16
_RECORD_DOMAIN: Final = "farthing/wallet/record"
_CHECK_RECORD: Final = "wallet-check"
_CHECK_PLAINTEXT: Final = b"farthing wallet passphrase check v1"
ARGON2ID: Final = "argon2id"
SCRYPT: Final = "scrypt"  # wallets from before Argon2id: read only to upgrade them
_UPGRADE: Final = "run `farthing wallet upgrade` to protect it with today's key derivation"


@dataclass(frozen=True, slots=True, kw_only=True)
class KdfCost:
    """Argon2id's cost: ``memory_kib`` KiB of memory, ``passes`` over it, ``lanes``."""

    memory_kib: int
    passes: int
    lanes: int

    def at_least(self, floor: KdfCost) -> bool:
        return self.memory_kib >= floor.memory_kib and self.passes >= floor.passes


DEFAULT_COST: Final = KdfCost(memory_kib=64 * 1024, passes=3, lanes=4)
MINIMUM_COST: Final = KdfCost(memory_kib=19 * 1024, passes=2, lanes=1)
_MAXIMUM: Final = KdfCost(memory_kib=4 * 1024 * 1024, passes=64, lanes=64)


@dataclass(frozen=True, slots=True)
class _Policy:
    """What a new wallet gets and what a read wallet must have (swapped only by tests)."""

    fresh: KdfCost
    floor: KdfCost


_PRODUCTION: Final = _Policy(fresh=DEFAULT_COST, floor=MINIMUM_COST)
_policy = _PRODUCTION


def record_id(table: str, key: bytes, member: str) -> bytes:
    """The associated data of one sealed value: which table, which row, which column."""
    return Writer(_RECORD_DOMAIN).text(table).bytes(key).text(member).finish()


@dataclass(frozen=True, slots=True, kw_only=True)
class KdfParams:
    """The key derivation of one wallet file, stored in it in the clear.

    ``kdf`` is "argon2id" (``cost``) or, in a wallet from before Argon2id, "scrypt"
    (``scrypt_nrp``); :meth:`from_json` reads both, :meth:`require_strong` admits only an
    Argon2id cost at or above the floor.
    """

    kdf: str = ARGON2ID
    cost: KdfCost | None = None
    scrypt_nrp: tuple[int, int, int] | None = None
    salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.salt) != _SALT_LEN:
            raise _bad_params("the wallet's KDF salt must be 16 bytes")
        if self.kdf == ARGON2ID and self.cost is not None and self.scrypt_nrp is None:
            _check_range(self.cost)
        elif self.kdf == SCRYPT and self.scrypt_nrp is not None and self.cost is None:
            n, r, p = self.scrypt_nrp
            if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 1 << 24:
                raise _bad_params("scrypt parameters out of range")
        else:
            raise _bad_params("unknown key derivation in wallet")

    @classmethod
    def fresh(cls, rng: RandomSource) -> KdfParams:
        """New Argon2id parameters at today's cost, with a random salt."""
        return cls(cost=_policy.fresh, salt=rng(_SALT_LEN))

    def require_strong(self) -> None:
        """LocalProtocolError(KDF_TOO_WEAK), saying what to do, below the floor."""
        if self.cost is None:
            raise LocalProtocolError(
                f"this wallet's passphrase protection ({self.kdf}) is too weak; {_UPGRADE}",
                code=ErrorCode.KDF_TOO_WEAK,
            )
        if not self.cost.at_least(_policy.floor):
            raise LocalProtocolError(
                f"this wallet's passphrase protection (Argon2id, {self.cost.memory_kib} KiB, "
                f"{self.cost.passes} passes) is under the minimum "
                f"({_policy.floor.memory_kib} KiB, {_policy.floor.passes} passes); {_UPGRADE}",
                code=ErrorCode.KDF_TOO_WEAK,
            )

    def derive(self, secret: bytes) -> bytes:
        if self.cost is not None:
            return Argon2id(
                salt=self.salt,
                length=AEAD_KEY_LEN,
                iterations=self.cost.passes,
                lanes=self.cost.lanes,
                memory_cost=self.cost.memory_kib,
            ).derive(secret)
        assert self.scrypt_nrp is not None  # __post_init__: one of the two is set
        n, r, p = self.scrypt_nrp
        return Scrypt(salt=self.salt, length=AEAD_KEY_LEN, n=n, r=r, p=p).derive(secret)

    def to_json(self) -> dict[str, object]:
        if self.cost is None:
            raise LocalProtocolError("only Argon2id is written", code=ErrorCode.INTERNAL)
        return {
            "kdf": ARGON2ID,
            "memoryKiB": self.cost.memory_kib,
            "passes": self.cost.passes,
            "lanes": self.cost.lanes,
            "salt": b64url_encode(self.salt),
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> KdfParams:
        salt = obj.get("salt")
        if not isinstance(salt, str):
            raise _bad_params("unknown key derivation in wallet")
        if obj.get("kdf") == SCRYPT:
            n, r, p = (_int_field(obj, name) for name in ("n", "r", "p"))
            return cls(kdf=SCRYPT, scrypt_nrp=(n, r, p), salt=b64url_decode(salt))
        if obj.get("kdf") != ARGON2ID:
            raise _bad_params("unknown key derivation in wallet")
        cost = KdfCost(
            memory_kib=_int_field(obj, "memoryKiB"),
            passes=_int_field(obj, "passes"),
            lanes=_int_field(obj, "lanes"),
        )
        return cls(cost=cost, salt=b64url_decode(salt))


def _check_range(cost: KdfCost) -> None:
    if not (
        1 <= cost.lanes <= _MAXIMUM.lanes
        and 1 <= cost.passes <= _MAXIMUM.passes
        and 8 * cost.lanes <= cost.memory_kib <= _MAXIMUM.memory_kib
    ):
        raise _bad_params("Argon2id parameters out of range")


def _int_field(obj: dict[str, object], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:
        raise _bad_params("bad key derivation parameters in wallet")
    return value


def _bad_params(message: str) -> MalformedMessage:
    return MalformedMessage(message, code=ErrorCode.BAD_FIELD)


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
        """The KDF over the passphrase (NFC-normalised UTF-8: it types the same everywhere).

        Does not judge the parameters' strength: the caller does
        (:meth:`KdfParams.require_strong`)."""
        if not passphrase:
            raise LocalProtocolError("the passphrase must not be empty")
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        return cls(params.derive(secret), rng)

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
            raise LocalProtocolError("wrong passphrase", code=ErrorCode.WRONG_PASSPHRASE) from None

    def __repr__(self) -> str:
        return "SecretBox(<key>)"


def _check_record() -> bytes:
    return record_id("meta", b"", _CHECK_RECORD)
