import hashlib
import hmac
import math

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core.encoding import Writer
from farthing.core.prbg import (
    BbsKey,
    BbsPublic,
    HmacCounterPrbg,
    bbs_advance,
    bbs_block,
    bbs_jump,
    bbs_read,
    bbs_seed,
    bbs_steps_per_block,
    blum_modulus_of_any_size,
    generate_blum_modulus,
    require_strong_modulus,
)
from farthing.testing import DeterministicRandom

KEY_512 = blum_modulus_of_any_size(512, DeterministicRandom("test/prbg/bbs-512"))
seeds = st.binary(min_size=32, max_size=32)


# --- HMAC counter generator ----------------------------------------------------------------


@given(seeds, st.integers(0, 2**64 - 1))
def test_hmac_block_is_hmac_of_canonical_counter(seed: bytes, index: int) -> None:
    message = Writer("farthing/test/stream").u64(index).finish()
    expected = hmac.new(seed, message, hashlib.sha256).digest()
    assert HmacCounterPrbg(seed, domain="farthing/test/stream").block(index) == expected


def test_hmac_blocks_differ_by_index_seed_and_domain() -> None:
    seed = bytes(range(32))
    gen = HmacCounterPrbg(seed)
    blocks = {gen.block(j) for j in range(100)}
    assert len(blocks) == 100
    assert HmacCounterPrbg(bytes(32)).block(0) != gen.block(0)
    assert HmacCounterPrbg(seed, domain="farthing/other/stream").block(0) != gen.block(0)
    assert gen.read(3, 4) == b"".join(gen.block(j) for j in range(3, 7))


def test_hmac_refuses_bad_seed_and_index() -> None:
    with pytest.raises(ValueError):
        HmacCounterPrbg(bytes(31))
    with pytest.raises(ValueError):
        HmacCounterPrbg(bytes(32)).block(2**64)
    with pytest.raises(ValueError):
        HmacCounterPrbg(bytes(32)).block(-1)


# --- Blum modulus generation ---------------------------------------------------------------


def test_generated_modulus_is_a_blum_integer() -> None:
    key = KEY_512
    assert key.n.bit_length() == 512
    assert key.p * key.q == key.n
    assert key.p != key.q
    assert key.p % 4 == 3
    assert key.q % 4 == 3
    assert gmpy2.is_prime(key.p)
    assert gmpy2.is_prime(key.q)


def test_generation_is_deterministic_for_a_seeded_rng() -> None:
    again = blum_modulus_of_any_size(512, DeterministicRandom("test/prbg/bbs-512"))
    other = blum_modulus_of_any_size(512, DeterministicRandom("test/prbg/other"))
    assert again == KEY_512
    assert other.n != KEY_512.n


@pytest.mark.parametrize("bits", [16, 17, 64, 255, 256])
def test_generated_size_is_exact(bits: int) -> None:
    key = blum_modulus_of_any_size(bits, DeterministicRandom(f"size-{bits}"))
    assert key.n.bit_length() == bits


@pytest.mark.parametrize("bits", [2048, 2049])
def test_generation_gives_at_least_2048_bits(bits: int) -> None:
    key = generate_blum_modulus(bits, DeterministicRandom(f"size-{bits}"))
    assert key.n.bit_length() == bits
    require_strong_modulus(key.n)


@pytest.mark.parametrize("bits", [16, 512, 1024, 2047])
def test_generation_refuses_moduli_under_2048_bits(bits: int) -> None:
    with pytest.raises(ValueError, match="2048"):
        generate_blum_modulus(bits, DeterministicRandom("weak"))
    with pytest.raises(ValueError, match="2048"):
        require_strong_modulus(blum_modulus_of_any_size(bits, DeterministicRandom("weak")).n)


def test_key_validation() -> None:
    with pytest.raises(ValueError):
        BbsKey(n=13 * 23, p=13, q=23)  # 13 = 1 mod 4
    with pytest.raises(ValueError):
        BbsKey(n=15 * 23, p=15, q=23)  # 15 is not prime
    with pytest.raises(ValueError):
        BbsKey(n=11 * 23 + 2, p=11, q=23)
    with pytest.raises(ValueError):
        BbsPublic(n=2**64)  # even
    with pytest.raises(ValueError):
        blum_modulus_of_any_size(8, DeterministicRandom("x"))


# --- BBS: textbook cross-checks ------------------------------------------------------------

TINY = BbsKey(n=253, p=11, q=23)


