"""What uvicorn lacks against slow clients, added to its HTTP protocols: a timeout for the
request head, a timeout for the request body and a cap on open connections.

uvicorn (0.55, h11) closes a connection idle for ``timeout_keep_alive`` seconds after a
response, but once a byte of the next request has come it waits for the rest of the head
and for the body for ever, and it accepts connections until ``accept()`` fails. In the
review, 2,000 connections that never finished their heads were held as long as the
attacker liked, and with 1,024 file handles they stopped all honest traffic.

:class:`GuardedH11Protocol` is uvicorn's own protocol plus bookkeeping: each worker has one
:class:`Guard` holding the connections that wait for a request head and those that wait for
a request body, each set in the order the waits began, with their deadlines. Every
connection of one set has the same timeout, so the first in the set expires first: a sweep
every ``tick`` seconds closes the expired ones from the front and stops at the first that
is not. Per request, a connection only moves itself between the sets (ordered-dict
operations, no timer, no copy of anything).

At the cap, a new connection closes the one that has waited longest for its request head:
an honest client sends its head right after connecting, so the oldest waiter is a slow
one. If no connection waits for a head (all are busy), the new connection is closed.

Two protocols carry the guard: :class:`GuardedHttpToolsProtocol` (uvicorn's httptools
protocol, the C parser llhttp; the default of :mod:`farthing.serving`, under uvloop) and
:class:`GuardedH11Protocol` (uvicorn's pure-Python h11 protocol). The httptools one also
caps a request head at :data:`MAX_HEAD` bytes, as h11 does by itself (its 16 KiB limit on
an incomplete event): llhttp has no limit, and httptools would gather a header value
without end (it is handed over only when complete). The bytes of an unfinished head are
counted as they come, so the head held in memory is at most one read past the cap.
A head over the cap is answered 400 and the connection closed, as h11's is.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = [
    "HTTP_PROTOCOLS",
    "MAX_HEAD",
    "ConnectionLimits",
    "Guard",
    "GuardedConfig",
    "GuardedH11Protocol",
    "GuardedHttpToolsProtocol",
]

logger = logging.getLogger("farthing.guard")

DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_BODY_TIMEOUT: Final = 30.0
DEFAULT_MAX_CONNECTIONS: Final = 1000
MAX_HEAD: Final = 16 * 1024  # request line and header fields, as h11's default limit


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """Per worker process. ``header_timeout``: seconds from the moment a connection may
    send a request (connected, or the previous response sent) until its head is complete.
    ``body_timeout``: seconds from the end of the head until the whole body has come."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.max_connections < 1:
            raise ValueError("timeouts must be positive and max_connections at least 1")

    @property
    def tick(self) -> float:
        """How often the sweep runs: a connection lives at most this long past its
        deadline."""
        return min(1.0, self.header_timeout / 4, self.body_timeout / 4)


class GuardedConfig(Config):
    """uvicorn's Config with :class:`ConnectionLimits`, serving the guarded protocol named
    by ``http`` (``httptools`` or ``h11``; picklable, so each worker process gets it)."""

    def __init__(
        self, app: Any, *, limits: ConnectionLimits, http: str = "httptools", **kwargs: Any
    ) -> None:
        super().__init__(app, http=HTTP_PROTOCOLS[http], **kwargs)
        self.limits = limits


class _Guarded(Protocol):
    """A guarded connection, as the guard sees it."""

    def expire(self) -> None: ...


class _Wait(Enum):
    HEAD = "head"
    BODY = "body"


class Guard:
    """One worker's waiting connections and the sweep that closes the expired ones."""

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self._loop = loop
        self._timeouts = {_Wait.HEAD: limits.header_timeout, _Wait.BODY: limits.body_timeout}
        self._waiting: dict[_Wait, OrderedDict[_Guarded, float]] = {
            _Wait.HEAD: OrderedDict(),
            _Wait.BODY: OrderedDict(),
        }
        loop.call_later(limits.tick, self._sweep)

    def move(self, conn: _Guarded, old: _Wait | None, new: _Wait | None) -> None:
        if old is not None:
            self._waiting[old].pop(conn, None)
        if new is not None:
            self._waiting[new][conn] = self._loop.time() + self._timeouts[new]

    def evict_oldest_head(self) -> bool:
        """Close the connection that has waited longest for its request head; False if
        none waits."""
        heads = self._waiting[_Wait.HEAD]
        if not heads:
            return False
        conn, _ = heads.popitem(last=False)
        conn.expire()
        logger.warning(
            "connection cap (%d) reached: closed the connection waiting longest for its "
            "request head",
            self.limits.max_connections,
        )
        return True

    def _sweep(self) -> None:
        self._loop.call_later(self.limits.tick, self._sweep)  # first: nothing below stops it
        now = self._loop.time()
        for waiting in self._waiting.values():
            while waiting:
                conn = next(iter(waiting))
                if waiting[conn] > now:
                    break
                del waiting[conn]
                conn.expire()


