"""Time and randomness, passed into the pure core so that every result is reproducible.

The core never reads the system clock or the OS RNG itself. Adapters pass
:class:`SystemClock` and :func:`os.urandom`; tests and vectors pass a fixed clock and a
seeded byte source (see :mod:`farthing.testing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeAlias

__all__ = ["Clock", "RandomSource", "SystemClock"]

RandomSource: TypeAlias = Callable[[int], bytes]
"""A callable like :func:`os.urandom`: ``random(n)`` returns n unpredictable bytes."""


class Clock(Protocol):
    """Whole seconds since the Unix epoch."""

    def now(self) -> int: ...


class SystemClock:
    """The real clock."""

    def now(self) -> int:
        return int(time.time())
