"""Every error the issuer answers with, as an RFC 9457 problem (via ``problem_for``).

::

    FarthingError               -> problem_for(error): its status, type, fixed message, code
      Unavailable                -> 503 with Retry-After (the store is out of connections)
      LocalProtocolError         -> 500 with a correlation id (our fault; logged)
      (which errors cross is farthing.http.problems.crosses, the one rule for both apps)
    RequestValidationError      -> 400 malformed, fixed message + field locations only
    Starlette HTTPException     -> 404 no such resource / 405 / 400
    anything else               -> 500 with a correlation id, logged, never echoed

The last row is :class:`CatchAll`, a plain ASGI layer around the whole app, so an
unexpected exception is answered once, logged once, and does not escape to the server.
Input is never echoed: validation errors carry the schema's field names and pydantic's
error type, and an unknown member's name is replaced by ``"*"``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.errors import ErrorCode, FarthingError, MalformedMessage, NotFound
from farthing.http.problems import CONTENT_TYPE, Problem, crosses, internal_problem, problem_for
from farthing.observe.context import correlation_id

__all__ = ["CatchAll", "error_response", "install_error_handlers", "problem_response"]

log = logging.getLogger("farthing.issuer")

_VALIDATION_MESSAGE: Final = "the request does not match the schema"
_MAX_LISTED: Final = 20


def problem_response(
    problem: Problem, *, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    all_headers = dict(headers or {})
    if problem.retry_after is not None:
        all_headers["Retry-After"] = str(problem.retry_after)
    return JSONResponse(
        problem.to_json(**extra),
        status_code=problem.status,
        media_type=CONTENT_TYPE,
        headers=all_headers,
    )


def internal_response(cause: BaseException | None) -> JSONResponse:
    correlation = correlation_id()  # the access log's line for this request carries it too
    log.error("internal error (correlation id %s)", correlation, exc_info=cause)
    return problem_response(internal_problem(), correlationId=correlation)


def error_response(error: FarthingError) -> JSONResponse:
    """The response for a domain error; local misuse reaching the edge is logged, 500."""
    if not crosses(error):
        return internal_response(error)
    headers = {}
    if error.code is ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="farthing-issuer"'
    return problem_response(problem_for(error), headers=headers)


async def _on_farthing_error(_request: Request, error: Exception) -> Response:
    if not isinstance(error, FarthingError):
        return internal_response(error)
    return error_response(error)


def _safe_location(error: dict[str, object]) -> list[str | int]:
    loc = error.get("loc", ())
    parts: list[str | int] = (
        [p for p in loc if isinstance(p, str | int)] if isinstance(loc, Sequence) else []
    )
    if error.get("type") == "extra_forbidden" and parts:
        parts[-1] = "*"  # a member the client made up: do not echo its name
    return parts


async def _on_validation_error(_request: Request, error: Exception) -> Response:
    if not isinstance(error, RequestValidationError):
        return internal_response(error)
    fields = [
        {"loc": _safe_location(item), "type": str(item.get("type", "invalid"))}
        for item in error.errors()[:_MAX_LISTED]
        if isinstance(item, dict)
    ]
    problem = problem_for(MalformedMessage(_VALIDATION_MESSAGE))
    return problem_response(problem, errors=fields)


async def _on_http_exception(_request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, StarletteHTTPException) else 500
    if status == 404:
        return problem_response(problem_for(NotFound("no such resource")))
    if status == 405:
        problem = problem_for(MalformedMessage("method not allowed"))
        return problem_response(
            dataclasses.replace(problem, status=405, title="Method not allowed")
        )
    if status >= 500:
        return internal_response(error)
    return problem_response(problem_for(MalformedMessage("bad request")))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FarthingError, _on_farthing_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)


class CatchAll:
    """Answers any exception the app let through with a 500 problem and a correlation id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late to answer; the server closes the connection
                log.exception("error after the response started")
                return
            response = (
                error_response(exc) if isinstance(exc, FarthingError) else internal_response(exc)
            )
            await response(scope, receive, send)
