"""A card's turn: one payment of a card in flight at a time, across threads and processes.

A vendor takes a payment whose index passes the card's last one as paying the whole gap,
and refuses as a replay an earlier payment that reaches it after a later one. Two payments
of one card sent at once can arrive in either order: the later one then pays both, the
earlier one is refused, and the reader pays twice for one good (measured before this
module: price 2, two requests at once, the vendor took 4 units and delivered one good).
So, like the browser wallet (``navigator.locks`` per card), a card makes its next payment
only once the answer to its last one is in: the wallet takes the card's turn before it
reserves an index, and gives it back when the answer is settled, refused or lost.

The turn is an exclusive ``flock`` on a small file per card beside the wallet file
(``<wallet>.turns/<card>``), taken without waiting. flock belongs to the open file, so it
holds against another thread's ``Wallet`` on the same file and against other processes
alike, and the kernel gives it back when a process dies with a payment in flight.

Requests of this wallet that wait for a card it holds form a line (:meth:`CardTurns.waiter`):
each turn given back is the go of the next one only, so the others do not all ask again
(asking costs a payment's quoting, ~3-6 ms of store reads: 50 requests at once with one card,
0-20 ms in transit, asked 1,279 times when each asked every 1-20 ms, 147 times in line).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from farthing.core.errors import ResourceBusy

__all__ = ["CardTurns"]

NEXT_PAUSE: Final = 0.001
"""Seconds the first in line sleeps between looks (a look is a lock and a comparison)."""
QUEUED_PAUSE: Final = 0.01
"""Seconds the others in line sleep between looks."""
UNCLAIMED: Final = 0.05
"""Seconds a turn given back may wait for the waiter whose go it is (it may have chosen
another card, or given up) before the next in line may take it."""


@dataclass(slots=True)
class _Line:
    """The requests of this wallet waiting for one card's turn, by ticket."""

    drawn: int = 0  # tickets handed out
    released: int = 0  # turns given back: the waiter with ticket t goes after release t+1
    free_since: float | None = None  # when the turn was last given back; None while held


class CardTurns:
    """The turns this ``Wallet`` holds, by card row id."""

    def __init__(self, wallet_path: Path) -> None:
        # Resolved once: the same lock files whatever the working directory later, and
        # whichever symbolic link another process opened the wallet through.
        path = wallet_path.resolve()
        self._dir = path.with_name(path.name + ".turns")
        self._held: dict[int, int] = {}  # card id -> the descriptor holding its flock
        self._lines: dict[int, _Line] = {}
        self._lock = threading.Lock()

    def take(self, card: int) -> bool:
        """Take ``card``'s turn if nobody (this wallet, another one, another process) holds
        it; False if somebody does. Raises ResourceBusy if the lock file cannot be made."""
        with self._lock:
            if card in self._held:
                return False
            fd = self._open(card)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as error:
                os.close(fd)
                raise _unusable(self._dir, error) from error
            self._held[card] = fd
            line = self._lines.get(card)
            if line is not None:
                line.free_since = None
            return True

    def give_back(self, card: int) -> None:
        """Let ``card`` pay again (closing the descriptor drops its flock). Idempotent."""
        with self._lock:
            fd = self._held.pop(card, None)
            line = self._lines.get(card)
            if fd is not None and line is not None:
                line.released += 1
                line.free_since = time.monotonic()
        if fd is not None:
            os.close(fd)

    def waiter(self, card: int) -> Callable[[], float] | None:
        """A place in line for ``card``'s turn, held by this wallet: a function saying how
        long to sleep before looking again, or 0.0 when it is this waiter's go (ask for the
        turn now). None if the turn is held elsewhere (another ``Wallet`` object or process:
        no signal reaches this one, so the caller asks again after a growing pause)."""
        with self._lock:
            if card not in self._held:
                return None
            line = self._lines.setdefault(card, _Line())
        ticket = -1  # drawn at the first look: a caller that does not wait takes no place

        def next_look() -> float:
            nonlocal ticket
            with self._lock:
                if ticket < 0:
                    if card not in self._held:
                        return 0.0  # given back since the refusal: ask at once
                    ticket = max(line.drawn, line.released)
                    line.drawn = ticket + 1
                if card in self._held:
                    return NEXT_PAUSE if line.released == ticket else QUEUED_PAUSE
                if line.released > ticket:
                    return 0.0
                unclaimed = line.free_since is not None and (
                    time.monotonic() - line.free_since > UNCLAIMED
                )
                return 0.0 if unclaimed else NEXT_PAUSE

        return next_look

    def close(self) -> None:
        """Give back every turn (the wallet is closing: its answers will not come)."""
        with self._lock:
            held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)

    def _open(self, card: int) -> int:
        try:
            self._dir.mkdir(mode=0o700, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW  # never a planted link
            return os.open(self._dir / str(card), flags, 0o600)
        except OSError as error:
            raise _unusable(self._dir, error) from error


def _unusable(directory: Path, error: OSError) -> ResourceBusy:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        reason = f"not writable ({reason})"
    return ResourceBusy(f"the wallet's card locks in {directory} cannot be used: {reason}")
