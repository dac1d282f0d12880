"""``/healthz`` and ``/readyz`` for both services.

``/healthz`` says the process answers (no I/O: a load balancer may call it often).
``/readyz`` runs named checks and answers 200 if all pass, else 503; the body names each
check and, for a failed one, a reason in words (never an exception's text, which may
carry a DSN). The probes are blocking (a database round trip), so they run on a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from farthing.observe.access import note_route
from farthing.store import Store

__all__ = ["Probe", "Readiness", "health_routes", "keys_probe", "readiness", "store_probe"]

log = logging.getLogger("farthing.health")

OK = "ok"

Probe = Callable[[], dict[str, str]]
"""A readiness probe: check name -> ``"ok"`` or the reason in words."""


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # name -> "ok" or the reason


def store_probe(store: Store) -> Probe:
    """``store``: it answers; ``migrations``: its schema is at the newest migration."""

    def probe() -> dict[str, str]:
        try:
            current = store.schema_is_current()
        except Exception as error:  # whatever the driver raises: the store is not there
            log.warning("readiness: the store did not answer (%s)", type(error).__name__)
            return {"store": "the store does not answer", "migrations": "unknown"}
        migrations = OK if current else "the schema is not at the newest migration"
        return {"store": OK, "migrations": migrations}

    return probe


def keys_probe(loaded: Callable[[], bool]) -> Probe:
    return lambda: {"keys": OK if loaded() else "no keys loaded"}


def readiness(probes: Sequence[Probe]) -> Readiness:
    results: dict[str, str] = {}
    for probe in probes:
        results.update(probe())
    return Readiness(ready=all(v == OK for v in results.values()), checks=results)


def health_routes(probes: Sequence[Probe]) -> list[Route]:
    async def healthz(request: Request) -> Response:
        note_route("/healthz")  # FastAPI's router does not name plain routes in the scope
        return PlainTextResponse("ok", headers={"cache-control": "no-store"})

    async def readyz(request: Request) -> Response:
        note_route("/readyz")
        found = await run_in_threadpool(readiness, probes)
        return JSONResponse(
            {"ready": found.ready, "checks": found.checks},
            status_code=200 if found.ready else 503,
            headers={"cache-control": "no-store"},
        )

    return [Route("/healthz", healthz), Route("/readyz", readyz)]
