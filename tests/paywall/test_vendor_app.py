"""The vendor app on a real SQLite store: SZM chain and PRBG cards, sealing, metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import Credential, format_credential, parse_challenges
from farthing.paywall.app import create_vendor_app
from farthing.store import CardStatus, open_store
from farthing.testing import DeterministicRandom, FixedClock
from tests.paywall.helpers import (
    NOW,
    SETTINGS,
    content,
    issue_chain_cards,
    issue_prbg_cards,
    prices,
)

pytestmark = pytest.mark.anyio


def credential(challenges: list, method: str, payment: bytes) -> dict[str, str]:  # type: ignore[type-arg]
    cid = next(c for c in challenges if c.method == method)
    payload = {"payment": b64url_encode(payment)}
    return {"authorization": format_credential(Credential.answering(cid, payload))}


async def test_chain_and_prbg_cards_pay_on_sqlite(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "vendor.sqlite"))
    chain_card = issue_chain_cards(store, 2)[0]
    prbg_card = issue_prbg_cards(store, 2)[0]
    app = create_vendor_app(
        SETTINGS,
        content=content(),
        prices=prices(),
        store=store,
        clock=FixedClock(NOW),
        rng=DeterministicRandom("app"),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as c:
        first = await c.get("/articles/x")
        challenges = parse_challenges(first.headers.get_list("www-authenticate"))
        assert [ch.method for ch in challenges] == ["szmchain", "szmprbg"]
        chain_card, chain_pay, chain_key = szm_chain.next_payment(chain_card, 2, now=NOW)
        paid_chain = await c.get(
            "/articles/x",
            headers=credential(challenges, "szmchain", szm_chain.encode_payment(chain_pay)),
        )
        prbg_card, prbg_pay, prbg_key = szm_prbg.next_payment(prbg_card, 2, now=NOW)
        paid_prbg = await c.get(
            "/articles/y",
            headers=credential(challenges, "szmprbg", szm_prbg.encode_payment(prbg_pay)),
        )
        replay = await c.get(
            "/articles/x",  # the same credential for another path: a replay, not a retry
            headers=credential(challenges, "szmprbg", szm_prbg.encode_payment(prbg_pay)),
        )
        metrics = await c.get("/metrics")
        health = await c.get("/healthz")
    assert paid_chain.status_code == 200
    assert (
        open_sealed(
            chain_key,
            paid_chain.content,
            method="szm:chain",
            card_id=chain_card.card_id,
            index=2,
            resource="/articles/x",
            status=200,
            content_type="text/plain; charset=utf-8",
        )
        == b"secret article x"
    )
    assert paid_prbg.status_code == 200
    assert (
        open_sealed(
            prbg_key,
            paid_prbg.content,
            method="szm:prbg",
            card_id=prbg_card.card_id,
            index=2,
            resource="/articles/y",
            status=200,
            content_type="text/plain; charset=utf-8",
        )
        == b"secret article y"
    )
    assert replay.status_code == 402
    assert 'outcome="accepted"} 1.0' in metrics.text
    assert health.text == "ok"
    # The store, not the cache, holds the truth.
    row = store.szm_card(chain_card.card_id)
    assert row is not None
    assert (row.spent, row.anchor) == (2, chain_pay.value)


async def test_blocked_card_is_refused(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "vendor.sqlite"))
    card = issue_chain_cards(store, 1)[0]
    with store.transaction() as tx:
        tx.szm.set_status(card.card_id, CardStatus.BLOCKED)
    app = create_vendor_app(
        SETTINGS,
        content=content(),
        prices=prices(),
        store=store,
        clock=FixedClock(NOW),
        rng=DeterministicRandom("app"),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as c:
        challenges = parse_challenges(
            (await c.get("/articles/x")).headers.get_list("www-authenticate")
        )
        _, payment, _ = szm_chain.next_payment(card, 2, now=NOW)
        response = await c.get(
            "/articles/x",
            headers=credential(challenges, "szmchain", szm_chain.encode_payment(payment)),
        )
    assert response.status_code == 402
    assert b"secret" not in response.content


def test_lifespan_runs_background_jobs_and_closers(tmp_path: Path) -> None:
    import asyncio

    from farthing.demo._servers import BackgroundServer

    events: list[str] = []

    async def job() -> None:
        events.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def close() -> None:
        events.append("closed")

    store = open_store(str(tmp_path / "vendor.sqlite"))
    app = create_vendor_app(
        SETTINGS, content=content(), prices=prices(), store=store, background=[job], closers=[close]
    )
    with BackgroundServer(app, name="vendor-test") as url:
        assert httpx.get(url + "/healthz").text == "ok"
    assert events == ["started", "cancelled", "closed"]
