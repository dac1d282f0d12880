"""The vendor's hot path at driver level: prebuilt statements on autocommit connections.

A payment must cost one durable UPDATE and little else. Going through a SQLAlchemy
``Connection`` costs a pool checkout, a BEGIN, event dispatch, result set-up and a
COMMIT, several times the UPDATE itself on SQLite. So the few hot statements are
compiled once, by SQLAlchemy, for this store's dialect (no SQL is written by hand), and run
on a small private set of driver connections in autocommit mode: a lone read
(:meth:`FastLane.fetch_one`) is one round trip. The drivers keep the statement prepared
(sqlite3's statement cache; psycopg prepares server-side after a few executions).

:meth:`FastLane.batch` runs the writes as one transaction (BEGIN, the statements,
COMMIT; on SQLite ``BEGIN IMMEDIATE`` takes the write lock up front, waiting on the busy
timeout): the vendor's group commit, one durable commit for many payments.

Connections are reused LIFO from a queue shared by all threads, at most ``max_open`` at a
time (in use or idle): a caller waits ``timeout`` seconds for one, then gets SQLAlchemy's
pool ``TimeoutError`` (the store answers it as Unavailable, 503). When a statement raises,
that connection and every idle one are closed (the likely cause, a database restart,
has broken them all); the next call connects afresh. A read that found its connection
broken is run once more on a fresh one; a failed write is not retried here: its outcome may
be unknown, and the caller decides.

:class:`AsyncFastLane` (PostgreSQL) runs the same batches on one event loop's psycopg
``AsyncConnection`` s, so the vendor's loop commits without handing work to a thread. The
jobs of a batch stay plain functions (``hot.szm.advance(...)`` returns a bool): the loop
runs them in a greenlet (SQLAlchemy's ``greenlet_spawn``), and each statement suspends
that greenlet, not the loop, while it waits for the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import greenlet
from sqlalchemy import Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from farthing.store._errors import is_busy

__all__ = [
    "AsyncFastLane",
    "FastBatch",
    "FastLane",
    "FastStatement",
    "LaneBusy",
    "execute",
]

_KEEP_IDLE: Final = 8
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FastStatement:
    """A Core statement compiled once for one dialect."""

    compiled: SQLCompiler
    sql: str
    order: tuple[str, ...] | None
    constants: Mapping[str, object] | None = None
    """The values the statement holds itself, by parameter name (None: bound by
    SQLAlchemy's ``construct_params``, see :func:`_constants`)."""
    names: tuple[str, ...] = ()

    @classmethod
    def prepare(cls, statement: ClauseElement, dialect: Dialect) -> FastStatement:
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError("only SQL statements run on the fast lane")
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        names = tuple(dict.fromkeys(compiled.bind_names.values()))
        return cls(
            compiled=compiled,
            sql=compiled.string,
            order=order,
            constants=_constants(compiled),
            names=names,
        )

    def bind(self, params: Mapping[str, object]) -> tuple[object, ...] | dict[str, Any]:
        """Driver parameters: the statement's constants plus ``params``, in its paramstyle
        (what ``construct_params`` gives, without its walk over every parameter on each
        call: a fifth of a hot statement's CPU)."""
        constants = self.constants
        if constants is None:
            return self._construct(params)
        values = {**constants, **params} if constants else params
        try:
            if self.order is None:
                return {name: values[name] for name in self.names}
            return tuple([values[name] for name in self.order])
        except KeyError as missing:
            raise sa_exc.InvalidRequestError(f"a value is required for {missing}") from None

    def _construct(self, params: Mapping[str, object]) -> tuple[object, ...] | dict[str, Any]:
        values = self.compiled.construct_params(dict(params))
        if values is None:
            raise ValueError("statement takes no parameters")
        if self.order is None:
            return dict(values)
        return tuple(values[name] for name in self.order)


def _constants(compiled: SQLCompiler) -> dict[str, object] | None:
    """The statement's own parameter values (those given in the statement, not by the
    caller), by name; None where binding needs ``construct_params`` itself: escaped
    names, parameters rendered or expanded at execution, a value computed per call."""
    if compiled.escaped_bind_names or compiled.literal_execute_params:
        return None
    if compiled.post_compile_params:
        return None
    constants: dict[str, object] = {}
    for bind, name in compiled.bind_names.items():
        if bind.callable is not None or bind.expanding:
            return None
        if not bind.required:
            constants[name] = bind.value
    return constants


class FastBatch:
    """The statements of one :meth:`FastLane.batch` transaction, on its connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: DBAPIConnection) -> None:
        self._connection = connection

    def rowcount(self, statement: FastStatement, params: Mapping[str, object]) -> int:
        """Execute a write inside the batch; return the number of rows it changed."""
        count: int = execute(self._connection, statement, params, fetch=False)
        return count

    def fetch_one(
        self, statement: FastStatement, params: Mapping[str, object], *, final: bool = False
    ) -> dict[str, Any] | None:
        """Execute a statement inside the batch; return its first row (a dict), or None.

        ``final``: the job runs no statement after this one, so an async batch whose
        waiting jobs are all at their final statement sends COMMIT in the same round trip
        (a job that runs another statement after it then fails: RuntimeError)."""
        row: dict[str, Any] | None = execute(self._connection, statement, params, fetch=True)
        return row


class _PipedBatch(FastBatch):
    """One job's view of an :class:`AsyncFastLane` batch: each statement suspends the
    job's greenlet until the lane has sent it (with the other jobs' statements of the same
    round) and read its result."""

    __slots__ = ()

    def __init__(self) -> None:  # no connection of its own: the lane sends the statements
        pass

    def rowcount(self, statement: FastStatement, params: Mapping[str, object]) -> int:
        count: int = _suspend(_Statement(statement, params))
        return count

    def fetch_one(
        self, statement: FastStatement, params: Mapping[str, object], *, final: bool = False
    ) -> dict[str, Any] | None:
        row: dict[str, Any] | None = _suspend(_Statement(statement, params, True, final))
        return row


def _suspend(statement: _Statement) -> Any:
    parent = greenlet.getcurrent().parent
    if parent is None:
        raise RuntimeError("a piped batch's statements run only inside its jobs")
    return parent.switch(statement)


@dataclass(frozen=True, slots=True)
class _Statement:
    statement: FastStatement
    params: Mapping[str, object]
    fetch: bool = False  # the job wants the first row, not the row count
    final: bool = False  # the job's last statement (see FastBatch.fetch_one)


@dataclass(frozen=True, slots=True)
class _Finished:
    result: object


class FastLane:
    """Runs :class:`FastStatement` s on pooled autocommit driver connections.

    ``begin`` is the statement that opens a :meth:`batch` (SQLite: ``BEGIN IMMEDIATE``,
    so the write lock is taken up front, waiting on the busy timeout).
    """

    def __init__(
        self,
        connect: Callable[[], DBAPIConnection],
        *,
        begin: str = "BEGIN",
        max_open: int = _KEEP_IDLE,
        timeout: float = 30.0,
    ) -> None:
        self._connect = connect
        self._begin = begin
        self._idle: queue.LifoQueue[DBAPIConnection] = queue.LifoQueue()
        self._closed = False
        # A slot per connection in use; idle ones are only ever kept from a released slot,
        # so in use + idle never passes max_open.
        self._slots = threading.BoundedSemaphore(max_open)
        self._keep_idle = max_open
        self._timeout = timeout

    @property
    def max_open(self) -> int:
        return self._keep_idle

    def reserve(self) -> bool:
        """Take a slot without waiting, for a connection kept elsewhere (an async lane)."""
        return self._slots.acquire(blocking=False)

    def unreserve(self) -> None:
        self._slots.release()

    def _checkout(self) -> DBAPIConnection:
        if not self._slots.acquire(timeout=self._timeout):
            raise sa_exc.TimeoutError("no free hot-path connection")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        try:
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, connection: DBAPIConnection) -> None:
        if self._closed or self._idle.qsize() >= self._keep_idle:
            connection.close()
        else:
            self._idle.put(connection)
        self._slots.release()

    def _discard(self, connection: DBAPIConnection) -> None:
        """Close a connection that failed, and every idle one (likely broken alike)."""
        try:
            connection.close()
        finally:
            self._slots.release()
            self._close_idle()

    def _run(self, statement: FastStatement, params: Mapping[str, object]) -> Any:
        """A read. One that finds its (idle) connection broken, say by a database restart,
        is run once more on a fresh one: a read changes nothing, so trying again is safe."""
        for last_try in (False, True):
            connection = self._checkout()
            try:
                result = execute(connection, statement, params, fetch=True)
            except BaseException:
                self._discard(connection)
                if last_try or not _broken(connection):
                    raise
                continue
            self._checkin(connection)
            return result
        raise AssertionError("unreachable")  # the last try returned or raised

    def fetch_one(
        self, statement: FastStatement, params: Mapping[str, object]
    ) -> dict[str, Any] | None:
        """Execute a read; return the first row as a column -> value dict, or None."""
        row: dict[str, Any] | None = self._run(statement, params)
        return row

    @contextlib.contextmanager
    def batch(self) -> Iterator[FastBatch]:
        """One transaction: commit when the block ends (one durable commit), roll back and
        re-raise if it raises.

        A busy refusal at BEGIN, or a job that fails after a clean ROLLBACK, leaves the
        connection sound, so it goes back to the pool (the vendor's loop meets a busy lock
        often). Anything else drops it and every idle one, as :meth:`_run` does.
        """
        connection = self._checkout()
        began = False
        try:
            _control(connection, self._begin)
            began = True
            yield FastBatch(connection)
            _control(connection, "COMMIT")
        except BaseException as error:
            if _recovered(connection, began, error):
                self._checkin(connection)
            else:
                self._discard(connection)
            raise
        self._checkin(connection)

    def close(self) -> None:
        self._closed = True
        self._close_idle()

    def _close_idle(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def execute(
    connection: DBAPIConnection,
    statement: FastStatement,
    params: Mapping[str, object],
    fetch: bool,
) -> Any:
    """Execute ``statement`` on ``connection`` (in whatever transaction it is in): the rows
    it changed, or (``fetch``) its first row as a column -> value dict, or None."""
    cursor = connection.cursor()
    try:
        cursor.execute(statement.sql, statement.bind(params))
        if not fetch:
            return cursor.rowcount
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.description or ()], row, strict=True))
    finally:
        cursor.close()


def _control(connection: DBAPIConnection, statement: str) -> None:
    """A transaction-control statement (the connection is in autocommit mode)."""
    cursor = connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _broken(connection: DBAPIConnection) -> bool:
    """The driver gave the connection up (psycopg's ``broken``: the server closed it or
    the link failed); a statement that failed on a sound connection is not retried."""
    return bool(getattr(connection, "broken", False))


def _recovered(connection: DBAPIConnection, began: bool, error: BaseException) -> bool:
    """After a failed batch: is the connection back outside any transaction, sound?"""
    if not began:
        return is_busy(error)  # refused the lock, nothing started
    try:
        _control(connection, "ROLLBACK")
    except Exception:
        return False
    return True


class LaneBusy(Exception):
    """An async batch could not start without waiting (no free slot, or its connection is
    in use): nothing ran; the caller hands the batch to a thread, which may wait."""


class AsyncFastLane:
    """:meth:`FastLane.batch` on one async driver connection, for one event loop.

    The connection holds one slot of ``budget`` (the store's thread lane) for as long as
    it is open, so a process never holds more hot-path connections than ``lane_size``. It
    never waits: with no free slot, or its connection busy in another batch, a batch
    raises :class:`LaneBusy` at once. A connection that fails is closed, its slot given
    back, and the next batch connects afresh.
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], budget: FastLane) -> None:
        self._connect = connect
        self._budget = budget
        self._connection: Any = None
        self._busy = False
        self._keep = budget.max_open > 1

    async def _checkout(self) -> Any:
        if self._busy:
            raise LaneBusy()
        if self._connection is None:
            if not self._budget.reserve():
                raise LaneBusy()
            try:
                self._connection = await self._connect()
            except BaseException:
                self._budget.unreserve()
                raise
        self._busy = True
        return self._connection

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _finish(connection)
            self._budget.unreserve()

    async def run(self, jobs: Sequence[Callable[[FastBatch], T]]) -> list[T]:
        """Run ``jobs`` in one transaction and commit it (one durable commit); their results
        in order. If a job or a statement raises, everything is rolled back and the error
        re-raised.

        Each job runs in a greenlet of its own and stops at each of its statements; the
        lane sends the statements all jobs stopped at as one pipeline (one round trip:
        BEGIN and every job's first statement, then every job's second, ...), hands each
        job its row count and goes on, then sends COMMIT. The jobs' statements are thus
        interleaved, not run job after job: fine for the hot path's writes, which are
        each a conditional write (compare-and-set, insert-if-absent), never a read that a
        later write depends on.
        """
        connection = await self._checkout()
        try:
            try:
                async with connection.pipeline() as pipeline:
                    results = await _run_piped(connection, pipeline, jobs)
            except BaseException:
                if not await _arecovered(connection):
                    self._discard()
                raise
        finally:
            self._busy = False
            if not self._keep:
                self._discard()
        return results

    def close(self) -> None:
        """Close the connection (from any thread; a batch still running on it fails)."""
        self._discard()


