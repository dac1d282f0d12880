"""Group commit: writes that arrive together share one durable commit (the vendor's card
updates, the issuer's online HLL settlements).

A paid request must not be answered before its conditional update is durable, and on
SQLite (``synchronous=FULL``) or PostgreSQL (``fsync``) the commit costs far more than the
update (bench/profile.py: ~0.3-1.2 ms against ~35 us). :class:`StoreWriter` runs every
write of this process on one thread: it takes whatever is queued (up to ``max_batch``),
runs the jobs in one transaction, commits once, and only then wakes the waiting requests
with their own results. A job's result is never delivered before the commit that holds it.

The payment updates (:meth:`StoreWriter.run_hot`) run on the store's fast lane
(:meth:`~farthing.store.Store.hot_batch`: prepared statements on a driver connection);
a full SQLAlchemy transaction costs ~250 us more CPU per commit, paid by the worker's one
core. Other writes (:meth:`StoreWriter.run`, e.g. a new PayWord commitment) take a
:class:`~farthing.store.Tx`; a batch holding both kinds commits each kind once.

On SQLite the payment updates are committed on the event loop itself, not on the thread:
the requests that reached their update in one pass of the loop share one commit, made
right after that pass. Handing work to a thread and back costs the worker's one core more
than the commit (the two threads contend for the GIL at every system call; measured: a
paid request's CPU fell from ~860 to ~620 us, paid throughput rose 20-35%). The loop is
blocked only for the commit itself, not for the disk: the batch takes SQLite's write lock
without waiting and commits with ``synchronous=NORMAL`` (``hot_batch_unsynced``), and if
another connection (another worker, a deposit run) holds the lock, the batch goes to the
thread, which waits. The WAL file is then fsynced on a thread of its own, and the batch's
requests are answered only when an fsync that began after their commit has returned; batches
committed meanwhile share the next fsync (at most one in flight per loop). Why that is
``synchronous=FULL``'s durability, and what differs: :mod:`farthing.store._walsync`. A failed
fsync answers its batches Unavailable; :meth:`StoreWriter.durable` then needs a new fsync to
succeed before it returns.

On PostgreSQL the loop does not block for its commit, which is several network round trips:
it awaits it (:meth:`~farthing.store.Store.hot_batch_on_loop`: the loop's own async psycopg
connection in pipeline mode; each job runs in a greenlet and the jobs' statements go out in
rounds, one round trip each, then COMMIT). One batch per loop is in flight; what arrives
meanwhile forms the next batch, started when the first has committed. With no connection
to be had at once, the batch goes to the thread, which waits; so does a batch of fewer
than ``awaited_from`` (4) jobs, which costs less there (light load). Measured with
``bench/store.py --work-us 600`` (600 us of other CPU per payment on the loop, as a serving
vendor has): the store's CPU per payment fell from ~295 to ~220 us (medians of 4 runs each,
interleaved), the thread gone from the path.

If a batch's transaction fails, each of its jobs is run again alone, so one bad job
cannot take the others' results with it; a job that fails alone gets its own exception.
The waiting requests of one event loop are woken with one call, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from farthing.core.errors import Unavailable
from farthing.store import HotTx, Store, Tx
from farthing.store._walsync import CHECKPOINT_EVERY, Fsync, WalFile

__all__ = ["StoreWriter"]

T = TypeVar("T")

# PostgreSQL: a batch of payments on the loop is one awaited pipeline round (BEGIN, one
# statement per payment, COMMIT), whose CPU psycopg's pipeline makes ~100-250 us whatever
# its size; on the thread, three sync round trips per batch plus the hop. bench/store.py
# --work-us 600, store CPU per payment with 2 payers: loop 571 us, thread 492 us (before
# the one-round batch: 1 job 601 vs 910 us, 4 jobs 335 vs 357 us, 8 jobs 222 vs 207 us).
_AWAITED_FROM = 4


@dataclass(slots=True)
class _HotJob(Generic[T]):
    """A compare-and-set waiting for its hot batch."""

    work: Callable[[HotTx], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _TxJob(Generic[T]):
    """Any other write waiting for its transaction."""

    work: Callable[[Tx], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _WalSyncs:
    """SQLite: one loop's committed batches waiting for an fsync of the WAL file."""

    waiting: list[tuple[_HotJob[Any], object]] = field(default_factory=list)
    """Committed after the running fsync began: they wait for the next one."""
    running: bool = False
    suspect: bool = False
    """The last fsync failed: commits before it are not known durable."""
    idle: list[asyncio.Future[None]] = field(default_factory=list)
    """:meth:`StoreWriter.durable` callers, woken when nothing waits for an fsync."""