_guards: weakref.WeakKeyDictionary[ServerState, Guard] = weakref.WeakKeyDictionary()


def _guard_for(server_state: ServerState, config: Config, loop: asyncio.AbstractEventLoop) -> Guard:
    guard = _guards.get(server_state)
    if guard is None:
        limits = getattr(config, "limits", None)
        guard = Guard(limits if isinstance(limits, ConnectionLimits) else ConnectionLimits(), loop)
        _guards[server_state] = guard
    return guard


class _Host(Protocol):
    """What :class:`_GuardedConnection` needs of the uvicorn protocol it is mixed into."""

    _guard: Guard
    _wait: _Wait | None

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def connections(self) -> set[Any]: ...

    def expire(self) -> None: ...


class _GuardedConnection:
    """The part both guarded protocols share: admission at the cap, moving between the
    guard's sets, and closing on expiry. Each protocol says itself, from its parser, what
    the peer is about to send (``_track``)."""

    def _guard_setup(self, server_state: ServerState, config: Config, loop: Any) -> None:
        self._guard = _guard_for(server_state, config, loop)
        self._wait: _Wait | None = None

    def _refused_at_cap(self: _Host) -> bool:
        """A new connection over the cap: room made by closing the oldest head waiter, or
        this one closed (True) if every connection is busy."""
        over = len(self.connections) > self._guard.limits.max_connections
        if not over or self._guard.evict_oldest_head():
            return False
        logger.warning(
            "%d connections open, none waiting for a request: a new one was closed",
            len(self.connections) - 1,
        )
        self.expire()
        return True

    def expire(self: _Host) -> None:
        """Close the connection (a timeout, or room for a new one at the cap)."""
        self._wait = None
        if not self.transport.is_closing():
            self.transport.close()

    def _set_wait(self: _Host, wait: _Wait | None) -> None:
        self._guard.move(self, self._wait, wait)
        self._wait = wait


class GuardedH11Protocol(_GuardedConnection, H11Protocol):
    """uvicorn's h11 protocol under a :class:`Guard` (head and body timeouts, the cap)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard_setup(server_state, config, self.loop)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._refused_at_cap():
            self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_wait(None)
        super().connection_lost(exc)

    def _track(self) -> None:
        """Follow the peer's side of the h11 state machine: IDLE waits for a head,
        SEND_BODY for the rest of a body; anything else is the app's or closing."""
        state = self.conn.their_state
        if state is h11.IDLE:
            wait: _Wait | None = _Wait.HEAD
        elif state is h11.SEND_BODY:
            wait = _Wait.BODY
        else:
            wait = None
        if wait is not self._wait:
            self._set_wait(wait)


class GuardedHttpToolsProtocol(_GuardedConnection, HttpToolsProtocol):
    """uvicorn's httptools protocol under a :class:`Guard` (head and body timeouts, the
    cap) and with a request head of at most :data:`MAX_HEAD` bytes.

    The parser's callbacks say where the peer is: between ``on_message_begin`` and
    ``on_headers_complete`` it sends a head, then its body until ``on_message_complete``.
    Outside a message it waits to send a head, unless a response is still being made (the
    app's time, not the peer's)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard_setup(server_state, config, self.loop)
        self._in_message = False
        self._in_body = False
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._refused_at_cap():
            self._track()

    def data_received(self, data: bytes) -> None:
        # Bytes that came while no body was due belong to a head, if that head is still
        # unfinished once they are parsed (then no body can be among them).
        in_head_before = not self._in_body
        super().data_received(data)
        if self.parser is None or self.transport.is_closing():
            self._set_wait(None)
            return
        if self._in_message and not self._in_body:
            self._head_bytes += len(data) if in_head_before else 0
            if self._head_bytes > MAX_HEAD:
                logger.warning("request head over %d bytes: answered 400", MAX_HEAD)
                self._set_wait(None)
                self.send_400_response("Request head too large.")
                return
        self._track()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message, self._in_body, self._head_bytes = True, False, 0

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_wait(None)
        super().connection_lost(exc)

    def _track(self) -> None:
        if self._in_message:
            wait: _Wait | None = _Wait.BODY if self._in_body else _Wait.HEAD
        elif self.cycle is not None and not self.cycle.response_complete:
            wait = None  # the app is answering
        else:
            wait = _Wait.HEAD
        if self.transport.is_closing():
            wait = None
        if wait is not self._wait:
            self._set_wait(wait)


HTTP_PROTOCOLS: Final[dict[str, type[asyncio.Protocol]]] = {
    "httptools": GuardedHttpToolsProtocol,
    "h11": GuardedH11Protocol,
}
