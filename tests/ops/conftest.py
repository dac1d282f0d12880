"""Fixtures for the operators' view: issuer keys on disk, a private PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.issuer import IssuerKeys, generate_issuer_keys
from farthing.issuer.config import write_key_file
from farthing.testing import DeterministicRandom
from tests.pgserver import PgServer, PgUnavailable


@pytest.fixture(scope="session")
def ops_keys() -> IssuerKeys:
    return generate_issuer_keys(
        DeterministicRandom("ops keys"), broker_id="bank.test", bbs_bits=2048
    )


@pytest.fixture
def key_file(tmp_path: Path, ops_keys: IssuerKeys) -> Path:
    path = tmp_path / "issuer.keys.json"
    write_key_file(path, ops_keys)
    return path


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test alone: the test stops and starts it."""
    try:
        server = PgServer.start_new()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
