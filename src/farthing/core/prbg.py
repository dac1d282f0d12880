"""Pseudorandom bit generators for SZM protocol 2: an HMAC counter PRF and Blum-Blum-Shub.

Both generators turn a 32-byte seed into a long byte stream that is cut into 32-byte
blocks, numbered from 0.

:class:`HmacCounterPrbg` (the modern, fast one) computes each block independently, in the
style of the counter-mode KDF of NIST SP 800-108::

    block(seed, j) = HMAC-SHA256(seed, canonical(domain, j))
                   = HMAC-SHA256(seed, header(domain) || u64(j))

so anyone who holds the seed can jump straight to any block, and nobody who does not can
tell a block from random or compute another one (HMAC is a PRF).
It is a PRF in counter mode, not the SP 800-90A HMAC_DRBG (hence the card-code name
"hmac-ctr"), and it never reseeds: the card and the issuer must both compute the same
blocks from the seed alone, so there is no fresh entropy either could add.

Blum-Blum-Shub (HAC §5.5.2, Algorithm 5.40) is the generator of the paper's era. With a
Blum modulus n = p*q (p, q prime, both 3 mod 4) and a seed s coprime to n::

    x_0 = s^2 mod n,    x_i = x_{i-1}^2 mod n,    output z_i = the low b bits of x_i

Predicting the output is as hard as factoring n. HAC's note after Algorithm 5.40 says the
generator stays secure when each step releases c * lg lg n low bits (O(lg lg n)); we take
b = 8 bits per step by default: lg lg n = 11 for a 2048-bit n, so 8 is inside that bound
(c ~ 0.73) and makes each squaring yield exactly one output byte. The bound is enforced
(b <= lg lg n, b in 1, 2, 4, 8). This is an asymptotic statement; the concrete analysis of
Sidorenko and Schoenmakers (2005) asks for far larger moduli for a provable margin, which is
one reason the HMAC generator is the default in farthing and BBS is kept for fidelity.
A modulus under 2048 bits (:data:`BBS_MIN_MODULUS_BITS`) is refused when generated and,
through :func:`require_strong_modulus`, in every key file and card code; only the
arithmetic below still takes tiny moduli, for the textbook cross-checks.

Who can compute what:

- The card holder knows only n. It walks the stream *sequentially*, one squaring per step,
  keeping the current x (:func:`bbs_advance`, :func:`bbs_read`).
- The holder of the factors can jump: x_i = x_0^(2^i mod lcm(p-1, q-1)) mod n. We reduce
  per prime (2^i mod (p-1) and mod (q-1); both divide the lcm, so this is the same value)
  and recombine with the CRT (:func:`bbs_jump`, :func:`bbs_block`).

Block j of a BBS stream is made of the outputs of steps j*k + 1 .. j*k + k, k = 256 / b,
packed most significant first. The seed s is not the 32-byte seed itself (s^2 would then be
far smaller than n and x_0, x_1 unreduced); it is an HKDF expansion of the seed to |n| + 128
bits reduced mod n, so s is close to uniform in Z_n and gcd(s, n) = 1 is checked.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

import gmpy2

from farthing.core.clock import RandomSource
from farthing.core.encoding import Writer, header
from farthing.core.primitives import hkdf_sha256, hmac_sha256

__all__ = [
    "BBS_MAX_BITS",
    "BBS_MIN_BITS",
    "BBS_MIN_MODULUS_BITS",
    "BLOCK_LEN",
    "DEFAULT_BITS_PER_STEP",
    "DEFAULT_MODULUS_BITS",
    "SEED_LEN",
    "BbsKey",
    "BbsPublic",
    "HmacCounterPrbg",
    "bbs_advance",
    "bbs_block",
    "bbs_jump",
    "bbs_read",
    "bbs_seed",
    "bbs_steps_per_block",
    "blum_modulus_of_any_size",
    "generate_blum_modulus",
    "require_strong_modulus",
]

BLOCK_LEN: Final = 32
SEED_LEN: Final = 32
DEFAULT_BITS_PER_STEP: Final = 8
DEFAULT_MODULUS_BITS: Final = 2048
BBS_MIN_BITS: Final = 8  # the arithmetic accepts tiny moduli: textbook cross-checks
# What a key or card may use: generation, the issuer's key file and every card code refuse
# less. 2048 bits is today's common floor for a modulus whose factoring breaks everything.
BBS_MIN_MODULUS_BITS: Final = 2048
BBS_MAX_BITS: Final = 16384
_HMAC_DOMAIN: Final = "farthing/prbg/hmac-counter"
_SEED_DOMAIN: Final = "farthing/prbg/bbs-seed"
_SEED_ATTEMPTS: Final = 64
_U64: Final = struct.Struct(">Q")


class HmacCounterPrbg:
    """Random-access PRF stream: ``block(j) = HMAC-SHA256(seed, canonical(domain, j))``."""

    __slots__ = ("_prefix", "_seed")

    def __init__(self, seed: bytes, *, domain: str = _HMAC_DOMAIN) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("PRBG seed must be 32 bytes")
        self._seed = seed
        # header(domain) || u64(j) is exactly Writer(domain).u64(j).finish().
        self._prefix = header(domain)

    def block(self, index: int) -> bytes:
        """The 32-byte block number ``index`` (0 <= index < 2**64)."""
        try:
            counter = _U64.pack(index)
        except struct.error:
            raise ValueError("block index out of range") from None
        return hmac_sha256(self._seed, self._prefix + counter)

    def read(self, first: int, count: int) -> bytes:
        """``count`` consecutive blocks starting at block ``first``."""
        return b"".join(self.block(first + k) for k in range(count))


@dataclass(frozen=True, slots=True, kw_only=True)
class BbsPublic:
    """The public part of a BBS key: the Blum modulus n. This is all a card holder knows."""

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n % 2 == 0:
            raise ValueError("BBS modulus must be an odd integer")
        if not BBS_MIN_BITS <= self.n.bit_length() <= BBS_MAX_BITS:
            raise ValueError("BBS modulus size out of range")

    @property
    def n_bytes(self) -> bytes:
        """n as big-endian bytes, no leading zero (the form carried in card codes)."""
        return self.n.to_bytes((self.n.bit_length() + 7) // 8, "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class BbsKey:
    """A Blum modulus with its factors; only the issuer holds this."""

    n: int
    p: int
    q: int

    def __post_init__(self) -> None:
        if self.p * self.q != self.n or self.p == self.q:
            raise ValueError("BBS key: n must be the product of two distinct primes")
        if self.p % 4 != 3 or self.q % 4 != 3:
            raise ValueError("BBS key: p and q must be 3 mod 4")
        if not (gmpy2.is_prime(self.p) and gmpy2.is_prime(self.q)):
            raise ValueError("BBS key: p and q must be prime")
        BbsPublic(n=self.n)

    @property
    def public(self) -> BbsPublic:
        return BbsPublic(n=self.n)


def require_strong_modulus(n: int) -> None:
    """ValueError unless the modulus ``n`` has at least :data:`BBS_MIN_MODULUS_BITS` bits."""
    if n.bit_length() < BBS_MIN_MODULUS_BITS:
        raise ValueError(f"a BBS modulus needs at least {BBS_MIN_MODULUS_BITS} bits")


def generate_blum_modulus(bits: int, rng: RandomSource) -> BbsKey:
    """A fresh Blum modulus of exactly ``bits`` bits (2048 or more) from ``rng``.

    Deterministic for a deterministic ``rng`` (gmpy2.next_prime is deterministic).
    """
    if not BBS_MIN_MODULUS_BITS <= bits <= BBS_MAX_BITS:
        raise ValueError(f"a BBS modulus needs {BBS_MIN_MODULUS_BITS}..{BBS_MAX_BITS} bits")
    return blum_modulus_of_any_size(bits, rng)


def blum_modulus_of_any_size(bits: int, rng: RandomSource) -> BbsKey:
    """A Blum modulus of ``bits`` >= 16 bits, without the size floor: only for tests of
    the arithmetic (:mod:`farthing.testing`); every key file and card code refuses it."""
    if bits < 16:
        raise ValueError("BBS modulus size out of range")
    p_bits = bits // 2
    p = _blum_prime(p_bits, rng)
    q = _blum_prime(bits - p_bits, rng)
    while q == p:
        q = _blum_prime(bits - p_bits, rng)
    return BbsKey(n=p * q, p=p, q=q)


def _blum_prime(bits: int, rng: RandomSource) -> int:
    # The top two bits set makes p*q exactly p_bits + q_bits long; the low bits 11 make the
    # candidate odd and 3 mod 4, though the next prime may still be 1 mod 4 (then redraw).
    while True:
        raw = int.from_bytes(rng((bits + 7) // 8), "big") & ((1 << bits) - 1)
        candidate = raw | (3 << (bits - 2)) | 3
        prime = int(gmpy2.next_prime(candidate))
        if prime % 4 == 3 and prime.bit_length() == bits:
            return prime


def _check_bits_per_step(n: int, bits_per_step: int) -> int:
    """Steps per 32-byte block; refuses b that is not 1, 2, 4, 8 or exceeds lg lg n."""
    if bits_per_step not in (1, 2, 4, 8) or bits_per_step > math.log2(n.bit_length()):
        raise ValueError("BBS bits per step must be 1, 2, 4 or 8 and at most lg lg n")
    return 8 * BLOCK_LEN // bits_per_step


def bbs_steps_per_block(public: BbsPublic, bits_per_step: int = DEFAULT_BITS_PER_STEP) -> int:
    """How many squarings make one 32-byte block (32 for the default 8 bits per step)."""
    return _check_bits_per_step(public.n, bits_per_step)


def bbs_seed(public: BbsPublic, seed: bytes) -> int:
    """x_0 = s^2 mod n, with s an HKDF expansion of ``seed`` reduced mod n, gcd(s, n) = 1."""
    if len(seed) != SEED_LEN:
        raise ValueError("PRBG seed must be 32 bytes")
    n = public.n
    length = (n.bit_length() + 7) // 8 + 16  # 128 extra bits: bias of the reduction < 2^-128
    for attempt in range(_SEED_ATTEMPTS):
        info = Writer(_SEED_DOMAIN).bytes(public.n_bytes).u64(attempt).finish()
        s = int.from_bytes(hkdf_sha256(seed, info=info, length=length), "big") % n
        x0 = int(gmpy2.powmod(s, 2, n))
        if s > 1 and gmpy2.gcd(s, n) == 1 and x0 != 1:
            return x0
    raise ValueError("no usable BBS seed found (modulus far too small)")


def bbs_advance(public: BbsPublic, x: int, steps: int) -> int:
    """x_{i + steps} from x_i by repeated squaring (what a card holder can do)."""
    if steps < 0:
        raise ValueError("cannot step a BBS generator backwards")
    n = gmpy2.mpz(public.n)
    value = gmpy2.mpz(x)
    for _ in range(steps):
        value = value * value % n
    return int(value)


def bbs_read(
    public: BbsPublic, x: int, nbytes: int, bits_per_step: int = DEFAULT_BITS_PER_STEP
) -> tuple[bytes, int]:
    """The next ``nbytes`` of output after state x_i, and the new state.

    Each step squares x and appends its low ``bits_per_step`` bits, most significant first.
    """
    _check_bits_per_step(public.n, bits_per_step)
    n = gmpy2.mpz(public.n)
    value = gmpy2.mpz(x)
    mask = (1 << bits_per_step) - 1
    acc = gmpy2.mpz(0)
    for _ in range(nbytes * 8 // bits_per_step):
        value = value * value % n
        acc = (acc << bits_per_step) | (value & mask)
    return int(acc).to_bytes(nbytes, "big"), int(value)


def bbs_jump(key: BbsKey, x0: int, step: int) -> int:
    """x_step straight from x_0 with the factors: x_0^(2^step) mod p and mod q, then CRT."""
    if step < 0:
        raise ValueError("BBS position must not be negative")
    p, q = key.p, key.q
    xp = gmpy2.powmod(x0 % p, gmpy2.powmod(2, step, p - 1), p)
    xq = gmpy2.powmod(x0 % q, gmpy2.powmod(2, step, q - 1), q)
    # Garner's recombination: x = xq + q * ((xp - xq) * q^-1 mod p).
    h = (xp - xq) * gmpy2.invert(q, p) % p
    return int(xq + q * h)


def bbs_block(
    key: BbsKey, x0: int, index: int, bits_per_step: int = DEFAULT_BITS_PER_STEP
) -> bytes:
    """Block number ``index`` of the stream that starts at x_0, by jumping (factor holder)."""
    steps = _check_bits_per_step(key.n, bits_per_step)
    start = bbs_jump(key, x0, index * steps)
    block, _ = bbs_read(key.public, start, BLOCK_LEN, bits_per_step)
    return block
