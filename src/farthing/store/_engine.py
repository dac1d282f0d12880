"""Engines for a store target: the one place that knows SQLite from PostgreSQL.

Everything dialect-specific is connection set-up, decided once here; repositories run the
same Core statements on both databases.

SQLite (the embedded default)
    WAL journal (readers never block the writer), ``synchronous=FULL`` (a commit is on
    disk before a response leaves), ``foreign_keys=ON``, ``busy_timeout`` 10 s. pysqlite's
    own transaction handling is switched off and write transactions open with
    ``BEGIN IMMEDIATE``: the write lock is taken up front, so two processes never deadlock
    upgrading a read lock, they queue on the busy timeout. Read-only transactions open
    with a plain (deferred) ``BEGIN``. SQLite allows one writer at a time, so every write
    transaction is already serializable.

PostgreSQL (``postgresql://`` DSNs, psycopg 3)
    READ COMMITTED; double spending is decided by conditional updates and unique keys,
    which need no retries there. Serializable transactions, when asked for, run at
    SERIALIZABLE and may fail with a retryable conflict.

Both: the hot path's driver connections run in autocommit (a lone UPDATE is its own
transaction; on PostgreSQL one round trip, no BEGIN/COMMIT).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["Engines", "is_postgres_target", "make_engines", "target_url"]

_BUSY_TIMEOUT_S: Final = 10
_READONLY_OPTION: Final = "farthing_readonly"
_PG_PREFIXES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")
_SQLITE_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",  # the same 10 s as the driver's timeout above
)


@dataclass(frozen=True, slots=True)
class Engines:
    """Views of one connection pool, each for one kind of unit of work."""

    write: Engine
    """Read-write transactions (SQLite: BEGIN IMMEDIATE)."""
    read: Engine
    """Read-only transactions (SQLite: deferred BEGIN)."""
    serializable: Engine
    """Transactions that read-then-write a predicate (PostgreSQL: SERIALIZABLE)."""
    fast_connect: Callable[[], DBAPIConnection]
    """A new driver connection in autocommit mode, for the hot path (see _fastlane)."""
    nowait_connect: Callable[[], DBAPIConnection] | None = None
    """SQLite: the same, but failing at once (busy) instead of waiting for the write lock."""

    def dispose(self) -> None:
        self.write.dispose()


def is_postgres_target(target: str) -> bool:
    return target.startswith(_PG_PREFIXES)


def target_url(target: str) -> URL:
    """The SQLAlchemy URL for a filesystem path, ``sqlite:///`` URL or PostgreSQL DSN."""
    if is_postgres_target(target):
        return make_url(target).set(drivername="postgresql+psycopg")
    if target.startswith("sqlite"):
        url = make_url(target)
        if not url.database or url.database == ":memory:":
            raise ValueError("the store needs a file; an in-memory SQLite database is not shared")
        return url.set(drivername="sqlite+pysqlite")
    if not target or target == ":memory:":
        raise ValueError("the store needs a file path or a postgresql:// DSN")
    return URL.create("sqlite+pysqlite", database=str(Path(target)))


def make_engines(url: URL) -> Engines:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engines(url)
    return _postgres_engines(url)


def _postgres_engines(url: URL) -> Engines:
    engine = create_engine(url, isolation_level="READ COMMITTED", pool_size=8, max_overflow=16)
    return Engines(
        write=engine,
        read=engine,
        serializable=engine.execution_options(isolation_level="SERIALIZABLE"),
        fast_connect=_driver_connect(engine, {"autocommit": True}, _no_setup),
    )


def _sqlite_engines(url: URL) -> Engines:
    connect_args = {"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False}
    engine = create_engine(url, connect_args=connect_args, pool_size=8, max_overflow=16)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return Engines(
        write=engine,
        read=engine.execution_options(**{_READONLY_OPTION: True}),
        serializable=engine,
        fast_connect=_driver_connect(engine, connect_args, _sqlite_setup),
        nowait_connect=_driver_connect(engine, {**connect_args, "timeout": 0}, _sqlite_nowait),
    )


def _driver_connect(
    engine: Engine,
    extra: Mapping[str, object],
    setup: Callable[[DBAPIConnection], None],
) -> Callable[[], DBAPIConnection]:
    """A factory of driver connections with the engine's own connect arguments."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    dbapi = engine.dialect.loaded_dbapi

    def connect() -> DBAPIConnection:
        connection: DBAPIConnection = dbapi.connect(*cargs, **{**cparams, **extra})
        setup(connection)
        return connection

    return connect


def _no_setup(_connection: DBAPIConnection) -> None:
    return None


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    _sqlite_setup(dbapi_connection)


def _sqlite_setup(dbapi_connection: DBAPIConnection) -> None:
    # Take transaction control away from pysqlite: the "begin" listener emits BEGIN, and
    # outside a transaction (the hot path) each statement commits on its own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_nowait(dbapi_connection: DBAPIConnection) -> None:
    _sqlite_setup(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    readonly = connection.get_execution_options().get(_READONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
