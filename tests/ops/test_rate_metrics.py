"""Rate-limit refusals are counted: an issuer with a small per-client burst, driven past
it in-process, exports as many ``farthing_rate_limited_total`` as it answered 429."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from farthing.issuer import IssuerConfig, IssuerKeys, create_issuer_app
from farthing.issuer.auth import new_operator_token, token_hash
from farthing.issuer.config import RateLimit, RateLimits
from farthing.store import open_store
from farthing.testing import FixedClock
from tests.ops.test_metrics import parse, value

pytestmark = pytest.mark.anyio


async def test_rate_limit_refusals_are_counted(tmp_path: Path, ops_keys: IssuerKeys) -> None:
    store = open_store(str(tmp_path / "issuer.sqlite"))
    token = new_operator_token(os.urandom)
    with store.transaction() as tx:
        tx.admin.add_operator_token("ops", token_hash(token))
    limits = RateLimits(
        per_client=RateLimit(rate=0.001, burst=5), per_operator=RateLimit(rate=1000.0, burst=1000)
    )
    config = IssuerConfig(keys=ops_keys, rate_limits=limits)
    app = create_issuer_app(
        config, store, clock=FixedClock(), rng=os.urandom, rate_clock=lambda: 0.0
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer") as client:
        statuses = [(await client.get("/healthz")).status_code for _ in range(12)]
    refused = statuses.count(429)
    assert refused >= 5
    # Scraped from another client address, whose bucket is still full.
    scraper = httpx.ASGITransport(app=app, client=("127.0.0.2", 40000))
    async with httpx.AsyncClient(transport=scraper, base_url="http://issuer") as client:
        scrape = await client.get("/metrics", headers={"authorization": f"Bearer {token}"})
    store.close()
    assert scrape.status_code == 200
    assert value(parse(scrape.text), "farthing_rate_limited_total") == refused
