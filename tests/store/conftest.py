"""The repository contract fixture: every test taking ``store`` runs on SQLite and PostgreSQL.

SQLite gets a copy of a file migrated once per session. PostgreSQL gets one migrated
database per test process (so per xdist worker), emptied before each test: CREATE
DATABASE costs ~0.4 s here, deleting every row ~15 ms. Tests that need a
database with no schema at all use ``fresh_pg_dsn`` (tests/conftest.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from farthing.store import Store, open_store, upgrade_to_head
from farthing.store._schema import metadata
from farthing.testing import FixedClock
from tests.pgserver import PgServer

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    upgrade_to_head(str(path))  # all connections closed: the WAL is checkpointed away
    return path


@pytest.fixture(scope="session")
def pg_contract_dsn(pg_server: PgServer) -> str:
    dsn = pg_server.create_database("farthing_contract")
    upgrade_to_head(dsn)
    return dsn


def _empty_all_tables(dsn: str) -> None:
    # DELETE beats TRUNCATE tenfold on tiny tables; ids keep counting (tests never rely on them).
    with psycopg.connect(dsn) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table.name)))


@pytest.fixture(params=BACKENDS)
def store_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty store: a SQLite file or a PostgreSQL DSN."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "store.sqlite"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return str(path)
    dsn: str = request.getfixturevalue("pg_contract_dsn")
    _empty_all_tables(dsn)
    return dsn


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_800_000_000)


@pytest.fixture
def store(store_target: str, clock: FixedClock) -> Iterator[Store]:
    opened = open_store(store_target, create=False, clock=clock)
    yield opened
    opened.close()
