"""The Alembic migrations produce exactly the metadata, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect

from farthing.core.errors import LocalProtocolError
from farthing.store import head_revision, open_store, upgrade_to_head
from farthing.store._engine import make_engines, target_url
from farthing.store._migrate import current_revision
from farthing.store._schema import metadata
from tests.store.conftest import BACKENDS
from tests.store.helpers import raw_engine


@pytest.fixture(params=BACKENDS)
def empty_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A target with no schema at all."""
    if request.param == "sqlite":
        yield str(tmp_path / "empty.sqlite")
    else:
        yield request.getfixturevalue("fresh_pg_dsn")


def test_upgrade_yields_exactly_the_metadata(empty_target: str) -> None:
    upgrade_to_head(empty_target)
    engine = raw_engine(empty_target)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert tables == set(metadata.tables) | {"alembic_version"}


def test_check_constraints_are_migrated(empty_target: str) -> None:
    # compare_metadata does not look at CHECK constraints; compare their names here.
    upgrade_to_head(empty_target)
    engine = raw_engine(empty_target)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            for table in metadata.sorted_tables:
                expected = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
                found = {c["name"] for c in inspector.get_check_constraints(table.name)}
                assert found == expected, table.name
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(empty_target: str) -> None:
    upgrade_to_head(empty_target)
    upgrade_to_head(empty_target)
    engine = raw_engine(empty_target)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_open_without_create_refuses_an_unmigrated_store(empty_target: str) -> None:
    if empty_target.endswith(".sqlite"):
        with pytest.raises(LocalProtocolError):
            open_store(empty_target, create=False)
        assert not Path(empty_target).exists()  # and did not create the file
        Path(empty_target).touch()
    with pytest.raises(LocalProtocolError):
        open_store(empty_target, create=False)
    with open_store(empty_target) as store:
        assert store.schema_is_current()


def test_upgrade_works_from_any_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.sqlite"
    program = "import sys; from farthing.store import upgrade_to_head; upgrade_to_head(sys.argv[1])"
    subprocess.run([sys.executable, "-c", program, str(target)], cwd="/", check=True)
    with open_store(str(target), create=False) as store:
        assert store.schema_is_current()


def test_szm_tables_hold_no_buyer_identity(store_target: str) -> None:
    engine = raw_engine(store_target)
    try:
        inspector = inspect(engine)
        for table in ("szm_batches", "szm_cards", "szm_recognised"):
            for column in inspector.get_columns(table):
                name = column["name"].lower()
                for word in ("buyer", "customer", "owner", "user", "email", "name", "account"):
                    assert word not in name, f"{table}.{column['name']}"
    finally:
        engine.dispose()


def test_sqlite_connections_are_durable_and_strict(tmp_path: Path) -> None:
    path = str(tmp_path / "pragmas.sqlite")
    upgrade_to_head(path)
    engines = make_engines(target_url(path))
    queries = {
        "PRAGMA journal_mode": "wal",
        "PRAGMA synchronous": 2,  # FULL
        "PRAGMA foreign_keys": 1,
        "PRAGMA busy_timeout": 10000,
    }
    try:
        with engines.write.connect() as conn:
            pooled = {q: conn.exec_driver_sql(q).scalar() for q in queries}
        fast = engines.fast_connect()
        try:
            lane = {q: fast.cursor().execute(q).fetchone()[0] for q in queries}
        finally:
            fast.close()
    finally:
        engines.dispose()
    assert pooled == queries
    assert lane == queries


def _can_begin_writing(path: str) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    finally:
        other.close()


def test_sqlite_write_transactions_take_the_write_lock_first(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: even a transaction that has only read holds off other writers,
    so no two transactions can deadlock upgrading read locks; read-only ones do not."""
    path = str(tmp_path / "lock.sqlite")
    upgrade_to_head(path)
    with open_store(path) as store:
        with store.transaction() as tx:
            assert tx.ledger.account(1) is None
            assert not _can_begin_writing(path)
        with store.transaction(readonly=True) as tx:
            assert tx.ledger.account(1) is None
            assert _can_begin_writing(path)
        assert _can_begin_writing(path)
