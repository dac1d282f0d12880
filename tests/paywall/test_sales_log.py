"""The sales log: one line per sale, the lines of the sales within its flush delay written
with one ``write`` (one open, write and close per sale cost ~30 us of a paid request's
CPU); what is pending at shutdown is written by ``aclose``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from farthing.paywall import sales
from farthing.paywall.sales import SalesLine, SalesLog, summarise


def line(n: int) -> SalesLine:
    return SalesLine(
        at=1_800_000_000 + n, method="szm:chain", path=f"/a/{n}.txt", units=1, micros=1000,
        currency="EUR",
    )  # fmt: skip


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = os.write

    def write(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(sales.os, "write", write)
    return sizes


def test_sales_within_the_flush_delay_are_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 sales made together: one write of 40 lines, on disk once the delay is over; the
    next sales are a write of their own; ``aclose`` writes what is pending at once."""
    log = SalesLog(tmp_path / "sales.jsonl", flush_delay=0.05)
    writes = counting_writes(monkeypatch)

    async def sell(first: int, count: int) -> int:
        for n in range(first, first + count):
            log.append(line(n))
            await asyncio.sleep(0)  # other requests' turns: still the same write
        on_disk = len(list(log.lines()))  # not yet: written after the delay
        await asyncio.sleep(0.2)
        return on_disk

    async def main() -> list[int]:
        done = [await sell(0, 40), await sell(40, 3)]
        log.append(line(43))
        await log.aclose()
        return done

    assert asyncio.run(main()) == [0, 40]
    assert len(writes) == 3
    read = list(log.lines())
    assert read == [line(n) for n in range(44)]
    assert summarise(read)[0].count == 1
    assert (tmp_path / "sales.jsonl").stat().st_mode & 0o777 == 0o600


def test_outside_an_event_loop_a_sale_is_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SalesLog(tmp_path / "sales.jsonl")
    writes = counting_writes(monkeypatch)
    log.append(line(1))
    assert list(log.lines()) == [line(1)]
    assert len(writes) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/a/1.txt",
        '/a/"quoted"\\back.txt',
        "/a/caf\u00e9.txt",  # escaped by json (ensure_ascii)
        "/a/\x7f.txt",  # DEL: json escapes it, orjson would not
        "/a/\U0001f600.txt",  # a surrogate pair in json's escape
    ],
)
def test_a_sales_line_is_json_dumps_of_its_members(tmp_path: Path, path: str) -> None:
    """Every line is the compact ``json.dumps`` of the sale's members (what ``vendor
    stats`` and other readers parse), whichever encoder wrote it."""
    log = SalesLog(tmp_path / "sales.jsonl")
    sale = SalesLine(at=1_800_000_000, method="szm:chain", path=path, units=2, micros=2**70,
                     currency="EUR")  # fmt: skip
    cheap = SalesLine(at=1, method="payword", path=path, units=1, micros=1000, currency="EUR")
    for each in (sale, cheap):
        log.append(each)  # outside an event loop: written at once
    members = [
        {"at": s.at, "method": s.method, "path": s.path, "units": s.units,
         "micros": s.micros, "currency": s.currency}
        for s in (sale, cheap)
    ]  # fmt: skip
    expected = "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in members)
    assert (tmp_path / "sales.jsonl").read_text(encoding="ascii") == expected
    assert list(log.lines()) == [sale, cheap]
