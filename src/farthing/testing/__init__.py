"""Test doubles that ship with farthing, so users can test their own integrations.

- :class:`FixedClock`: a clock that only moves when told to.
- :class:`DeterministicRandom`: a seeded byte source (SHA-256 in counter mode) for vectors;
  never use it for real keys.
- (the wallet's cheap test KDF is :func:`farthing.wallet.testing.cheap_wallet_kdf`: this
  module uses the core only, see tests/test_layers.py)
- :class:`SoftwareWrappingKey`: what a PKCS#11 token does at HLL personalisation (an RSA key
  pair the bank wraps K_C to), in memory, for a software card in tests and the demo.

The schemes' parties in memory, driven by the core's rules alone (as trio.testing ships
trio's test doubles): :mod:`farthing.testing.hll` (card, bank, merchant),
:mod:`farthing.testing.payword` (user, vendor, broker), :mod:`farthing.testing.szm` (the
SZM issuers). They are the reference the services follow; tests/issuer/test_differential.py
compares them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["DeterministicRandom", "FixedClock", "GatedFsync", "SoftwareWrappingKey"]


class FixedClock:
    def __init__(self, now: int = 1_800_000_000) -> None:
        self._now = now

    def now(self) -> int:
        return self._now

    def advance(self, seconds: int) -> None:
        self._now += seconds

    def set(self, now: int) -> None:
        self._now = now


class DeterministicRandom:
    """``rng(n)`` returns the next n bytes of SHA-256(seed || counter) blocks."""

    def __init__(self, seed: bytes | str) -> None:
        self._seed = seed.encode() if isinstance(seed, str) else seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


class MemoryCardBook:
    """An in-memory card book for vendor tests: a dict of frozen states by ``key_attr``.

    ``advance(old, new, challenge, now)`` succeeds only if the challenge id was not used and
    the stored state still equals ``old`` (a state from ``introduce`` is stored first unless
    its key is known), and ``insert`` never overwrites: the same contract the database store
    keeps.
    """

    def __init__(self, key_attr: str = "card_id") -> None:
        self.states: dict[bytes, object] = {}
        self.used_challenges: set[bytes] = set()
        self.used_at: dict[bytes, int] = {}
        self.introduced: dict[bytes, object] = {}
        self._key_attr = key_attr

    def _key(self, state: object) -> bytes:
        key: bytes = getattr(state, self._key_attr)
        return key

    def add(self, state: object) -> None:
        self.states[self._key(state)] = state

    async def load(self, key: bytes) -> object | None:
        return self.states.get(key)

    async def insert(self, state: object) -> bool:
        if self._key(state) in self.states:
            return False
        self.states[self._key(state)] = state
        return True

    async def introduce(self, state: object) -> object:
        """A state a payment introduced: stored by that payment's ``advance``."""
        self.introduced[self._key(state)] = state
        return state

    async def durable(self) -> None:
        return None  # a dict's writes are as durable as they get at once

    async def advance(self, old: object, new: object, challenge: Any, now: int) -> Any:
        """``challenge`` a ChallengeId; the result the paywall's ``Advance`` (a StrEnum)
        by value: this module may import the core only."""
        if challenge.raw in self.used_challenges:
            return "used"
        key = self._key(old)
        if key not in self.states and self.introduced.get(key) == old:
            self.states[key] = old  # insert-if-absent, in the same write as the advance
        if self.states.get(key) != old:
            return "lost"
        self.states[key] = new
        self.used_challenges.add(challenge.raw)
        self.used_at[bytes(challenge.raw)] = now
        return "won"

    async def challenge_used(self, challenge: Any) -> bool:
        return bytes(challenge.raw) in self.used_challenges

    async def challenge_used_at(self, challenge: Any) -> int | None:
        return self.used_at.get(bytes(challenge.raw))


class GatedFsync:
    """``os.fsync`` behind a gate, for a store writer's WAL fsync in tests
    (``StoreWriter(store, fsync=GatedFsync())``): after :meth:`hold` each fsync waits
    until :meth:`release` (all) or :meth:`release_one` (the next); :meth:`fail_next` makes
    the next ones raise OSError(EIO) instead of syncing. ``started`` is set when an fsync
    begins; ``begun`` and ``returned`` count them."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._held = False
        self._permits = 0
        self._failures = 0
        self.started = threading.Event()
        self.begun = 0
        self.returned = 0

    def hold(self) -> None:
        with self._turn:
            self._held = True

    def release(self) -> None:
        with self._turn:
            self._held = False
            self._turn.notify_all()

    def release_one(self) -> None:
        with self._turn:
            self._permits += 1
            self._turn.notify_all()

    def fail_next(self, count: int = 1) -> None:
        with self._turn:
            self._failures += count

    def __call__(self, fd: int) -> None:
        with self._turn:
            self.begun += 1
            self.started.set()
            if not self._turn.wait_for(lambda: not self._held or self._permits > 0, 60):
                raise OSError(errno.ETIMEDOUT, "the test never released the fsync")
            if self._held:
                self._permits -= 1
            failing = self._failures > 0
            self._failures -= failing
        try:
            if failing:
                raise OSError(errno.EIO, "fsync failed (farthing.testing.GatedFsync)")
            os.fsync(fd)
        finally:
            with self._turn:
                self.returned += 1


class SoftwareWrappingKey:
    """A token's HLL wrapping key pair in memory (tests and the demo; a token keeps the
    private half non-extractable instead). ``public_key()`` goes to the bank;
    ``unwrap(wrapped)`` returns K_C for a software card."""

    def __init__(self) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def unwrap(self, wrapped: bytes) -> bytes:
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
        return self._private.decrypt(wrapped, oaep)
