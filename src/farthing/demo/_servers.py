"""ASGI apps served by uvicorn in a background thread, on a free loopback port."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from farthing.core.errors import ErrorCode, LocalProtocolError

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """``with BackgroundServer(app) as base_url: ...``: binds 127.0.0.1 on a free port
    (port 0, so no race for it) and always stops when the block ends."""

    def __init__(self, app: ASGIApp, *, name: str) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.base_url = ""

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LocalProtocolError("a demo server did not start", code=ErrorCode.INTERNAL)
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
