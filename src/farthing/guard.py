"""What uvicorn lacks against slow clients, added to its h11 protocol: a timeout for the
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
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["ConnectionLimits", "Guard", "GuardedConfig", "GuardedH11Protocol"]

logger = logging.getLogger("farthing.guard")

DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_BODY_TIMEOUT: Final = 30.0
DEFAULT_MAX_CONNECTIONS: Final = 1000


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
    """uvicorn's Config with :class:`ConnectionLimits`, serving :class:`GuardedH11Protocol`
    (picklable, so each worker process gets it)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedH11Protocol, **kwargs)
        self.limits = limits


class _Wait(Enum):
    HEAD = "head"
    BODY = "body"


class Guard:
    """One worker's waiting connections and the sweep that closes the expired ones."""

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self._loop = loop
        self._timeouts = {_Wait.HEAD: limits.header_timeout, _Wait.BODY: limits.body_timeout}
        self._waiting: dict[_Wait, OrderedDict[GuardedH11Protocol, float]] = {
            _Wait.HEAD: OrderedDict(),
            _Wait.BODY: OrderedDict(),
        }
        loop.call_later(limits.tick, self._sweep)

    def move(self, conn: GuardedH11Protocol, old: _Wait | None, new: _Wait | None) -> None:
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


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`Guard` (head and body timeouts, the cap)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = _guard_for(server_state, config, self.loop)
        self._wait: _Wait | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        over = len(self.connections) > self._guard.limits.max_connections
        if over and not self._guard.evict_oldest_head():
            logger.warning(
                "%d connections open, none waiting for a request: a new one was closed",
                len(self.connections) - 1,
            )
            self.expire()
            return
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

    def expire(self) -> None:
        """Close the connection (a timeout, or room for a new one at the cap)."""
        self._wait = None
        if not self.transport.is_closing():
            self.transport.close()

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

    def _set_wait(self, wait: _Wait | None) -> None:
        self._guard.move(self, self._wait, wait)
        self._wait = wait
