"""A small app factory for tests of farthing.serving: ``tests.serving_app:app``.

``/healthz`` answers ``ok``; ``POST /echo`` answers the length of the body it read."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def _healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def app() -> Starlette:
    return Starlette(routes=[Route("/healthz", _healthz), Route("/echo", _echo, methods=["POST"])])
