"""Scale: a vendor store with up to 1,000,000 issued SZM cards. Bytes of database per card,
the memory (RSS) of a vendor worker, and the latency of verifying a payment with a cold and
a warm card cache, as the number of cards grows from 10^3 to 10^6 (10^5 with ``--quick``).
Writes the "Scale" section of docs/benchmarks.md and docs/benchmarks-scale.png.

The stores are built once with the store's bulk insert (``tx.szm_insert_cards``) and cached
under ``bench/out/scale/`` (git-ignored): each size is the previous one plus new cards. Each
run measures on a copy, so the cached files stay unspent.

Each size is measured in fresh child processes (a new interpreter, as a new worker): the
app is built by ``app_from_config`` exactly as a uvicorn worker builds it, and payments are
settled through the paywall's own ``szm:chain`` method (decode, card state from the cache or
the store, core verification, the durable compare-and-set UPDATE), timed one by one.

Run: ``python -m bench.scale [--quick]`` (``make bench`` runs every section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Final

from bench.e2e import (
    CHAIN_MASTER,
    EUR,
    OUT,
    PAID_PATH,
    card_row,
    challenge_id,
    header,
    insert_batch,
    rss_kib,
    write_vendor,
)
from bench.report import DOC, machine_line, write_section
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.store import SzmCardRow, SzmProtocol, open_store

CACHE: Final = OUT / "scale"
PLOT: Final = DOC.parent / "benchmarks-scale.png"
UNITS: Final = 100  # units per card: its chain has 100 links
EXPIRES: Final = 4_102_444_800  # 2100-01-01: the cached stores outlive many runs
CHUNK: Final = 20_000
RUNS: Final = 3
CACHE_CAPACITY: Final = 100_000  # the vendor's per-process card-state LRU (methods/offline.py)


# --- building the cached stores --------------------------------------------------------------


def store_path(cards: int) -> Path:
    return CACHE / f"cards-{cards}.sqlite"


def _issue(count: int, batch_id: bytes, now: int) -> Iterator[SzmCardRow]:
    for _ in range(count):
        state, _ = szm_chain.issue_card(
            CHAIN_MASTER, os.urandom, length=UNITS, denomination=EUR, expires_at=EXPIRES
        )
        yield card_row(state.card_id, batch_id, SzmProtocol.CHAIN, UNITS, state.anchor, EXPIRES)


def add_cards(path: Path, count: int) -> float:
    """Issue ``count`` chain cards into the store at ``path``; return the seconds it took."""
    started = time.perf_counter()
    store = open_store(str(path))
    try:
        now = int(time.time())
        done = 0
        while done < count:
            n = min(CHUNK, count - done)
            batch_id = insert_batch(store, SzmProtocol.CHAIN, n, UNITS, EXPIRES)
            with store.transaction() as tx:
                tx.szm.insert_cards(_issue(n, batch_id, now))
            done += n
    finally:
        store.close()
    _checkpoint(path)
    return time.perf_counter() - started


def _checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def build(sizes: list[int]) -> dict[str, Any]:
    """The cached store of each size (built from the previous size if missing)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    meta_path = CACHE / "meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    empty = store_path(0)
    if not empty.exists():
        add_cards(empty, 0)
    previous = 0
    for size in sizes:
        path = store_path(size)
        if not path.exists():
            tmp = path.with_suffix(".building")
            shutil.copy(store_path(previous), tmp)
            seconds = add_cards(tmp, size - previous)
            tmp.rename(path)
            meta[str(size)] = {
                "added": size - previous,
                "seconds": seconds,
                "built": machine_line(),
            }
            meta_path.write_text(json.dumps(meta, indent=1))
            print(f"built {path.name}: {size - previous} cards in {seconds:.1f} s", flush=True)
        previous = size
    return meta


def db_bytes(path: Path) -> int:
    """Pages in use (free pages excluded), in bytes."""
    with sqlite3.connect(path) as conn:
        pages, free, size = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
    conn.close()
    return int((pages - free) * size)


# --- measuring one size in a fresh process ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """What one child process measured."""

    cold_us: list[float]
    warm_us: list[float]
    rss_start_kib: int
    rss_after_kib: int
    touched: int


