"""The limits both `farthing vendor serve` and `farthing issuer serve` take (per worker
process; docs/scaling.md). Defaults live in :mod:`farthing.guard`; None here means "the
default", so that `--help` does not import uvicorn."""

from __future__ import annotations

from typing import Annotated, Any

import typer

HeaderTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.1,
        help="Seconds a client has to send a request head (default 10).",
        show_default=False,
    ),
]
BodyTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.1,
        help="Seconds a client has to send a request body (default 30).",
        show_default=False,
    ),
]
MaxConnections = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Open connections per worker (default 1000, fewer if the file limit is lower).",
        show_default=False,
    ),
]


def limits(
    header_timeout: float | None, body_timeout: float | None, max_connections: int | None
) -> dict[str, Any]:
    """The keyword arguments of :func:`farthing.serving.serve_factory` that were given."""
    given = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
    }
    return {name: value for name, value in given.items() if value is not None}
