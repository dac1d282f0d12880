"""The `farthing` command: `issuer`, `vendor`, `wallet` and `demo`.

Each group lives in its own module and is registered here; nothing runs at import time.
"""

from __future__ import annotations

from typing import Annotated

import typer

from farthing.cli._common import run_cli

__all__ = ["app", "main"]


def _print_version(wanted: bool) -> None:
    if wanted:
        from farthing import __version__

        typer.echo(f"farthing {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Micropayments for information goods over HTTP 402.

    Example: farthing demo
    """


def build_app() -> typer.Typer:
    root = typer.Typer(name="farthing", no_args_is_help=True, pretty_exceptions_enable=False)
    root.callback()(_root)
    from farthing.cli import demo, issuer, vendor, wallet

    root.add_typer(issuer.app, name="issuer")
    root.add_typer(vendor.app, name="vendor")
    root.add_typer(wallet.app, name="wallet")
    root.command("demo")(demo.demo)
    return root


app = build_app()


def main() -> None:
    run_cli(app)
