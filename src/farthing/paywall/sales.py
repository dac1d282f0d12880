"""The vendor's sales log: one JSON line per good sold, for ``farthing vendor stats``.

:class:`SalesRecorder` wraps the content app behind the paywall. The paywall hands the
content app the request's settlement (``scope[PAYMENT_SCOPE_KEY]``); when the content
answers it with a 2xx, the recorder appends one line to the log::

    {"at": 1765000000, "method": "szm:chain", "path": "/articles/a.txt", "units": 2,
     "micros": 2000, "currency": "EUR"}

``micros``/``currency`` are the route's price (what the buyer was asked). A retried
request (a lost answer sent again, served without a new charge) is not a sale and is not
logged; neither is a request the content answered with an error. The lines of the sales
made within :data:`FLUSH_DELAY` seconds are written together (the first sale schedules
the write), with one ``write`` on a file opened with ``O_APPEND``, so several workers may
share the log and no line is torn by another's; the server's shutdown writes what is
pending (:meth:`SalesLog.aclose`). One ``open``, ``write`` and ``close`` per sale cost
~30 us of a paid request's CPU (bench/paidcpu.py). The log is a report, not the books: a
crash between the payment and the line loses the line (at most FLUSH_DELAY seconds of
them), never money (the payment is recorded by the store first).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.clock import Clock
from farthing.paywall.methods.base import Settlement
from farthing.paywall.middleware import PAYMENT_SCOPE_KEY, QuickContent
from farthing.paywall.pricing import PriceTable

__all__ = ["SalesLine", "SalesLog", "SalesRecorder", "SalesRow", "summarise"]

SALES_LOG_NAME: Final = "sales.jsonl"
FLUSH_DELAY: Final = 0.1  # seconds; what a crash may lose of the report


@dataclass(frozen=True, slots=True, kw_only=True)
class SalesLine:
    at: int
    method: str
    path: str
    units: int
    micros: int
    currency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SalesRow:
    """Sales of one path with one method: how many, units and money."""

    method: str
    path: str
    currency: str
    count: int
    units: int
    micros: int


class SalesLog:
    """An append-only JSON-lines file (mode 0600). Inside an event loop, the lines appended
    within ``flush_delay`` seconds are written together; outside one, at once."""

    def __init__(self, path: Path, *, flush_delay: float = FLUSH_DELAY) -> None:
        self.path = path
        self._flush_delay = flush_delay
        self._pending: list[str] = []
        self._scheduled = False

    def append(self, line: SalesLine) -> None:
        self._pending.append(_json_line(line))
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self._flush_delay, self.flush)

    async def aclose(self) -> None:
        """Write what is pending (the server's shutdown)."""
        self.flush()

    def flush(self) -> None:
        """Write the pending lines with one ``write``."""
        self._scheduled = False
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)

    def lines(self) -> Iterable[SalesLine]:
        """Every well-formed line (a torn last line, from a crash mid-write, is skipped)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for raw in text.splitlines():
            try:
                obj = json.loads(raw)
                yield SalesLine(
                    at=int(obj["at"]), method=str(obj["method"]), path=str(obj["path"]),
                    units=int(obj["units"]), micros=int(obj["micros"]),
                    currency=str(obj["currency"]),
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue


def _json_line(line: SalesLine) -> str:
    """The line's JSON and a newline: ``json.dumps`` of its members (compact, ASCII). For
    printable ASCII text orjson writes the very same bytes, ~5x faster (a sale per paid
    request); anything else (an escape of a non-ASCII path, an integer past 64 bits) goes
    through ``json``."""
    members = {
        "at": line.at, "method": line.method, "path": line.path, "units": line.units,
        "micros": line.micros, "currency": line.currency,
    }  # fmt: skip
    if _printable_ascii(line.method, line.path, line.currency):
        try:
            return orjson.dumps(members, option=orjson.OPT_APPEND_NEWLINE).decode("ascii")
        except orjson.JSONEncodeError:
            pass
    return json.dumps(members, separators=(",", ":")) + "\n"


def _printable_ascii(*texts: str) -> bool:
    return all(text.isascii() and text.isprintable() for text in texts)


def summarise(lines: Iterable[SalesLine]) -> list[SalesRow]:
    """Sales by (method, path, currency), most money first."""
    totals: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    for line in lines:
        key = (line.method, line.path, line.currency)
        count, units, micros = totals.get(key, (0, 0, 0))
        totals[key] = (count + 1, units + line.units, micros + line.micros)
    rows = [
        SalesRow(method=m, path=p, currency=c, count=n, units=u, micros=v)
        for (m, p, c), (n, u, v) in totals.items()
    ]
    return sorted(rows, key=lambda row: (-row.micros, row.method, row.path))


class SalesRecorder:
    """ASGI: the content app, logging each paid 2xx answer to ``log``."""

    def __init__(
        self,
        app: ASGIApp,
        log: SalesLog,
        *,
        prices: PriceTable,
        clock: Clock,
        quick: QuickContent | None = None,
    ) -> None:
        """``quick``: the app's shortcut (``QuickContent``), if it has one; then
        :meth:`quick` is this recorder's."""
        self.app = app
        self._log = log
        self._prices = prices
        self._clock = clock
        self._inner_quick = quick

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settlement = scope.get(PAYMENT_SCOPE_KEY) if scope["type"] == "http" else None
        if not isinstance(settlement, Settlement) or settlement.retried:
            await self.app(scope, receive, send)
            return
        statuses: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)
        if statuses and 200 <= statuses[0] < 300:
            self._record(scope["path"], settlement)

    async def quick(self, scope: Scope, path: str, send: Send) -> int | None:
        """The app's shortcut answer (the paywall's ``QuickContent``), logged as
        :meth:`__call__` logs it: after the answer is sent, a paid 2xx that is no retry."""
        if self._inner_quick is None:
            return None
        status = await self._inner_quick(scope, path, send)
        if status is not None and 200 <= status < 300:
            settlement = scope.get(PAYMENT_SCOPE_KEY)
            if isinstance(settlement, Settlement) and not settlement.retried:
                self._record(scope["path"], settlement)
        return status

    def _record(self, path: str, settlement: Settlement) -> None:
        route = self._prices.match(path)
        micros, currency = (0, "") if route is None else (route.price.micros, route.price.currency)
        self._log.append(
            SalesLine(
                at=self._clock.now(), method=settlement.method, path=path,
                units=settlement.units, micros=micros, currency=currency,
            )
        )  # fmt: skip