def test_tiny_textbook_sequence() -> None:
    # p = 11, q = 23, s = 3: x_0 = 9, then 81, 236, 36, 31, 202 (worked by hand).
    xs = [9]
    for _ in range(5):
        xs.append(bbs_advance(TINY.public, xs[-1], 1))
    assert xs == [9, 81, 236, 36, 31, 202]
    assert [bbs_jump(TINY, 9, i) for i in range(6)] == xs
    # Parity bits of x_1..x_8, one bit per step, packed most significant first.
    more = xs + [bbs_advance(TINY.public, 9, i) for i in range(6, 9)]
    expected = sum((x & 1) << (8 - i) for i, x in enumerate(more[1:9], start=1))
    out, x8 = bbs_read(TINY.public, 9, 1, bits_per_step=1)
    assert out == bytes([expected])
    assert x8 == more[8]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 400))
def test_jump_matches_naive_loop_on_small_moduli(seed: int, steps: int) -> None:
    key = blum_modulus_of_any_size(40, DeterministicRandom(seed.to_bytes(8, "big")))
    x0 = bbs_seed(key.public, seed.to_bytes(32, "big"))
    naive = x0
    for _ in range(steps):
        naive = pow(naive, 2, key.n)
    assert bbs_jump(key, x0, steps) == naive == bbs_advance(key.public, x0, steps)


def test_read_packs_low_bits_most_significant_first() -> None:
    pub = KEY_512.public
    x = bbs_seed(pub, bytes(32))
    xs = []
    for _ in range(32):
        x = pow(x, 2, pub.n)
        xs.append(x)
    out, end = bbs_read(pub, bbs_seed(pub, bytes(32)), 32)
    assert out == bytes(v & 0xFF for v in xs)
    assert end == xs[-1]
    nibbles, _ = bbs_read(pub, bbs_seed(pub, bytes(32)), 1, bits_per_step=4)
    assert nibbles == bytes([(xs[0] & 0xF) << 4 | (xs[1] & 0xF)])


# --- BBS: the card walks, the issuer jumps -------------------------------------------------


def test_sequential_walk_equals_jump_at_many_positions() -> None:
    pub = KEY_512.public
    x0 = bbs_seed(pub, bytes(range(32)))
    x = x0
    for step in range(1, 600):
        x = bbs_advance(pub, x, 1)
        if step % 7 == 0 or step < 40:
            assert bbs_jump(KEY_512, x0, step) == x


def test_blocks_by_jump_equal_the_sequential_stream() -> None:
    pub = KEY_512.public
    x0 = bbs_seed(pub, b"\x07" * 32)
    stream, _ = bbs_read(pub, x0, 32 * 6)
    for j in range(6):
        assert bbs_block(KEY_512, x0, j) == stream[32 * j : 32 * (j + 1)]
    assert (
        bbs_block(KEY_512, x0, 3, bits_per_step=4)
        == bbs_read(pub, bbs_advance(pub, x0, 3 * 64), 32, bits_per_step=4)[0]
    )


def test_seed_is_a_quadratic_residue_coprime_to_n() -> None:
    pub = KEY_512.public
    x0 = bbs_seed(pub, bytes(32))
    assert math.gcd(x0, pub.n) == 1
    assert 1 < x0 < pub.n
    assert gmpy2.legendre(x0, KEY_512.p) == 1
    assert gmpy2.legendre(x0, KEY_512.q) == 1
    assert x0.bit_length() > 400  # not a small unreduced square of the 32-byte seed
    assert bbs_seed(pub, bytes(32)) == x0
    assert bbs_seed(pub, b"\x01" + bytes(31)) != x0


def test_bits_per_step_bounds() -> None:
    assert bbs_steps_per_block(KEY_512.public) == 32
    assert bbs_steps_per_block(KEY_512.public, 1) == 256
    small = blum_modulus_of_any_size(128, DeterministicRandom("small")).public  # lg lg n = 7
    for bad_pub, bits in [(KEY_512.public, 3), (KEY_512.public, 16), (small, 8)]:
        with pytest.raises(ValueError):
            bbs_steps_per_block(bad_pub, bits)
    with pytest.raises(ValueError):
        bbs_read(small, 4, 32, bits_per_step=8)


def test_negative_positions_and_bad_seeds_refused() -> None:
    with pytest.raises(ValueError):
        bbs_advance(KEY_512.public, 4, -1)
    with pytest.raises(ValueError):
        bbs_jump(KEY_512, 4, -1)
    with pytest.raises(ValueError):
        bbs_seed(KEY_512.public, bytes(16))
