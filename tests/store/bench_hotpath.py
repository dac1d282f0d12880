"""Measure the vendor's per-request write (szm_advance, payword_advance) and the SZM row size.

Not a test: run it by hand and copy the numbers into docs/storage.md::

    .venv/bin/python -m tests.store.bench_hotpath [--calls 2000] [--cards 100000]

SQLite runs on a temp file with the store's real settings (WAL, synchronous=FULL).
PostgreSQL runs on a throwaway server twice: fsync=on (durable, as in production) and
fsync=off (what the test fixture uses), both over loopback TCP.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaincards import chain_cards, issue_chain_batch

from farthing.store import Store, VendorCommitmentRow, open_store
from tests.pgserver import PgServer, PgUnavailable
from tests.store.helpers import advance_payword, advance_szm

BATCH = b"\x01" * 16
EXPIRES = 2_000_000_000
NOW = 1_800_000_000


def _issue(store: Store, count: int, units: int) -> float:
    started = time.perf_counter()
    with store.transaction() as tx:
        issue_chain_batch(tx, BATCH, count, units=units, expires_at=EXPIRES, now=NOW)
    return time.perf_counter() - started


def _issue_more(store: Store, start: int, units: int) -> None:
    """``start`` more cards, numbered from ``start``, in the batch ``_issue`` made."""
    with store.transaction() as tx:
        tx.szm.insert_cards(
            chain_cards(
                BATCH, range(start, 2 * start), units=units, expires_at=EXPIRES, issued_at=NOW
            )
        )


def _advance_with_challenge(store: Store, card: bytes) -> bool:
    with store.hot_batch() as hot:
        if not hot.vendor.use_challenge(os.urandom(32), EXPIRES, NOW):
            return False
        return hot.szm.advance(card, 0, 1, b"\x03" * 32, None)


def _per_call(calls: int, step: Callable[[int], bool]) -> tuple[float, float]:
    """Median and p99 wall time per call, in microseconds."""
    times = []
    for i in range(calls):
        started = time.perf_counter()
        if not step(i):
            raise AssertionError("an uncontended advance lost")
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


def measure(target: str, calls: int) -> dict[str, tuple[float, float]]:
    with open_store(target) as store:
        _issue(store, calls, calls + 1)
        with store.transaction() as tx:
            tx.vendor.add_commitment(
                VendorCommitmentRow(
                    commitment_id=b"\x02" * 32,
                    commitment=b"c" * 100,
                    last_value=b"\x00" * 32,
                    spent=0,
                    length=calls + 1,
                    currency="EUR",
                    unit_micros=1000,
                    expires_at=2_000_000_000,
                )
            )
        anchor = b"\x03" * 32
        _issue_more(store, calls, calls + 1)
        return {
            "szm_advance": _per_call(
                calls, lambda i: advance_szm(store, i.to_bytes(16, "big"), 0, 1, anchor)
            ),
            # What the paywall writes since challenge ids are single use: the id's INSERT
            # and the compare-and-set in one hot batch (paywall/books.py ``_spend``).
            "szm_advance+challenge": _per_call(
                calls, lambda i: _advance_with_challenge(store, (calls + i).to_bytes(16, "big"))
            ),
            "payword_advance": _per_call(
                calls, lambda i: advance_payword(store, b"\x02" * 32, i, i + 1, anchor)
            ),
            "szm_card (read)": _per_call(
                calls, lambda i: store.szm_card(i.to_bytes(16, "big")) is not None
            ),
        }


def sqlite_bytes_per_card(cards: int) -> tuple[float, float]:
    """Bytes per SZM card row (file size after VACUUM / count) and insert time."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "size.sqlite"
        with open_store(str(path)) as store:
            pass
        empty = path.stat().st_size
        with open_store(str(path)) as store:
            seconds = _issue(store, cards, 100)
        import sqlite3

        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        return (path.stat().st_size - empty) / cards, seconds


def _report(name: str, results: dict[str, tuple[float, float]]) -> None:
    for what, (median, p99) in results.items():
        print(f"{name:28} {what:18} median {median:8.1f} us   p99 {p99:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=100_000)
    args = parser.parse_args()
    per_card, seconds = sqlite_bytes_per_card(args.cards)
    print(f"SQLite: {args.cards} SZM cards inserted in {seconds:.2f} s, {per_card:.1f} bytes/card")
    with tempfile.TemporaryDirectory() as tmp:
        _report("sqlite (WAL, sync=FULL)", measure(str(Path(tmp) / "bench.sqlite"), args.calls))
    for fsync in (True, False):
        try:
            server = PgServer.start_new(fsync=fsync)
        except PgUnavailable as exc:
            print(f"postgres: skipped ({exc})")
            return
        try:
            label = f"postgres (fsync={'on' if fsync else 'off'})"
            _report(label, measure(server.create_database(), args.calls))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
