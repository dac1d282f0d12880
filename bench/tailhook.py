"""The vendor server with a per-request time line, for :mod:`bench.tail` (never in product
code: this module wraps the server's own classes from outside, in the server process only).

``python -m bench.tailhook FACTORY [farthing.serving's options]`` runs ``farthing.serving``
(one worker) after wrapping, in this process:

- uvicorn's request cycle: when the request head was parsed (``t_head``), when the app
  started (``t_app``), when the last body byte was handed to the transport (``t_sent``);
- :class:`farthing.store.writer.StoreWriter`: when a payment reached its hot write
  (``t_hot``), the commit that held it (start, end, jobs), the fsync that covered it (asked
  on the loop, begun and returned on the fsync thread, its callback run on the loop), and
  when the request's task resumed after it (``t_resumed``); PostgreSQL: the batch awaited
  on the loop or committed on the writer thread and the call that woke the loop;
- the garbage collector's passes (start, end, generation);
- the scheduler: the run-queue wait (``/proc/thread-self/schedstat``, field 2) of the loop
  thread at ``t_head`` and ``t_sent``, and of the fsync thread around each fsync.

Times are ``time.perf_counter()`` (CLOCK_MONOTONIC, the clock ``time.monotonic()`` reads in
the bench process). On exit (SIGTERM: uvicorn stops gracefully) the records are written as
JSON to ``$FARTHING_TAIL_TRACE``. ``$FARTHING_TAIL_SWITCH`` (seconds), if set, is passed to
``sys.setswitchinterval`` first; ``$FARTHING_TAIL_FSYNC_ON_LOOP=1``: SQLite's loop commits
with ``synchronous=FULL`` (its fsync inside the commit, on the loop; no fsync thread; those
batches are recorded as "loop FULL": until session 9 they were not recorded at all, so the
variant seemed to commit only on the writer thread, whose batches were);
``$FARTHING_TAIL_AIO_FSYNC=1`` (with ``caio`` on ``PYTHONPATH``): the WAL fsync as a Linux
AIO request from the loop, no fsync thread; ``$FARTHING_TAIL_CHECKPOINT_EVERY``,
``$FARTHING_TAIL_CHECKPOINT_NICE``, ``$FARTHING_TAIL_FSYNC_NICE``: the checkpoint thread's
interval, its and the fsync thread's nice value;
``$FARTHING_TAIL_FREEZE=1``: ``gc.collect(); gc.freeze()`` once the app is built.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

TRACE_ENV: Final = "FARTHING_TAIL_TRACE"
SWITCH_ENV: Final = "FARTHING_TAIL_SWITCH"
FSYNC_ON_LOOP_ENV: Final = "FARTHING_TAIL_FSYNC_ON_LOOP"
FREEZE_ENV: Final = "FARTHING_TAIL_FREEZE"
FSYNC_NICE_ENV: Final = "FARTHING_TAIL_FSYNC_NICE"
CHECKPOINT_EVERY_ENV: Final = "FARTHING_TAIL_CHECKPOINT_EVERY"
CHECKPOINT_NICE_ENV: Final = "FARTHING_TAIL_CHECKPOINT_NICE"
AIO_FSYNC_ENV: Final = "FARTHING_TAIL_AIO_FSYNC"

now = time.perf_counter

FIELDS: Final = (
    "paid", "t_head", "rd_head", "t_app", "t_hot", "hot_calls", "batch", "fsync",
    "t_resumed", "t_sent", "rd_sent",
)  # fmt: skip

# Field names of one request's record (a dict; missing key = the step did not happen).
_CURRENT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tail_request")


class Trace:
    """Everything recorded in this process."""

    def __init__(self) -> None:
        # One array of floats per field, not a dict per request: records that pile up as
        # objects would make the collector's full passes longer and more frequent than
        # in the server measured (NaN: the request did not reach that step).
        self.requests: dict[str, array[float]] = {name: array("d") for name in FIELDS}
        self.batches: list[dict[str, Any]] = []
        self.fsyncs: list[dict[str, Any]] = []
        self.wakes: list[dict[str, Any]] = []  # PostgreSQL: the writer thread's deliveries
        self.gcs: list[list[float]] = []
        self.checkpoints: list[list[float]] = []  # the checkpoint thread's, if any
        # Its wal_checkpoint calls: [start, end, mode, busy, frames in the WAL, copied].
        self.checkpoint_passes: list[list[Any]] = []
        self.threads: dict[str, int] = {}  # the loop's and the fsync thread's kernel ids
        self.local = threading.local()
        self.heap_at_start: dict[str, int] = {}
        self._sched_fds: dict[int, int] = {}

    def run_delay(self) -> float:
        """Seconds this thread has waited on a run queue so far (the kernel's schedstat)."""
        ident = threading.get_native_id()
        fd = self._sched_fds.get(ident)
        if fd is None:
            fd = self._sched_fds[ident] = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        return int(os.pread(fd, 64, 0).split()[1]) / 1e9

    def dump(self, path: Path) -> None:
        data = {
            "requests": {name: values.tolist() for name, values in self.requests.items()},
            "batches": self.batches,
            "fsyncs": self.fsyncs,
            "wakes": self.wakes,
            "gcs": self.gcs,
            "checkpoints": self.checkpoints,
            "checkpoint_passes": self.checkpoint_passes,
            "threads": self.threads,
            "switch_interval": sys.getswitchinterval(),
            "heap": {"start": self.heap_at_start, "end": _heap()},
        }
        path.write_text(json.dumps(data))


TRACE: Final = Trace()


def _wrap_cycle() -> None:
    from uvicorn.protocols.http import httptools_impl

    cycle = httptools_impl.RequestResponseCycle
    init, send = cycle.__init__, cycle.send

    def traced_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.tail = {"t_head": now(), "rd_head": TRACE.run_delay(), "path": self.scope["path"]}

    async def traced_send(self: Any, message: Any) -> None:
        await send(self, message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            record = self.tail
            record["t_sent"] = now()
            record["rd_sent"] = TRACE.run_delay()
            record["paid"] = float(record.pop("path").startswith("/articles/"))
            for name, values in TRACE.requests.items():
                values.append(record.get(name, math.nan))

    cycle.__init__ = traced_init  # type: ignore[method-assign]
    cycle.send = traced_send  # type: ignore[method-assign]


def traced_app(app: Any) -> Any:
    """The ASGI app, marking the request's record as the task's current one."""

    async def run(scope: Any, receive: Any, send: Any) -> None:
        owner = getattr(send, "__self__", None)
        record = getattr(owner, "tail", None)
        if record is not None:
            record["t_app"] = now()
            _CURRENT.set(record)
        await app(scope, receive, send)

    return run


def _wrap_writer() -> None:
    from farthing.store import _walsync, writer

    cls = writer.StoreWriter
    run_hot, commit_unsynced = cls.run_hot, cls._commit_unsynced
    start_sync, synced = cls._start_sync, cls._synced
    commit_awaited, commit_hot = cls._commit_awaited, cls._commit_hot
    wal_sync = _walsync.WalFile.sync

    async def traced_run_hot(self: Any, work: Callable[[Any], Any]) -> Any:
        record = _CURRENT.get(None)
        if record is None:
            return await run_hot(self, work)
        record.setdefault("t_hot", now())
        record["hot_calls"] = record.get("hot_calls", 0) + 1

        def traced_work(hot: Any) -> Any:
            record["batch"] = TRACE.local.batch
            return work(hot)

        traced_work.record = record  # type: ignore[attr-defined]
        try:
            return await run_hot(self, traced_work)
        finally:
            record["t_resumed"] = now()

    def _batch(where: str, jobs: int) -> dict[str, Any]:
        batch = {"where": where, "jobs": jobs, "t_start": now()}
        TRACE.local.batch = len(TRACE.batches)
        TRACE.batches.append(batch)
        return batch

    commit_on_loop = cls._commit_on_loop

    def traced_commit_on_loop(self: Any, loop: Any) -> None:
        if self._wal is not None or self._awaits:  # recorded by the wrappers below
            commit_on_loop(self, loop)
            return
        # SQLite with FARTHING_TAIL_FSYNC_ON_LOOP: the loop's own FULL commit, or (write
        # lock taken: busy) its hand-off to the writer thread, recorded there again.
        jobs = self._pending.get(loop, [])
        batch = _batch("loop FULL", len(jobs))
        try:
            commit_on_loop(self, loop)
        finally:
            batch["t_end"] = now()
            if not all(job.future.done() for job in jobs):
                batch["where"] = "loop FULL refused (busy)"

    def traced_commit_unsynced(self: Any, loop: Any, jobs: list[Any]) -> None:
        batch = _batch("loop", len(jobs))
        try:
            commit_unsynced(self, loop, jobs)
        finally:
            batch["t_end"] = now()

    def traced_start_sync(self: Any, loop: Any, syncs: Any) -> None:
        number = len(TRACE.fsyncs)
        TRACE.fsyncs.append({"t_asked": now(), "jobs": len(syncs.waiting)})
        for job, _ in syncs.waiting:
            record = getattr(job.work, "record", None)
            if record is not None:
                record["fsync"] = number
        start_sync(self, loop, syncs)

    called = [0]  # fsyncs run one at a time, in the order asked: the next one is called back

    def traced_synced(self: Any, *args: Any) -> None:
        TRACE.fsyncs[called[0]]["t_callback"] = now()
        called[0] += 1
        synced(self, *args)

    def traced_wal_sync(self: Any) -> None:
        done = TRACE.local.__dict__.setdefault("fsynced", 0)
        entry = TRACE.fsyncs[done] if done < len(TRACE.fsyncs) else {}
        TRACE.threads.setdefault("fsync", threading.get_native_id())
        entry["rd_begin"], entry["t_begin"] = TRACE.run_delay(), now()
        try:
            wal_sync(self)
        finally:
            entry["t_returned"], entry["rd_returned"] = now(), TRACE.run_delay()
            TRACE.local.fsynced = done + 1

    flying = [0]  # awaited batches of the loop started and not ended

    async def traced_commit_awaited(self: Any, loop: Any, *rest: Any) -> None:
        batch = _batch("awaited", len(rest[-1]))  # (loop, [flights,] jobs)
        batch["beside"] = flying[0]  # batches already in flight when this one started
        flying[0] += 1
        try:
            await commit_awaited(self, loop, *rest)
        finally:
            flying[0] -= 1
            batch["t_end"] = now()

    def traced_commit_hot(self: Any, jobs: list[Any]) -> list[object]:
        batch = _batch("thread", len(jobs))
        try:
            return commit_hot(self, jobs)
        finally:
            batch["t_end"] = now()

    deliver = writer._deliver

    def traced_deliver(outcomes: list[Any]) -> None:
        wake = {"t_deliver": now(), "batch": getattr(TRACE.local, "batch", -1)}
        TRACE.wakes.append(wake)
        settle = writer._settle

        def traced_settle(settled: list[Any]) -> None:
            wake["t_settle"] = now()
            settle(settled)

        writer._settle = traced_settle
        try:
            deliver(outcomes)
        finally:
            writer._settle = settle

    checkpointer = getattr(_walsync, "Checkpointer", None)
    if checkpointer is not None:  # this code has a checkpoint thread: its passes
        checkpoint = checkpointer._checkpoint

        def traced_checkpoint(self: Any, connection: Any) -> None:
            started = now()
            try:
                checkpoint(self, connection)
            finally:
                TRACE.checkpoints.append([started, now()])

        checkpointer._checkpoint = traced_checkpoint
        one_pass = getattr(checkpointer, "_pass", None)
        if one_pass is not None:  # this code checkpoints in passes: each one's mode and result

            def traced_pass(self: Any, connection: Any, mode: str) -> tuple[int, int, int]:
                started = now()
                result: tuple[int, int, int] = one_pass(self, connection, mode)
                TRACE.checkpoint_passes.append([started, now(), mode, *result])
                return result

            checkpointer._pass = traced_pass
    cls.run_hot = traced_run_hot  # type: ignore[method-assign]
    cls._commit_on_loop = traced_commit_on_loop  # type: ignore[method-assign]
    cls._commit_unsynced = traced_commit_unsynced  # type: ignore[method-assign]
    cls._start_sync = traced_start_sync  # type: ignore[method-assign]
    cls._synced = traced_synced  # type: ignore[method-assign,assignment]
    cls._commit_awaited = traced_commit_awaited  # type: ignore[method-assign,assignment]
    cls._commit_hot = traced_commit_hot  # type: ignore[method-assign]
    _walsync.WalFile.sync = traced_wal_sync  # type: ignore[method-assign]
    writer._deliver = traced_deliver


def _heap() -> dict[str, int]:
    """Objects the collector tracks, by type (the 40 commonest)."""
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {"(all)": sum(counts.values()), **dict(counts.most_common(40))}


def _watch_gc() -> None:
    started: list[float] = [0.0, 0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [now(), time.thread_time()]
        else:
            cpu = time.thread_time() - started[1]
            TRACE.gcs.append([started[0], now(), info["generation"], cpu, info["collected"]])

    gc.callbacks.append(callback)


def install() -> None:
    TRACE.threads["loop"] = threading.get_native_id()  # uvicorn runs its loop on this one
    switch = os.environ.get(SWITCH_ENV)
    if switch:
        sys.setswitchinterval(float(switch))
    if os.environ.get(FSYNC_ON_LOOP_ENV):
        # SQLite: the loop commits with synchronous=FULL (the fsync inside its commit), as
        # before the fsync thread existed.
        from farthing.store import Store

        Store.unsynced_batches = property(lambda self: False)  # type: ignore[method-assign,assignment]
    every = os.environ.get(CHECKPOINT_EVERY_ENV)
    if every:
        _checkpoint_every(float(every))
    nice = os.environ.get(FSYNC_NICE_ENV)
    if nice:
        _nice_fsync_thread(int(nice))
    checkpoint_nice = os.environ.get(CHECKPOINT_NICE_ENV)
    if checkpoint_nice:
        _nice_checkpoint_thread(int(checkpoint_nice))
    if os.environ.get(AIO_FSYNC_ENV):
        _aio_fsync()
    _wrap_cycle()
    _wrap_writer()
    _watch_gc()


def _checkpoint_every(seconds: float) -> None:
    """SQLite's checkpoint thread at most every ``seconds`` (whatever the writer asks)."""
    from farthing.store import _walsync

    init = _walsync.Checkpointer.__init__

    def every(self: Any, connect: Any, **_: Any) -> None:
        init(self, connect, every=seconds)

    _walsync.Checkpointer.__init__ = every  # type: ignore[method-assign]


def _nice_fsync_thread(nice: int) -> None:
    """The fsync thread at this nice value (Linux: per thread), set when it starts."""
    from farthing.store import writer

    serve = writer._Fsyncer._serve

    def niced_serve(self: Any) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        serve(self)

    writer._Fsyncer._serve = niced_serve  # type: ignore[method-assign]


def _aio_fsync() -> None:
    """SQLite: the WAL fsync submitted from the loop as a Linux AIO request (``caio``, on
    ``PYTHONPATH``: not a dependency of farthing), its completion read on the loop from the
    AIO context's eventfd; no fsync thread, so no GIL hand-off around each fsync. A
    measurement only: the descriptor is not kept alive while a request is in flight. It
    moves the fsync's kernel work off the server's own CPU time onto a kworker of the
    same core (``bench/corecpu.py`` counts both); not in the product (docs/storage.md)."""
    from caio import linux_aio

    from farthing.store import writer

    class AioFsyncer:
        def __init__(self, wal: Any) -> None:
            self._wal = wal
            self._context = linux_aio.Context(max_requests=8)
            self._loops: set[Any] = set()
            self._asked = 0

        def request(self, loop: Any, done: Callable[[OSError | None], None]) -> None:
            if loop not in self._loops:
                loop.add_reader(self._context.fileno, self._completed)
                self._loops.add(loop)
            entry = TRACE.fsyncs[self._asked] if self._asked < len(TRACE.fsyncs) else {}
            self._asked += 1
            entry["rd_begin"], entry["t_begin"] = TRACE.run_delay(), now()
            with self._wal._lock:
                fd = self._wal._current()

            def finished(result: int) -> None:
                entry["t_returned"], entry["rd_returned"] = now(), TRACE.run_delay()
                if self._wal._checkpointer is not None:
                    self._wal._checkpointer.nudge()
                # caio hands the completion's res (0, or minus an errno) over unsigned:
                # read as is, a failed fsync would pass for a success.
                if result >= 1 << 63:
                    result -= 1 << 64
                done(None if result >= 0 else OSError(-result, os.strerror(-result)))

            if fd is None:
                loop.call_soon(finished, 0)
                return
            operation = linux_aio.Operation.fsync(fd)
            operation.set_callback(finished)
            if self._context.submit(operation) != 1:
                loop.call_soon(finished, -5)  # EIO: answered Unavailable

        def _completed(self) -> None:
            with contextlib.suppress(BlockingIOError):  # the eventfd's count: read it to 0
                self._context.poll()
            while self._context.process_events():
                pass

        def stop(self) -> None:
            for loop in self._loops:
                with contextlib.suppress(Exception):
                    loop.remove_reader(self._context.fileno)

    writer._Fsyncer = AioFsyncer  # type: ignore[assignment,misc]


def _nice_checkpoint_thread(nice: int) -> None:
    """SQLite's checkpoint thread at this nice value, set when it starts."""
    from farthing.store import _walsync

    serve = _walsync.Checkpointer._serve

    def niced_serve(self: Any) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        serve(self)

    _walsync.Checkpointer._serve = niced_serve  # type: ignore[method-assign]


def app_from_env() -> Any:
    """The vendor's production factory, its app wrapped by :func:`traced_app`."""
    from farthing.paywall.serve import app_from_env as production

    app = production()
    TRACE.heap_at_start = _heap()
    if os.environ.get(FREEZE_ENV):  # what a worker would do once its app is built
        gc.collect()
        gc.freeze()
    return traced_app(app)


FACTORY: Final = "bench.tailhook:app_from_env"


def main() -> None:
    install()
    from farthing.serving import main as serve  # the factory is this module's app_from_env

    # uvicorn stops gracefully on SIGTERM, then raises it again with the handler it found
    # at start: this one lets the process go on to write its records.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        serve()
    finally:
        target = os.environ.get(TRACE_ENV)
        if target:
            TRACE.dump(Path(target))


if __name__ == "__main__":
    # Run as bench.tailhook, not __main__: uvicorn imports the factory from bench.tailhook,
    # and the records must be the ones that module holds.
    from bench.tailhook import main as hooked

    hooked()