def sample_cards(path: Path, count: int) -> list[tuple[bytes, int]]:
    """``count`` random cards (id, spent) of the store."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT card_id, spent FROM szm_cards ORDER BY random() LIMIT ?", (count,)
        ).fetchall()
    conn.close()
    return [(bytes(card_id), int(spent)) for card_id, spent in rows]


def payment_lines(secret: bytes, cards: list[tuple[bytes, int]], payments: int) -> list[list[str]]:
    """For each card, its next ``payments`` credentials (Authorization header values), each
    answering a challenge of its own (challenge ids are single use)."""
    now = int(time.time())
    out = []
    for card_id, spent in cards:
        card = szm_chain.ChainCard(
            card_id=card_id,
            secret=szm_chain.card_secret(CHAIN_MASTER, card_id),
            length=UNITS,
            spent=spent,
            denomination=EUR,
            expires_at=EXPIRES,
        )
        walker = szm_chain.card_walker(card)
        lines = []
        for _ in range(payments):
            card, payment, _ = szm_chain.next_payment(card, 1, now=now, walker=walker)
            raw = b64url_encode(szm_chain.encode_payment(payment))
            lines.append(header(challenge_id(secret, "szm:chain"), {"payment": raw}))
        out.append(lines)
    return out


def child(config: str, cold: list[str], warm: list[str], fill: list[str], queue: Any) -> None:
    """A fresh worker: build the app, settle payments one by one, report (in a child)."""
    queue.put(asdict(asyncio.run(_child(Path(config), cold, warm, fill))))


async def _child(config: Path, cold: list[str], warm: list[str], fill: list[str]) -> Sample:
    from farthing.http.payment_auth import ChallengeBinder, encode_jcs_b64, parse_credential
    from farthing.paywall.config import load_vendor_config
    from farthing.paywall.methods.base import PaymentContext
    from farthing.paywall.serve import vendor_from_config

    vendor = load_vendor_config(config)
    paywall = vendor_from_config(vendor).paywall  # what a uvicorn worker builds
    method = paywall.methods["szmchain"]
    route = vendor.prices.match(PAID_PATH)
    assert route is not None
    signer_check = ChallengeBinder(vendor.settings.challenge_secret).verify  # as the paywall
    request_b64 = encode_jcs_b64(method.request(route))

    async def settle(line: str) -> float:
        started = time.perf_counter()
        credential = parse_credential(line)
        now = int(time.time())
        challenge = signer_check(
            credential.challenge, now=now, realm=paywall.realm, request_b64=request_b64
        )
        context = PaymentContext(
            payload=credential.payload, route=route, resource=PAID_PATH, challenge=challenge,
            now=now,
        )  # fmt: skip
        await method.settle(context)
        return (time.perf_counter() - started) * 1e6

    for line in fill[:50]:  # warm the code paths (imports, thread pool, connections)
        await settle(line)
    rss_start = rss_kib(os.getpid())
    cold_us = [await settle(line) for line in cold]
    warm_us = [await settle(line) for line in warm]
    for line in fill[50:]:
        await settle(line)
    touched = 50 + len(cold) + len(fill[50:])
    return Sample(cold_us, warm_us, rss_start, rss_kib(os.getpid()), touched)


@dataclass(frozen=True, slots=True)
class SizeResult:
    cards: int
    bytes_per_card: float
    file_mib: float
    cold_p50: float
    cold_p99: float
    warm_p50: float
    warm_p99: float
    rss_start_mib: float
    rss_after_mib: float
    touched: int
    kib_per_cached_card: float


def measure_size(size: int, empty_bytes: int, probes: int, fill: int) -> SizeResult:
    """Medians over RUNS fresh processes, each on its own copy of the cached store."""
    samples = []
    for _ in range(RUNS):
        with _working_copy(size) as (config, secret, path):
            cards = sample_cards(path, probes + fill)
            lines = payment_lines(secret, cards[:probes], 2)
            cold = [pair[0] for pair in lines]
            warm = [pair[1] for pair in lines]
            fill_lines = [pair[0] for pair in payment_lines(secret, cards[probes:], 1)]
            samples.append(_run_child(config, cold, warm, fill_lines))
    size_bytes = db_bytes(store_path(size))
    first = samples[0]
    extra = first.touched - 50
    return SizeResult(
        cards=size,
        bytes_per_card=(size_bytes - empty_bytes) / size,
        file_mib=size_bytes / 2**20,
        cold_p50=statistics.median(_pct(s.cold_us, 50) for s in samples),
        cold_p99=statistics.median(_pct(s.cold_us, 99) for s in samples),
        warm_p50=statistics.median(_pct(s.warm_us, 50) for s in samples),
        warm_p99=statistics.median(_pct(s.warm_us, 99) for s in samples),
        rss_start_mib=statistics.median(s.rss_start_kib for s in samples) / 1024,
        rss_after_mib=statistics.median(s.rss_after_kib for s in samples) / 1024,
        touched=first.touched,
        kib_per_cached_card=statistics.median(
            (s.rss_after_kib - s.rss_start_kib) / extra for s in samples
        ),
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


class _working_copy:  # noqa: N801 - a context manager used like a function
    """A copy of the cached store of ``size`` with a vendor config around it."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __enter__(self) -> tuple[Path, bytes, Path]:
        self.folder = CACHE / f"run-{os.getpid()}-{self.size}"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        path = self.folder / "vendor.sqlite"
        shutil.copy(store_path(self.size), path)
        vendor = write_vendor(self.folder, str(path), payword=False)
        return vendor.config, vendor.challenge_secret, path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _run_child(config: Path, cold: list[str], warm: list[str], fill: list[str]) -> Sample:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(str(config), cold, warm, fill, queue))
    process.start()
    try:
        result = _result(process, queue)
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    return Sample(**result)


