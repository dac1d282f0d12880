"""What a stale card cache costs a paid request: two vendor workers, in one process.

With several workers each has its own card cache, and a card's next payment reaches any of
them: judged against the state that worker saw last, it fails, and is judged again after a
store read. Here two vendor apps (each what a uvicorn worker builds: its own cache, store
connections and writer) run in one process over one store, fed the same pre-generated
``szm:chain`` payments in-process (no sockets, no HTTP parser), one request at a time (or
from ``--clients`` concurrent clients, so that payments share batches as in a loaded worker):

- *one worker*: every payment to app A (its cache is always current);
- *two, stale*: a card's payments alternate between A and B, so every payment meets a
  stale cache (what two workers without affinity approach at worst);
- *two, affine*: each card always goes to the same app (as with session affinity).

CPU per request is the process's CPU time (all threads) over the requests.

    .venv/bin/python -m bench.stale [--requests 3000] [--stores sqlite,postgresql] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.e2e import PAID_PATH, Issuing, chain_lines, write_vendor
from bench.inproc import call
from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import app_from_config
from farthing.store import open_store

CARDS = 200  # payments of one card are CARDS lines apart
ROUNDS = 3


def _routes(kind: str, cards: int) -> Callable[[int], int]:
    """Which app line ``i`` goes to (line ``i`` pays card ``i % cards``)."""
    if kind == "one worker":
        return lambda _i: 0
    if kind == "two, stale":
        return lambda i: (i // cards) % 2
    return lambda i: (i % cards) % 2


async def _run(
    apps: list[Any], lines: list[str], route: Callable[[int], int], first: int, clients: int = 1
) -> float:
    """CPU seconds per request of ``lines`` sent by ``clients`` concurrent clients, each
    taking the next line when its last one was answered (a card's payments are CARDS lines
    apart, so never concurrent)."""
    todo = iter(enumerate(lines))

    async def client() -> None:
        for offset, line in todo:
            status = await call(apps[route(first + offset)], PAID_PATH, line)
            if status != 200:
                raise RuntimeError(f"request answered {status}")

    started = time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return (time.process_time() - started) / len(lines)


def measure(target: str, folder: Path, requests: int, clients: int = 1) -> dict[str, float]:
    vendor = write_vendor(folder, target, payword=False)
    store = open_store(target)
    try:
        config = load_vendor_config(vendor.config)
        issuing = Issuing(store=store, secret=vendor.challenge_secret)
        units = (ROUNDS * 3 + 1) * requests // CARDS + 2
        lines = chain_lines(issuing, CARDS, units)
    finally:
        store.close()
    kinds = ("one worker", "two, stale", "two, affine")

    async def main() -> dict[str, float]:
        apps = [app_from_config(config), app_from_config(config)]
        position = 0
        warm = 2 * CARDS  # both apps' caches hold every card
        await _run(apps, lines[:warm], _routes("two, affine", CARDS), 0)
        position = warm
        samples: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(ROUNDS):
            for kind in kinds:  # interleaved, so machine noise hits each alike
                chunk = lines[position : position + requests]
                route = _routes(kind, CARDS)
                samples[kind].append(await _run(apps, chunk, route, position, clients))
                position += requests
        return {kind: statistics.median(values) * 1e6 for kind, values in samples.items()}

    return asyncio.run(main())


def _targets(work: Path, names: list[str]) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        if "sqlite" in names:
            yield "SQLite", str(work / "vendor.sqlite")
        if "postgresql" in names:
            from tests.pgserver import PgServer

            pg = PgServer.start_new(fsync=True)
            stack.callback(pg.stop)
            yield "PostgreSQL", pg.create_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent in-process clients (1: one request at a time; more: the apps'"
        " writers batch payments as a loaded worker does)",
    )
    args = parser.parse_args()
    print("| store | one worker | two, stale | two, affine | stale cost |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in _targets(Path(tmp), args.stores.split(",")):
            folder = Path(tmp) / name
            folder.mkdir()
            us = measure(target, folder, args.requests, args.clients)
            print(
                f"| {name} | {us['one worker']:,.0f} us | {us['two, stale']:,.0f} us"
                f" | {us['two, affine']:,.0f} us"
                f" | {us['two, stale'] - us['one worker']:+,.0f} us |",
                flush=True,
            )


if __name__ == "__main__":
    main()
