"""Serve an ASGI app factory under uvicorn: what ``farthing vendor serve`` and ``farthing
issuer serve`` run, and ``python -m farthing.serving FACTORY [--workers N] ...`` for the
benchmarks and tests.

Why not ``uvicorn.run``: with more than one worker, uvicorn binds the listening socket
itself with ``proto`` 0. Accepted connections inherit it, and asyncio turns Nagle's
algorithm off (``TCP_NODELAY``) only on sockets that say ``IPPROTO_TCP``; so each
keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn
issue #3149; measured here: 22 requests/s on one connection instead of ~3,000). The
listening socket is bound here, as TCP, and handed to uvicorn's supervisor.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

__all__ = ["listening_socket", "main", "serve_factory"]


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
) -> None:
    """Run ``factory`` (``module:function`` returning the ASGI app; each worker calls it)
    until interrupted."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_shutdown,
    )
    if workers == 1:
        uvicorn.Server(config).run()  # asyncio binds the socket itself, as TCP
        return
    sock = listening_socket(host, port)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m farthing.serving", description=__doc__)
    parser.add_argument("factory", help="module:function returning the ASGI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None)
    args = parser.parse_args(argv)
    serve_factory(
        args.factory,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        graceful_shutdown=args.timeout_graceful_shutdown,
    )


if __name__ == "__main__":
    main()
