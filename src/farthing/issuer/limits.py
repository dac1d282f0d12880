"""Two plain ASGI layers in front of the issuer: a request body limit and rate limits.

:class:`BodyLimit` refuses a body larger than the limit for its path with 413, twice
over: by ``Content-Length`` before reading anything, and while reading (a chunked body, or
a client that lies about its length). It reads the whole body, at most ``limit`` bytes,
before the app runs, and replays it to the app; the app never sees a partial body.

:class:`RateLimit` keeps a token bucket per client address and one per operator token
(keyed by a hash of the ``Authorization`` header, so it costs no database lookup) and
answers 429 with ``Retry-After`` when a bucket is empty. Buckets live in the worker's
memory: with N workers the effective limit is N times the configured one, and a restart
forgets them (see docs/scaling.md). The clock is a parameter, for tests.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.errors import ErrorCode, MalformedMessage, RateLimited
from farthing.http.problems import problem_for
from farthing.issuer.config import RateLimit as RateLimitConfig
from farthing.issuer.config import RateLimits
from farthing.issuer.http_errors import problem_response

__all__ = ["BodyLimit", "RateLimit", "TokenBucket"]

_TOO_LARGE: Final = "the request body is too large"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class BodyLimit:
    """413 for bodies over ``limit`` bytes (``per_path`` overrides it for exact paths)."""

    def __init__(self, app: ASGIApp, *, limit: int, per_path: Mapping[str, int]) -> None:
        self.app = app
        self._limit = limit
        self._per_path = dict(per_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._per_path.get(scope["path"], self._limit)
        if _declared_length(scope) > limit:
            await self._refuse(scope, receive, send)
            return
        body = await _read_body(receive, limit)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        error = MalformedMessage(_TOO_LARGE, code=ErrorCode.PAYLOAD_TOO_LARGE)
        response = problem_response(problem_for(error), headers={"Connection": "close"})
        await response(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    raw = _header(scope, b"content-length")
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        return 1 << 62  # unreadable: treat as too large rather than guess


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # disconnected; the app will see an empty body
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- rate limits --------------------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """``tokens`` refill at ``rate`` per second up to ``burst``; one request takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Buckets:
    """Buckets by key, the least recently used dropped beyond ``max_tracked``."""

    def __init__(self, config: RateLimitConfig, max_tracked: int) -> None:
        self._config = config
        self._max = max_tracked
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            burst = float(self._config.burst)
            bucket = TokenBucket(rate=self._config.rate, burst=burst, tokens=burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class RateLimit:
    """429 with ``Retry-After`` once a client address or an operator token is over its rate."""

    def __init__(
        self, app: ASGIApp, *, limits: RateLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self._enabled = limits.enabled
        self._clock = clock
        self._clients = _Buckets(limits.per_client, limits.max_tracked)
        self._operators = _Buckets(limits.per_operator, limits.max_tracked)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._enabled:
            await self.app(scope, receive, send)
            return
        wait = self._wait(scope)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            error = RateLimited("too many requests", retry_after=retry_after)
            await problem_response(problem_for(error))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _wait(self, scope: Scope) -> float:
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        authorization = _header(scope, b"authorization")
        now = self._clock()  # no lock: this runs on the event loop thread only
        wait = self._clients.take(f"ip:{address}", now)
        if authorization is not None:
            operator = hashlib.sha256(authorization).hexdigest()[:32]
            wait = max(wait, self._operators.take(f"op:{operator}", now))
        return wait
