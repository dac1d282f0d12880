"""Group commit: the vendor's card updates that arrive together share one durable commit.

A paid request must not be answered before its conditional update is durable, and on
SQLite (``synchronous=FULL``) or PostgreSQL (``fsync``) the commit costs far more than the
update (bench/profile.py: ~0.3-1.2 ms against ~35 us). :class:`StoreWriter` runs every
write of this process on one thread: it takes whatever is queued (up to ``max_batch``),
runs the jobs in one transaction, commits once, and only then wakes each waiting request
with its own result. A job's result is never delivered before the commit that holds it.

If the batch's transaction fails, each job is run again alone, so one bad job cannot
take the others' results with it; a job that fails alone gets its own exception.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from farthing.store import Store, Tx

__all__ = ["StoreWriter"]

T = TypeVar("T")
_STOP: Final = object()


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Tx], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


class StoreWriter:
    """``await writer.run(lambda tx: tx.szm_advance(...))``: runs in the writer's batch."""

    def __init__(self, store: Store, *, max_batch: int = 128) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job[object] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, work: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._start()
        self._queue.put(_Job(work, future, loop))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
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
            if first is _STOP:
                return
            batch: list[_Job[object]] = [first]  # type: ignore[list-item]
            stop = self._drain(batch)
            self._run(batch)
            if stop:
                return

    def _drain(self, batch: list[_Job[object]]) -> bool:
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)  # type: ignore[arg-type]
        return False

    def _run(self, batch: list[_Job[object]]) -> None:
        try:
            with self._store.transaction() as tx:
                results = [job.work(tx) for job in batch]
        except BaseException as error:
            if len(batch) == 1:
                _deliver_error(batch[0], error)
            else:
                for job in batch:  # isolate the failure: each job alone
                    self._run([job])
            return
        for job, result in zip(batch, results, strict=True):
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future[object], result: object) -> None:
    if not future.done():
        future.set_result(result)


def _set_error(future: asyncio.Future[object], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _deliver_error(job: _Job[object], error: BaseException) -> None:
    job.loop.call_soon_threadsafe(_set_error, job.future, error)
