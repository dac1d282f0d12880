"""Where a paid request's latency goes at half load: a time line of every request inside the
server, beside what wrk measured outside it.

The vendor runs as in ``bench.e2e`` (one worker on CPU 0, wrk on CPU 1, the same credential
files and load: 16 connections at peak, 32 paced ones at half of that peak), but launched
through :mod:`bench.tailhook`, which stamps each request's steps in the server (request head
parsed, app started, hot write reached, its commit, the fsync that covered it, the task
resumed, the answer handed to the socket), the garbage collector's passes and the
scheduler's run-queue waits. For each kind and load it prints wrk's p50/p99 against the
server's own (head parsed -> answer written), the median of each step, and the mean of each
step over the requests at or above the server's p99: the step that holds the tail.
Beside the server's CPU per request (its process, as ``bench.e2e`` counts it) it prints the
CPU of the server's core: the server's threads and that CPU's kworkers (:mod:`bench.corecpu`;
a Linux AIO fsync, ``FARTHING_TAIL_AIO_FSYNC=1``, runs on a kworker, not in the process).

    .venv/bin/python -m bench.tail [--kinds szm:chain,payword] [--store SQLite] \\
        [--rounds 2] [--seconds 3] [--variant NAME[:ENV=VALUE[;ENV=VALUE]]]...

Each ``--variant`` is a server started with extra environment (e.g.
``--variant swi:FARTHING_TAIL_SWITCH=0.0005`` for a shorter GIL switch interval,
``--variant old:PYTHONPATH=/tmp/old/src`` for other code); variants take turns within each
round, so the machine's noise falls on all of them. The raw records stay in
``bench/out/tail/`` (one JSON file per server).

On a shared machine: ``--nice -20`` (root) runs the server and wrk ahead of other processes
(the "(loop run-queue wait)" line says how long the loop thread was runnable but not
running during a request: other processes, or the server's own threads on its one core);
``--syscalls`` records every fsync/fdatasync of the server with ``perf`` (CLOCK_MONOTONIC,
as the records): the loop thread's own (SQLite checkpoints) and, for each fsync of the
fsync thread, the kernel's time against the thread's wait to run again after it. The
server's span starts when uvicorn parsed the request head: time the request spent in the
socket before the loop read it shows only in wrk's figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.corecpu import core_cpu
from bench.e2e import (
    HALF_CONNECTIONS,
    OUT,
    PEAK_CONNECTIONS,
    SERVER_CPUS,
    WRK_CPUS,
    Issuing,
    Pool,
    RunResult,
    databases,
    sized_run,
    uvicorn_server,
    write_vendor,
)
from bench.tailhook import FACTORY, TRACE_ENV
from farthing.store import open_store

TRACES: Final = OUT / "tail"
SERVER_CORE: Final = int(SERVER_CPUS)  # one CPU: its kworkers run the server's AIO fsyncs

FIRST_GUESS: Final = 2000.0


def credentials(rate: float, seconds: int) -> int:
    """What :func:`bench.e2e.run_wrk` makes sure the pool holds before a run (made before
    the CPU of the run is measured, so that making them is not in it)."""
    return int(rate * seconds * 1.6) + 2000


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    env: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition(":")
        env = dict(item.split("=", 1) for item in rest.split(";") if item)
        return cls(name, env)


@dataclass(slots=True)
class Window:
    """One wrk run: which server, kind and load, when (monotonic), what wrk saw."""

    variant: str
    round: int
    kind: str
    load: str
    start: float
    end: float
    wrk: RunResult
    trace: Path
    core_us: tuple[float, float] | None = None
    """CPU per request on the server's core: its threads', that CPU's kworkers' (corecpu)."""


@dataclass(slots=True)
class Timeline:
    """One request's steps (seconds), in order; the names say from which step to which."""

    latency: float
    steps: dict[str, float] = field(default_factory=dict)


# --- running -------------------------------------------------------------------------------


