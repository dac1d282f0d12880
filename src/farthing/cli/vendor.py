"""`farthing vendor` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="The vendor.", no_args_is_help=True)


@app.command("version")
def version() -> None:
    """Print the farthing version."""
    from farthing import __version__
    from farthing.cli._common import console

    console.print(__version__)
