"""The operator dashboard on the demo's issuer over loopback: who may see it, CSRF and the
security headers (httpx), and an operator's session in a real headless Chromium: log in,
see the demo's revenue, find a card, block it, see the next payment with it refused."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_encode
from farthing.demo import DemoWorld, demo_world
from farthing.issuer import IssuerConfig, RateLimits, create_issuer_app
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import parse_szm_code
from farthing.wallet.wallet import Wallet
from tests.browser import screenshot
from tests.ops.test_metrics import buy

pytestmark = pytest.mark.xdist_group("browser")

HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    with demo_world(tmp_path_factory.mktemp("demo")) as world:
        buy(world, "hll:mac", ["articles/ocean.txt", "articles/forest.txt"])
        buy(world, "szm:chain", ["articles/desert.txt"])
        recognised = world.setup.operator.post("/v1/szm/revenue", json={"currency": "EUR"})
        assert recognised.status_code == 200, recognised.text
        yield world


def token_of(world: DemoWorld) -> str:
    return world.setup.operator.headers["authorization"].removeprefix("Bearer ")


def dashboard(world: DemoWorld) -> str:
    return f"{world.issuer_url}/dashboard"


def login_form(client: httpx.Client, base: str) -> str:
    page = client.get(f"{base}/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def logged_in(world: DemoWorld) -> httpx.Client:
    client = httpx.Client(timeout=30)
    base = dashboard(world)
    csrf = login_form(client, base)
    done = client.post(f"{base}/login", data={"csrf": csrf, "token": token_of(world)})
    assert done.status_code == 303, done.text
    return client


def chain_card_id(world: DemoWorld) -> str:
    return b64url_encode(parse_szm_code(world.cards.szm_codes["szm:chain"]).card_id)


def card_status(world: DemoWorld, card: str) -> str:
    with closing(logged_in(world)) as client:
        rows = client.get(f"{dashboard(world)}/export/cards.csv", params={"card": card})
    listed = list(csv.DictReader(io.StringIO(rows.text)))
    assert len(listed) == 1
    return listed[0]["status"]


# --- who may see it --------------------------------------------------------------------------


def test_without_a_session_every_page_is_refused(world: DemoWorld) -> None:
    base = dashboard(world)
    for path in ("/", "/cards", "/audit", "/export/cards.csv", "/export/audit.csv"):
        response = httpx.get(base + path, timeout=30)
        assert response.status_code == 401, path
        assert "Operator token" in response.text
        assert "farthing_" not in response.text.replace("farthing_login", "")
    forged = httpx.get(base + "/", cookies={"farthing_dashboard": "AAAA.9999999999.AAAA"})
    assert forged.status_code == 401


def test_a_wrong_token_is_refused(world: DemoWorld) -> None:
    with httpx.Client(timeout=30) as client:
        csrf = login_form(client, dashboard(world))
        wrong = client.post(
            f"{dashboard(world)}/login", data={"csrf": csrf, "token": "fop_" + "A" * 43}
        )
        after = client.get(f"{dashboard(world)}/")
    assert wrong.status_code == 401
    assert "not accepted" in wrong.text
    assert "farthing_dashboard" not in wrong.headers.get("set-cookie", "")
    assert after.status_code == 401


def test_login_without_its_csrf_token_or_from_another_site_is_refused(world: DemoWorld) -> None:
    base = dashboard(world)
    token = token_of(world)
    with httpx.Client(timeout=30) as client:
        missing = client.post(f"{base}/login", data={"token": token})
        csrf = login_form(client, base)
        foreign = client.post(
            f"{base}/login",
            data={"csrf": csrf, "token": token},
            headers={"origin": "http://evil.example"},
        )
        cross = client.post(
            f"{base}/login", data={"csrf": csrf, "token": token},
            headers={"sec-fetch-site": "cross-site"},
        )  # fmt: skip
    assert [missing.status_code, foreign.status_code, cross.status_code] == [403, 403, 403]
    assert all("farthing_dashboard" not in r.headers.get("set-cookie", "") for r in [foreign])


def test_blocking_needs_the_form_token_and_the_same_site(world: DemoWorld) -> None:
    card = b64url_encode(parse_szm_code(world.cards.szm_codes["szm:prbg"]).card_id)
    base = dashboard(world)
    with closing(logged_in(world)) as client:
        page = client.get(f"{base}/cards", params={"card": card})
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        no_token = client.post(f"{base}/cards/block", data={"card": card})
        bad_token = client.post(f"{base}/cards/block", data={"card": card, "csrf": "x" * 43})
        foreign = client.post(
            f"{base}/cards/block",
            data={"card": card, "csrf": csrf.group(1)},
            headers={"origin": "http://evil.example"},
        )
    assert page.status_code == 200
    assert [no_token.status_code, bad_token.status_code, foreign.status_code] == [403] * 3
    assert card_status(world, card) == "active"


def test_pages_carry_the_security_headers_and_answer_loopback_only(world: DemoWorld) -> None:
    with closing(logged_in(world)) as client:
        overview = client.get(f"{dashboard(world)}/")
    for response in (overview, httpx.get(f"{dashboard(world)}/login")):
        for name, value in HEADERS.items():
            assert response.headers[name] == value
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "default-src 'none'" in csp
        assert "script-src" not in csp
    assert "<script" not in overview.text
    # The same app seen from another address: refused, even with a good session.
    keys = world.setup.keys
    config = IssuerConfig(keys=keys, rate_limits=RateLimits(enabled=False))
    app = create_issuer_app(config, world.setup.store, clock=SystemClock(), rng=os.urandom)

    import asyncio

    async def from_afar() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://issuer") as c:
            return [(await c.get(p)).status_code for p in ("/dashboard/login", "/dashboard/")]

    assert asyncio.run(from_afar()) == [403, 403]


def test_csv_exports_hold_the_tables(world: DemoWorld) -> None:
    with closing(logged_in(world)) as client:
        exports = {
            name: client.get(f"{dashboard(world)}/export/{name}.csv")
            for name in ("cards", "batches", "merchants", "audit", "payword-users")
        }
    for response in exports.values():
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
    merchants = list(csv.DictReader(io.StringIO(exports["merchants"].text)))
    assert [m["merchant"] for m in merchants] == ["shop"]
    assert len(list(csv.DictReader(io.StringIO(exports["batches"].text)))) == 3
    users = list(csv.DictReader(io.StringIO(exports["payword-users"].text)))
    assert [u["user"] for u in users] == ["alice-pw"]
    actions = {row["action"] for row in csv.DictReader(io.StringIO(exports["audit"].text))}
    assert "szm.batch.issue" in actions


# --- an operator's session in the browser ----------------------------------------------------


@pytest.mark.browser
def test_an_operator_logs_in_sees_revenue_and_blocks_a_card(
    world: DemoWorld, page: Page, tmp_path: Path
) -> None:
    base = dashboard(world)
    page.set_viewport_size({"width": 1200, "height": 1000})
    page.goto(f"{base}/")
    page.fill("#token", token_of(world))
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    # The demo's revenue: two HLL articles at 0.002 EUR, and the SZM value spent (one
    # article, recognised above).
    expect(page.locator("#revenue-total")).to_have_text("0.006")
    expect(page.locator("#ledger")).to_have_text("balanced")
    # The revenue chart draws the HLL (s0) and SZM (s2) bars of the bucket they fell in.
    expect(page.locator('svg.chart rect.s0:not([height="0.0"])').first).to_be_visible()
    expect(page.locator('svg.chart rect.s2:not([height="0.0"])').first).to_be_visible()
    screenshot(page, "dashboard-overview.png", tmp_path)
    # Find the card and block it.
    card = chain_card_id(world)
    page.click("text=Cards")
    page.fill("#card", card)
    page.click("text=Find")
    rows = page.locator("table#cards tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td").nth(5)).to_have_text("active")
    rows.first.locator("button.block").click()
    expect(page.locator(".notice")).to_have_text("Card blocked.")
    expect(page.locator("table#cards tbody tr td").nth(5)).to_have_text("blocked")
    # The next payment with that card is refused, and nothing is taken from it.
    with (
        Wallet.open(world.wallet_path, world.passphrase, preference=("szm:chain",)) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), timeout=30) as client,
    ):
        refused = client.get(f"{world.vendor_url}/articles/glacier.txt")
    assert refused.status_code != 200
    assert "Glaciers" not in refused.text
    # The audit log names who blocked it.
    page.click("text=Audit log")
    expect(page.locator("table#audit")).to_contain_text("szm.card.block")
    expect(page.locator("table#audit")).to_contain_text("operator:demo-operator")
