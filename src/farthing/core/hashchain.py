"""One-way hash chains, shared by SZM protocol 1 and PayWord.

A chain of length N is made from a secret seed w_N by w_i = H(tag || w_{i+1}) down to the
anchor w_0, where H is SHA-256 and ``tag`` is a short per-scheme domain prefix (kept under
24 bytes so each step is one SHA-256 compression). Revealing w_j proves j units: anyone who
holds an earlier value w_i checks it with j - i hashes, and nobody can go from w_i to w_j
for j > i without inverting H.

The spender must produce w_1, w_2, ... in order, i.e. walk the chain *backwards* from the
seed. :class:`ChainWalker` does that with square-root checkpointing: one pass over the chain
keeps every c-th value (c ~ sqrt(N)), and entering a segment expands its c values at once.
Memory is about 2*sqrt(N) digests (64 KiB for N = 10^6), the first payment costs N hashes
and each later one costs 1 hash amortised (at most c at a segment boundary). The simpler
choices it avoids: recompute from the seed each time (O(N) per payment) or keep the whole
chain (32*N bytes). Jakobsson's pebbling would cut memory to O(log N) at O(log N) hashes per
step; at our chain lengths the square-root scheme is simpler and cheaper in time.
"""

from __future__ import annotations

import hashlib
import math

from farthing.core.errors import CardExhausted, LocalProtocolError

__all__ = ["ChainWalker", "chain_anchor", "chain_step", "chain_walk"]

_MAX_TAG = 23


def chain_step(tag: bytes, value: bytes) -> bytes:
    """One step towards the anchor: H(tag || value)."""
    return hashlib.sha256(tag + value).digest()


def chain_walk(tag: bytes, value: bytes, steps: int) -> bytes:
    """Apply :func:`chain_step` ``steps`` times (steps >= 0)."""
    if len(tag) > _MAX_TAG:
        raise ValueError("chain tag too long for one compression per step")
    sha = hashlib.sha256
    for _ in range(steps):
        value = sha(tag + value).digest()
    return value


def chain_anchor(tag: bytes, seed: bytes, length: int) -> bytes:
    """w_0 for the chain of ``length`` values below ``seed`` = w_N."""
    return chain_walk(tag, seed, length)


class ChainWalker:
    """Produces w_i for increasing i from the seed w_N without re-walking the whole chain.

    Not thread-safe; one walker per card in one process. The persistent state of a card is
    only (seed, length, next index): a walker is rebuilt from that after a restart.
    """

    __slots__ = ("_checkpoints", "_length", "_seed", "_segment", "_segment_base", "_stride", "_tag")

    def __init__(self, tag: bytes, seed: bytes, length: int) -> None:
        if length < 1:
            raise ValueError("chain length must be positive")
        self._tag = tag
        self._seed = seed
        self._length = length
        self._stride = max(1, math.isqrt(length))
        self._checkpoints: dict[int, bytes] | None = None
        self._segment: list[bytes] = []
        self._segment_base = -1

    @property
    def length(self) -> int:
        return self._length

    def value(self, index: int) -> bytes:
        """w_index, for 0 <= index <= N. Cheapest when indexes only grow."""
        if not 0 <= index <= self._length:
            raise CardExhausted("no such chain position")
        base = (index // self._stride) * self._stride
        if base != self._segment_base:
            self._expand_segment(base)
        return self._segment[index - base]

    def _expand_segment(self, base: int) -> None:
        checkpoints = self._checkpoints or self._build_checkpoints()
        top = min(base + self._stride, self._length)
        value = checkpoints.get(top)
        if value is None:
            raise LocalProtocolError("chain checkpoint missing")
        values = [value]
        for _ in range(top - base):
            value = chain_step(self._tag, value)
            values.append(value)
        values.reverse()  # values[k] == w_{base + k}
        self._segment = values
        self._segment_base = base

    def _build_checkpoints(self) -> dict[int, bytes]:
        points = {self._length: self._seed}
        value = self._seed
        for index in range(self._length - 1, -1, -1):
            value = chain_step(self._tag, value)
            if index % self._stride == 0:
                points[index] = value
        self._checkpoints = points
        return points
