"""CPU per paid request, and what each of the paywall's features costs of it, measured so
that other load on a shared machine does not decide the answer.

The vendor app as a uvicorn worker builds it (``vendor_from_config``: access log, paywall,
sales log, metrics; SQLite store), called in-process by 16 concurrent clients (so payments
share commits as under load), each request with its own pre-generated ``szm:chain``
credential. The figure is this process's CPU time (user + system, all threads) per
request, not wall time: waiting for the disk or for another process's turn on the core is
not counted. Each feature is switched off in turn, and the passes are interleaved (all,
without A, without B, ..., free; again), so slow and fast moments of the machine fall on
every variant alike; medians over the rounds.

Also here: what the draft's wire shape costs per paid request (the echoed challenge parsed
and checked, the single-use id taken, a fresh challenge in every paid answer), and why
PayWord's p99 at peak is several times the SZM methods' (its first payment under each new
commitment, timed apart from the others).

Run: ``python -m bench.paidcpu [--quick]`` (prints); ``python -m bench.profile`` puts its
tables in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.e2e import (
    FREE_PATH,
    OUT,
    PAID_PATH,
    REALM,
    payword_lines,
)
from bench.inproc import CONCURRENT, concurrent_pass, per_call, sqlite_rig
from farthing.core.encoding import b64url_decode
from farthing.core.primitives import hmac_sha256
from farthing.http.payment_auth import (
    ChallengeBinder,
    decode_json_b64,
    encode_json_b64,
    parse_credential,
)
from farthing.logs import LoopBufferedHandler
from farthing.paywall.app import VendorApps
from farthing.paywall.config import load_vendor_config
from farthing.paywall.sales import SalesRecorder
from farthing.paywall.serve import vendor_from_config
from farthing.store import SpendOutcome, Spent
from farthing.store._fastlane import FastStatement
from farthing.store._hot import HotArea

ROUNDS: Final = 5


# --- switching features off -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    where: str
    switch_off: Callable[[], Callable[[], None]]  # returns the function that restores it


def _fresh_off(vendor: VendorApps) -> Callable[[], None]:
    vendor.paywall._fresh = lambda *args: None  # type: ignore[method-assign, assignment]
    return lambda: vars(vendor.paywall).pop("_fresh", None)


def _single_use_off() -> Callable[[], None]:
    """The payment's write without the challenge id's INSERT: the compare-and-set alone
    (SQLite, as this bench runs)."""
    real = HotArea._spend

    def spend(
        self: HotArea,
        spend: Any,
        compare_and_set: FastStatement,
        params: dict[str, object],
        challenge: Any,
        read: Any,
        row_of: Any,
    ) -> Spent[Any]:
        moved = self._batch.rowcount(compare_and_set, params) == 1
        return Spent(SpendOutcome.WON if moved else SpendOutcome.LOST)

    HotArea._spend = spend  # type: ignore[method-assign]

    def restore() -> None:
        HotArea._spend = real  # type: ignore[method-assign]

    return restore


def _sales_recorder(vendor: VendorApps) -> SalesRecorder:
    for route in getattr(vendor.paywall.app, "routes", []):
        if isinstance(getattr(route, "app", None), SalesRecorder):
            found: SalesRecorder = route.app
            return found
    raise RuntimeError("the vendor keeps no sales log")


def _sales_off(vendor: VendorApps) -> Callable[[], None]:
    recorder = _sales_recorder(vendor)
    recorder._record = lambda *args: None  # type: ignore[method-assign]
    return lambda: vars(recorder).pop("_record", None)


def _quick_off(vendor: VendorApps) -> Callable[[], None]:
    paywall = vendor.paywall
    saved = paywall.quick
    paywall.quick = None

    def restore() -> None:
        paywall.quick = saved

    return restore


def _metrics_off(vendor: VendorApps) -> Callable[[], None]:
    paywall, access = vendor.paywall, vendor.app
    saved = paywall.metrics, access._metrics  # type: ignore[attr-defined]
    paywall.metrics, access._metrics = None, None  # type: ignore[attr-defined]

    def restore() -> None:
        paywall.metrics, access._metrics = saved  # type: ignore[attr-defined]

    return restore


@contextmanager
def access_log_on(path: Path, *, buffered: bool = True) -> Iterator[None]:
    """The access log as ``farthing vendor serve`` writes it by default (one line per
    request, the lines of one loop pass in one write), or with a write per line
    (``buffered=False``, as before); the benchmark servers run with ``--no-access-log``."""
    logger = logging.getLogger("farthing.access")
    stream = path.open("a")
    handler = LoopBufferedHandler(stream) if buffered else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, handlers, propagate = logger.level, logger.handlers, logger.propagate
    logger.setLevel(logging.INFO)
    logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.handlers, logger.propagate = handlers, propagate
        handler.close()
        stream.close()


def features(vendor: VendorApps) -> list[Feature]:
    return [
        Feature(
            "a fresh challenge in every paid answer (draft: ids are single use)",
            "`paywall/middleware.py Paywall._fresh`",
            lambda: _fresh_off(vendor),
        ),
        Feature(
            "the single-use challenge id: one INSERT more in the hot batch",
            "`store/_hot.py HotArea._spend`",
            _single_use_off,
        ),
        Feature(
            "the sales log line",
            "`paywall/sales.py SalesRecorder`",
            lambda: _sales_off(vendor),
        ),
        Feature(
            "Prometheus metrics (payments, HTTP requests)",
            "`paywall/metrics.py`, `observe/access.py HttpMetrics`",
            lambda: _metrics_off(vendor),
        ),
        Feature(
            "the quick answer (without it a paid good in memory goes through Starlette's "
            "router, exception layers and Response; a negative cost is a saving)",
            "`paywall/middleware.py Paywall.quick`, `paywall/goods.py GoodsApp.quick`",
            lambda: _quick_off(vendor),
        ),
    ]


WIRE_SHAPE: Final = (0, 1)  # the features above that the draft's wire shape brought


# --- the measurement ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    where: str
    stat: Stat  # with the feature switched off


@dataclass(frozen=True, slots=True)
class CpuMeasured:
    paid_us: float
    free_us: float
    without: list[Row]
    without_wire: Stat
    access_log: Stat
    access_log_unbuffered: Stat
    parse_new_us: float
    parse_old_us: float
    payword: PaywordLatency
    requests: int
    rounds: int


@dataclass(frozen=True, slots=True)
class PaywordLatency:
    first_share: float
    first_p50_ms: float
    first_p99_ms: float
    rest_p50_ms: float
    rest_p99_ms: float
    all_p99_ms: float
    commitments: int


def measure(quick: bool) -> CpuMeasured:
    n = 800 if quick else 2000
    rounds = 3 if quick else ROUNDS
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="paidcpu-", dir=OUT) as tmp:
        work = Path(tmp)
        with sqlite_rig(work) as rig:
            vendor = vendor_from_config(load_vendor_config(rig.folder.config))
            switches = features(vendor)
            variants = len(switches) + 4  # all, each off, the wire shape's, 2 access logs
            pool = rig.chain_pool((variants * rounds + 2) * n)
            result = asyncio.run(_interleaved(vendor, switches, iter(pool), n, rounds, work))
        parse_new, parse_old = _parse_costs(pool[0], rig.folder.challenge_secret)
        payword = _payword_latency(work / "payword", quick)
    count = len(switches)
    return CpuMeasured(
        paid_us=result[0].cpu,
        free_us=result[-1].cpu,
        without=[Row(f.name, f.where, stat) for f, stat in zip(switches, result[1:], strict=False)],
        without_wire=result[1 + count],
        access_log=result[2 + count],
        access_log_unbuffered=result[3 + count],
        parse_new_us=parse_new,
        parse_old_us=parse_old,
        payword=payword,
        requests=n,
        rounds=rounds,
    )


async def _interleaved(
    vendor: VendorApps,
    switches: list[Feature],
    lines: Iterator[str],
    n: int,
    rounds: int,
    work: Path,
) -> list[Stat]:
    """Per variant (paid, each feature off, the wire shape's off, the access log buffered
    and not, free), in that order."""
    app = vendor.app

    def take() -> list[str | None]:
        return [next(lines) for _ in range(n)]

    async def without(*indices: int) -> float:
        restores = [switches[i].switch_off() for i in indices]
        try:
            return await concurrent_pass(app, PAID_PATH, take())
        finally:
            for restore in restores:
                restore()

    async def paid() -> float:
        return await concurrent_pass(app, PAID_PATH, take())

    async def logged(buffered: bool) -> float:
        with access_log_on(work / "access.log", buffered=buffered):
            return await paid()

    async def free() -> float:
        return await concurrent_pass(app, FREE_PATH, [None] * n)

    variants: list[Callable[[], Awaitable[float]]] = [
        paid,
        *(functools.partial(without, i) for i in range(len(switches))),
        functools.partial(without, *WIRE_SHAPE),
        functools.partial(logged, True),
        functools.partial(logged, False),
        free,
    ]
    for _ in range(2):  # warm: every card's state cached, every code path run
        await paid()
    found: list[list[float]] = [[] for _ in variants]
    for turn in range(rounds):
        # Each round starts at another variant: no variant always follows the same one.
        for k in range(len(variants)):
            i = (k + turn) % len(variants)
            found[i].append(await variants[i]() * 1e6)
    return [_stat(values, found[0]) for values in found]


@dataclass(frozen=True, slots=True)
class Stat:
    """One variant: its median CPU per request, and the median, smallest and largest of its
    difference to the paid variant of the same round (us; + is more CPU)."""

    cpu: float
    diff: float
    low: float
    high: float


def _stat(values: list[float], paid: list[float]) -> Stat:
    diffs = [v - p for v, p in zip(values, paid, strict=True)]
    return Stat(statistics.median(values), statistics.median(diffs), min(diffs), max(diffs))


def _parse_costs(line: str, secret: bytes) -> tuple[float, float]:
    """Reading and checking a credential: the draft's shape (the whole challenge echoed,
    HMAC over its seven slots) against the shape before it (a top-level id, HMAC over a
    short binding), the same payload; process CPU per credential."""
    credential = parse_credential(line)
    binder = ChallengeBinder(secret)
    request_b64 = credential.challenge.request
    old = "Payment " + encode_json_b64({"id": credential.challenge.id, **credential.payload})
    binding = b"nonce|expires|bench|szmchain|/articles/*|1000 EUR"

    def new_shape() -> None:
        echo = parse_credential(line).challenge
        binder.verify(echo, now=0, realm=REALM, request_b64=request_b64)

    def old_shape() -> None:
        obj = decode_json_b64(old.partition(" ")[2])
        raw = b64url_decode(str(obj["id"]), max_len=64)
        hmac_sha256(secret, binding + raw[:0])

    news, olds = [], []
    for _ in range(ROUNDS):
        news.append(per_call(new_shape, 20_000, time.process_time) * 1e6)
        olds.append(per_call(old_shape, 20_000, time.process_time) * 1e6)
    return statistics.median(news), statistics.median(olds)


def _payword_latency(folder: Path, quick: bool) -> PaywordLatency:
    """PayWord lines as the e2e bench replays them (commitments interleaved: the first C
    lines of each batch are the first payments of C new commitments), 16 at a time; each
    request's wall time, the first payments under a commitment apart from the others."""
    folder.mkdir()
    commitments = 300 if quick else 1000
    with sqlite_rig(folder, payword=True) as rig:
        vendor = vendor_from_config(load_vendor_config(rig.folder.config))
        lines: list[str | None] = list(payword_lines(rig.issuing, commitments, 20))
    latencies: list[float] = []
    asyncio.run(concurrent_pass(vendor.app, PAID_PATH, lines, latencies))
    first, rest = latencies[:commitments], latencies[commitments:]

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    return PaywordLatency(
        first_share=len(first) / len(latencies),
        first_p50_ms=pct(first, 0.5),
        first_p99_ms=pct(first, 0.99),
        rest_p50_ms=pct(rest, 0.5),
        rest_p99_ms=pct(rest, 0.99),
        all_p99_ms=pct(latencies, 0.99),
        commitments=commitments,
    )


