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
transaction; on PostgreSQL one round trip, no BEGIN/COMMIT). On PostgreSQL the hot batch
of an event loop runs on one psycopg ``AsyncConnection`` of that loop, which holds one of
the ``lane_size`` slots while it is open (see _fastlane.AsyncFastLane).

Connections (PostgreSQL)
    A process opens at most ``pool_size`` pooled connections (no overflow) plus ``lane_size``
    hot-path ones: 8 + 3 = 11 by default. Every worker process of a vendor or issuer has its
    own, so a deployment needs ``sum over processes of (pool_size + lane_size)`` below the
    server's ``max_connections`` minus its reserved slots (see docs/storage.md). Both
    are set per DSN with query parameters the driver never sees:
    ``postgresql://.../farthing?pool_size=4&lane_size=2&pool_timeout=5``. A request that
    finds no free connection within ``pool_timeout`` seconds, or that the server refuses
    ("too many clients"), fails with Unavailable: a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["Engines", "PoolLimits", "is_postgres_target", "make_engines", "target_url"]

_BUSY_TIMEOUT_S: Final = 10
_READONLY_OPTION: Final = "farthing_readonly"
_PG_PREFIXES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")
WAL_SIZE_LIMIT = 256 * 2**20
"""Bytes the ``-wal`` file is cut back to by the first commit after the WAL starts again
(SQLite's ``journal_size_limit``, set on every connection; without it the file keeps the
size of the most frames it ever held). Above the ~165 MB that 5 s of this machine's peak
leave between two checkpoints (``_walsync.CHECKPOINT_EVERY``): the cut runs on the
connection that restarts the WAL, the event loop's, and cutting ~100 MB took 22-29 ms
here, so it is kept for the WAL a long reader let grow (see _walsync)."""
_SQLITE_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",  # the same 10 s as the driver's timeout above
)


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """How many connections one process may hold, and how long a request waits for one."""

    pool_size: int = 8
    """Pooled (SQLAlchemy) connections: transactions."""
    lane_size: int = 3
    """Hot-path driver connections (see _fastlane)."""
    pool_timeout: float = 5.0
    """Seconds a request waits for a free connection before it is refused (503)."""

    @property
    def per_process(self) -> int:
        return self.pool_size + self.lane_size


_DEFAULT_LIMITS: Final = PoolLimits()
_LIMIT_PARAMS: Final = ("pool_size", "lane_size", "pool_timeout")
_SQLITE_LIMITS: Final = PoolLimits(pool_size=8, lane_size=16, pool_timeout=30.0)


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
    unsynced_connect: Callable[[], DBAPIConnection] | None = None
    """SQLite: the nowait connection with ``synchronous=NORMAL``: its commits are durable
    only once the WAL file is fsynced (the event loop's hot batches, see _walsync)."""
    database: Path | None = None
    """SQLite: the database file."""
    limits: PoolLimits = field(default_factory=PoolLimits)
    async_connect: Callable[[], Awaitable[Any]] | None = None
    """PostgreSQL: a new async driver connection in autocommit mode (the hot batch on the
    event loop, see _fastlane.AsyncFastLane)."""

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
    url, limits = pool_limits(url)
    return _postgres_engines(url, limits)


def pool_limits(url: URL) -> tuple[URL, PoolLimits]:
    """The DSN without farthing's pool parameters, and the limits they set."""
    query = url.query
    if "loop_reads" in query:  # session 6's opt-in, removed in session 7 (docs/storage.md)
        raise ValueError("loop_reads is no longer a store option; remove it from the DSN")
    given = {name: query[name] for name in _LIMIT_PARAMS if name in query}
    try:
        limits = PoolLimits(
            pool_size=int(_one(given.get("pool_size", _DEFAULT_LIMITS.pool_size))),
            lane_size=int(_one(given.get("lane_size", _DEFAULT_LIMITS.lane_size))),
            pool_timeout=float(_one(given.get("pool_timeout", _DEFAULT_LIMITS.pool_timeout))),
        )
    except ValueError:
        raise ValueError("pool_size, lane_size and pool_timeout must be numbers") from None
    if limits.pool_size < 1 or limits.lane_size < 1 or limits.pool_timeout <= 0:
        raise ValueError("pool_size and lane_size must be at least 1, pool_timeout above 0")
    return url.difference_update_query(_LIMIT_PARAMS), limits


def _one(value: object) -> str:
    """A query parameter's value (the last one, if it was given more than once)."""
    if isinstance(value, tuple):
        return str(value[-1])
    return str(value)


def _postgres_engines(url: URL, limits: PoolLimits) -> Engines:
    engine = create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_size=limits.pool_size,
        max_overflow=0,
        pool_timeout=limits.pool_timeout,
    )
    return Engines(
        write=engine,
        read=engine,
        serializable=engine.execution_options(isolation_level="SERIALIZABLE"),
        fast_connect=_driver_connect(engine, {"autocommit": True}, _no_setup),
        limits=limits,
        async_connect=_async_driver_connect(engine),
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
        unsynced_connect=_driver_connect(
            engine, {**connect_args, "timeout": 0}, _sqlite_nowait_unsynced
        ),
        database=Path(url.database or "").resolve(),  # as SQLite names its -wal
        limits=_SQLITE_LIMITS,
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


def _async_driver_connect(engine: Engine) -> Callable[[], Awaitable[Any]]:
    """The same for psycopg's ``AsyncConnection`` (PostgreSQL only)."""
    import psycopg

    cargs, cparams = engine.dialect.create_connect_args(engine.url)

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(*cargs, **{**cparams, "autocommit": True})

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
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    finally:
        cursor.close()


def _sqlite_nowait(dbapi_connection: DBAPIConnection) -> None:
    _sqlite_setup(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
    finally:
        cursor.close()


def _sqlite_nowait_unsynced(dbapi_connection: DBAPIConnection) -> None:
    """The loop's connection: its commit writes the WAL frames without the fsync, which
    the writer does on a thread before it answers (see _walsync for why that is FULL's
    durability)."""
    _sqlite_nowait(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Its commits never checkpoint (two syncs and the copying, on the loop): the
        # writer's checkpoint thread does (_walsync.Checkpointer).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    readonly = connection.get_execution_options().get(_READONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
