"""The metrics move as a demo's purchases happen: the demo's issuer and vendor on loopback,
scraped before and after, parsed with prometheus_client's parser, compared with what was
bought."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from farthing.demo import DemoWorld, demo_world
from farthing.http.methods import METHOD_OF
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet

pytestmark = pytest.mark.xdist_group("uvicorn")

ARTICLE_MICROS = 2000  # the demo's price of /articles/*
BUYS = {"szm:chain": 2, "szm:prbg": 1, "hll:mac": 2, "payword": 1}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape(world: DemoWorld) -> tuple[Samples, Samples]:
    vendor = httpx.get(f"{world.admin_url}/metrics", timeout=30)
    issuer = world.setup.operator.get("/metrics")
    assert vendor.status_code == issuer.status_code == 200
    return parse(vendor.text), parse(issuer.text)


def buy(world: DemoWorld, method: str, articles: Iterable[str]) -> None:
    with (
        Wallet.open(world.wallet_path, world.passphrase, preference=(method,)) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), timeout=30) as client,
    ):
        for article in articles:
            response = client.get(f"{world.vendor_url}/{article}")
            assert response.status_code == 200, response.text


def test_metrics_follow_the_purchases(tmp_path: Path) -> None:
    with demo_world(tmp_path) as world:
        vendor_before, issuer_before = scrape(world)
        articles = iter(
            ["ocean", "forest", "desert", "river", "glacier", "tundra", "reef", "steppe"]
        )
        for method, count in BUYS.items():
            buy(world, method, [f"articles/{next(articles)}.txt" for _ in range(count)])
        refused = httpx.get(  # a credential that is no payment at all
            f"{world.vendor_url}/articles/reef.txt",
            headers={"authorization": "Payment eyJpZCI6IDF9"},
            timeout=30,
        )
        vendor_after, issuer_after = scrape(world)
        on_content_port = httpx.get(f"{world.vendor_url}/metrics", timeout=30)
        without_token = httpx.get(f"{world.issuer_url}/metrics", timeout=30)
    assert refused.status_code == 402  # every payment failure is a 402 (docs/http.md)
    for scheme, count in BUYS.items():
        method = METHOD_OF[scheme]  # metrics name the method id on the wire
        outcome = {"method": method, "outcome": "accepted"}
        assert delta(vendor_before, vendor_after, "farthing_payments_total", **outcome) == count
        revenue = {"method": method, "currency": "EUR"}
        assert (
            delta(vendor_before, vendor_after, "farthing_revenue_micros_total", **revenue)
            == count * ARTICLE_MICROS
        )
        seconds = delta(vendor_before, vendor_after, "farthing_verify_seconds_count", method=method)
        assert seconds == count
    refusals = sum(
        v - value(vendor_before, name, **dict(labels))
        for (name, labels), v in vendor_after.items()
        if name == "farthing_payments_total" and dict(labels)["outcome"] != "accepted"
    )
    assert refusals == 1
    paid = sum(BUYS.values())
    route = {"route": "/articles/*", "status": "200"}
    assert delta(vendor_before, vendor_after, "farthing_http_requests_total", **route) == paid
    assert value(vendor_after, "farthing_store_batch_size_count") >= BUYS["szm:chain"]
    assert value(vendor_after, "farthing_store_scrape_ok") == 1
    # The issuer verified each HLL payment online and moved its value off the card float.
    verify = {"route": "/v1/hll/verify", "status": "200"}
    assert delta(issuer_before, issuer_after, "farthing_http_requests_total", **verify) == 2
    hll_float = {"currency": "EUR", "kind": "hll"}
    assert delta(issuer_before, issuer_after, "farthing_float_micros", **hll_float) == (
        -BUYS["hll:mac"] * ARTICLE_MICROS
    )
    spends = {"kind": "hll_spend", "currency": "EUR"}
    assert delta(issuer_before, issuer_after, "farthing_ledger_posted_micros", **spends) == (
        BUYS["hll:mac"] * ARTICLE_MICROS
    )
    assert value(issuer_after, "farthing_ledger_balanced") == 1
    assert value(issuer_after, "farthing_float_micros", currency="EUR", kind="szm") > 0
    # Never on the content port; the issuer's only to operators.
    assert on_content_port.status_code == 404
    assert "farthing_payments_total" not in on_content_port.text
    assert without_token.status_code == 401


def test_the_vendor_serves_metrics_on_its_admin_port_only(tmp_path: Path) -> None:
    from tests.paywall.test_uvicorn_workers import write_config
    from tests.servers import free_port, uvicorn_server

    config = write_config(tmp_path)
    admin_port = free_port()
    config.write_text(f"admin_port = {admin_port}\n" + config.read_text())
    env = {"FARTHING_VENDOR_CONFIG": str(config)}
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env) as base:
        unpaid = httpx.get(f"{base}/articles/a.txt", timeout=10)
        admin = f"http://127.0.0.1:{admin_port}"
        metrics = httpx.get(f"{admin}/metrics", timeout=10)
        ready = httpx.get(f"{admin}/readyz", timeout=10)
        content_port = httpx.get(f"{base}/metrics", timeout=10)
    assert unpaid.status_code == 402
    assert metrics.status_code == 200
    samples = parse(metrics.text)
    route = {"route": "/articles/*", "status": "402"}
    assert value(samples, "farthing_http_requests_total", **route) == 1
    assert value(samples, "farthing_store_scrape_ok") == 1
    assert ready.json()["ready"] is True
    assert content_port.status_code == 404
