"""Fixtures shared by every test package: a throwaway PostgreSQL server.

- ``pg_server`` (session): one private server per test process (so per xdist worker),
  started on first use; the test is skipped only when no PostgreSQL binaries exist.
- ``pg_dsn`` (session): DSN of a database ``farthing`` on that server, for tests that
  manage their own schema.
- ``fresh_pg_dsn``: a new, empty database for one test, dropped afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.pgserver import PgServer, PgUnavailable

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer.start_new()
    except PgUnavailable as exc:
        pytest.skip(f"{exc}; `make sysdeps` installs PostgreSQL")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PgServer) -> str:
    return pg_server.create_database("farthing")


@pytest.fixture
def fresh_pg_dsn(pg_server: PgServer) -> Iterator[str]:
    name = f"fresh_{next(_names)}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)
