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


def test_every_generated_hll_credential_answers_its_own_challenge(tmp_path: Path) -> None:
    """hll:mac lines need the bank to be accepted (the bench reports any refusal in its
    *rejected* column); here: one id per line, each bound to the request the vendor issues
    for the route, and each card's counters in order."""
    from bench.e2e import BankSide, write_issuer_keys

    from farthing.core.encoding import b64url_decode
    from farthing.core.schemes import hll

    write_issuer_keys(tmp_path / "issuer.keys.json")
    bank = BankSide(str(tmp_path / "issuer.sqlite"), tmp_path / "issuer.keys.json")
    try:
        folder = write_vendor(
            tmp_path, str(tmp_path / "vendor.sqlite"), bank.link("http://127.0.0.1:9")
        )
        store = open_store(folder.database)
        try:
            issuing = Issuing(store=store, secret=folder.challenge_secret, bank=bank)
            lines = MAKERS["hll:mac"](issuing, CARDS, UNITS)
        finally:
            store.close()
        vendor = vendor_from_config(load_vendor_config(folder.config))
        route = vendor.paywall.prices.match(PAID_PATH)
        assert route is not None
        request_b64 = encode_jcs_b64(vendor.paywall.methods["hll"].request(route))
        binder = ChallengeBinder(folder.challenge_secret)
        credentials = [parse_credential(line) for line in lines]
        assert len({c.challenge.id for c in credentials}) == len(lines)
        for credential in credentials:
            echo = credential.challenge
            assert echo.method == "hll"
            assert binder.verify(echo, now=0, realm=REALM, request_b64=request_b64) is not None
        counters = sorted(
            hll.decode_payment(b64url_decode(str(c.payload["payment"]))).counter
            for c in credentials
        )
        assert counters == sorted(list(range(1, UNITS + 1)) * CARDS)  # each card in order
    finally:
        bank.close()
