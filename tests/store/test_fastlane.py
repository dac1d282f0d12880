"""The fast lane's batch: a busy write lock or a failing job is not a broken connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import column, table, update
from sqlalchemy.dialects import sqlite

from farthing.store._fastlane import FastLane, FastStatement

_T = table("t", column("k"), column("v"))
_SET = FastStatement.prepare(update(_T).values(v=1), sqlite.dialect())


class _Counting:
    """A connect function that counts the connections it made."""

    def __init__(self, path: Path) -> None:
        self.path, self.made = path, 0

    def __call__(self) -> sqlite3.Connection:
        self.made += 1
        return sqlite3.connect(self.path, isolation_level=None, timeout=0)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "t.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (k INTEGER, v INTEGER)")
        conn.execute("INSERT INTO t VALUES (1, 0)")
    return path


def test_a_busy_batch_keeps_its_connection(database: Path) -> None:
    connect = _Counting(database)
    lane = FastLane(connect, begin="BEGIN IMMEDIATE")
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError), lane.batch() as batch:
        batch.rowcount(_SET, {})
    other.execute("ROLLBACK")
    other.close()
    with lane.batch() as batch:
        assert batch.rowcount(_SET, {}) == 1
    assert connect.made == 1  # refused for a moment, not broken: reused
    lane.close()


def test_a_failing_job_rolls_back_and_keeps_the_connection(database: Path) -> None:
    connect = _Counting(database)
    lane = FastLane(connect, begin="BEGIN IMMEDIATE")

    def write_then_fail() -> None:
        with lane.batch() as batch:
            batch.rowcount(_SET, {})
            raise RuntimeError("a job failed")

    with pytest.raises(RuntimeError):
        write_then_fail()
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (0,)  # rolled back
    with lane.batch() as batch:
        assert batch.rowcount(_SET, {}) == 1
    assert connect.made == 1
    lane.close()


def test_a_broken_connection_is_dropped(database: Path) -> None:
    connect = _Counting(database)
    lane = FastLane(connect, begin="BEGIN IMMEDIATE")
    with lane.batch() as batch:
        batch.rowcount(_SET, {})
    broken = lane._checkout()  # the pooled connection, closed behind the lane's back
    broken.close()
    lane._checkin(broken)
    with pytest.raises(sqlite3.ProgrammingError), lane.batch():
        pass
    with lane.batch() as batch:
        assert batch.rowcount(_SET, {}) == 1
    assert connect.made == 2
    lane.close()


def test_the_lane_never_opens_more_than_max_open(database: Path) -> None:
    """A caller past ``max_open`` waits, then gets the pool's TimeoutError (a 503 upstream),
    and a slot freed by a failure is usable again."""
    from sqlalchemy import exc as sa_exc

    connect = _Counting(database)
    lane = FastLane(connect, begin="BEGIN", max_open=2, timeout=0.05)
    with lane.batch(), lane.batch(), pytest.raises(sa_exc.TimeoutError), lane.batch():
        pass
    with lane.batch() as batch:
        assert batch.rowcount(_SET, {}) == 1
    assert connect.made == 2
    lane.close()


def test_pool_limits_come_from_the_dsn_and_are_checked() -> None:
    from sqlalchemy import make_url

    from farthing.store._engine import PoolLimits, pool_limits

    url, limits = pool_limits(make_url("postgresql+psycopg://u@h/db?pool_size=4&lane_size=2"))
    assert (url.render_as_string(), limits) == (
        "postgresql+psycopg://u@h/db",
        PoolLimits(pool_size=4, lane_size=2, pool_timeout=5.0),
    )
    assert pool_limits(make_url("postgresql+psycopg://u@h/db"))[1].per_process == 11
    for bad in ("pool_size=0", "lane_size=x", "pool_timeout=-1"):
        with pytest.raises(ValueError):
            pool_limits(make_url(f"postgresql+psycopg://u@h/db?{bad}"))
    # the removed opt-in is named, not passed on to the driver (which fails less clearly)
    with pytest.raises(ValueError, match="loop_reads"):
        pool_limits(make_url("postgresql+psycopg://u@h/db?loop_reads=1"))
