"""The sales log: one line per sale, the lines of one pass of the event loop written with
one ``write`` (one open, write and close per sale cost ~20 us of a paid request's CPU)."""

from __future__ import annotations

import asyncio
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


def test_sales_of_one_loop_pass_are_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 sales made together (40 requests answered in one pass): one write of 40 lines,
    on disk once the pass is over; the next pass's sales are a write of their own."""
    log = SalesLog(tmp_path / "sales.jsonl")
    writes = counting_writes(monkeypatch)

    async def sell(first: int, count: int) -> int:
        for n in range(first, first + count):
            log.append(line(n))
        on_disk = len(list(log.lines()))  # not yet: written right after this pass
        await asyncio.sleep(0)
        return on_disk

    async def main() -> list[int]:
        return [await sell(0, 40), await sell(40, 3)]

    assert asyncio.run(main()) == [0, 40]
    assert len(writes) == 2
    read = list(log.lines())
    assert read == [line(n) for n in range(43)]
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