def run_server(
    variant: Variant,
    round_no: int,
    pools: dict[str, Pool],
    env: dict[str, str],
    folder: Path,
    seconds: int,
    expected: dict[str, float],
    during: str | None = None,
) -> list[Window]:
    """One server of ``variant``: each kind warmed, then at peak, then at half of it."""
    trace = TRACES / f"{variant.name}-{round_no}-{int(time.time())}.json"
    server_env = {**env, **variant.env, TRACE_ENV: str(trace)}
    windows: list[Window] = []
    with uvicorn_server(FACTORY, server_env, workers=1, cpus=SERVER_CPUS,
                        log=folder / "server.log", db_pids=list,
                        launcher="bench.tailhook") as server:  # fmt: skip
        for kind, pool in pools.items():
            warm = sized_run(server, pool, seconds=1, connections=PEAK_CONNECTIONS,
                             cpus=WRK_CPUS, expected_rate=expected[kind])  # fmt: skip
            expected[kind] = max(expected[kind], warm.rate)
        peaks = {}
        for kind, pool in pools.items():
            started = time.monotonic()
            pool.ensure(credentials(expected[kind], seconds))  # made before, not measured
            with core_cpu(server.process.pid, SERVER_CORE) as core:
                peak = sized_run(server, pool, seconds=seconds, connections=PEAK_CONNECTIONS,
                                 cpus=WRK_CPUS, expected_rate=expected[kind])  # fmt: skip
            peaks[kind] = peak
            core_us = core.us_per_request(peak.rate * seconds)
            windows.append(Window(variant.name, round_no, kind, "peak", started,
                                  time.monotonic(), peak, trace, core_us))  # fmt: skip
        for kind, pool in pools.items():
            target = max(peaks[kind].rate / 2, 1.0)
            mean_delay = max(0.0, 1000 * (HALF_CONNECTIONS / target - 1 / max(peaks[kind].rate, 1)))
            started = time.monotonic()
            beside = trace.with_suffix(f".{kind}.during")
            pool.ensure(credentials(target, seconds))
            with (
                alongside(during, server.process.pid, beside),
                core_cpu(server.process.pid, SERVER_CORE) as core,
            ):
                half = sized_run(server, pool, seconds=seconds, connections=HALF_CONNECTIONS,
                                 cpus=WRK_CPUS, mean_delay_ms=mean_delay,
                                 expected_rate=target)  # fmt: skip
            core_us = core.us_per_request(half.rate * seconds)
            windows.append(Window(variant.name, round_no, kind, "half", started,
                                  time.monotonic(), half, trace, core_us))  # fmt: skip
    return windows


@contextmanager
def alongside(command: str | None, pid: int, out: Path) -> Iterator[None]:
    """Run ``command`` (``{pid}``: the server's, ``{out}``: a file beside the records) while
    the body runs, then interrupt it (SIGINT, as perf expects) and wait for it."""
    if command is None:
        yield
        return
    process = subprocess.Popen(shlex.split(command.format(pid=pid, out=out)))
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    kinds: list[str],
    store: str,
    variants: list[Variant],
    rounds: int,
    seconds: int,
    during: str | None = None,
) -> list[Window]:
    """Fresh store and credential files; each round, each variant's server in turn."""
    TRACES.mkdir(parents=True, exist_ok=True)
    windows: list[Window] = []
    with (
        tempfile.TemporaryDirectory(prefix="tail-", dir=OUT) as tmp,
        databases(Path(tmp), with_postgres=store == "PostgreSQL") as dbs,
        ExitStack() as stack,
    ):
        folder = Path(tmp)
        target, _ = dbs[store]()
        vendor = write_vendor(folder, target)
        opened = open_store(target)
        stack.callback(opened.close)
        issuing = Issuing(store=opened, secret=vendor.challenge_secret, bank=None)
        pools = {
            kind: Pool(folder / f"{kind.replace(':', '-')}.lines", kind, issuing)
            for kind in ("free", *kinds)
        }
        env = {"FARTHING_VENDOR_CONFIG": str(vendor.config)}
        expected = dict.fromkeys(pools, FIRST_GUESS)
        for round_no in range(rounds):
            for variant in variants:
                windows += run_server(
                    variant, round_no, pools, env, folder, seconds, expected, during
                )
                print(f"round {round_no + 1} {variant.name}: done", flush=True)
    return windows


# --- reading the records ------------------------------------------------------------------


def _span(steps: dict[str, float], name: str, start: float | None, end: float | None) -> None:
    if start is not None and end is not None:
        steps[name] = end - start


