"""The issuer: bank of HLL, broker of PayWord and card issuer of SZM, over one store.

Public API (everything else in this package is an implementation detail)::

    keys = load_issuer_keys("farthing-issuer.keys.json")       # also read by the SZM vendor
    app = create_issuer_app(IssuerConfig(keys=keys), store, clock=SystemClock(), rng=os.urandom)
    services = build_services(config, store, clock=..., rng=...)  # the same operations, no HTTP
    async with IssuerClient(url, merchant_id=..., merchant_key=...) as bank: ...

See docs/issuer.md for the HTTP API and docs/scaling.md for deployment.
"""

from __future__ import annotations

from farthing.http.issuer_client import CardStatus, IssuerClient
from farthing.issuer.app import app_from_env, config_from_env, create_issuer_app, issuer_app
from farthing.issuer.config import (
    IssuerConfig,
    IssuerKeys,
    RateLimit,
    RateLimits,
    generate_issuer_keys,
    load_issuer_keys,
    write_key_file,
)
from farthing.issuer.service import IssuerServices, build_services

__all__ = [
    "CardStatus",
    "IssuerClient",
    "IssuerConfig",
    "IssuerKeys",
    "IssuerServices",
    "RateLimit",
    "RateLimits",
    "app_from_env",
    "build_services",
    "config_from_env",
    "create_issuer_app",
    "generate_issuer_keys",
    "issuer_app",
    "load_issuer_keys",
    "write_key_file",
]
