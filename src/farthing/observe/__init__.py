"""What operators watch: health and readiness, Prometheus metrics, the access log.

Shared by the issuer and the vendor (infrastructure, beside :mod:`farthing.logs`):

- :mod:`.health`   ``/healthz`` (alive) and ``/readyz`` (store reachable, migrations
  current, keys loaded), as Starlette routes over named checks;
- :mod:`.metrics`  registries the apps own (no globals), the store collector (pool use,
  probe latency, group-commit batch sizes);
- :mod:`.access`   one structured access-log line per request, with the request's
  correlation id (the one a 500's problem body carries).
"""