# --- rendering ------------------------------------------------------------------------------


def _cost(stat: Stat, sign: int = -1) -> str:
    """A feature's cost: the median of the per-round differences (its range in brackets)."""
    low, high = sorted((sign * stat.low, sign * stat.high))
    return f"{sign * stat.diff:,.0f} ({low:,.0f} to {high:,.0f})"


def render(m: CpuMeasured) -> str:
    wire = -m.without_wire.diff
    parse = m.parse_new_us - m.parse_old_us
    lines = [
        "### CPU per paid request, feature by feature",
        "",
        "The vendor app as a uvicorn worker builds it (`vendor_from_config`: access log layer, "
        "paywall, sales log, metrics; SQLite, `synchronous=FULL`), called in-process by "
        f"{CONCURRENT} concurrent clients with pre-generated `szm:chain` credentials (cards "
        "cached; payments share commits as under load). *CPU*: this process's CPU time "
        "(user + system) per request, which waiting for the disk or for another process does "
        "not inflate; each feature switched off in turn, the passes interleaved (each round "
        f"starting at another variant), {m.rounds} rounds of {m.requests:,} requests. *Costs*: "
        "the median over the rounds of the difference to the paid pass of the same round, "
        "and in brackets the smallest and largest of them: a range that spans zero is a "
        "cost this machine could not tell from its noise. No HTTP server here: the "
        "end-to-end section measures the server's CPU per request over loopback.",
        "",
        "| variant | CPU per request (us, median) | the feature costs (us) |",
        "|---|---:|---:|",
        f"| paid, everything on (as `vendor serve --no-access-log`) | {m.paid_us:,.0f} | - |",
    ]
    for row in m.without:
        lines.append(
            f"| without {row.name} ({row.where}) | {row.stat.cpu:,.0f} | {_cost(row.stat)} |"
        )
    lines += [
        f"| without the draft's fresh challenge and single-use id together | "
        f"{m.without_wire.cpu:,.0f} | {_cost(m.without_wire)} |",
        f"| with the access log written (one line per request, the lines of a loop pass in "
        f"one write; the default of `vendor serve`) | {m.access_log.cpu:,.0f} | "
        f"{_cost(m.access_log, 1)} |",
        f"| the same, a write per line (the handler before this session) | "
        f"{m.access_log_unbuffered.cpu:,.0f} | {_cost(m.access_log_unbuffered, 1)} |",
        f"| free (`{FREE_PATH}`, same file, unpriced) | {m.free_us:,.0f} | - |",
        "",
        f"**What the draft's wire shape costs per paid request**: {wire + parse:,.0f} us of "
        f"CPU here: {wire:,.0f} us for a fresh challenge in every paid answer and the "
        f"single-use id's INSERT in the hot batch (measured together above), and "
        f"{parse:,.1f} us to read and check the echoed challenge (parse + HMAC over the "
        f"seven slots: {m.parse_new_us:,.1f} us per credential, against "
        f"{m.parse_old_us:,.1f} us for a top-level id and the same payload; process CPU, "
        "one at a time).",
        "",
        *_payword_text(m.payword),
    ]
    return "\n".join(lines)


