"""Serve an ASGI app factory under uvicorn: what ``farthing vendor serve`` and ``farthing
issuer serve`` run, and ``python -m farthing.serving FACTORY [--workers N] ...`` for the
benchmarks and tests.

Why not ``uvicorn.run``: with more than one worker, uvicorn binds the listening socket
itself with ``proto`` 0. Accepted connections inherit it, and asyncio turns Nagle's
algorithm off (``TCP_NODELAY``) only on sockets that say ``IPPROTO_TCP``; so each
keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn
issue #3149; measured here: 22 requests/s on one connection instead of ~3,000). The
listening socket is bound here, as TCP, and handed to uvicorn's supervisor.

Every worker runs uvicorn's httptools protocol (the C parser llhttp) on uvloop: on this
machine that costs the vendor ~85 us of CPU per free request against ~195 us with the
pure-Python h11 parser on asyncio, and ~130 us less per paid one (bench/e2e.py measures
it; ``http="h11"`` keeps the old one). uvloop sets ``TCP_NODELAY`` on every TCP connection
itself. Against slow and greedy clients (docs/scaling.md), the protocol runs under
:mod:`farthing.guard` (request head and body timeouts, a cap on open connections, a
request head of at most 16 KiB) and logs through :mod:`farthing.logs` (the same
warning at most 10 times a minute). At start the soft limit on file handles is raised
to the hard limit, and the connection cap and the listen backlog are fitted below it
(:func:`fit_to_file_limit`), so that ``accept()`` never fails for want of a file handle.

With several workers, each counts its own requests and payments: the server points
prometheus_client's multiprocess mode at a fresh, empty folder (``PROMETHEUS_MULTIPROC_DIR``,
set before the workers start, removed when the server stops), so that a scrape of any
worker reports the sum over all of them (:func:`farthing.observe.metrics.families`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from farthing.guard import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    HTTP_PROTOCOLS,
    ConnectionLimits,
)

__all__ = [
    "RESERVED_FILES",
    "Capacity",
    "fit_to_file_limit",
    "listening_socket",
    "main",
    "raise_file_limit",
    "serve_factory",
    "shared_metrics_folder",
]

RESERVED_FILES: Final = 64  # listening socket, logs, database, the issuer client, imports
_MAX_BACKLOG: Final = 2048  # uvicorn's default


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one worker may open: ``backlog`` (the listen queue, and how many connections
    asyncio accepts at one wake-up) and ``max_connections``; ``lowered`` if the requested
    cap did not fit."""

    backlog: int
    max_connections: int
    lowered: bool


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (workers inherit it); the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def fit_to_file_limit(files: int, requested: int | None) -> Capacity:
    """The backlog and connection cap that ``files`` handles per process can hold.

    asyncio accepts up to ``backlog`` connections at one wake-up, before any reaches the
    protocol, and the protocol closes the excess a few loop turns later: room is left for
    four such batches. Each connection may hold a second handle (a file being sent, a
    database connection), so connections get half of what remains."""
    spare = max(0, files - RESERVED_FILES)
    backlog = max(16, min(_MAX_BACKLOG, spare // 8))
    room = max(1, (spare - 4 * backlog) // 2)
    wanted = requested if requested is not None else DEFAULT_MAX_CONNECTIONS
    return Capacity(backlog, min(wanted, room), lowered=requested is not None and requested > room)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (``IPPROTO_TCP``, so connections accepted from it get
    ``TCP_NODELAY`` from asyncio), inheritable by worker processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_factory(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "warning",
    access_log: bool = True,
    graceful_shutdown: int | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_connections: int | None = None,
    http: str = "httptools",
) -> None:
    """Run ``factory`` (``module:function`` returning the ASGI app; each worker calls it)
    until interrupted. The limits are per worker; ``max_connections`` None: 1,000, or
    fewer if the file limit cannot hold that many. ``http``: ``httptools`` (on uvloop)
    or ``h11`` (on asyncio), both guarded."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from farthing.guard import GuardedConfig
    from farthing.logs import rate_limited_log_config

    files = raise_file_limit()
    capacity = fit_to_file_limit(files, max_connections)
    limits = ConnectionLimits(
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=capacity.max_connections,
    )
    config = GuardedConfig(
        factory,
        limits=limits,
        http=http,
        loop="uvloop" if http == "httptools" else "asyncio",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=rate_limited_log_config(uvicorn.config.LOGGING_CONFIG, access_log=access_log),
        access_log=False,  # farthing.access writes one structured line per request instead
        timeout_graceful_shutdown=graceful_shutdown,
        backlog=capacity.backlog,
    )
    if capacity.lowered:
        logging.getLogger("uvicorn.error").warning(
            "max_connections lowered to %d: %d file handles per process hold no more",
            capacity.max_connections,
            files,
        )
    if workers == 1:
        uvicorn.Server(config).run()  # asyncio binds the socket itself, as TCP
        return
    sock = listening_socket(host, port)
    try:
        with shared_metrics_folder():
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


@contextlib.contextmanager
def shared_metrics_folder() -> Iterator[str]:
    """A fresh folder for the workers' metric files, named in the environment the workers
    inherit; counts of an earlier start (or another server) never leak into this one's."""
    from farthing.observe.metrics import MULTIPROC_ENV

    folder = tempfile.mkdtemp(prefix="farthing-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield folder
    finally:
        if before is None:
            del os.environ[MULTIPROC_ENV]
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m farthing.serving", description=__doc__)
    parser.add_argument("factory", help="module:function returning the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None)
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT)
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--http", choices=sorted(HTTP_PROTOCOLS), default="httptools")
    args = parser.parse_args(argv)
    serve_factory(
        args.factory,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        graceful_shutdown=args.timeout_graceful_shutdown,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        http=args.http,
    )


if __name__ == "__main__":
    main()
