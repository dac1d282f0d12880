"""The benchmark's own credentials (bench/e2e.py): each answers a challenge of its own,
made as the vendor makes them, and the real vendor app (``app_from_config``, what every
uvicorn worker builds) accepts every one of them, in the order wrk sends them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from bench.e2e import MAKERS, PAID_PATH, REALM, Issuing, write_vendor

from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import ChallengeBinder, encode_jcs_b64, parse_credential
from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import vendor_from_config
from farthing.store import open_store

CARDS, UNITS = 3, 4


@pytest.mark.parametrize("kind", ["szm:chain", "szm:prbg", "payword"])
def test_every_generated_credential_answers_its_own_challenge_and_is_accepted(
    kind: str, tmp_path: Path
) -> None:
    folder = write_vendor(tmp_path, str(tmp_path / "vendor.sqlite"))
    store = open_store(folder.database)
    try:
        lines = MAKERS[kind](Issuing(store=store, secret=folder.challenge_secret), CARDS, UNITS)
    finally:
        store.close()
    assert len(lines) == CARDS * UNITS
    vendor = vendor_from_config(load_vendor_config(folder.config))
    # The challenge ``request`` the vendor itself issues for the priced route.
    route = vendor.paywall.prices.match(PAID_PATH)
    assert route is not None
    request_b64 = encode_jcs_b64(vendor.paywall.methods[METHOD_OF[kind]].request(route))
    binder = ChallengeBinder(folder.challenge_secret)
    echoes = [parse_credential(line).challenge for line in lines]
    assert len({echo.id for echo in echoes}) == len(lines)  # single use: one id per line
    for echo in echoes:
        assert echo.method == METHOD_OF[kind]
        assert binder.verify(echo, now=0, realm=REALM, request_b64=request_b64) is not None

    async def pay_all() -> list[int]:
        transport = httpx.ASGITransport(app=vendor.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return [
                (await client.get(PAID_PATH, headers={"authorization": line})).status_code
                for line in lines
            ]

    assert asyncio.run(pay_all()) == [200] * len(lines)
