"""``Store``: the durable store of one issuer or vendor, and ``open_store``.

A store owns a connection pool (see :mod:`farthing.store._engine` for the SQLite and
PostgreSQL settings) and hands out units of work::

    store = open_store("/var/lib/farthing/vendor.sqlite")
    with store.transaction() as tx:          # commit on success, rollback on exception
        tx.ledger.post("load", "load:42", [(cash, 5_000_000), (card_float, -5_000_000)])

    with store.hot_batch() as hot:           # the paid path: one durable commit for many
        ok = hot.szm.advance(card_id, old_spent=3, new_spent=4, new_anchor=w4)

The hot path runs precompiled statements on the store's own driver connections (the fast
lane): ``hot_batch`` the compare-and-set writes (group-committed by
:class:`farthing.store.writer.StoreWriter`), ``szm_card`` and ``payword_commitment`` one
read each, outside any transaction.

Database errors never escape raw: every unit of work runs inside :func:`map_db_errors`,
so callers see :class:`~farthing.core.errors.Conflict` (or their own exceptions) only.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, TypeVar, final

from sqlalchemy import Engine

from farthing.core.clock import Clock, SystemClock
from farthing.core.errors import Conflict, LocalProtocolError
from farthing.store._engine import Engines, is_postgres_target, make_engines, target_url
from farthing.store._errors import busy_conflict, is_retryable, map_db_errors
from farthing.store._fastlane import (
    AsyncFastLane,
    FastBatch,
    FastLane,
    LaneBusy,
)
from farthing.store._hot import HotStatements, PreparedHot
from farthing.store._migrate import current_revision, head_revision, upgrade_engine
from farthing.store._rows import LedgerCheck, SzmCardRow, VendorCommitmentRow
from farthing.store._sql import Ctx, build
from farthing.store._szm import card_row
from farthing.store._tx import HotTx, Tx
from farthing.store._walsync import Checkpointer, Fsync, WalFile

__all__ = ["Store", "migrate", "open_store"]

T = TypeVar("T")
_BACKOFF_S: Final = 0.005
_BACKOFF_CAP_S: Final = 0.25


@final
class Store:
    """Units of work over one database. Build it with :func:`open_store`."""

    def __init__(self, engines: Engines, *, clock: Clock) -> None:
        self._engines = engines
        self._clock = clock
        self._hot = HotStatements.build()
        with engines.write.connect():
            pass  # the first connection tells the dialect the server version: compile after it
        self._prepared = PreparedHot.build(self._hot, engines.write.dialect)
        begin = "BEGIN IMMEDIATE" if self.backend == "sqlite" else "BEGIN"
        size, wait = engines.limits.lane_size, engines.limits.pool_timeout
        self._lane = FastLane(engines.fast_connect, begin=begin, max_open=size, timeout=wait)
        self._nowait_lane = (
            FastLane(engines.nowait_connect, begin=begin, max_open=size, timeout=wait)
            if engines.nowait_connect is not None
            else self._lane
        )
        self._unsynced_lane = (
            FastLane(engines.unsynced_connect, begin=begin, max_open=size, timeout=wait)
            if engines.unsynced_connect is not None
            else None
        )
        # SQLite has one writer at a time. Threads of this process queue for it here, in
        # order; left to SQLite's busy handler they would sleep and poll (1, 2, 5 ... 100
        # ms), which under contention put an issuer's p99 above a second.
        self._write_turn: threading.RLock | None = (
            threading.RLock() if self.backend == "sqlite" else None
        )
        # PostgreSQL: each event loop's own async connection for hot batches on the loop.
        self._loop_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncFastLane]
        self._loop_lanes = weakref.WeakKeyDictionary()

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self._engines.write.dialect.name == "sqlite" else "postgresql"

    @contextmanager
    def transaction(self, *, readonly: bool = False, serializable: bool = False) -> Iterator[Tx]:
        """A unit of work: commit when the block ends, roll back if it raises.

        ``readonly``: a read transaction (on SQLite it does not take the write lock; on
        PostgreSQL it is advisory).
        ``serializable``: for read-a-predicate-then-write units (a risk limit checked by a
        SUM); on PostgreSQL it may fail with a retryable Conflict, so prefer
        :meth:`run_in_transaction`. SQLite write transactions are always serializable.
        """
        with (
            self._writing(not readonly),
            map_db_errors(),
            self._pick(readonly, serializable).begin() as conn,
        ):
            yield Tx(Ctx(conn, self._clock, self._hot))

    @contextmanager
    def _writing(self, writes: bool = True) -> Iterator[None]:
        """Hold this process's SQLite write turn (no-op for reads and on PostgreSQL)."""
        if self._write_turn is None or not writes:
            yield
            return
        with self._write_turn:
            yield

    def _pick(self, readonly: bool, serializable: bool) -> Engine:
        if serializable:
            return self._engines.serializable
        return self._engines.read if readonly else self._engines.write

    def run_in_transaction(
        self, fn: Callable[[Tx], T], *, retries: int = 5, serializable: bool = False
    ) -> T:
        """Run ``fn`` in a transaction, again (up to ``retries`` times) if it loses to a
        concurrent one or the store is busy. ``fn`` must be safe to run again."""
        attempt = 0
        while True:
            try:
                with self.transaction(serializable=serializable) as tx:
                    return fn(tx)
            except Conflict as error:
                if not is_retryable(error) or attempt >= retries:
                    raise
            attempt += 1
            pause = min(_BACKOFF_CAP_S, _BACKOFF_S * 2**attempt)
            time.sleep(pause * (0.5 + random.random()))

    # --- the vendor's hot path: one statement, its own short transaction --------------------

    @contextmanager
    def hot_batch(self, *, wait: bool = True) -> Iterator[HotTx]:
        """Several hot-path writes in one transaction with one durable commit (the vendor's
        group commit); commit when the block ends, roll back if it raises.

        ``wait=False`` (SQLite): if another connection holds the write lock, fail at once
        with a retryable :class:`Conflict` instead of waiting up to the busy timeout, so
        an event loop can commit itself when the lock is free and hand off when it is not.
        """
        if wait:
            with self._writing(), map_db_errors(), self._lane.batch() as batch:
                yield HotTx(batch, self._prepared)
            return
        if self._write_turn is not None and not self._write_turn.acquire(blocking=False):
            raise busy_conflict()
        try:
            with map_db_errors(), self._nowait_lane.batch() as batch:
                yield HotTx(batch, self._prepared)
        finally:
            if self._write_turn is not None:
                self._write_turn.release()

    @property
    def unsynced_batches(self) -> bool:
        """Does :meth:`hot_batch_unsynced` exist here (SQLite)?"""
        return self._unsynced_lane is not None

    @contextmanager
    def hot_batch_unsynced(self) -> Iterator[HotTx]:
        """:meth:`hot_batch` ``(wait=False)`` on a ``synchronous=NORMAL`` connection
        (SQLite only): the commit writes the WAL frames but does not wait for the disk.
        Not durable until :meth:`wal_file`'s ``sync`` began after it and returned; only
        :class:`~farthing.store.writer.StoreWriter` uses it, answering after that sync
        (see :mod:`farthing.store._walsync`)."""
        lane = self._unsynced_lane
        if lane is None:
            raise LocalProtocolError("only a SQLite store has unsynced hot batches")
        if self._write_turn is not None and not self._write_turn.acquire(blocking=False):
            raise busy_conflict()
        try:
            with map_db_errors(), lane.batch() as batch:
                yield HotTx(batch, self._prepared)
        finally:
            if self._write_turn is not None:
                self._write_turn.release()

    def wal_file(
        self, *, fsync: Fsync = os.fsync, checkpoint_every: float | None = None
    ) -> WalFile:
        """The store's ``-wal`` file, to fsync after :meth:`hot_batch_unsynced` (SQLite);
        ``fsync`` is the call that does it (a stand-in in tests). With
        ``checkpoint_every`` (seconds), a checkpoint thread copies the WAL into the
        database file at most that often, nudged by the fsyncs: the connection of
        :meth:`hot_batch_unsynced` never checkpoints (see :mod:`farthing.store._walsync`)."""
        database = self._engines.database
        if database is None:
            raise LocalProtocolError("only a SQLite store has a WAL file")
        checkpointer = None
        if checkpoint_every is not None:
            checkpointer = Checkpointer(self._engines.fast_connect, every=checkpoint_every)
        return WalFile(database, fsync=fsync, checkpointer=checkpointer)

    @property
    def hot_batch_on_loop_available(self) -> bool:
        """Can :meth:`hot_batch_on_loop` run here (PostgreSQL: an async driver)?"""
        return self._engines.async_connect is not None

    async def hot_batch_on_loop(self, works: Sequence[Callable[[HotTx], T]]) -> list[T]:
        """``works`` as one :meth:`hot_batch` (one durable commit), on the running event
        loop without a thread (PostgreSQL); their results in order, after the commit. If
        one raises, everything is rolled back and the error raised.

        The works' statements are sent in rounds, one round trip each (see
        :meth:`AsyncFastLane.run`), not one after the other. It never waits for a
        connection: if this loop's connection is in another batch, or the hot-path budget
        (``lane_size``) has no slot left, it raises a retryable :class:`Conflict` at once
        and nothing ran.
        """
        connect = self._engines.async_connect
        if connect is None:
            raise LocalProtocolError("this store has no async driver; use hot_batch()")
        loop = asyncio.get_running_loop()
        lane = self._loop_lanes.get(loop)
        if lane is None:
            lane = self._loop_lanes[loop] = AsyncFastLane(connect, self._lane)
            weakref.finalize(loop, lane.close)  # a loop that ends closes its connection
        prepared = self._prepared
        jobs = [_on_hot_tx(work, prepared) for work in works]
        with map_db_errors():
            try:
                return await lane.run(jobs)
            except LaneBusy:
                raise busy_conflict()  # noqa: B904 (its cause says "busy": retryable)

    async def read_hot(self, read: Callable[[bytes], T], key: bytes) -> T:
        """``await store.read_hot(store.szm_card, card_id)``: one fast-lane read from an
        event loop. On SQLite it runs on the loop itself: a WAL read never waits for a
        writer and costs ~30 us of CPU, a hop to a thread and back ~120 us (bench/stale.py
        times the reads of a stale card cache). On PostgreSQL, a network round trip, it
        runs in a thread (the paid path reads a card only when it has none cached: a
        payment that meets a stale cached card is judged again against the row its losing
        write returned, ``hot.szm.spend``)."""
        if self.backend == "sqlite":
            return read(key)
        return await asyncio.to_thread(read, key)

    def szm_card(self, card_id: bytes) -> SzmCardRow | None:
        """Read one card outside any transaction (one statement, fast lane)."""
        with map_db_errors():
            row = self._lane.fetch_one(self._prepared.szm_card, {"key_card_id": card_id})
        return None if row is None else card_row(row)

    def challenge_used(self, challenge_id: bytes) -> bool:
        """Was a payment accepted under this challenge id (one statement, fast lane)?"""
        with map_db_errors():
            row = self._lane.fetch_one(self._prepared.challenge_used, {"key_id": challenge_id})
        return row is not None

    def challenge_used_at(self, challenge_id: bytes) -> int | None:
        """When a payment was accepted under this challenge id (0: before that was kept),
        or None if none was (one statement, fast lane; the retry path only)."""
        with map_db_errors():
            row = self._lane.fetch_one(self._prepared.challenge_used_at, {"key_id": challenge_id})
        return None if row is None else int(row["used_at"])

    def challenge_request(self, challenge_id: bytes) -> bytes | None:
        """The tag of the request that paid under this challenge id, if one was kept (one
        statement, fast lane; hll online's refusal path only)."""
        with map_db_errors():
            row = self._lane.fetch_one(self._prepared.challenge_request, {"key_id": challenge_id})
        return None if row is None or row["request"] is None else bytes(row["request"])

    def payword_commitment(self, commitment_id: bytes) -> VendorCommitmentRow | None:
        """Read one commitment outside any transaction (one statement, fast lane)."""
        params = {"key_commitment_id": commitment_id}
        with map_db_errors():
            row = self._lane.fetch_one(self._prepared.payword_commitment, params)
        return None if row is None else build(VendorCommitmentRow, row)

    # --- administration ---------------------------------------------------------------------

    def check_ledger(self) -> LedgerCheck:
        """Audit the ledger against itself and the card tables (read-only)."""
        with self.transaction(readonly=True) as tx:
            return tx.ledger.check()

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (idempotent)."""
        with map_db_errors():
            upgrade_engine(self._engines.write)

    def schema_is_current(self) -> bool:
        with map_db_errors():
            return current_revision(self._engines.write) == head_revision()

    def pool_use(self) -> tuple[int, int]:
        """(connections checked out of the transaction pool now, its size): for metrics."""
        pool = self._engines.write.pool
        checked_out = getattr(pool, "checkedout", None)
        in_use = int(checked_out()) if callable(checked_out) else 0
        return in_use, self._engines.limits.pool_size

    def close(self) -> None:
        """Close every pooled connection. The store is unusable afterwards."""
        for lane in list(self._loop_lanes.values()):
            lane.close()
        self._lane.close()
        self._nowait_lane.close()
        if self._unsynced_lane is not None:
            self._unsynced_lane.close()
        self._engines.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _on_hot_tx(work: Callable[[HotTx], T], prepared: PreparedHot) -> Callable[[FastBatch], T]:
    return lambda batch: work(HotTx(batch, prepared))


def migrate(store: Store) -> None:
    """Upgrade ``store`` to the newest schema (what ``farthing issuer init`` runs)."""
    store.migrate()


def open_store(target: str, *, create: bool = True, clock: Clock | None = None) -> Store:
    """Open the store at ``target``: a filesystem path (SQLite) or a ``postgresql://`` DSN.

    ``create=True`` creates or upgrades the schema to the newest revision. With
    ``create=False`` the store must exist at the newest revision, else LocalProtocolError.
    ``clock`` stamps ``created_at`` columns (default: the system clock).
    """
    if not create and not is_postgres_target(target) and not _sqlite_file_exists(target):
        raise LocalProtocolError("no store at this path")
    store = Store(make_engines(target_url(target)), clock=clock or SystemClock())
    try:
        if create:
            store.migrate()
        elif not store.schema_is_current():
            raise LocalProtocolError(
                "the store's schema is not current; run `farthing issuer init`"
            )
    except BaseException:
        store.close()
        raise
    return store


def _sqlite_file_exists(target: str) -> bool:
    database = target_url(target).database
    return database is not None and Path(database).is_file()
