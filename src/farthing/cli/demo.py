"""`farthing demo`: the main job, end to end on SQLite and loopback, with a summary."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.table import Table

from farthing.cli._common import console, fail
from farthing.core.errors import FarthingError

if TYPE_CHECKING:
    # Imported by the command only: the demo pulls in the issuer's app, which every
    # `farthing` command (and each worker of `vendor serve`, which re-imports the CLI)
    # would otherwise load at start.
    from farthing.demo import DemoReport


def _micros(value: int, currency: str = "EUR") -> str:
    return f"{value / 1_000_000:.4f} {currency}"


# The demo's output fits a terminal this wide (and is drawn no wider).
WIDTH: Final = 100
# Headers every HTTP message carries; the exchange shows the rest, as sent.
_ROUTINE: Final = frozenset(
    {"host", "accept", "accept-encoding", "connection", "user-agent", "date", "server",
     "content-length", "last-modified", "etag", "accept-ranges"}
)  # fmt: skip


def _exchange(report: DemoReport) -> list[str]:
    """The first purchase as it crossed the loopback: each message's start line and its
    headers (routine ones left out), each line cut to the width."""
    lines = [f"The first purchase, on the wire ({len(report.exchange)} messages):"]
    for number, message in enumerate(report.exchange):
        arrow = ">" if number % 2 == 0 else "<"
        lines.append(_cut(f"{arrow} {message.start}"))
        for name, value in message.headers:
            if name.lower() not in _ROUTINE:
                lines.append(_cut(f"{arrow} {name}: {value}"))
    return lines


def _cut(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def _purchases(report: DemoReport) -> Table:
    table = Table(
        title=f"Every purchase ({len(report.purchases)})",
        caption="asked 402 no: paid up front, from the challenge of an earlier 402",
    )
    for column in ("method", "resource", "price EUR", "charged EUR", "asked 402", "body", "time"):
        # A long path folds onto a second line; nothing else is cut.
        table.add_column(column, no_wrap=column != "resource", overflow="fold")
    for p in report.purchases:
        table.add_row(
            p.method, p.path, f"{p.price_micros / 1_000_000:.4f}",
            f"{p.charged_micros / 1_000_000:.4f}",
            "no" if p.up_front else "yes",
            "sealed" if p.sealed else "plain", f"{p.seconds * 1000:.0f} ms",
        )  # fmt: skip
    return table


def _cards(report: DemoReport) -> Table:
    table = Table(title="Cards and accounts, before -> after")
    for column in ("what", "method", "before", "after"):
        table.add_column(column)
    for c in report.cards:
        table.add_row(c.label, c.method, _micros(c.before_micros, c.currency),
                      _micros(c.after_micros, c.currency))  # fmt: skip
    for name, (before, after) in report.accounts.items():
        table.add_row(name, "", _micros(before), _micros(after))
    return table


def _verify(report: DemoReport) -> Table:
    table = Table(
        title="Vendor: verify and record, mean per payment",
        min_width=70,
        caption="includes the durable write; hll:mac includes the bank's online check, and "
        "payword the first payment's two signature checks",
    )
    table.add_column("method")
    table.add_column("time")
    for method, ms in sorted(report.verify_ms.items()):
        table.add_row(method, f"{ms:.2f} ms")
    return table


def _checks(report: DemoReport) -> Table:
    table = Table(title="Checks")
    for column in ("", "check", "detail"):
        table.add_column(column)
    for check in report.checks:
        table.add_row("[green]ok[/]" if check.ok else "[red]FAILED[/]", check.name, check.detail)
    return table


def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Keep every file here (default: a temp folder)")
    ] = None,
) -> None:
    """Issue cards of every kind, run an issuer and a vendor on loopback, buy with every
    method, attempt a double spend, clear deposits and check the ledger."""
    workdir = directory or Path(tempfile.mkdtemp(prefix="farthing-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with console.status("starting") as status:
            from farthing.demo import run_demo

            report = run_demo(workdir, step=lambda text: status.update(text))
    except FarthingError as error:
        raise fail(f"the demo stopped: {error.message}") from None
    finally:
        if directory is None:
            shutil.rmtree(workdir, ignore_errors=True)
    width = min(console.width, WIDTH)
    console.print(f"HLL card: {report.card_device}", width=width)
    for line in _exchange(report):
        console.print(line, markup=False, highlight=False, width=width, no_wrap=True)
    for table in (_purchases(report), _cards(report), _verify(report), _checks(report)):
        console.print(table, width=width)
    verdict = "[green]all checks held[/]" if report.ok else "[red]some checks FAILED[/]"
    console.print(
        f"{verdict} in {report.seconds:.1f} s" + (f"; files in {workdir}" if directory else "")
    )
    if not report.ok:
        raise typer.Exit(1)