_FsyncRequest = tuple[asyncio.AbstractEventLoop, Callable[[OSError | None], None]]


class _Fsyncer:
    """A thread that fsyncs the WAL file on request and tells the asking loop when it
    returned (a plain queue and ``call_soon_threadsafe``: an executor's futures cost the
    loop more CPU per batch)."""

    def __init__(self, wal: WalFile) -> None:
        self._wal = wal
        self._requests: queue.SimpleQueue[_FsyncRequest | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="farthing-fsync", daemon=True)
        self._thread.start()

    def request(
        self, loop: asyncio.AbstractEventLoop, done: Callable[[OSError | None], None]
    ) -> None:
        self._requests.put((loop, done))

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while (asked := self._requests.get()) is not None:
            loop, done = asked
            error: OSError | None = None
            try:
                self._wal.sync()
            except OSError as failed:
                error = failed
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(done, error)


def _not_durable(error: BaseException) -> Unavailable:
    """The answer to a payment whose commit's fsync failed: never a success."""
    failure = Unavailable(
        "the store could not make this payment durable; send it again",
        retry_after=1,
    )
    failure.__cause__ = error
    return failure


# One batch holds jobs of many result types; each job's future is typed by its own.
_AnyJob = _HotJob[Any] | _TxJob[Any]
J = TypeVar("J", _HotJob[Any], _TxJob[Any])
# A job's outcome: (future, the exception it raised or None, its result).
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, object]
# The same inside the writer thread, before it is handed to the job's event loop.
_Done = tuple[_AnyJob, BaseException | None, object]


