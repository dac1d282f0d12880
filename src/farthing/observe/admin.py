"""The operator's listener: an admin ASGI app (metrics, health) served beside the main
one, in the same process and event loop, on its own loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_admin"]

log = logging.getLogger("farthing.admin")


class _AdminServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The main server owns the process's signals; this one stops when its task does.
        yield


async def serve_admin(app: ASGIApp, *, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``app`` until cancelled. With several workers only the first to bind the
    port serves it, the others log and go on; its scrape sums the counters of all
    workers (:func:`farthing.observe.metrics.families`)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = _AdminServer(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    except (OSError, SystemExit):
        log.warning("admin listener not started: %s:%d is taken", host, port)
