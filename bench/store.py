"""The vendor's hot write alone: payments per second and CPU per payment, per store.

Each worker process opens the store, starts a :class:`~farthing.store.writer.StoreWriter`
and runs ``--tasks`` concurrent payers on one event loop; each payer pays its own cards one
unit at a time with the paywall's real write (``farthing.paywall.books._spend``: take the
challenge id, compare-and-set the card, group-committed, durable before it returns). No
HTTP, no verification: what is left is what the store and the writer cost a paid request.

Reported per store (SQLite WAL ``synchronous=FULL``; PostgreSQL ``fsync=on``,
``synchronous_commit=on`` over loopback) and per number of worker processes (1, 2):
payments per second, CPU of the worker processes per payment (all their threads; this does
not depend on the core count), PostgreSQL's CPU per payment, and jobs per commit.

    .venv/bin/python -m bench.store [--seconds 3] [--tasks 16] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.chaincards import card_id, issue_chain_batch
from farthing.http.payment_auth import ChallengeId
from farthing.paywall.books import _spend
from farthing.store import HotTx, SpendOutcome, Spent, SzmCardRow, open_store
from farthing.store.writer import StoreWriter

_BATCH = b"\x02" * 16
_UNITS = 1_000_000
_EXPIRES = 4_000_000_000
_NOW = 1_900_000_000


@dataclass(frozen=True, slots=True)
class WorkerResult:
    payments: int
    lost: int
    wall: float
    cpu: float
    commits: int


@dataclass(frozen=True, slots=True)
class Row:
    store: str
    workers: int
    rate: float
    cpu_us: float
    db_us: float | None
    per_commit: float
    lost: int


def _issue(target: str, count: int) -> None:
    with open_store(target) as store, store.transaction() as tx:
        issue_chain_batch(tx, _BATCH, count, units=_UNITS, expires_at=_EXPIRES, now=_NOW)


def _worker(
    target: str, first: int, tasks: int, seconds: float, start_at: float, work_us: int, out: object
) -> None:
    """One worker process: ``tasks`` payers, each on its own card, for ``seconds``."""
    result = asyncio.run(_pay(target, first, tasks, seconds, start_at, work_us))
    out.put(result)  # type: ignore[attr-defined]


def _busy(us: int) -> None:
    """Stand-in for the rest of a paid request (HTTP, verification): CPU on the loop, so
    that a writer thread must contend for the GIL as it does in a serving vendor."""
    end = time.thread_time() + us / 1e6
    while time.thread_time() < end:
        pass


async def _pay(
    target: str, first: int, tasks: int, seconds: float, start_at: float, work_us: int = 0
) -> WorkerResult:
    commits = 0

    def observe(_jobs: int, _seconds: float) -> None:
        nonlocal commits
        commits += 1

    store = open_store(target, create=False)
    on_loop = None if os.environ.get("BENCH_STORE_WRITER", "loop") == "loop" else False
    writer = StoreWriter(store, observe=observe, on_loop=on_loop)
    spent = [0] * tasks
    counts = {"won": 0, "lost": 0}
    ids = itertools.count(first << 32)
    timing = {"on": False}

    async def payer(slot: int) -> None:
        card = card_id(first + slot)
        while True:
            if work_us:
                _busy(work_us)
                await asyncio.sleep(0)
            old = spent[slot]
            challenge = ChallengeId(raw=next(ids).to_bytes(32, "big"), expires=_EXPIRES)
            outcome = await writer.run_hot(_payment(card, old, challenge))
            if outcome.outcome is SpendOutcome.WON:
                spent[slot] = old + 1
                if timing["on"]:
                    counts["won"] += 1
            elif timing["on"]:
                counts["lost"] += 1

    runners = [asyncio.create_task(payer(slot)) for slot in range(tasks)]
    await asyncio.sleep(max(0.0, start_at - time.time()))  # warm up until every worker is in
    timing["on"] = True
    commits = 0
    cpu0, wall0 = _cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, wall1 = _cpu(), time.perf_counter()
    timing["on"] = False
    done = counts["won"]
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    await writer.aclose()
    store.close()
    return WorkerResult(done, counts["lost"], wall1 - wall0, cpu1 - cpu0, commits)


def _payment(card: bytes, old: int, challenge: ChallengeId) -> Callable[[HotTx], Spent[SzmCardRow]]:
    """The paywall's write for one payment of one unit (``books._spend``)."""

    def spend(hot: HotTx) -> Spent[SzmCardRow]:
        taken = (challenge.raw, challenge.expires, _NOW)
        return _spend(
            hot, _NOW, lambda: hot.szm.spend(card, old, old + 1, os.urandom(32), None, taken)
        )

    return spend


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each process still alive."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used in between by the processes alive at both ends."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def run_once(
    name: str,
    target: str,
    cards: range,
    workers: int,
    tasks: int,
    seconds: float,
    db_pids: Callable[[], list[int]],
    work_us: int = 0,
) -> Row:
    """One timed run of ``workers`` processes, each on its own ``tasks`` of ``cards``."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 2.0  # spawn, open, warm up
    processes = [
        context.Process(
            target=_worker,
            args=(target, cards.start + w * tasks, tasks, seconds, start_at, work_us, out),
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    time.sleep(max(0.0, start_at - time.time()))
    pids = db_pids()  # the workers' backends are connected by now
    db0 = _proc_cpu(pids)
    time.sleep(seconds)
    db1 = _proc_cpu(pids)
    results: list[WorkerResult] = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    payments = sum(r.payments for r in results)
    wall = statistics.mean(r.wall for r in results)
    return Row(
        store=name,
        workers=workers,
        rate=payments / wall,
        cpu_us=sum(r.cpu for r in results) / payments * 1e6 - work_us,
        db_us=_used(db0, db1) / payments * 1e6 if pids else None,
        per_commit=payments / max(1, sum(r.commits for r in results)),
        lost=sum(r.lost for r in results),
    )


def _stores(work: Path, names: list[str]) -> Iterator[tuple[str, str, Callable[[], list[int]]]]:
    with ExitStack() as stack:
        if "sqlite" in names:
            yield "SQLite", str(work / "vendor.sqlite"), list
        if "postgresql" in names:
            from tests.pgserver import PgServer

            pg = PgServer.start_new(fsync=True)
            stack.callback(pg.stop)
            dsn = pg.create_database()
            yield "PostgreSQL", dsn, lambda: _pg_pids(dsn)


def _pg_pids(dsn: str) -> list[int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return [int(row[0]) for row in conn.execute("SELECT pid FROM pg_stat_activity")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--work-us",
        type=int,
        default=0,
        help="CPU each payment spends on the loop besides the write (as HTTP and verification"
        " do in a vendor); reported CPU per payment excludes it",
    )
    parser.add_argument(
        "--writer",
        choices=("loop", "thread"),
        default="loop",
        help="loop: the writer's default (commits on the event loop); thread: every batch"
        " on the writer's thread (as PostgreSQL did before)",
    )
    args = parser.parse_args()
    os.environ["BENCH_STORE_WRITER"] = args.writer  # inherited by the spawned workers
    counts = [int(n) for n in args.workers.split(",")]
    print(
        "| store | workers | payments/s | worker CPU per payment | db CPU per payment"
        " | payments per commit | lost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, target, pids in _stores(Path(tmp), args.stores.split(",")):
            runs = [(r, w) for r in range(args.rounds) for w in counts]
            _issue(target, args.tasks * sum(w for _r, w in runs))
            first = 0
            for _round, workers in runs:
                cards = range(first, first + workers * args.tasks)
                first = cards.stop
                row = run_once(
                    name, target, cards, workers, args.tasks, args.seconds, pids, args.work_us
                )
                if True:
                    db = "-" if row.db_us is None else f"{row.db_us:,.0f} us"
                    print(
                        f"| {row.store} | {row.workers} | {row.rate:,.0f} | {row.cpu_us:,.0f} us"
                        f" | {db} | {row.per_commit:.1f} | {row.lost} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
