"""Two plain ASGI layers in front of the issuer: a request body limit and rate limits.

:class:`BodyLimit` refuses a body larger than the limit for its path with 413, twice
over: by ``Content-Length`` before reading anything, and while reading (a chunked body, or
a client that lies about its length). It reads the whole body, at most ``limit`` bytes,
before the app runs, and replays it to the app; the app never sees a partial body, and a
client that disconnects (or is closed by the body timeout, :mod:`farthing.guard`) before
its body is complete never reaches the app.

Bodies in flight share a budget, because the size limit alone bounds one request, not
many: 400 deposits of 2 MiB minus a byte, held open, took the issuer from 92 MB to 673 MB.
Each request may hold ``limit`` bytes (the general one, 64 KiB) of its own; bytes past
that, which only deposits may have, are counted against ``budget`` bytes per worker, from
the head (``Content-Length``) or as they come (a chunked body), until the app has answered.
A request the budget cannot hold is answered 503 with ``Retry-After`` at once, before its
body is read. The bookkeeping is two integer updates per request; no body is copied.

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
from enum import Enum
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.errors import ErrorCode, FarthingError, MalformedMessage, RateLimited
from farthing.http.problems import problem_for
from farthing.issuer.config import RateLimit as RateLimitConfig
from farthing.issuer.config import RateLimits
from farthing.issuer.http_errors import problem_response

__all__ = ["BodyBudget", "BodyLimit", "RateLimit", "TokenBucket"]

_TOO_LARGE: Final = "the request body is too large"
_BUSY: Final = "too many request bodies in flight; retry later"
_BUSY_RETRY_AFTER: Final = 5  # seconds; about what a held body costs at most (body timeout)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class BodyBudget:
    """Bytes of request bodies one worker may hold at once. Used on the event loop's
    thread only, so it needs no lock."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        return True

    def give_back(self, size: int) -> None:
        self.left += size


class _Share:
    """What one request holds of the budget: every byte past its first ``free``."""

    def __init__(self, budget: BodyBudget, free: int) -> None:
        self._budget = budget
        self._free = free
        self.held = 0

    def cover(self, size: int) -> bool:
        """Hold enough for a body of ``size`` bytes; False if the budget cannot."""
        needed = size - self._free
        if needed <= self.held:
            return True
        if not self._budget.take(needed - self.held):
            return False
        self.held = needed
        return True

    def release(self) -> None:
        self._budget.give_back(self.held)
        self.held = 0


class _Refused(Enum):
    TOO_LARGE = "too large"
    BUSY = "busy"
    GONE = "disconnected"


class BodyLimit:
    """413 for bodies over ``limit`` bytes (``per_path`` overrides it for exact paths);
    503 for bodies the ``budget`` (bytes per worker past each request's first ``limit``;
    None: no budget) cannot hold."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        per_path: Mapping[str, int],
        budget: int | None = None,
    ) -> None:
        self.app = app
        self._limit = limit
        self._per_path = dict(per_path)
        self.budget = BodyBudget(budget if budget is not None else 1 << 62)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._per_path.get(scope["path"], self._limit)
        declared = _declared_length(scope)
        if declared > limit:
            await _refuse(_Refused.TOO_LARGE, scope, receive, send)
            return
        share = _Share(self.budget, free=self._limit)
        try:
            body: bytes | _Refused = _Refused.BUSY
            if share.cover(declared):
                body = await _read_body(receive, limit, share)
            if isinstance(body, _Refused):
                await _refuse(body, scope, receive, send)
            else:
                await self.app(scope, _replay(body, receive), send)
        finally:
            share.release()


async def _refuse(why: _Refused, scope: Scope, receive: Receive, send: Send) -> None:
    if why is _Refused.GONE:
        return  # nobody to answer
    error: FarthingError
    if why is _Refused.TOO_LARGE:
        error = MalformedMessage(_TOO_LARGE, code=ErrorCode.PAYLOAD_TOO_LARGE)
    else:
        error = RateLimited(_BUSY, retry_after=_BUSY_RETRY_AFTER, code=ErrorCode.SERVER_BUSY)
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


async def _read_body(receive: Receive, limit: int, share: _Share) -> bytes | _Refused:
    """The whole body; TOO_LARGE as soon as it passes ``limit`` bytes, BUSY as soon as the
    budget cannot hold it, GONE if the client left first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _Refused.GONE
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return _Refused.TOO_LARGE
        if not share.cover(size):
            return _Refused.BUSY
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
