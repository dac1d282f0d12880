import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core.errors import CardExhausted
from farthing.core.hashchain import ChainWalker, chain_anchor, chain_step, chain_walk

TAG = b"farthing/test/chain\x00"


def naive(seed: bytes, length: int, index: int) -> bytes:
    return chain_walk(TAG, seed, length - index)


@settings(max_examples=40)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 300), st.data())
def test_walker_matches_naive(seed: bytes, length: int, data: st.DataObject) -> None:
    walker = ChainWalker(TAG, seed, length)
    indexes = sorted(data.draw(st.lists(st.integers(0, length), max_size=20)))
    for index in indexes:
        assert walker.value(index) == naive(seed, length, index)


def test_chain_links() -> None:
    seed = bytes(32)
    walker = ChainWalker(TAG, seed, 50)
    assert walker.value(0) == chain_anchor(TAG, seed, 50)
    for i in range(50):
        assert chain_step(TAG, walker.value(i + 1)) == walker.value(i)
    assert walker.value(50) == seed


def test_walker_bounds() -> None:
    walker = ChainWalker(TAG, bytes(32), 4)
    with pytest.raises(CardExhausted):
        walker.value(5)
    with pytest.raises(ValueError):
        ChainWalker(TAG, bytes(32), 0)


def test_long_tag_refused() -> None:
    with pytest.raises(ValueError):
        chain_walk(b"x" * 24, bytes(32), 1)
