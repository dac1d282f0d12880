"""Fixtures of the reliability tests: worlds (store, keys, accounts, vendor config) on SQLite
and on the throwaway PostgreSQL, and the anyio backend for in-process ASGI tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer
from tests.reliability.world import World, build_world

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
_names = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def store_target(request: pytest.FixtureRequest, backend: str, folder: Path) -> str:
    """A fresh SQLite file in ``folder`` or a fresh database on the session's PostgreSQL."""
    if backend == "sqlite":
        return str(folder / "farthing.sqlite")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database(f"reliability_{next(_names)}")


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path / "world", str(tmp_path / "farthing.sqlite"))
    yield world
    world.close()