def _finish(connection: Any) -> None:
    """Close an async connection without awaiting (from sync code, or a loop that ended)."""
    with contextlib.suppress(Exception):
        connection.pgconn.finish()


async def _run_piped(
    connection: Any, pipeline: Any, jobs: Sequence[Callable[[FastBatch], T]]
) -> list[T]:
    results: list[object] = [None] * len(jobs)
    waiting: dict[int, tuple[greenlet.greenlet, _Statement]] = {}
    batch = _PipedBatch()
    for index, job in enumerate(jobs):
        runner = greenlet.greenlet(lambda job=job: _Finished(job(batch)))
        _step(runner, runner.switch(), index, waiting, results)
    opened = committed = False
    while waiting:
        if committed:
            raise RuntimeError("a hot job ran a statement after its final one")
        if not opened:
            await connection.execute("BEGIN")
            opened = True
        sent = []
        for statement, group in _groups(waiting):
            fetch = waiting[group[0]][1].fetch
            cursor = connection.cursor(row_factory=_dict_row()) if fetch else connection.cursor()
            rows = [waiting[index][1].params for index in group]
            await cursor.executemany(
                statement.sql, [statement.bind(row) for row in rows], returning=True
            )
            sent.append((group, cursor, fetch))
        # Every job at its last statement: COMMIT goes in this round trip (a failing
        # statement aborts the transaction, and the COMMIT with it).
        if all(stmt.final for _runner, stmt in waiting.values()):
            await connection.execute("COMMIT")
            committed = True
        await pipeline.sync()
        for group, cursor, fetch in sent:
            for index in group:
                runner, _stmt = waiting.pop(index)
                answer = await cursor.fetchone() if fetch else cursor.rowcount
                _step(runner, runner.switch(answer), index, waiting, results)
                cursor.nextset()
    if opened and not committed:
        await connection.execute("COMMIT")
        await pipeline.sync()
    return results  # type: ignore[return-value]


