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
has broken them all); the next call connects afresh. A failed write is not retried here:
its outcome may be unknown, and the caller decides.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from farthing.store._errors import is_busy

__all__ = ["FastBatch", "FastLane", "FastStatement"]

_KEEP_IDLE: Final = 8


@dataclass(frozen=True, slots=True)
class FastStatement:
    """A Core statement compiled once for one dialect."""

    compiled: SQLCompiler
    sql: str
    order: tuple[str, ...] | None

    @classmethod
    def prepare(cls, statement: ClauseElement, dialect: Dialect) -> FastStatement:
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError("only SQL statements run on the fast lane")
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return cls(compiled=compiled, sql=compiled.string, order=order)

    def bind(self, params: Mapping[str, object]) -> tuple[object, ...] | dict[str, Any]:
        """Driver parameters: the statement's constants plus ``params``, in its paramstyle."""
        values = self.compiled.construct_params(dict(params))
        if values is None:
            raise ValueError("statement takes no parameters")
        if self.order is None:
            return dict(values)
        return tuple(values[name] for name in self.order)


class FastBatch:
    """The statements of one :meth:`FastLane.batch` transaction, on its connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: DBAPIConnection) -> None:
        self._connection = connection

    def rowcount(self, statement: FastStatement, params: Mapping[str, object]) -> int:
        """Execute a write inside the batch; return the number of rows it changed."""
        count: int = _execute(self._connection, statement, params, fetch=False)
        return count


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
        connection = self._checkout()
        try:
            result = _execute(connection, statement, params, fetch=True)
        except BaseException:
            self._discard(connection)
            raise
        self._checkin(connection)
        return result

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


def _execute(
    connection: DBAPIConnection,
    statement: FastStatement,
    params: Mapping[str, object],
    fetch: bool,
) -> Any:
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


def _recovered(connection: DBAPIConnection, began: bool, error: BaseException) -> bool:
    """After a failed batch: is the connection back outside any transaction, sound?"""
    if not began:
        return is_busy(error)  # refused the lock, nothing started
    try:
        _control(connection, "ROLLBACK")
    except Exception:
        return False
    return True
