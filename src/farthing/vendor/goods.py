"""The information goods of ``farthing vendor serve DIR``: static files, never hidden ones.

The vendor keeps its config, secrets and database in ``DIR/.farthing/``; any path with a
segment that starts with a dot is answered 404, so none of that can be served (or sold).
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["GoodsApp"]


class GoodsApp:
    def __init__(self, directory: Path) -> None:
        self._files = StaticFiles(directory=directory)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if any(segment.startswith(".") for segment in path.split("/") if segment):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self._files(scope, receive, send)
