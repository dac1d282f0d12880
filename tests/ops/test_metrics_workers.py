"""A vendor served by ``farthing vendor serve --workers 2``: one scrape of its admin
listener counts the requests both worker processes answered (prometheus_client's
multiprocess mode), whichever worker holds the admin port."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.ops.test_metrics import parse, value
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("uvicorn")

REQUESTS = 40  # each on its own connection, several at once, so both workers answer some


def _unpaid(base: str) -> int:
    with httpx.Client(base_url=base, timeout=10) as own:  # a new connection each time
        return own.get("/articles/a.txt").status_code


def test_one_scrape_counts_the_requests_of_both_workers(tmp_path: Path) -> None:
    from tests.paywall.test_uvicorn_workers import write_config

    config = write_config(tmp_path)
    admin_port = free_port()
    config.write_text(f"admin_port = {admin_port}\n" + config.read_text())
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve", str(tmp_path),
        "--config", str(config), "--port", str(port), "--workers", "2",
    ]  # fmt: skip
    temporary = tmp_path / "tmp"  # where the server makes its metrics folder
    temporary.mkdir()
    env = {"TMPDIR": str(temporary)}
    with command_server(command, port, env=env, log_path=tmp_path / "vendor.log") as base:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(_unpaid, [base] * REQUESTS))
        scraped = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10)
        folders = list(temporary.glob("farthing-metrics-*"))
        assert len(folders) == 1
        assert list(folders[0].glob("*.db"))  # the workers' metric files
    assert not folders[0].exists()  # removed when the server stopped
    assert statuses == [402] * REQUESTS
    assert scraped.status_code == 200
    samples = parse(scraped.text)
    route = {"route": "/articles/*", "status": "402"}
    assert value(samples, "farthing_http_requests_total", **route) == REQUESTS
    seconds = value(samples, "farthing_http_request_seconds_count", route="/articles/*")
    assert seconds == REQUESTS
    assert value(samples, "farthing_store_scrape_ok") == 1
