"""The vendor app driven in-process, as a server would call it: no sockets, no HTTP parser.

Shared by the benches that measure the paid path without a server (bench/paidcpu.py,
bench/profile.py, bench/stale.py): one ASGI request and its status, a pass of requests one
at a time, and a pass of ``CONCURRENT`` clients at once (payments then share commits, as
under load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.e2e import Issuing, VendorFolder, chain_lines, write_vendor
from farthing.store import Store, open_store

CONCURRENT: Final = 16

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Rig:
    """A vendor's folder (config, SQLite store) and the store, open for issuing cards."""

    folder: VendorFolder
    store: Store

    @property
    def issuing(self) -> Issuing:
        return Issuing(store=self.store, secret=self.folder.challenge_secret)

    def chain_pool(self, count: int, cards: int = 1000, units: int = 50) -> list[str]:
        """At least ``count`` single-use ``szm:chain`` credentials, ``cards`` cards at a
        time (consecutive lines pay different cards)."""
        pool: list[str] = []
        while len(pool) < count:
            pool += chain_lines(self.issuing, cards, units)
        return pool


@contextmanager
def sqlite_rig(work: Path, *, payword: bool = False) -> Iterator[Rig]:
    """A vendor folder in ``work`` on a fresh SQLite file (the bench's config: /articles/*
    priced, /free/* not), its store open until the block ends."""
    folder = write_vendor(work, str(work / "vendor.sqlite"), payword=payword)
    store = open_store(folder.database)
    try:
        yield Rig(folder, store)
    finally:
        store.close()


def scope(path: str, authorization: str | None) -> dict[str, Any]:
    """A GET of ``path`` as uvicorn builds its scope, with ``authorization`` if given."""
    headers = [(b"host", b"127.0.0.1"), (b"accept", b"*/*")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode("latin-1")))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


async def call(app: App, path: str, authorization: str | None) -> int:
    """One request through the app; its status. The client hangs up only after the whole
    response (a ``receive`` after the request waits for the last body message)."""
    status = 0
    requested = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif not message.get("more_body", False):
            finished.set()

    await app(scope(path, authorization), receive, send)
    return status


def _check(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"request answered {status}")


async def drive(app: App, path: str, lines: list[str | None]) -> float:
    """Wall seconds per request, one at a time over ``lines`` (each request's
    Authorization, or None)."""
    started = time.perf_counter()
    for line in lines:
        _check(await call(app, path, line))
    return (time.perf_counter() - started) / len(lines)


async def concurrent_pass(
    app: App, path: str, lines: list[str | None], latencies: list[float] | None = None
) -> float:
    """Process CPU seconds per request, ``CONCURRENT`` clients taking ``lines`` in order;
    each request's wall time goes to ``latencies`` (in line order) if given."""
    todo = iter(enumerate(lines))
    times = [0.0] * len(lines)

    async def client() -> None:
        for i, line in todo:
            started = time.perf_counter()
            status = await call(app, path, line)
            times[i] = time.perf_counter() - started
            _check(status)

    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(CONCURRENT)))
    if latencies is not None:
        latencies.extend(times)
    return (time.process_time() - cpu) / len(lines)


def per_call(fn: Callable[[], object], count: int, clock: Callable[[], float]) -> float:
    """Seconds of ``clock`` per call of ``fn``, over ``count`` calls."""
    started = clock()
    for _ in range(count):
        fn()
    return (clock() - started) / count