def _payword_text(p: PaywordLatency) -> list[str]:
    return [
        "**PayWord's p99 at peak.** The end-to-end bench replays PayWord lines in file order, "
        "commitments interleaved, so each batch of lines starts with the first payments of "
        f"its new commitments, one after another. In-process, {CONCURRENT} at a time, "
        f"{p.commitments:,} new commitments of 20 payments: the first payment under a "
        f"commitment ({p.first_share:.0%} of the requests) took p50 {p.first_p50_ms:.2f} / "
        f"p99 {p.first_p99_ms:.2f} ms, every later one p50 {p.rest_p50_ms:.2f} / p99 "
        f"{p.rest_p99_ms:.2f} ms (all together: p99 {p.all_p99_ms:.2f} ms). A first payment "
        "checks the commitment's two signatures and reads the store (a miss); its write "
        "stores the commitment (insert-if-absent) and moves it in the payment's own hot "
        "batch, one commit with the others (`paywall/books.py PaywordBook.advance`). Before, "
        "the commitment was inserted in a transaction of its own on the writer thread (its "
        "own durable commit, contending with the loop's group commit for SQLite's write "
        "lock) and read back: first payments p99 41 ms against 6 ms for the others in the "
        "run of 2026-12-07. End to end, the garbage collector added to every kind's peak "
        "tail: each server made 3 full passes of 55-76 ms over the ~105,000 objects of its "
        "start-up. The served vendor now freezes them once its app is built "
        "(`paywall/serve.py`); in one `bench.tail` run of 2026-12-08 (old and new code "
        "taking turns, 3 rounds, `--nice -20`) PayWord's p99 at peak went from 44.6-47.4 to "
        "10.7-40.3 ms, szm:prbg's from 40.1-55.2 to 11.4-18.2 ms. What held most of it in "
        "`make bench` was the broker: with a bank running (as `make bench` runs it, for "
        "hll:mac), the vendor has each new commitment admitted by the broker before its "
        "first payment is accepted, under a lock per user; it was one HTTP call and one "
        "durable transaction at the bank per commitment, so the admissions of a burst of "
        "first payments waited for one another's commits there. `bench.e2e --only`, SQLite, "
        "one worker, 2026-12-08: PayWord's p99 at peak 6.3-7.5 ms without a broker (three "
        "runs); with it, every commitment of the run from one user (as the bench had it "
        "until then) 98 ms at 2,093 paid/s; commitments spread over 256 users (the bench "
        "now) 55 ms at 2,707 paid/s. The vendor's broker client now sends the admissions "
        "asked for together in one `POST /v1/payword/commitments/batch` call, as "
        "`verify-batch` does for hll, and the bank admits a batch in one transaction (the "
        "users, certificates and open commitments read once, the admitted rows written in "
        "one statement): the bank's CPU per admission, in process, 385 us in batches of 16 "
        "against 1,553 us alone. `bench.e2e --only payword,hll:mac --rounds 2`, SQLite, one "
        "worker, 2026-12-08: PayWord's p99 at peak 6.1-58.0 ms at 2,817-3,647 paid/s with "
        "one call per admission (three runs: 58.0, 32.1, 6.1 ms), 6.2-9.4 ms at "
        "3,475-3,674 paid/s batched (four runs); in the one run of each taken back to back "
        "on a quiet machine, 6.11 ms at 3,647 paid/s against 6.16 ms at 3,674 paid/s. "
        "Batching removes the bursts' queue at the bank, not the rest of the tail.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    print(render(measure(args.quick)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