def _result(process: Any, queue: Any) -> dict[str, Any]:
    """The child's report; an error (not a hang) if it dies without one."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        try:
            result: dict[str, Any] = queue.get(timeout=2)
            return result
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"measuring child exited with {process.exitcode}") from None
    raise RuntimeError("measuring child took too long")


# --- the section -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scale:
    sizes: list[SizeResult]
    meta: dict[str, Any]
    probes: int


def run(quick: bool) -> Scale:
    sizes = [10**3, 10**4, 10**5] if quick else [10**3, 10**4, 10**5, 10**6]
    probes = 500 if quick else 1000
    meta = build(sizes)
    empty = db_bytes(store_path(0))
    results = []
    for size in sizes:
        # Fill the card cache as far as its capacity allows (bounded to keep runs short).
        probing = min(probes, size // 2)
        fill = max(50, min(size, 2_000 if quick else 10_000) - probing)
        results.append(measure_size(size, empty, probing, fill))
        print(results[-1], flush=True)
    plot(results)
    return Scale(results, meta, probes)


def plot(results: list[SizeResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cards = [r.cards for r in results]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    left.plot(cards, [r.cold_p50 for r in results], "o-", label="cold p50")
    left.plot(cards, [r.cold_p99 for r in results], "o--", label="cold p99")
    left.plot(cards, [r.warm_p50 for r in results], "s-", label="warm p50")
    left.plot(cards, [r.warm_p99 for r in results], "s--", label="warm p99")
    left.set(xscale="log", ylabel="us per payment", title="settle latency (SQLite)")
    left.legend(fontsize=8)
    middle.plot(cards, [r.bytes_per_card for r in results], "o-")
    middle.set(xscale="log", ylabel="bytes", title="database bytes per card", ylim=(0, None))
    right.plot(cards, [r.rss_start_mib for r in results], "o-", label="after start")
    right.plot(cards, [r.rss_after_mib for r in results], "s-", label="after touching cards")
    right.set(xscale="log", ylabel="MiB", title="worker RSS", ylim=(0, None))
    right.legend(fontsize=8)
    for axis in (left, middle, right):
        axis.set_xlabel("issued cards")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)


def render(scale: Scale) -> str:
    lines = [
        machine_line(),
        "",
        f"SQLite store (WAL, `synchronous=FULL`) holding N `szm:chain` cards of {UNITS} units "
        f"each (bulk-inserted by `tx.szm_insert_cards`). Per size, {RUNS} fresh processes, "
        "each building the app as a uvicorn worker does (`app_from_config`) on its own copy "
        f"of the store, settle {scale.probes} payments on random cards *cold* (first payment "
        "of the card in this process: state read from the store, SQLite's page cache empty "
        "at start; the OS page cache is warm, the file having just been copied) and then the "
        "same cards *warm* (state in the process's card cache: verification and the UPDATE "
        "only). Settle = parse the credential, check the challenge, the method's `settle` "
        "(no HTTP, no content); medians over the processes of each one's p50 and p99.",
        "",
        "| issued cards | DB bytes per card | DB size (MiB) | cold p50 / p99 (us) "
        "| warm p50 / p99 (us) | worker RSS after start (MiB) | RSS after touching k cards "
        "(MiB) | KiB per cached card |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in scale.sizes:
        lines.append(
            f"| {r.cards:,} | {r.bytes_per_card:,.0f} | {r.file_mib:,.1f} | "
            f"{r.cold_p50:,.0f} / {r.cold_p99:,.0f} | {r.warm_p50:,.0f} / {r.warm_p99:,.0f} | "
            f"{r.rss_start_mib:,.1f} | {r.rss_after_mib:,.1f} (k = {r.touched:,}) | "
            f"{r.kib_per_cached_card:.2f} |"
        )
    largest = scale.sizes[-1]
    projected = largest.rss_start_mib + CACHE_CAPACITY * largest.kib_per_cached_card / 1024
    lines += [
        "",
        "A worker's memory does not grow with the cards issued, only with the cards it has "
        f"seen: its card cache is an LRU capped at {CACHE_CAPACITY:,} states, so a worker that "
        f"has seen at least that many cards holds about {projected:,.0f} MiB (RSS after start "
        f"+ {CACHE_CAPACITY:,} x the KiB per cached card measured at the largest size).",
        "",
        "Building the cached stores (once; reused by later runs): "
        + "; ".join(
            f"{int(v['added']):,} cards in {float(v['seconds']):,.1f} s "
            f"({int(v['added']) / max(float(v['seconds']), 1e-9):,.0f} cards/s, issuing "
            f"included: {UNITS} hashes per card)"
            for k, v in sorted(scale.meta.items(), key=lambda kv: int(kv[0]))
            if int(k) in {r.cards for r in scale.sizes}
        )
        + ".",
        "",
        f"![settle latency, bytes per card and worker RSS against issued cards]({PLOT.name})",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="up to 10^5 cards")
    args = parser.parse_args()
    text = render(run(args.quick))
    print(text)
    write_section("scale", "Scale: up to a million cards", text)


if __name__ == "__main__":
    main()
