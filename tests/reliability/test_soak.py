"""A steady paid load against a 2-worker vendor on SQLite, for ten minutes (heavy).

``FARTHING_SOAK_SECONDS`` (default 600) sets the duration. Four clients pay round robin
with szm:chain, szm:prbg, payword and hll:mac (deferred; the vendor deposits in the
background every 30 s to an issuer on loopback), each paced to ``RATE / CLIENTS``
requests a second. Every 5 s the resident memory of each vendor worker is sampled.

Asserted: every payment answered 200 with the right article (no error, no lost answer);
each worker's mean RSS in the last window is under 1.5 times its mean in the first (a
window is a minute, or a quarter of a shorter run). Reported per minute: requests, p50
and p99 latency, RSS of each worker.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.load import Payer, Sent, guarded, percentile
from tests.reliability.procs import Server, issuer_server, rss_kib, vendor_server
from tests.reliability.world import World, build_world

SECONDS = float(os.environ.get("FARTHING_SOAK_SECONDS", "600"))
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.xdist_group("reliability-servers"),
    pytest.mark.timeout(SECONDS + 300),
]
RATE = 50.0  # paid requests per second, all clients together
CLIENTS = 4
SAMPLE_EVERY = 5.0
METHODS = ("szm:chain", "szm:prbg", "payword", "hll:mac")


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[World, Server]]:
    target = str(tmp_path / "farthing.sqlite")
    issuer = issuer_server(
        target, tmp_path / "issuer.keys.json", workers=1, log_path=tmp_path / "issuer.log"
    )
    world = build_world(
        tmp_path, target, hll_mode="deferred", issuer_url=issuer.base, deposit_interval=30
    )
    vendor = vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log")
    with issuer, vendor:
        yield world, vendor
    world.close()


def test_steady_load_has_no_errors_and_flat_memory(
    deployment: tuple[World, Server], tmp_path: Path
) -> None:
    world, vendor = deployment
    units = int(SECONDS * RATE / CLIENTS / len(METHODS) * 2 * 1.2) + 100
    payers = [Payer(world, vendor.base, METHODS, seed=n) for n in range(CLIENTS)]
    for payer in payers:
        payer.equip(units=units)
    workers = vendor.worker_pids()
    assert len(workers) == 2
    stop, errors = threading.Event(), []
    pace = CLIENTS / RATE
    jobs = [functools.partial(_drive, payer, pace=pace) for payer in payers]
    threads = [threading.Thread(target=guarded, args=(job, stop, errors)) for job in jobs]
    started = time.time()
    for thread in threads:
        thread.start()
    samples = _sample_memory(workers, started, stop)
    for thread in threads:
        thread.join(timeout=60)
    sent = [s for p in payers for s in p.sent]
    rows = _per_window(sent, samples, started, workers)
    (tmp_path / "soak.json").write_text(json.dumps(rows, indent=1))
    _print(rows, sent)
    assert errors == []
    assert [s for s in sent if s.outcome != "paid"] == []
    assert len(sent) > 0.5 * RATE * SECONDS, "the load was not steady"
    first, last = rows[0], rows[-1]
    for pid in workers:
        assert last["rss_mib"][str(pid)] < 1.5 * first["rss_mib"][str(pid)], rows


def _drive(payer: Payer, stop: threading.Event, *, pace: float) -> None:
    with httpx.Client(base_url=payer.base, timeout=30) as client:
        payer.run(client, stop, pace=pace)


def _sample_memory(
    workers: list[int], started: float, stop: threading.Event
) -> list[tuple[float, dict[int, int]]]:
    """RSS of each worker every few seconds until the duration is over; then stop the load."""
    samples = []
    while time.time() - started < SECONDS:
        time.sleep(SAMPLE_EVERY)
        samples.append((time.time(), {pid: rss_kib(pid) for pid in workers}))
        assert all(samples[-1][1].values()), "a vendor worker died"
    stop.set()
    return samples


def _window() -> float:
    return min(60.0, SECONDS / 4)


def _per_window(
    sent: list[Sent],
    samples: list[tuple[float, dict[int, int]]],
    started: float,
    workers: list[int],
) -> list[dict[str, object]]:
    window, rows = _window(), []
    count = max(1, int(SECONDS // window))
    for n in range(count):
        low, high = started + n * window, started + (n + 1) * window
        seconds = [s.seconds for s in sent if low <= s.at < high]
        memory = [m for at, m in samples if low <= at < high] or [samples[-1][1]]
        rss = {str(pid): sum(m[pid] for m in memory) / len(memory) / 1024 for pid in workers}
        rows.append(
            {
                "window": n,
                "requests": len(seconds),
                "p50_ms": round(1000 * percentile(seconds, 0.50), 2),
                "p99_ms": round(1000 * percentile(seconds, 0.99), 2),
                "rss_mib": {pid: round(value, 1) for pid, value in rss.items()},
            }
        )
    return rows


def _print(rows: list[dict[str, object]], sent: list[Sent]) -> None:
    print(f"\nsoak: {SECONDS:.0f} s, {len(sent)} payments, window {_window():.0f} s")
    for row in rows:
        print(  # the numbers docs/reliability.md reports (pytest -s)
            f"  window {row['window']}: {row['requests']} requests, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms, RSS {row['rss_mib']} MiB"
        )
