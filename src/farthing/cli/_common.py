"""What every CLI command shares: a Rich console, and errors shown as a person needs them."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from farthing.core.errors import FarthingError

__all__ = ["console", "err_console", "fail", "money", "printable_target", "run_cli"]


class _Console(Console):
    """Measures the terminal (and ``COLUMNS``) each time it prints, never once at import:
    Rich fixes the width at construction when ``COLUMNS`` is set then."""

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr)
        self._width = None


def _flags_without_a_type() -> None:
    """Typer's Rich help (0.29) prints ``<bool>`` after every flag, ``--help`` included,
    as if it took a value. A flag takes none: show no type for it, as Click's plain help
    does. Applied once, when the CLI is imported."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_farthing", False):
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag or self.count else shown(self, ctx)

    display_type_rich._farthing = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()
console = _Console()
err_console = _Console(stderr=True)


def fail(message: str, *, hint: str | None = None, code: int = 1) -> typer.Exit:
    """Print an error (and what to do about it) and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err_console.print(f"[dim]hint:[/] {escape(hint)}")
    return typer.Exit(code)


def money(micros: int, currency: str) -> str:
    """``2500`` EUR micros -> ``"EUR 0.0025"``: whole units, at least two decimals, no float."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{currency} {sign}{whole:,}.{digits}"


def printable_target(target: str) -> str:
    """A database path or DSN as it may be shown: a DSN's password replaced by ``***``."""
    if "://" not in target:
        return target
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(target).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(the database URL)"  # unparseable: show none of it


def run_cli(app: typer.Typer) -> None:
    try:
        app()
    except FarthingError as error:
        # The code's name (e.g. MISUSE) means nothing to a person: the message alone.
        err_console.print(f"[bold red]error:[/] {escape(error.message)}")
        sys.exit(1)