class StoreWriter:
    """``await writer.run_hot(lambda hot: hot.szm.advance(...))``: in the writer's batch."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 128,
        on_loop: bool | None = None,
        awaited_from: int = _AWAITED_FROM,
        observe: Callable[[int, float], None] | None = None,
        fsync: Fsync = os.fsync,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        """``observe(jobs, seconds)``, if given, is told of every commit (for metrics).
        ``awaited_from``: PostgreSQL, the fewest jobs a batch committed on the loop holds
        (smaller ones go to the thread). ``fsync``: SQLite, the call that makes the WAL
        file durable after the loop's commits (``os.fsync``; a stand-in in tests).
        ``checkpoint_every``: SQLite, the seconds between checkpoints of the WAL while the
        loop commits (on a thread; the loop's commits never checkpoint, see _walsync)."""
        self._awaited_from = awaited_from
        self._store = store
        self._observe = observe
        self._max_batch = max_batch
        self._on_loop = True if on_loop is None else on_loop
        # PostgreSQL: the loop awaits its commit (an async connection) instead of blocking.
        self._awaits = self._on_loop and store.hot_batch_on_loop_available
        self._pending: dict[asyncio.AbstractEventLoop, list[_HotJob[Any]]] = {}
        # PostgreSQL: the batch each loop has in flight; what arrives meanwhile waits for it.
        self._in_flight: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        # None asks the thread to stop after what is queued before it.
        self._queue: queue.SimpleQueue[_AnyJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # SQLite: the loop commits without the fsync, which runs on a thread of its own.
        self._wal = (
            store.wal_file(fsync=fsync, checkpoint_every=checkpoint_every)
            if self._on_loop and store.unsynced_batches
            else None
        )
        self._syncs: dict[asyncio.AbstractEventLoop, _WalSyncs] = {}
        self._fsyncer: _Fsyncer | None = None

    async def run_hot(self, work: Callable[[HotTx], T]) -> T:
        """A hot-path write (compare-and-set of a card or commitment), group-committed."""
        loop = asyncio.get_running_loop()
        job: _HotJob[T] = _HotJob(work, loop.create_future(), loop)
        if not self._on_loop:
            return await self._submit(job)
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            if loop not in self._in_flight:
                loop.call_soon(self._commit_on_loop, loop)
        pending.append(job)
        return await job.future

    async def run_hot_in_order(self, work: Callable[[HotTx], T]) -> T:
        """:meth:`run_hot` for a job whose writes depend on what its statements read (the
        bank's online settlement: a card read, then the spend and its ledger posting). On
        SQLite the loop's batch runs its jobs one after another, as the thread does; on
        PostgreSQL the loop's batch sends the jobs' statements interleaved, round by round
        (:meth:`~farthing.store.Store.hot_batch_on_loop`), so such a job goes to the
        thread's batch instead."""
        if not self._awaits:
            return await self.run_hot(work)
        loop = asyncio.get_running_loop()
        return await self._submit(_HotJob(work, loop.create_future(), loop))

    def _commit_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit what this pass of the loop queued, unless that means waiting for the
        write lock: then the thread does it."""
        jobs = self._pending.pop(loop)
        if self._awaits:
            if len(jobs) < self._awaited_from:
                self._hand_to_thread(jobs)  # few jobs: the thread's fewer round trips cost less
                return
            self._in_flight[loop] = loop.create_task(self._commit_awaited(loop, jobs))
            return
        if self._wal is not None:
            self._commit_unsynced(loop, jobs)
            return
        started = time.perf_counter()
        try:
            with self._store.hot_batch(wait=False) as hot:
                results = [job.work(hot) for job in jobs]
        except Exception:  # all rolled back: the thread runs them again
            # Busy (another connection holds the write lock): the thread waits for it.
            # A failing job: the thread runs each job alone, so it fails alone.
            self._hand_to_thread(jobs)
            return
        self._observed(len(jobs), started)
        _answer(jobs, results)

    async def _commit_awaited(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_HotJob[Any]]
    ) -> None:
        """PostgreSQL: one batch on the loop's async connection; the jobs run in a greenlet
        and the loop serves other requests while the server answers. What queued
        meanwhile goes in the next batch, started as soon as this one committed."""
        started = time.perf_counter()
        try:
            try:
                results = await self._store.hot_batch_on_loop([job.work for job in jobs])
            except Exception:  # busy, or a failing job: the thread runs each job alone
                self._hand_to_thread(jobs)
                return
            self._observed(len(jobs), started)
            _answer(jobs, results)
        finally:
            del self._in_flight[loop]
            if loop in self._pending:
                loop.call_soon(self._commit_on_loop, loop)

    # --- SQLite: commit on the loop, fsync the WAL on a thread (see _walsync) ----------------

    def _commit_unsynced(self, loop: asyncio.AbstractEventLoop, jobs: list[_HotJob[Any]]) -> None:
        """Commit what this pass of the loop queued without waiting for the disk; its
        requests are answered after the next fsync of the WAL file (:meth:`_synced`)."""
        started = time.perf_counter()
        try:
            with self._store.hot_batch_unsynced() as hot:
                results = [job.work(hot) for job in jobs]
        except Exception:  # all rolled back: the thread runs them again (as _commit_on_loop)
            self._hand_to_thread(jobs)
            return
        self._observed(len(jobs), started)
        syncs = self._syncs.get(loop)
        if syncs is None:
            syncs = self._syncs[loop] = _WalSyncs()
        syncs.waiting.extend(zip(jobs, results, strict=True))
        if not syncs.running:
            self._start_sync(loop, syncs)

    def _start_sync(self, loop: asyncio.AbstractEventLoop, syncs: _WalSyncs) -> None:
        """One fsync for every batch committed so far and not yet covered; at most one runs
        per loop, and what commits meanwhile waits for the next."""
        assert self._wal is not None
        riding, syncs.waiting = syncs.waiting, []
        syncs.running = True
        if self._fsyncer is None:
            self._fsyncer = _Fsyncer(self._wal)
        self._fsyncer.request(loop, lambda error: self._synced(loop, syncs, riding, error))

    def _synced(
        self,
        loop: asyncio.AbstractEventLoop,
        syncs: _WalSyncs,
        riding: list[tuple[_HotJob[Any], object]],
        error: OSError | None,
    ) -> None:
        """The fsync returned: answer the batches it covered (Unavailable if it failed),
        then start the next one for what committed meanwhile."""
        syncs.suspect = error is not None
        for job, result in riding:
            if job.future.done():
                continue  # the request was cancelled (its client went away)
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(_not_durable(error))
        syncs.running = False
        if syncs.waiting:
            self._start_sync(loop, syncs)
            return
        idle, syncs.idle = syncs.idle, []
        for waiter in idle:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(_not_durable(error))

    async def durable(self) -> None:
        """Return once every hot batch this loop committed so far is durable (SQLite: the
        fsync covering them returned; elsewhere at once: they were durable at commit).
        For an answer that rests on a read of the store, e.g. a resend served as retried:
        a read can see a commit of ours whose fsync is still running (or failed: then a new
        fsync must succeed first; Unavailable if it fails too)."""
        loop = asyncio.get_running_loop()
        syncs = self._syncs.get(loop)
        if syncs is None or not (syncs.running or syncs.waiting or syncs.suspect):
            return
        idle = loop.create_future()
        syncs.idle.append(idle)
        if not syncs.running:  # the last fsync failed: this one must succeed first
            self._start_sync(loop, syncs)
        await idle

    def _hand_to_thread(self, jobs: list[_HotJob[Any]]) -> None:
        self._start()
        for job in jobs:
            self._queue.put(job)

    async def run(self, work: Callable[[Tx], T]) -> T:
        """Any other write, in a store transaction, group-committed."""
        loop = asyncio.get_running_loop()
        return await self._submit(_TxJob(work, loop.create_future(), loop))

    async def _submit(self, job: _HotJob[T] | _TxJob[T]) -> T:
        self._start()
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)
        fsyncer, self._fsyncer = self._fsyncer, None
        if fsyncer is not None:
            fsyncer.stop()
        if self._wal is not None:
            self._wal.close()

    async def aclose(self) -> None:
        """Finish this loop's batches, then what the thread has queued, then stop it."""
        loop = asyncio.get_running_loop()
        while (task := self._in_flight.get(loop)) is not None:
            await asyncio.shield(task)
        with contextlib.suppress(Unavailable):  # a failing fsync answered its own batches
            await self.durable()
        await asyncio.to_thread(self.close)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                # Started on first use, in the process that uses it (after any fork).
                self._thread = threading.Thread(target=self._loop, name="farthing-writer")
                self._thread.daemon = True
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_AnyJob] = [first]
            stop = self._drain(batch)
            outcomes: list[_Done] = []
            hot = [job for job in batch if isinstance(job, _HotJob)]
            self._run(hot, self._commit_hot, outcomes)
            self._run([job for job in batch if isinstance(job, _TxJob)], self._commit_tx, outcomes)
            _deliver(outcomes)
            if stop:
                return

    def _drain(self, batch: list[_AnyJob]) -> bool:
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _run(
        self,
        jobs: list[J],
        commit: Callable[[list[J]], list[object]],
        outcomes: list[_Done],
    ) -> None:
        """Run ``jobs`` (all of one kind) in one transaction; add their outcomes. If it
        fails, each job runs again alone, so one bad job cannot take the others' results
        with it."""
        if not jobs:
            return
        started = time.perf_counter()
        try:
            results = commit(jobs)
        except BaseException as error:
            if len(jobs) == 1:
                outcomes.append((jobs[0], error, None))
            else:
                for job in jobs:
                    self._run([job], commit, outcomes)
            return
        self._observed(len(jobs), started)
        outcomes.extend((job, None, result) for job, result in zip(jobs, results, strict=True))

    def _commit_hot(self, jobs: list[_HotJob[Any]]) -> list[object]:
        with self._store.hot_batch() as hot:
            return [job.work(hot) for job in jobs]

    def _commit_tx(self, jobs: list[_TxJob[Any]]) -> list[object]:
        with self._store.transaction() as tx:
            return [job.work(tx) for job in jobs]

    def _observed(self, jobs: int, started: float) -> None:
        if self._observe is not None:
            self._observe(jobs, time.perf_counter() - started)


def _answer(jobs: list[_HotJob[Any]], results: list[Any]) -> None:
    """Give each job of a committed batch its result (on the jobs' loop), unless its
    request was cancelled meanwhile."""
    for job, result in zip(jobs, results, strict=True):
        if not job.future.done():
            job.future.set_result(result)


def _deliver(outcomes: list[_Done]) -> None:
    """Wake each event loop once, with all of its jobs' outcomes (after the commit)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for job, error, value in outcomes:
        by_loop.setdefault(job.loop, []).append((job.future, error, value))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[_Outcome]) -> None:
    for future, error, value in settled:
        if future.done():
            continue  # the request was cancelled (its client went away)
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
