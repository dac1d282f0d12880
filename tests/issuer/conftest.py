"""Fixtures for the issuer: keys, a store on SQLite or PostgreSQL, the app in-process.

``harness`` is an issuer app over a fresh migrated store (a SQLite file copied from a
template migrated once per session, or the session's PostgreSQL database emptied),
with a fixed clock, deterministic randomness, rate limits off, and one operator token.
Requests go through ``httpx.ASGITransport``: no sockets, no ports.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from farthing.issuer import (
    IssuerConfig,
    IssuerKeys,
    RateLimits,
    build_services,
    generate_issuer_keys,
    issuer_app,
)
from farthing.store import open_store, upgrade_to_head
from farthing.testing import DeterministicRandom, FixedClock
from tests.issuer.helpers import Harness
from tests.pgserver import PgServer

_names = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def issuer_keys() -> IssuerKeys:
    return generate_issuer_keys(
        DeterministicRandom("issuer keys"), broker_id="bank.test", bbs_bits=2048
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "issuer.sqlite"
    upgrade_to_head(str(path))
    return path


@pytest.fixture(scope="session")
def issuer_pg_dsn(pg_server: PgServer) -> str:
    """One migrated database for the session; each test empties it first (TRUNCATE is
    several times faster than CREATE DATABASE ... TEMPLATE)."""
    dsn = pg_server.create_database(f"issuer_{next(_names)}")
    upgrade_to_head(dsn)
    return dsn


def _empty_pg(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        ).fetchall()
        tables = sql.SQL(", ").join(sql.Identifier(name) for (name,) in rows)
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables))


@pytest.fixture
def store_target(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A migrated, empty store: a SQLite file, or a PostgreSQL DSN where a module asks for
    both backends (``pytest.mark.parametrize("store_target", BACKENDS, indirect=True)``)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        path = tmp_path / "issuer.sqlite"
        shutil.copy(sqlite_template, path)
        yield str(path)
        return
    dsn: str = request.getfixturevalue("issuer_pg_dsn")
    _empty_pg(dsn)
    yield dsn


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_800_000_000)


@pytest.fixture
def harness(store_target: str, issuer_keys: IssuerKeys, clock: FixedClock) -> Iterator[Harness]:
    store = open_store(store_target, create=False, clock=clock)
    rng = DeterministicRandom(f"issuer {store_target}")
    config = IssuerConfig(
        keys=issuer_keys, currencies=("EUR", "USD"), rate_limits=RateLimits(enabled=False)
    )
    services = build_services(config, store, clock=clock, rng=rng)
    app = issuer_app(services)
    token = services.accounts.create_operator_token("test", "alice").token
    yield Harness(
        target=store_target,
        store=store,
        clock=clock,
        rng=rng,
        config=config,
        app=app,
        services=services,
        token=token,
    )
    store.close()


@pytest.fixture
async def api(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """An operator's HTTP client of the harness app."""
    transport = httpx.ASGITransport(app=harness.app)
    headers = {"Authorization": f"Bearer {harness.token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://issuer.test", headers=headers
    ) as client:
        yield client