def timeline(request: dict[str, Any], trace: dict[str, Any]) -> Timeline:
    """The request's steps from its head to its answer (those it went through)."""
    steps: dict[str, float] = {}
    get = request.get
    _span(steps, "head->app", get("t_head"), get("t_app"))
    if "t_hot" not in request:
        _span(steps, "app->sent", get("t_app"), get("t_sent"))
    else:
        batch = trace["batches"][request["batch"]] if "batch" in request else {}
        _span(steps, "app->write", get("t_app"), get("t_hot"))
        _span(steps, "write->commit", get("t_hot"), batch.get("t_start"))
        _span(steps, "commit", batch.get("t_start"), batch.get("t_end"))
        if "fsync" in request:
            sync = trace["fsyncs"][request["fsync"]]
            _span(steps, "commit->fsync asked", batch.get("t_end"), sync.get("t_asked"))
            _span(steps, "asked->fsync began", sync.get("t_asked"), sync.get("t_begin"))
            _span(steps, "fsync+GIL", sync.get("t_begin"), sync.get("t_returned"))
            _span(steps, "->loop callback", sync.get("t_returned"), sync.get("t_callback"))
            _span(steps, "->task resumed", sync.get("t_callback"), get("t_resumed"))
        else:
            _span(steps, "commit->resumed", batch.get("t_end"), get("t_resumed"))
        _span(steps, "resumed->sent", get("t_resumed"), get("t_sent"))
    if "rd_sent" in request:
        steps["(loop run-queue wait)"] = request["rd_sent"] - request["rd_head"]
    steps["(gc)"] = _overlap(trace["gcs"], request["t_head"], request["t_sent"])
    held, passive = _checkpoint_spans(trace)
    if held or passive:
        steps["(checkpoint, writers held)"] = _overlap(held, request["t_head"], request["t_sent"])
        steps["(checkpoint, passive)"] = _overlap(passive, request["t_head"], request["t_sent"])
    return Timeline(latency=request["t_sent"] - request["t_head"], steps=steps)


