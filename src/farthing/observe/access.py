"""One structured access-log line per request, and HTTP request metrics.

The line is JSON on the ``farthing.access`` logger (INFO; a 5xx at ERROR): ``method``,
``route`` (a bounded label, never the raw path: a price-table route, an app's route
template, or ``unmatched``), ``status``, ``payment`` (the method named by the credential,
if any), ``ms`` and ``correlation_id`` (the one a 500's problem body carries). Nothing
of the request's headers, query or body is written, so no credential, card code or key
can reach the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.observe.context import current_note, start_note

__all__ = ["ACCESS_LOGGER", "UNMATCHED", "AccessLog", "HttpMetrics", "note_route", "template_route"]

ACCESS_LOGGER: Final = "farthing.access"
UNMATCHED: Final = "unmatched"
log = logging.getLogger(ACCESS_LOGGER)

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class HttpMetrics:
    """``farthing_http_requests_total{route,status}`` and ``farthing_http_request_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "farthing_http_requests",
            "HTTP requests answered, by route label and status",
            ["route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "farthing_http_request_seconds",
            "Time to answer one HTTP request",
            ["route"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "farthing_rate_limited",
            "Requests refused for going over a rate limit (429)",
            registry=registry,
        )
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        # Labelled children are cached: ``labels()`` costs a lock and a tuple per call.
        key = (route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (
                self.requests.labels(route=route, status=str(status)),
                self.seconds.labels(route=route),
            )
        child[0].inc()
        child[1].observe(seconds)
        if status == 429:
            self.rate_limited.inc()


def template_route(scope: Scope) -> str:
    """The route template Starlette/FastAPI matched (``/v1/szm/cards/{card_id}/status``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class AccessLog:
    """The outermost ASGI layer of an app: notes the request, then logs and counts it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics | None = None,
        route_of: Callable[[Scope], str] = template_route,
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        note = start_note()
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            seconds = time.perf_counter() - started
            route = note.route or self._route_of(scope)
            status = status or 500  # nothing was sent: the server answers 500 or drops it
            if self._metrics is not None:
                self._metrics.observe(route, status, seconds)
            _write(scope["method"], route, status, note.payment, seconds, note.correlation_id)


def _write(
    method: str, route: str, status: int, payment: str | None, seconds: float, cid: str
) -> None:
    level = logging.ERROR if status >= 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    # json.dumps of the strings alone: the other fields are numbers (cheaper than a dict).
    line = (
        f'{{"method":{_text(method)},"route":{_text(route)},"status":{status},'
        f'"payment":{_text(payment)},"ms":{seconds * 1000:.3f},"correlation_id":"{cid}"}}'
    )
    log.log(level, line)


def _text(value: str | None) -> str:
    return json.dumps(value)


def note_route(route: str) -> None:
    """For a layer that knows a better label than the app's template (the paywall)."""
    note = current_note()
    if note is not None:
        note.route = route
