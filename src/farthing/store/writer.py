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
blocked only for the commit itself: the batch takes SQLite's write lock without waiting
(``hot_batch(wait=False)``), and if another connection (another worker, a deposit run)
holds it, the batch goes to the thread, which waits. On PostgreSQL, where a commit is
several network round trips, everything goes through the thread.

If a batch's transaction fails, each of its jobs is run again alone, so one bad job
cannot take the others' results with it; a job that fails alone gets its own exception.
The waiting requests of one event loop are woken with one call, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from farthing.store import HotTx, Store, Tx

__all__ = ["StoreWriter"]

T = TypeVar("T")


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


# One batch holds jobs of many result types; each job's future is typed by its own.
_AnyJob = _HotJob[Any] | _TxJob[Any]
# A job's outcome: (future, the exception it raised or None, its result).
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, object]
# The same inside the writer thread, before it is handed to the job's event loop.
_Done = tuple[_AnyJob, BaseException | None, object]


class StoreWriter:
    """``await writer.run_hot(lambda hot: hot.szm.advance(...))``: in the writer's batch."""

    def __init__(self, store: Store, *, max_batch: int = 128, on_loop: bool | None = None) -> None:
        self._store = store
        self._max_batch = max_batch
        self._on_loop = store.backend == "sqlite" if on_loop is None else on_loop
        self._pending: dict[asyncio.AbstractEventLoop, list[_HotJob[Any]]] = {}
        # None asks the thread to stop after what is queued before it.
        self._queue: queue.SimpleQueue[_AnyJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run_hot(self, work: Callable[[HotTx], T]) -> T:
        """A hot-path write (compare-and-set of a card or commitment), group-committed."""
        loop = asyncio.get_running_loop()
        job: _HotJob[T] = _HotJob(work, loop.create_future(), loop)
        if not self._on_loop:
            return await self._submit(job)
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._commit_on_loop, loop)
        pending.append(job)
        return await job.future

    def _commit_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit what this pass of the loop queued, unless that means waiting for the
        write lock: then the thread does it."""
        jobs = self._pending.pop(loop)
        try:
            with self._store.hot_batch(wait=False) as hot:
                results = [job.work(hot) for job in jobs]
        except Exception:  # all rolled back: the thread runs them again
            # Busy (another connection holds the write lock): the thread waits for it.
            # A failing job: the thread runs each job alone, so it fails alone.
            self._hand_to_thread(jobs)
            return
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)

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

    async def aclose(self) -> None:
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
            self._run_hot([job for job in batch if isinstance(job, _HotJob)], outcomes)
            self._run_tx([job for job in batch if isinstance(job, _TxJob)], outcomes)
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

    def _run_hot(self, jobs: list[_HotJob[Any]], outcomes: list[_Done]) -> None:
        """Run ``jobs`` in one hot batch; add their outcomes."""
        if not jobs:
            return
        try:
            with self._store.hot_batch() as hot:
                results = [job.work(hot) for job in jobs]
        except BaseException as error:
            _isolate(jobs, error, outcomes, lambda job: self._run_hot([job], outcomes))
            return
        outcomes.extend((job, None, result) for job, result in zip(jobs, results, strict=True))

    def _run_tx(self, jobs: list[_TxJob[Any]], outcomes: list[_Done]) -> None:
        """Run ``jobs`` in one transaction; add their outcomes."""
        if not jobs:
            return
        try:
            with self._store.transaction() as tx:
                results = [job.work(tx) for job in jobs]
        except BaseException as error:
            _isolate(jobs, error, outcomes, lambda job: self._run_tx([job], outcomes))
            return
        outcomes.extend((job, None, result) for job, result in zip(jobs, results, strict=True))


J = TypeVar("J", _HotJob[Any], _TxJob[Any])


def _isolate(
    jobs: list[J], error: BaseException, outcomes: list[_Done], alone: Callable[[J], None]
) -> None:
    """After a failed batch: a lone job gets its error; of several, each runs again alone,
    so one bad job cannot take the others' results with it."""
    if len(jobs) == 1:
        outcomes.append((jobs[0], error, None))
        return
    for job in jobs:
        alone(job)


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
