"""The information goods of ``farthing vendor serve DIR``: static files, never hidden ones.

The vendor keeps its config, secrets and database in ``DIR/.farthing/``; any path with a
segment that starts with a dot is answered 404, so none of that can be served (or sold).
:meth:`GoodsApp.offers` tells the paywall what is for sale, so a request for a missing
file is answered 404 without a charge.

Small files (articles, the usual good) are answered from memory: Starlette's file response
costs over a millisecond per request here (bench/profile.py), more than the payment. A
cached file is re-read when its modification time or size changes; large files, and
anything else, go to Starlette's ``StaticFiles``.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from pathlib import Path
from typing import Final

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["GoodsApp"]

_SMALL: Final = 256 * 1024
_CACHE_BYTES: Final = 64 * 1024 * 1024
_MAX_KNOWN: Final = 100_000  # paths whose place inside the folder is remembered


class GoodsApp:
    def __init__(self, directory: Path) -> None:
        self._root = directory.resolve()
        self._files = StaticFiles(directory=directory)
        self._cache: dict[str, tuple[tuple[int, int], bytes, str]] = {}
        self._cached_bytes = 0
        self._root_text = str(self._root)
        self._inside: dict[tuple[str, int, int], bool] = {}

    def offers(self, method: str, path: str) -> bool:
        """Whether a ``method`` request for ``path`` is answered with a file (the paywall's
        ``offers`` hook): GET or HEAD of a regular, visible file inside the folder.

        It runs on every priced request, so it costs one ``stat``: whether the file lies
        inside the folder is resolved once per (path, file identity), and a file replaced
        by a link elsewhere has another identity.
        """
        if method not in ("GET", "HEAD") or _hidden(path):
            return False
        full = os.path.join(self._root_text, path.lstrip("/"))
        try:
            info = os.stat(full)
        except (OSError, ValueError):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        identity = (full, info.st_dev, info.st_ino)
        inside = self._inside.get(identity)
        if inside is None:
            if len(self._inside) >= _MAX_KNOWN:
                self._inside.clear()
            inside = Path(os.path.realpath(full)).is_relative_to(self._root)
            self._inside[identity] = inside
        return inside

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if _hidden(path):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        small = self._small_file(path) if scope.get("method") in ("GET", "HEAD") else None
        if small is None:
            try:
                await self._files(scope, receive, send)
            except HTTPException as error:  # answered here, wherever the app is mounted
                response = PlainTextResponse(error.detail, status_code=error.status_code)
                await response(scope, receive, send)
            return
        body, media_type = small
        await Response(body, media_type=media_type)(scope, receive, send)

    def _small_file(self, path: str) -> tuple[bytes, str] | None:
        """The file's bytes and type if it is a small regular file inside the folder."""
        target = self._root / path.lstrip("/")
        try:
            info = target.stat()
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > _SMALL:
            return None
        resolved = target.resolve()
        if not resolved.is_relative_to(self._root):
            return None  # a link out of the folder: let StaticFiles refuse it
        key, version = str(resolved), (info.st_mtime_ns, info.st_size)
        entry = self._cache.get(key)
        if entry is not None and entry[0] == version:
            return entry[1], entry[2]
        return self._load(key, resolved, version)

    def _load(self, key: str, path: Path, version: tuple[int, int]) -> tuple[bytes, str] | None:
        try:
            body = path.read_bytes()
        except OSError:
            return None
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        if self._cached_bytes + len(body) <= _CACHE_BYTES:
            old = self._cache.pop(key, None)
            self._cached_bytes += len(body) - (len(old[1]) if old is not None else 0)
            self._cache[key] = (version, body, media_type)
        return body, media_type


def _hidden(path: str) -> bool:
    return any(segment.startswith(".") for segment in path.split("/") if segment)
