"""The information goods of ``farthing vendor serve DIR``: static files, never hidden ones.

The vendor keeps its config, secrets and database in ``DIR/.farthing/``; any path with a
segment that starts with a dot is answered 404, so none of that can be served (or sold).
:meth:`GoodsApp.offers` tells the paywall what is for sale, so a request for a missing
file is answered 404 without a charge.

Only a canonical path (:mod:`farthing.http.paths`) names a file, by one lookup, and the
file served is the one that lookup found: nothing normalises a variant (``//a``, ``a/``,
``%2F``) into another file, and a request the paywall passed on as not offered
(``NOT_OFFERED_SCOPE_KEY``) is a 404, never a file. So memory holds canonical paths only:
variants of one file are refused before they are looked up.

Small files (articles, the usual good) are answered from memory: Starlette's file response
costs over a millisecond per request here (bench/profile.py), more than the payment. A
cached file is re-read when its identity, modification time or size changes, looked at
(one ``stat``) at most once a second: a file changed or deleted is sold, and served from
memory, as it was for up to a second. Large files are streamed from the real path the
lookup checked, looked at on every request.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from farthing.core.errors import NotFound
from farthing.http.paths import canonical_path
from farthing.paywall.middleware import NOT_OFFERED_SCOPE_KEY

__all__ = ["GoodsApp"]

_SMALL: Final = 256 * 1024
_CACHE_BYTES: Final = 64 * 1024 * 1024
_MAX_KNOWN: Final = 100_000  # files remembered (with or without their bytes)
_FRESH_S: Final = 1.0  # a small file checked this recently is served without a stat


@dataclass(slots=True)
class _File:
    """What is known of one file under the folder, as of ``checked`` (monotonic seconds)."""

    identity: tuple[int, int, int, int]  # device, inode, mtime ns, size
    inside: bool  # its real path lies inside the folder (not a link out)
    real: str  # the real path checked, which is the one served
    body: bytes | None  # kept in memory if small and within the budget
    media_type: str
    checked: float
    # The in-memory answer's headers, as Starlette's ``Response(body, media_type=...)``
    # makes them (made once: :meth:`GoodsApp.quick` sends them as they are).
    headers: tuple[tuple[bytes, bytes], ...] = ()


class GoodsApp:
    def __init__(self, directory: Path, *, fresh: float = _FRESH_S) -> None:
        self._fresh = fresh
        self._root = directory.resolve()
        self._root_text = str(self._root)
        self._known: dict[str, _File] = {}  # by canonical path
        self._cached_bytes = 0

    @property
    def known(self) -> int:
        """How many files are remembered (with or without their bytes)."""
        return len(self._known)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def offers(self, method: str, path: str) -> bool:
        """Whether a ``method`` request for ``path`` is answered with a file (the paywall's
        ``offers`` hook): GET or HEAD of a regular, visible file inside the folder."""
        return method in ("GET", "HEAD") and self._file(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                "Method Not Allowed", status_code=405, headers={"allow": "GET, HEAD"}
            )
        else:
            found = None if scope.get(NOT_OFFERED_SCOPE_KEY) else self._requested(scope)
            if found is None:
                response = PlainTextResponse("Not Found", status_code=404)
            elif found.body is not None:
                response = Response(found.body, media_type=found.media_type)
            else:
                response = FileResponse(found.real, media_type=found.media_type)
        await response(scope, receive, send)

    async def quick(self, scope: Scope, path: str, send: Send) -> int | None:
        """The paywall's shortcut for a paid GET of canonical ``path`` (``QuickContent``):
        a file kept in memory is answered here as :meth:`__call__` would answer it (the
        same start and body messages), and its status returned; None (nothing sent) for
        anything else, which then goes the long way."""
        found = self._file(path)
        if found is None or found.body is None:
            return None
        start = {"type": "http.response.start", "status": 200, "headers": list(found.headers)}
        await send(start)
        await send({"type": "http.response.body", "body": found.body})
        return 200

    def _requested(self, scope: Scope) -> _File | None:
        try:
            path = canonical_path(scope.get("path", ""), scope.get("raw_path"))
        except NotFound:
            return None
        return self._file(path)

    def _file(self, path: str) -> _File | None:
        """The regular file inside the folder at canonical ``path``, or None.

        Both the paywall (``offers``) and the response ask, on every paid request, so the
        answer for a file kept in memory is trusted for ``fresh`` seconds after a ``stat``:
        a change is seen within a second by default. Whether the file lies inside the folder (a
        ``realpath``) is worked out again only when its identity changes, and a file
        replaced by a link elsewhere has another identity.
        """
        now = time.monotonic()
        known = self._known.get(path)
        if known is not None and known.body is not None and now - known.checked < self._fresh:
            return known if known.inside else None
        if _hidden(path) or not _canonical(path):
            return None  # never looked up, so never remembered
        full = os.path.join(self._root_text, path[1:])
        try:
            info = os.stat(full)
        except (OSError, ValueError):
            self._forget(path)
            return None
        if not stat.S_ISREG(info.st_mode):
            self._forget(path)
            return None
        identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        if known is None or known.identity != identity:
            known = self._learn(path, full, identity)
        known.checked = now
        return known if known.inside else None

    def _learn(self, path: str, full: str, identity: tuple[int, int, int, int]) -> _File:
        self._forget(path)
        if len(self._known) >= _MAX_KNOWN:
            self._known.clear()
            self._cached_bytes = 0
        real = os.path.realpath(full)
        inside = Path(real).is_relative_to(self._root)
        media_type = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        size = identity[3]
        body = None
        if inside and size <= _SMALL and self._cached_bytes + size <= _CACHE_BYTES:
            with contextlib.suppress(OSError):
                body = Path(real).read_bytes()
                self._cached_bytes += len(body)
        headers = () if body is None else tuple(Response(body, media_type=media_type).raw_headers)
        learned = _File(identity, inside, real, body, media_type, checked=0.0, headers=headers)
        self._known[path] = learned
        return learned

    def _forget(self, path: str) -> None:
        gone = self._known.pop(path, None)
        if gone is not None and gone.body is not None:
            self._cached_bytes -= len(gone.body)


def _hidden(path: str) -> bool:
    return any(segment.startswith(".") for segment in path.split("/") if segment)


def _canonical(path: str) -> bool:
    """``path`` is its own canonical form and names no folder (no trailing slash)."""
    try:
        return canonical_path(path, None) == path and not path.endswith("/")
    except NotFound:
        return False
