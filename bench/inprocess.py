"""Driving a vendor app in-process, as a server would (no sockets, no HTTP parser): one GET
request at a time, its status. Shared by bench/profile.py and bench/stale.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ASGIApp", "call", "scope"]

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope(path: str, authorization: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"accept", b"*/*")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(app: ASGIApp, path: str, authorization: str | None) -> int:
    """One request through the app, as a server would make it; its status."""
    status = 0
    requested = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # the client hangs up only after the whole response
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            finished.set()

    await app(scope(path, authorization), receive, send)
    return status
