"""``/healthz`` and ``/readyz`` on the issuer and the vendor, served by uvicorn over
loopback, while their PostgreSQL store goes away and comes back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from farthing.store import upgrade_to_head
from tests.pgserver import PgServer
from tests.servers import uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")


def _ready(base: str) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{base}/readyz", timeout=30)
    return response.status_code, response.json()


def _wait_for(base: str, status: int, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        got, body = _ready(base)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        time.sleep(0.2)


def _outage(base: str, pg: PgServer) -> None:
    assert httpx.get(f"{base}/healthz", timeout=10).text == "ok"
    status, body = _ready(base)
    assert status == 200, body
    assert body["checks"] == {"store": "ok", "migrations": "ok", "keys": "ok"}
    pg.halt()
    body = _wait_for(base, 503)
    assert body["ready"] is False
    assert body["checks"]["store"] == "the store does not answer"  # type: ignore[index]
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # alive all the same
    pg.resume()
    body = _wait_for(base, 200)
    assert body["ready"] is True


def test_issuer_readyz_follows_its_database(own_pg: PgServer, key_file: Path) -> None:
    dsn = own_pg.create_database("issuer")
    upgrade_to_head(dsn)
    env = {"FARTHING_ISSUER_DB": dsn, "FARTHING_ISSUER_KEYS": str(key_file)}
    with uvicorn_server("farthing.issuer.app:app_from_env", env=env) as base:
        _outage(base, own_pg)


def test_vendor_readyz_follows_its_database(own_pg: PgServer, tmp_path: Path) -> None:
    from tests.paywall.test_uvicorn_workers import write_config

    dsn = own_pg.create_database("vendor")
    upgrade_to_head(dsn)
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('"vendor.sqlite"', f'"{dsn}"'))
    with uvicorn_server(
        "farthing.paywall.serve:app_from_env", env={"FARTHING_VENDOR_CONFIG": str(config)}
    ) as base:
        _outage(base, own_pg)


def test_readyz_says_when_the_schema_is_not_the_newest(tmp_path: Path, key_file: Path) -> None:
    """Another release's migration run under a running issuer (here: the version row
    changed by hand) makes it unready until the schema matches again."""
    db = tmp_path / "issuer.sqlite"
    upgrade_to_head(str(db))
    env = {"FARTHING_ISSUER_DB": str(db), "FARTHING_ISSUER_KEYS": str(key_file)}
    with uvicorn_server("farthing.issuer.app:app_from_env", env=env) as base:
        assert _ready(base)[0] == 200
        with sqlite3.connect(db) as conn:
            (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            conn.execute("UPDATE alembic_version SET version_num = 'older'")
        status, body = _ready(base)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (head,))
        again, _ = _ready(base)
    assert status == 503
    assert body["checks"] == {
        "store": "ok",
        "migrations": "the schema is not at the newest migration",
        "keys": "ok",
    }
    assert again == 200
