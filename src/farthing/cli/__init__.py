"""The ``farthing`` command: ``issuer``, ``vendor``, ``wallet`` and ``demo``.

Each group lives in its own module and is registered here; nothing runs at import time.
"""

from __future__ import annotations

import typer

from farthing.cli._common import run_cli

__all__ = ["app", "main"]


def build_app() -> typer.Typer:
    root = typer.Typer(
        name="farthing",
        help="Micropayments for information goods over HTTP 402.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    from farthing.cli import demo, issuer, vendor, wallet

    root.add_typer(issuer.app, name="issuer")
    root.add_typer(vendor.app, name="vendor")
    root.add_typer(wallet.app, name="wallet")
    root.command("demo")(demo.demo)
    return root


app = build_app()


def main() -> None:
    run_cli(app)