def _checkpoint_spans(trace: dict[str, Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    """The checkpoint thread's calls that hold writers off (FULL, RESTART, TRUNCATE; every
    checkpoint of code that records no passes ran FULL) and the PASSIVE ones."""
    passes = trace.get("checkpoint_passes")
    if not passes:
        return trace.get("checkpoints", []), []
    return [p for p in passes if p[2] != "PASSIVE"], [p for p in passes if p[2] == "PASSIVE"]


def _overlap(spans: list[list[float]], start: float, end: float) -> float:
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b, *_ in spans if b > start and a < end)


def in_window(trace: dict[str, Any], window: Window, paid: bool) -> list[Timeline]:
    columns = trace["requests"]
    lines = []
    for row in zip(*columns.values(), strict=True):
        request = {
            name: int(value) if name in ("batch", "fsync") else value
            for name, value in zip(columns, row, strict=True)
            if not math.isnan(value)
        }
        if window.start <= request["t_head"] <= window.end and bool(request["paid"]) == paid:
            lines.append(timeline(request, trace))
    return lines


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report_window(window: Window, lines: list[Timeline]) -> list[str]:
    """wrk's and the server's latency, then each step's median and its mean in the tail."""
    if not lines:
        return [f"{window.variant} r{window.round} {window.kind} {window.load}: no records"]
    latencies = [line.latency for line in lines]
    p99 = percentile(latencies, 0.99)
    tail = [line for line in lines if line.latency >= p99]
    names = list(dict.fromkeys(name for line in lines for name in line.steps))
    out = [
        f"{window.variant} r{window.round + 1} {window.kind} {window.load}: "
        f"{window.wrk.rate:,.0f}/s, "
        f"server CPU {window.wrk.server_us:,.0f} us/request ({window.wrk.server_cores:.2f} of "
        "its core), "
        f"wrk p50/p99 {window.wrk.p50_ms:.2f}/{window.wrk.p99_ms:.2f} ms, "
        f"server p50/p90/p99/max {1000 * percentile(latencies, 0.5):.2f}/"
        f"{1000 * percentile(latencies, 0.9):.2f}/{1000 * p99:.2f}/{1000 * max(latencies):.2f} ms "
        f"({len(lines)} requests, {len(tail)} in the tail)",
    ]
    if window.core_us is not None:
        own, kworkers = window.core_us
        out.append(
            f"    CPU of the server's core: its threads {own:,.0f} + kworker/{SERVER_CORE} "
            f"{kworkers:,.0f} = {own + kworkers:,.0f} us/request"
        )
    out.append("    step                      median ms   tail mean ms")
    for name in names:
        every = [line.steps[name] for line in lines if name in line.steps]
        tails = [line.steps[name] for line in tail if name in line.steps]
        out.append(
            f"    {name:<24} {1000 * statistics.median(every):>9.3f} "
            f"{1000 * statistics.fmean(tails) if tails else 0.0:>14.3f}"
        )
    for name in ("(checkpoint, writers held)", "(checkpoint, passive)"):
        met = sum(1 for line in lines if line.steps.get(name, 0.0) > 0)
        met_tail = sum(1 for line in tail if line.steps.get(name, 0.0) > 0)
        if met:
            out.append(
                f"    met a {name[1:-1]}: {100 * met / len(lines):.2f}% of requests, "
                f"{100 * met_tail / len(tail):.0f}% of the tail"
            )
    return out


def report_fsyncs(trace: dict[str, Any], window: Window) -> list[str]:
    """The fsyncs asked in the window: their time, the thread's run-queue wait in them."""
    syncs = [
        s
        for s in trace["fsyncs"]
        if window.start <= s["t_asked"] <= window.end and "t_callback" in s
    ]
    if not syncs:
        return []

    def dist(values: list[float]) -> str:
        return "/".join(f"{1000 * percentile(values, q):.2f}" for q in (0.5, 0.9, 0.99)) + (
            f"/{1000 * max(values):.2f}"
        )

    return [
        f"    fsyncs {len(syncs)} (jobs each {statistics.fmean(s['jobs'] for s in syncs):.1f}); "
        "p50/p90/p99/max ms:",
        f"      asked->began {dist([s['t_begin'] - s['t_asked'] for s in syncs])}",
        f"      fsync+GIL    {dist([s['t_returned'] - s['t_begin'] for s in syncs])}",
        f"      its run-queue wait {dist([s['rd_returned'] - s['rd_begin'] for s in syncs])}",
        f"      ->callback   {dist([s['t_callback'] - s['t_returned'] for s in syncs])}",
    ]


SYSCALLS: Final = (
    "perf record -q -k monotonic -e syscalls:sys_enter_fsync,syscalls:sys_exit_fsync,"
    "syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync -p {pid} -o {out}"
)
"""``--syscalls``: every fsync and fdatasync of the server, with CLOCK_MONOTONIC times."""


def kernel_syncs(path: Path) -> dict[int, list[tuple[float, float]]]:
    """Per thread id, the (entry, exit) times of its fsync/fdatasync calls recorded by perf."""
    text = subprocess.run(
        ["perf", "script", "--ns", "-F", "tid,time,event", "-i", str(path)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    entered: dict[int, float] = {}
    calls: dict[int, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        tid, stamp = int(fields[0]), float(fields[1].rstrip(":"))
        if "sys_enter_" in fields[2]:
            entered[tid] = stamp
        elif tid in entered:
            calls.setdefault(tid, []).append((entered.pop(tid), stamp))
    return calls


def report_syscalls(trace: dict[str, Any], window: Window, path: Path) -> list[str]:
    """The fsync thread's calls beside the hook's spans around them: how long the kernel
    took, and how long the thread then waited (run queue, GIL) before its next Python
    line ran; and the syncs the loop thread itself made (SQLite checkpoints)."""
    if not path.exists():
        return []
    calls = kernel_syncs(path)
    threads = trace.get("threads", {})
    out = []
    loop_calls = calls.get(threads.get("loop", -1), [])
    if loop_calls:
        spans = [b - a for a, b in loop_calls]
        out.append(
            f"    loop thread syncs (SQLite's own: checkpoints, or FULL commits): {len(spans)}, "
            f"sum {1000 * sum(spans):.1f} ms, p50/p99/max "
            f"{1000 * percentile(spans, 0.5):.2f}/{1000 * percentile(spans, 0.99):.2f}/"
            f"{1000 * max(spans):.2f} ms"
        )
    fsyncs = sorted(calls.get(threads.get("fsync", -1), []))
    pairs = []
    syncs = [s for s in trace["fsyncs"] if "t_returned" in s]
    index = 0
    for entry, exit_ in fsyncs:
        while index < len(syncs) and syncs[index]["t_returned"] < exit_:
            index += 1
        if index < len(syncs) and syncs[index]["t_begin"] <= entry:
            pairs.append((syncs[index], entry, exit_))
    if pairs:

        def dist(values: list[float]) -> str:
            return "/".join(f"{1000 * percentile(values, q):.2f}" for q in (0.5, 0.9, 0.99)) + (
                f"/{1000 * max(values):.2f}"
            )

        out += [
            f"    fsync thread, {len(pairs)} fsyncs matched to the kernel's; p50/p90/p99/max ms:",
            f"      in the kernel        {dist([b - a for _, a, b in pairs])}",
            f"      before (stat, lock)  {dist([a - s['t_begin'] for s, a, _ in pairs])}",
            f"      after: to run again  {dist([s['t_returned'] - b for s, _, b in pairs])}",
        ]
    return out


def report_passes(trace: dict[str, Any], window: Window) -> list[str]:
    """The checkpoint thread's wal_checkpoint calls by mode: how many, how long, and the
    most frames the WAL held (its file keeps the size of its most frames)."""
    passes = [p for p in trace.get("checkpoint_passes", []) if window.start <= p[0] <= window.end]
    out = []
    for mode in dict.fromkeys(p[2] for p in passes):
        spans = [p[1] - p[0] for p in passes if p[2] == mode]
        frames = [p[4] for p in passes if p[2] == mode]
        out.append(
            f"    {mode} passes {len(spans)}, p50/max {1000 * percentile(spans, 0.5):.2f}/"
            f"{1000 * max(spans):.2f} ms, WAL frames p50/max {percentile(frames, 0.5):,.0f}/"
            f"{max(frames):,}"
        )
    return out


def report(windows: list[Window], loads: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    cache: dict[Path, dict[str, Any]] = {}
    for window in windows:
        if window.load not in loads:
            continue
        if window.trace not in cache:
            cache[window.trace] = json.loads(window.trace.read_text())
        trace = cache[window.trace]
        out += report_window(window, in_window(trace, window, paid=window.kind != "free"))
        out += report_fsyncs(trace, window)
        out += report_syscalls(trace, window, window.trace.with_suffix(f".{window.kind}.during"))
        batches = [b for b in trace["batches"] if window.start <= b["t_start"] <= window.end]
        if batches:
            where = collections.Counter(b["where"] for b in batches)
            out.append("    batches committed: " + ", ".join(f"{n} {k}" for k, n in where.items()))
            awaited = [b for b in batches if b["where"] == "awaited"]
            if awaited:  # PostgreSQL: did a batch start while another was in flight?
                beside = sum(1 for b in awaited if b.get("beside", 0) > 0)
                jobs = statistics.mean(b["jobs"] for b in awaited)
                spans = sorted(b["t_end"] - b["t_start"] for b in awaited if "t_end" in b)
                out.append(
                    f"    awaited batches: {jobs:.1f} jobs each, {beside} of {len(awaited)} "
                    "started beside another in flight, start->committed p50 "
                    f"{spans[len(spans) // 2] * 1000 if spans else math.nan:.3f} ms"
                )
        passes = [c for c in trace.get("checkpoints", []) if window.start <= c[0] <= window.end]
        if passes:
            spans = [b - a for a, b in passes]
            out.append(
                f"    checkpoint thread: {len(spans)} checkpoints, p50/max "
                f"{1000 * percentile(spans, 0.5):.2f}/{1000 * max(spans):.2f} ms"
            )
        out += report_passes(trace, window)
        gcs = [g for g in trace["gcs"] if window.start <= g[0] <= window.end]
        if gcs:
            longest = max(g[1] - g[0] for g in gcs)
            out.append(f"    gc passes {len(gcs)}, longest {1000 * longest:.2f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kinds", default="szm:chain,payword")
    parser.add_argument("--store", default="SQLite", choices=("SQLite", "PostgreSQL"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="NAME[:ENV=V[;ENV=V]]")
    parser.add_argument("--peak", action="store_true", help="report the peak runs too")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and wrk at this nice value (e.g. -20: other processes on the "
        "shared cores take less of the server's and wrk's CPU; root only)",
    )
    parser.add_argument(
        "--during",
        help="a command run while each half-load run lasts, then sent SIGINT; {pid} is the "
        "server's, {out} a file beside the records, e.g. "
        "'perf sched record -C 0 -o {out}' or 'perf trace -e fsync -p {pid} -o {out}'",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="record the server's fsync/fdatasync calls with perf during the half-load runs",
    )
    args = parser.parse_args()
    if args.syscalls:
        args.during = SYSCALLS
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the server and wrk inherit it
    variants = [Variant.parse(spec) for spec in args.variant] or [Variant("now", {})]
    windows = measure(
        args.kinds.split(","), args.store, variants, args.rounds, args.seconds, args.during
    )
    loads = ("half", "peak") if args.peak else ("half",)
    print("\n".join(report(windows, loads)), flush=True)


if __name__ == "__main__":
    main()
