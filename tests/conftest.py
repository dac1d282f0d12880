"""Fixtures shared by every test package: a throwaway PostgreSQL server.

- ``pg_server`` (session): one private server per test process (so per xdist worker),
  started on first use; the test is skipped only when no PostgreSQL binaries exist.
- ``pg_dsn`` (session): DSN of a database ``farthing`` on that server, for tests that
  manage their own schema.
- ``fresh_pg_dsn``: a new, empty database for one test, dropped afterwards.

Every test runs inside :func:`farthing.wallet.testing.cheap_wallet_kdf` (wallets with a cheap
Argon2id cost), except those marked ``real_kdf``, which see the production floor.

It also sets Hypothesis' defaults: no per-example deadline (speed is measured in
``bench/``, not in tests; a loaded CI machine would make deadlines flaky), and under
``CI`` (set by ``.ci/run``) derandomized examples, so a CI verdict is repeatable. And it
bounds, under ``CI``, how long a test process may take to exit once its tests are done
(see ``pytest_unconfigure``), so a hang at shutdown fails the run instead of stalling CI.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import settings

from farthing.wallet.testing import cheap_wallet_kdf
from tests.pgserver import PgServer, PgUnavailable

# Browser fixtures (``chromium``, ``page``) for tests of web pages.
pytest_plugins = ["tests.browser"]

_names = itertools.count(1)

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Seconds a test process may spend exiting after its last test (stopping its PostgreSQL
# server takes about one).
_EXIT_DEADLINE = 120


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Under CI, past this point nothing should block: if a leaked non-daemon thread or an
    exit handler does, print every thread's stack and exit non-zero instead of hanging.
    (Not elsewhere: a tool that runs pytest in its own process goes on living after it.)"""
    if os.environ.get("CI"):
        faulthandler.dump_traceback_later(_EXIT_DEADLINE, exit=True, file=sys.__stderr__)


@pytest.fixture(autouse=True)
def _cheap_wallet_kdf(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("real_kdf") is not None:
        yield
        return
    with cheap_wallet_kdf():
        yield


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
