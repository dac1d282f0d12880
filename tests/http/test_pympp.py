"""Interoperability with pympp (import ``mpp``), the drafts' Python implementation that no
one here wrote: it parses every challenge and receipt farthing sends, for every method; a
credential it formats is accepted by the paywall; farthing reads what it formats. Against
the demo's issuer and vendor on loopback (all four methods) and against a real
``farthing vendor serve`` process (the SZM methods it serves from a folder)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import mpp
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.demo import DemoWorld, demo_world
from farthing.http.methods import METHOD_OF, SCHEME_OF
from farthing.http.payment_auth import (
    Challenge,
    Receipt,
    parse_challenges,
    parse_credential,
)
from farthing.store import open_store
from farthing.wallet.wallet import Wallet
from tests.paywall.helpers import issue_chain_cards, issue_prbg_cards
from tests.paywall.test_retry_servers import write_config
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("demo")
SCHEMES = ("szm:chain", "szm:prbg", "hll:mac", "payword")
ARTICLES = ["/articles/ocean.txt", "/articles/desert.txt", "/articles/reef.txt", "/data/prices.csv"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    before = os.environ.get("SOFTHSM2_CONF")  # the demo points it at its own tokens
    try:
        with demo_world(tmp_path_factory.mktemp("pympp")) as running:
            yield running
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


def offered(response: httpx.Response) -> list[str]:
    assert response.status_code == 402
    return response.headers.get_list("www-authenticate")


def same_challenge(theirs: mpp.Challenge, ours: Challenge) -> None:
    assert (theirs.id, theirs.realm, theirs.method, theirs.intent) == (
        ours.id,
        ours.realm,
        ours.method,
        ours.intent,
    )
    assert (theirs.request_b64, theirs.request, theirs.expires) == (
        ours.request_b64,
        ours.request,
        ours.expires_text,
    )
    assert theirs.opaque == ours.opaque
    assert theirs.to_echo().opaque == ours.opaque_b64  # pympp re-encodes it: JCS both ways


def repack(authorization: str, theirs: mpp.Challenge) -> str:
    """farthing's credential, formatted again by pympp from its own parse of the challenge."""
    ours = parse_credential(authorization)
    return mpp.format_authorization(
        mpp.Credential(challenge=theirs.to_echo(), payload=ours.payload)
    )


