"""The WAL file of a SQLite store, made durable by an ``fsync`` of our own, off the loop.

The event loop commits its hot batches on connections with ``synchronous=NORMAL``: the
commit writes the transaction's frames to the ``-wal`` file (into the OS page cache) and
returns without waiting for the disk. :class:`WalFile` then fsyncs that file on a thread
(``os.fsync`` releases the GIL), and the writer answers the batch's requests only when an
fsync that *began after their commit* has returned (:class:`farthing.store.writer.StoreWriter`).
A transaction answered that way survives a power loss exactly as with ``synchronous=FULL``:

1. What FULL adds. In WAL mode the one difference between FULL and NORMAL is one sync of
   the WAL file after each commit's frames are written (sqlite.org/pragma.html#pragma_synchronous:
   "With synchronous=FULL in WAL mode, an additional sync operation of the WAL file happens
   after each transaction commit"; wal.c ``walFrames``: ``if( isCommit &&
   WAL_SYNC_FLAGS(sync_flags)!=0 ) ... sqlite3OsSync(w.pFd, ...)``, no padding with the
   unix VFS's default powersafe overwrite). Every other sync, NORMAL does too: the WAL
   header after a WAL restart is synced before any frame follows it (``syncHeader``, ticket
   ff5be73dee), and a checkpoint syncs the WAL before it copies pages and the database
   file after (wal.html, "Checkpointing"). Our fsync of the same file, begun after the
   commit returned, covers every byte the commit wrote (fsync flushes all of the file's
   data written before it started), so once it returns the disk holds what FULL's own sync
   would have put there.
2. Recovery. After a power loss SQLite reads the WAL header and takes frames in order while
   their salts match the header's and their cumulative checksums hold, up to the last
   commit frame (wal.html, "The WAL File Format"). Our commit frame and every frame before
   it are on disk, written after the (synced) header of this WAL generation: they are
   valid, so the transaction is replayed. Later frames that did not reach the disk only cut
   the log after ours.
3. The WAL reset. A writer restarts the WAL (new salts, frames from the start) only when a
   checkpoint has copied every frame into the database file and synced it (wal.c
   ``walRestartLog``: only if ``nBackfill`` equals the WAL's last frame, and a checkpoint
   raises ``nBackfill`` only after its sync of the database file), whatever the
   checkpoint's mode (PASSIVE, RESTART); so a transaction whose frames get overwritten is
   already durable in the database file. ``journal_size_limit`` only cuts the file after
   such a restart, at the end of the first commit written over it (frames past that
   commit are free).
4. The file's identity. The ``-wal`` file is deleted only when the last connection closes,
   after a checkpoint into the (synced) database file; a new one is then a new inode. A
   descriptor kept from before would fsync the deleted file and never the new one, so each
   :meth:`WalFile.sync` compares the path's inode with the kept descriptor's and reopens
   on a change: it fsyncs the file the path names when the fsync starts, which holds every
   commit made before (or those commits were checkpointed into the database file).
5. Other connections (the writer thread, deposits, other workers) commit with FULL on the
   same file. Their sync covers our frames as well; their commits come after ours in the
   log, so none of theirs survives without ours.

What differs from FULL: another connection can *read* a transaction of ours before its
fsync (FULL syncs before the commit becomes visible). A request answered from such a read
(a resend served as retried) first waits for the pending fsync
(:meth:`StoreWriter.durable`); another worker refuses such a resend for
``DELIVERY_LEASE`` seconds anyway (docs/http.md).

Checkpoints. SQLite copies the WAL into the database file (a checkpoint) when a commit
leaves 1,000 pages or more in it, on the connection that made that commit, inside its
commit call: with ``synchronous=NORMAL`` that is two syncs (the WAL, then the database
file) and the copying, on the event loop. bench/tail.py measured it: 18-21 such syncs
per 4 s at half load, each blocking the loop 2-4 ms (p99 16 ms), every request in flight
waiting. So the loop's connection does not checkpoint (``wal_autocheckpoint=0``); a
:class:`Checkpointer` thread of its own does, on its own connection, at most every
``CHECKPOINT_EVERY`` seconds while the loop commits (nudged after each fsync of ours).

It copies in PASSIVE passes, which never hold a writer off: a pass copies the frames the
WAL held when it began (those no reader of an older snapshot still needs) and syncs, while
the loop goes on committing after them; the next pass copies what came meanwhile, and so
on until a pass finds nothing new (``CATCH_UP_PASSES`` at most). The WAL is then wholly in
the database file and the loop's next commit starts it again from its first frame. Until
then (session 8) the thread ran FULL checkpoints, which hold new writers off while they
copy and while they wait for readers: the loop's commits found the store busy and went to
the writer thread, which waited 17-70 ms every 5 s. If a commit landed during every pass
(at peak: commits every 1-2 ms, a pass 2-4 ms), a RESTART follows: it holds writers off
while it copies the few frames left, and the WAL starts again (else it would grow from
checkpoint to checkpoint: 64,000 frames in one bench.tail run). If a reader of an older
snapshot held frames back, the RESTART (which would wait for it, at most
``CHECKPOINT_WAIT_MS``, holding writers off) waits until the WAL has passed
``WAL_RESTART_PAGES`` frames. Durability is not touched: a
checkpoint of any mode syncs the WAL before it copies and the database file after, and
the WAL restarts only over frames so copied (3. above). The file keeps its size after a
restart up to ``journal_size_limit`` (``_engine.WAL_SIZE_LIMIT``) and is cut back to it.

If the fsync fails, the batches it covered are answered Unavailable (their writes are
committed and may or may not be on disk: the client's resend is served as a retry once a
later fsync succeeds). Linux reports a write-back error to each descriptor once; the
kept descriptor stays open so that the error is seen by the fsync that covers the batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["CHECKPOINT_EVERY", "CHECKPOINT_WAIT_MS", "Checkpointer", "Fsync", "WalFile"]

log = logging.getLogger("farthing.store")

CHECKPOINT_EVERY: Final = 5.0
"""Seconds between checkpoints while the loop commits. A checkpoint slows the payments that
meet it: FULL ones held new writers off; PASSIVE passes do not, but their copying shares the
server's core and their syncs the disk. bench/tail.py, session 8, FULL checkpoints at half
load: every 0.5 s each took 10-40 ms and 1.8-2.3% of payments met one; every 5 s, 17-57 ms,
but 0.3-0.4% met one, and the server's p99 fell from 12-26 to 5-13 ms. Session 9, PASSIVE
passes, half load: every 2 s 1.0-1.5% of payments met a pass (54-76% of the slowest 1%),
every 5 s 0.1-0.5% (0-17%). The price: the WAL holds up to 5 s of commits (~3.4 frames a
payment: ~40,000 frames, ~165 MB at this machine's peak)."""
CATCH_UP_PASSES: Final = 8
"""PASSIVE passes per checkpoint at most, while frames keep coming (see Checkpointer)."""
WAL_RESTART_PAGES: Final = 50_000
"""Frames (pages) past which a checkpoint whose PASSIVE passes a reader held back ends with a
RESTART, which holds writers off until the WAL is copied and no reader needs it (~200 MB
of 4 KB pages; 5 s of this machine's peak leave ~40,000 frames, ~3.4 a payment)."""
CHECKPOINT_WAIT_MS: Final = 20
"""How long a checkpoint waits for a writer or an old reader (a long report, a deposit run)
while holding new writers off; the store's usual 10 s would stall every payment meanwhile."""

Fsync = Callable[[int], None]
"""``os.fsync`` or a stand-in for tests (:class:`farthing.testing.GatedFsync`)."""


@dataclass(frozen=True, slots=True)
class _Behind:
    """A checkpoint's PASSIVE passes did not catch up: the frames the WAL held at the last,
    and whether a reader of an older snapshot held some of them back (else commits kept
    coming during every pass)."""

    frames: int
    held: bool


class Checkpointer:
    """Checkpoints of one SQLite database on a thread and connection of its own, started
    by :meth:`nudge` at most every ``every`` seconds: PASSIVE passes, which never hold a
    writer off, until one has nothing left to copy (then the next writer restarts the WAL
    from its start). If commits kept coming during every pass, a RESTART copies the few
    frames left and lets the WAL start again, holding writers off that long; if a reader
    of an older snapshot held frames back, only once the WAL has passed ``restart_pages``
    frames (a RESTART then waits for that reader, at most ``CHECKPOINT_WAIT_MS``).
    ``connect`` gives a driver connection (autocommit, with the store's busy timeout),
    opened on the thread."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        every: float = CHECKPOINT_EVERY,
        restart_pages: int = WAL_RESTART_PAGES,
    ) -> None:
        self._connect = connect
        self._every = every
        self._restart_pages = restart_pages
        self._last = time.monotonic()
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.done = 0
        """Checkpoints run so far (each copied every frame the WAL held when it began)."""
        self.restarts = 0
        """RESTART checkpoints among them (writers held off while each ran)."""

    def nudge(self) -> None:
        """The loop committed (an fsync of the WAL just covered it): checkpoint if the last
        checkpoint began ``every`` seconds ago or more. Called by one thread only."""
        if time.monotonic() - self._last < self._every:
            return
        self._last = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="farthing-checkpoint", daemon=True
            )
            self._thread.start()
        self._due.set()

    def _serve(self) -> None:
        connection = self._connect()
        try:
            # A RESTART checkpoint holds new writers off while it waits for the writer of
            # the moment and for readers of the WAL: at most this long, then it gives up
            # (what it copied stays copied) and the next nudge tries again.
            connection.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                self._checkpoint(connection)
        finally:
            connection.close()

    def _checkpoint(self, connection: Any) -> None:
        try:
            behind = self._catch_up(connection)
            if behind is not None and (not behind.held or behind.frames >= self._restart_pages):
                self._pass(connection, "RESTART")
                self.restarts += 1
        except Exception:  # a busy or failing store: the next nudge tries again
            log.warning("WAL checkpoint failed", exc_info=True)
            return
        self.done += 1

    def _catch_up(self, connection: Any) -> _Behind | None:
        """PASSIVE passes while the loop commits on: each copies the frames the WAL held
        when it began, so the next has only what was committed during the last. Done
        (None) once a pass finds no frame added since the one before began: the WAL is
        then wholly in the database file and the next writer starts it again from its
        first frame (or a writer already has: fewer frames). Else what is left."""
        before = -1
        held = False
        for _ in range(CATCH_UP_PASSES):
            _, frames, copied = self._pass(connection, "PASSIVE")
            held = copied < frames
            if 0 <= frames <= before and not held:
                return None
            before = frames
        return _Behind(frames=before, held=held)

    def _pass(self, connection: Any, mode: str) -> tuple[int, int, int]:
        """One ``wal_checkpoint``: (busy, frames in the WAL, frames of it copied)."""
        busy, frames, copied = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(frames), int(copied)

    def close(self) -> None:
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class WalFile:
    """The ``-wal`` file next to one SQLite database, fsynced on request (from a thread).
    ``checkpointer``, if given, is nudged after each fsync and closed with the file."""

    def __init__(
        self,
        database: Path,
        *,
        fsync: Fsync = os.fsync,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._path = database.with_name(database.name + "-wal")
        self._fsync = fsync
        self._checkpointer = checkpointer
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def sync(self) -> None:
        """Make every commit written to the WAL so far durable (blocking; call it from a
        thread). Raises OSError if the fsync fails."""
        with self._lock:
            fd = self._current()
            if fd is not None:
                self._fsync(fd)
        if self._checkpointer is not None:
            self._checkpointer.nudge()

    def _current(self) -> int | None:
        """A descriptor of the file the path names now (reopened if it was replaced); None
        if there is no WAL file (every commit was checkpointed into the database file)."""
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            self._forget()
            return None
        identity = (now.st_dev, now.st_ino)
        if self._fd is not None and identity == self._identity:
            return self._fd
        self._forget()
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        opened = os.fstat(fd)
        self._fd, self._identity = fd, (opened.st_dev, opened.st_ino)
        return fd

    def _forget(self) -> None:
        fd, self._fd, self._identity = self._fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            self._forget()
