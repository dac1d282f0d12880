"""Server logging that an attacker cannot flood: the same warning or error is written at
most ``burst`` times per ``per`` seconds; the next one written after that says how many
were dropped.

"The same" is the same logging call (logger, level, source file and line) with the same
exception type, not the same text: asyncio's "socket.accept() out of system resource"
names a file descriptor in its text, and the review's file-handle attack wrote it, with
its traceback, some thousand times a second. Records below WARNING (uvicorn's access
log, start-up messages) are never dropped.

:func:`rate_limited_log_config` is uvicorn's logging configuration with this filter on its
``default`` handler, which also becomes the root logger's handler, so that records of
asyncio and of farthing's own loggers pass the same filter (before, they went to Python's
last-resort handler, unfiltered).

It also sends ``farthing.access`` (:mod:`farthing.observe.access`: one JSON line per
request) to standard output through a handler of its own, unfiltered, so that every
request and every 5xx has its line; ``access_log=False`` keeps only the 5xx lines.
uvicorn's own access log is replaced by it (see :mod:`farthing.serving`). That handler
(:class:`LoopBufferedHandler`) writes the lines of one pass of the event loop together,
right after it: a ``write`` per line cost ~50 us of a paid request's CPU on a busy disk
(bench/paidcpu.py).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_PER",
    "LoopBufferedHandler",
    "RateLimitedLog",
    "rate_limited_log_config",
]

DEFAULT_BURST: Final = 10
DEFAULT_PER: Final = 60.0
_MAX_KEYS: Final = 1024  # logging calls tracked; the least recently seen is forgotten

_Key = tuple[str, int, str, int, str]


@dataclass(slots=True)
class _Window:
    started: float
    written: int = 0
    dropped: int = 0


class RateLimitedLog(logging.Filter):
    """A handler filter: at most ``burst`` records per logging call and ``per`` seconds."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        per: float = DEFAULT_PER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._per = per
        self._clock = clock
        self._windows: OrderedDict[_Key, _Window] = OrderedDict()
        self._lock = threading.Lock()  # records come from worker threads too

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        with self._lock:
            window = self._window(_key(record), now)
            if now - window.started >= self._per:
                if window.dropped:
                    _note_dropped(record, window.dropped, self._per)
                window.started, window.written, window.dropped = now, 0, 0
            if window.written >= self._burst:
                window.dropped += 1
                return False
            window.written += 1
            return True

    def _window(self, key: _Key, now: float) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(started=now)
            if len(self._windows) > _MAX_KEYS:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return window


class LoopBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, inside a running event loop, keeps the formatted lines of
    one pass of the loop and writes them with one ``write`` and one flush right after it
    (as payments share a commit). Outside a loop (another thread, start-up), a line is
    written at once. ``flush`` (and so ``logging.shutdown``) writes what is kept."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            if loop is not None and self._scheduled:
                return
            if loop is not None:
                self._scheduled = True
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            data, self._pending = "".join(self._pending), []
            if data:
                self.stream.write(data)
            super().flush()


def _key(record: logging.LogRecord) -> _Key:
    exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
    return (record.name, record.levelno, record.pathname, record.lineno, exc_type)


def _note_dropped(record: logging.LogRecord, dropped: int, per: float) -> None:
    record.msg = f"{record.getMessage()} [{dropped} more like this dropped in the last {per:g} s]"
    record.args = None


def rate_limited_log_config(
    base: dict[str, Any],
    *,
    burst: int = DEFAULT_BURST,
    per: float = DEFAULT_PER,
    access_log: bool = True,
) -> dict[str, Any]:
    """``base`` (uvicorn's ``LOGGING_CONFIG``) with the filter on its ``default`` handler
    and that handler on the root logger (WARNING and above), and farthing's access log."""
    config = copy.deepcopy(base)
    config.setdefault("formatters", {})["farthing_access"] = {"format": "%(message)s"}
    config["handlers"]["farthing_access"] = {
        "class": f"{__name__}.LoopBufferedHandler",
        "formatter": "farthing_access",
        "stream": "ext://sys.stdout",
    }
    config.setdefault("loggers", {})["farthing.access"] = {
        "handlers": ["farthing_access"],
        "level": "INFO" if access_log else "ERROR",
        "propagate": False,
    }
    config.setdefault("filters", {})["rate_limited"] = {
        "()": f"{__name__}.RateLimitedLog",
        "burst": burst,
        "per": per,
    }
    config["handlers"]["default"].setdefault("filters", []).append("rate_limited")
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config