def test_pympp_parses_challenges_and_receipts_and_pays_with_every_method(
    world: DemoWorld,
) -> None:
    paid = {}
    with Wallet.open(world.wallet_path, world.passphrase) as wallet:
        for path, scheme in zip(ARTICLES, SCHEMES, strict=True):
            url = world.vendor_url + path
            headers = offered(httpx.get(url, timeout=30))
            ours = parse_challenges(headers)
            assert sorted(c.method for c in ours) == sorted(METHOD_OF.values())
            theirs = [mpp.parse_www_authenticate(h) for h in headers]
            for mine, other in zip(ours, theirs, strict=True):
                same_challenge(other, mine)
            wanted = next(c for c in ours if c.method == METHOD_OF[scheme])
            payment = wallet.pay(url, [wanted])
            other = next(c for c in theirs if c.id == wanted.id)
            answer = httpx.get(
                url, headers={"Authorization": repack(payment.authorization, other)}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["cache-control"] == "private"
            receipt = mpp.parse_payment_receipt(answer.headers["payment-receipt"])
            assert receipt.status == "success"
            assert SCHEME_OF[receipt.method] == scheme
            mine_receipt = Receipt.from_header(answer.headers["payment-receipt"])
            assert receipt.reference == mine_receipt.reference
            assert receipt.timestamp == datetime.fromtimestamp(mine_receipt.timestamp, UTC)
            wallet.settle(payment, mine_receipt, answer.content, status=answer.status_code)
            paid[scheme] = receipt.method
    assert paid == {s: METHOD_OF[s] for s in SCHEMES}


def test_pympp_parses_the_402_of_every_refusal(world: DemoWorld) -> None:
    url = world.vendor_url + "/articles/forest.txt"
    for header in ("Payment %%%", "Payment " + b64url_encode(b'{"challenge":{}}'), "Bearer x"):
        answer = httpx.get(url, headers={"Authorization": header}, timeout=30)
        assert answer.status_code == 402
        assert answer.headers["cache-control"] == "no-store"
        for value in answer.headers.get_list("www-authenticate"):
            assert mpp.parse_www_authenticate(value).id
        assert (
            answer.json()["challengeId"]
            == parse_challenges(answer.headers.get_list("www-authenticate"))[0].id
        )


# --- a client that knows only the charge intent ------------------------------------------------

ISO_MINOR_DIGITS = {"eur": 2, "usd": 2, "jpy": 0, "gbp": 2}  # what a generic wallet knows


def generic_price(request: dict[str, object]) -> Decimal | None:
    """How a wallet that knows only the charge intent reads a price: ISO 4217 (lowercase)
    in minor units; any other currency is method-defined, which it cannot read."""
    currency, amount = str(request["currency"]), str(request["amount"])
    if not re.fullmatch(r"[a-z]{3}", currency.lower()) or currency.lower() not in ISO_MINOR_DIGITS:
        return None
    return Decimal(amount).scaleb(-ISO_MINOR_DIGITS[currency.lower()])


def test_a_charge_only_client_cannot_misread_a_sub_cent_price(world: DemoWorld) -> None:
    """1000 micro-EUR (0.001 EUR) sent as the old ``{"amount": "1000", "currency": "EUR"}``
    reads as 10.00 EUR to such a client; sent as ``micro-eur`` it is not a currency it
    knows, and docs/http.md's reading gives the true price."""
    assert generic_price({"amount": "1000", "currency": "EUR"}) == Decimal("10.00")  # the old shape
    for header in offered(httpx.get(world.vendor_url + "/articles/ocean.txt", timeout=30)):
        request = mpp.parse_www_authenticate(header).request
        assert generic_price(request) is None
        assert request["currency"] == "micro-eur"
        assert Decimal(str(request["amount"])).scaleb(-6) == Decimal("0.002")  # 2000 micros


# --- farthing reads what pympp formats -----------------------------------------------------------


def test_farthing_reads_what_pympp_formats() -> None:
    request = {"amount": "1000", "currency": "micro-eur", "methodDetails": {"resource": "/a/*"}}
    created = mpp.Challenge.create(
        secret_key="not ours",
        realm="news",
        method="szmchain",
        intent="charge",
        request=request,
        expires="2027-01-15T08:00:00Z",
        description="an article",
        meta={"nonce": "abc"},
    )
    header = mpp.format_www_authenticate(created, "news")
    (ours,) = parse_challenges([header])
    assert (ours.id, ours.realm, ours.method, ours.request, ours.opaque) == (
        created.id,
        "news",
        "szmchain",
        request,
        {"nonce": "abc"},
    )
    assert ours.request_b64 == created.request_b64
    assert ours.description == "an article"
    credential = mpp.Credential(
        challenge=created.to_echo(), payload={"payment": "AAAA"}, source="did:x"
    )
    parsed = parse_credential(mpp.format_authorization(credential))
    assert parsed.challenge.id == created.id
    assert parsed.challenge.request == created.request_b64
    assert parsed.challenge.opaque == created.to_echo().opaque
    assert (parsed.payload, parsed.source) == ({"payment": "AAAA"}, "did:x")
    receipt = mpp.Receipt.success(
        "card:2", method="szmchain", timestamp=datetime(2027, 1, 1, tzinfo=UTC)
    )
    mine = Receipt.from_header(mpp.format_payment_receipt(receipt))
    assert (mine.method, mine.reference, mine.status) == ("szmchain", "card:2", "success")
    assert mine.timestamp == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())


# --- a real `farthing vendor serve` --------------------------------------------------------------


def test_a_real_vendor_serve_speaks_to_pympp(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "vendor.sqlite"))
    chain, prbg = issue_chain_cards(store, 1)[0], issue_prbg_cards(store, 1)[0]
    config = write_config(tmp_path, str(tmp_path / "vendor.sqlite"))
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(tmp_path / "goods"), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    with command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base:
        url = base + "/articles/a.txt"
        theirs = {c.method: c for c in map(mpp.parse_www_authenticate, offered(httpx.get(url)))}
        assert set(theirs) == {"szmchain", "szmprbg"}
        expires = int(datetime.fromisoformat(str(theirs["szmchain"].expires)).timestamp())
        _, chain_pay, _ = szm_chain.next_payment(chain, 2, now=expires - 300)
        _, prbg_pay, _ = szm_prbg.next_payment(prbg, 2, now=expires - 300)
        answers = []
        for method, raw in (
            ("szmchain", szm_chain.encode_payment(chain_pay)),
            ("szmprbg", szm_prbg.encode_payment(prbg_pay)),
        ):
            credential = mpp.Credential(
                challenge=theirs[method].to_echo(), payload={"payment": b64url_encode(raw)}
            )
            answers.append(
                httpx.get(url, headers={"Authorization": mpp.format_authorization(credential)})
            )
        replay = httpx.get(base + "/articles/b.txt", headers=answers[0].request.headers)
    store.close()
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    receipts = [mpp.parse_payment_receipt(a.headers["payment-receipt"]) for a in answers]
    assert [r.method for r in receipts] == ["szmchain", "szmprbg"]
    assert replay.status_code == 402
    assert mpp.parse_www_authenticate(replay.headers.get_list("www-authenticate")[0]).id
