"""The bank alone: online HLL verifications per second and CPU per verification.

Run: ``python -m bench.bank [--count N] [--backend sqlite|postgresql] [--no-loopback]
[--write]`` (``make bench`` runs :func:`section`, SQLite, and writes docs/benchmarks.md).

Two measurements of the same work, each purchase verified once (every one valid):

- *in-process*: the ``POST /v1/hll/verify`` handler's two steps without HTTP, as the route
  runs them: :meth:`HllService.check_online` (merchant tag, decode, the card's MAC), then
  :meth:`HllService.settle_online` through the issuer's :class:`StoreWriter` (group commit:
  the settlements that arrive together share one durable commit, on SQLite made on the
  event loop and answered after the fsync thread's fsync of the WAL file), 16 at a time on
  one event loop. CPU is this process's (``time.process_time``, its threads included).
- *loopback*: the issuer app under uvicorn (1 worker, as ``farthing issuer serve`` runs
  it), called by the vendor's own bank client (:class:`IssuerClient`, one keep-alive pool)
  with 16 verifications in flight, each in a call of its own (``POST /v1/hll/verify``,
  ``coalesce=False``). CPU per verification of the bank's process (``/proc``), and
  of this process, which does what a vendor does per online purchase (sign the request,
  one HTTP call, read the answer).
- *loopback batched*: the same, with the client as a vendor runs it (the default): the
  verifications asked for together go in one ``POST /v1/hll/verify-batch`` call.

The SQLite file uses the store's production settings (WAL, ``synchronous=FULL``).
Goal (issue 17): the bank's CPU per verification < 300 us and >= 2,000 verifications/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.pgserver import PgServer

from bench import e2e
from bench.report import machine_line, write_section
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.issuer_client import IssuerClient
from farthing.http.issuer_wire import verify_request_tag
from farthing.store.writer import StoreWriter
from farthing.testing.hll import SoftwareCard

EUR: Final = Denomination(currency="EUR", unit_micros=1000)
IN_FLIGHT: Final = 16
PER_CARD: Final = 50
GOAL_CPU_US: Final = 300
GOAL_RATE: Final = 2_000


@dataclass(frozen=True, slots=True)
class BankRun:
    how: str
    backend: str
    count: int
    wall_s: float
    bank_cpu_s: float
    client_cpu_s: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.wall_s

    @property
    def bank_us(self) -> float:
        return self.bank_cpu_s / self.count * 1e6

    @property
    def client_us(self) -> float | None:
        return None if self.client_cpu_s is None else self.client_cpu_s / self.count * 1e6

    def goal(self) -> str:
        misses = []
        if self.bank_us >= GOAL_CPU_US:
            cause = (
                "the HTTP server (uvicorn, httptools on uvloop) and the issuer's ASGI "
                "layers around it, and commits shared by fewer verifications"
                if self.how.startswith("loopback")
                else "verification and settlement"
            )
            misses.append(f"CPU {self.bank_us:,.0f} us >= {GOAL_CPU_US} ({cause})")
        if self.rate < GOAL_RATE:
            bound = 1e6 / self.bank_us
            cause = (
                f"its own CPU allows {bound:,.0f}/s: waits for the fsync and the machine's "
                "other load"
                if bound >= GOAL_RATE
                else "its CPU per verification"
            )
            misses.append(f"{self.rate:,.0f}/s < {GOAL_RATE:,} ({cause})")
        return "met" if not misses else "missed: " + "; ".join(misses)

    def line(self) -> str:
        client = "" if self.client_us is None else f"  vendor side {self.client_us:,.0f} us CPU"
        return (
            f"bank {self.how:<16} {self.backend:<10} {self.count:>6} verifications"
            f"  {self.rate:>7,.0f}/s  {self.bank_us:>6,.0f} us CPU each{client}  {self.goal()}"
        )


@contextmanager
def _target(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield str(Path(directory) / "bank.sqlite")
        return
    with PgServer.start_new() as server:
        yield server.create_database()


def _purchases(bank: e2e.BankSide, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` encoded (offer, payment) pairs on fresh cards, valid for five minutes."""
    cards: list[SoftwareCard] = bank.new_cards(-(-count // PER_CARD), PER_CARD)
    now = int(time.time())
    rng = os.urandom
    out = []
    for i in range(count):
        offer = hll.make_offer(
            merchant_id=bank.merchant_id,
            good="/articles/a.txt",
            amount=1,
            denomination=EUR,
            rng=rng,
            now=now,
            ttl=300,
        )
        purchase = cards[i // PER_CARD].purchase(offer, now)
        out.append((hll.encode_offer(offer), hll.encode_payment(purchase)))
    # Interleave the cards, as many customers' purchases arrive.
    return [out[i] for j in range(PER_CARD) for i in range(j, count, PER_CARD)]


async def _in_flight(count: int, one: object) -> None:
    """Run ``one(i)`` for i in range(count), IN_FLIGHT at a time."""
    assert callable(one)
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def in_process(backend: str, count: int) -> BankRun:
    with _target(backend) as target:
        keys = Path(tempfile.mkdtemp()) / "issuer.keys.json"
        e2e.write_issuer_keys(keys)
        bank = e2e.BankSide(target, keys)
        try:
            key, merchant = bank.merchant_key, bank.merchant_id
            requests = [
                (offer, payment, verify_request_tag(key, merchant, offer, payment))
                for offer, payment in _purchases(bank, count)
            ]
            service = bank.services.hll
            writer = StoreWriter(bank.store)

            async def verify(i: int) -> None:
                offer, payment, tag = requests[i]
                checked = service.check_online(bank.merchant_id, offer, payment, tag)
                spend = await writer.run_hot_in_order(
                    lambda hot: service.settle_online(hot, checked)
                )
                assert not spend.repeated

            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(_in_flight(count, verify))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            writer.close()
            return BankRun("in-process", backend, count, wall, cpu)
        finally:
            bank.close()


def loopback(backend: str, count: int, *, coalesce: bool = False) -> BankRun:
    with _target(backend) as target:
        work = Path(tempfile.mkdtemp())
        keys = work / "issuer.keys.json"
        e2e.write_issuer_keys(keys)
        bank = e2e.BankSide(target, keys)
        try:
            purchases = _purchases(bank, count)
            with e2e.uvicorn_server(
                e2e.ISSUER_FACTORY,
                bank.env(),
                workers=1,
                cpus=None,
                log=work / "bank-server.log",
                db_pids=list,
                ready_path=e2e.ISSUER_READY,
            ) as server:
                pids = server.pids()
                return asyncio.run(
                    _call_bank(server.base, bank, purchases, pids, backend, coalesce=coalesce)
                )
        finally:
            bank.close()


async def _call_bank(
    base: str,
    bank: e2e.BankSide,
    purchases: list[tuple[bytes, bytes]],
    pids: list[int],
    backend: str,
    *,
    coalesce: bool,
) -> BankRun:
    async with IssuerClient(
        base, merchant_id=bank.merchant_id, merchant_key=bank.merchant_key, coalesce=coalesce
    ) as client:

        async def verify(i: int) -> None:
            assert not await client.verify_online(*purchases[i])

        warm = min(200, len(purchases) // 10)
        await _in_flight(warm, verify)  # connections open, statements prepared
        rest = purchases[warm:]

        async def verify_rest(i: int) -> None:
            assert not await client.verify_online(*rest[i])

        before, mine = e2e.process_cpu(pids), time.process_time()
        wall = time.perf_counter()
        await _in_flight(len(rest), verify_rest)
        wall = time.perf_counter() - wall
        bank_cpu = e2e.cpu_delta(before, e2e.process_cpu(pids))
        how = "loopback batched" if coalesce else "loopback"
        return BankRun(how, backend, len(rest), wall, bank_cpu, time.process_time() - mine)


def render(runs: list[BankRun]) -> str:
    lines = [
        "The bank's online HLL verification alone (`python -m bench.bank`). *in-process*: "
        "`HllService.check_online` then `settle_online` through the issuer's group-commit "
        f"writer, {IN_FLIGHT} in flight, no HTTP; *loopback*: the issuer app under uvicorn "
        f"(1 worker) called by the vendor's bank client (`IssuerClient`, one keep-alive pool, "
        f"{IN_FLIGHT} in flight), one call per verification (`POST /v1/hll/verify`); "
        "*loopback batched*: the same client as a vendor runs it, which sends the "
        "verifications asked for together in one `POST /v1/hll/verify-batch` call. "
        "Every purchase valid, verified once, durable before its "
        "answer (SQLite WAL, `synchronous=FULL`). CPU per verification: the bank's process "
        "(in-process: the whole process); *vendor side*: the calling process (sign, one HTTP "
        f"call, read the answer). Goal: bank CPU < {GOAL_CPU_US} us per verification and "
        f">= {GOAL_RATE:,}/s.",
        "",
        "| how | store | verifications | per second | bank CPU (us each) | vendor side CPU "
        "(us each) | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        client = "-" if r.client_us is None else f"{r.client_us:,.0f}"
        lines.append(
            f"| {r.how} | {r.backend} | {r.count:,} | {r.rate:,.0f} | {r.bank_us:,.0f} | "
            f"{client} | {r.goal()} |"
        )
    return "\n".join(lines)


def section() -> None:
    """``make bench``'s bank section (SQLite), written into docs/benchmarks.md."""
    count = 2_000 if "--quick" in sys.argv else 6_000
    runs = [
        in_process("sqlite", count),
        loopback("sqlite", count),
        loopback("sqlite", count, coalesce=True),
    ]
    text = machine_line() + "\n\n" + render(runs)
    print(text)
    write_section("bank", "The bank alone: online HLL verification", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=6_000, help="verifications per run")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), action="append")
    parser.add_argument("--no-loopback", action="store_true", help="in-process only")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    runs = []
    for backend in args.backend or ("sqlite",):
        runs.append(in_process(backend, args.count))
        print(runs[-1].line(), flush=True)
        if not args.no_loopback:
            for coalesce in (False, True):
                runs.append(loopback(backend, args.count, coalesce=coalesce))
                print(runs[-1].line(), flush=True)
    if args.write:
        text = machine_line() + "\n\n" + render(runs)
        write_section("bank", "The bank alone: online HLL verification", text)
    else:
        print(render(runs), file=sys.stderr)


if __name__ == "__main__":
    main()