def _groups(
    waiting: dict[int, tuple[greenlet.greenlet, _Statement]],
) -> list[tuple[FastStatement, list[int]]]:
    """The waiting jobs by the statement they wait at, in order (one ``executemany`` each:
    psycopg sends a statement's rows about a third cheaper so than one ``execute`` each)."""
    groups: dict[tuple[int, bool], tuple[FastStatement, list[int]]] = {}
    for index, (_runner, stmt) in waiting.items():
        groups.setdefault((id(stmt.statement), stmt.fetch), (stmt.statement, []))[1].append(index)
    return list(groups.values())


def _step(
    runner: greenlet.greenlet,
    out: object,
    index: int,
    waiting: dict[int, tuple[greenlet.greenlet, _Statement]],
    results: list[object],
) -> None:
    """Where a job stopped: at a statement (it waits for the next round), or done."""
    if isinstance(out, _Statement):
        waiting[index] = (runner, out)
    elif isinstance(out, _Finished):
        results[index] = out.result
    else:
        raise RuntimeError("a hot job switched greenlets by itself")


def _dict_row() -> Any:
    """psycopg's dict rows: the column names read from the result once (``description``
    builds a column object per column and row, a third of a small read's CPU)."""
    from psycopg.rows import dict_row  # PostgreSQL only: psycopg need not be installed

    return dict_row


async def _acontrol(connection: Any, statement: str) -> None:
    async with connection.cursor() as cursor:
        await cursor.execute(statement)


async def _arecovered(connection: Any) -> bool:
    try:
        await asyncio.shield(_acontrol(connection, "ROLLBACK"))
    except BaseException:
        return False
    return True
