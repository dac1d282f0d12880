"""The access log: one JSON line per request on the issuer and the vendor (served as
``farthing ... serve`` serves them), never a secret; every 5xx with the correlation id
its problem body carries."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import Credential, format_credential, parse_challenges
from farthing.issuer import IssuerKeys
from farthing.issuer.auth import new_operator_token, token_hash
from farthing.store import open_store, upgrade_to_head
from farthing.testing import DeterministicRandom
from tests.paywall.helpers import issue_chain_cards
from tests.paywall.test_uvicorn_workers import credential, write_config
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("uvicorn")

FIELDS = {"method", "route", "status", "payment", "ms", "correlation_id"}


def serve(factory: str) -> tuple[list[str], int]:
    """``python -m farthing.serving`` with its default logging (the access log on)."""
    port = free_port()
    command = [sys.executable, "-m", "farthing.serving", factory, "--port", str(port),
               "--timeout-graceful-shutdown", "2"]  # fmt: skip
    return command, port


def access_lines(log: Path) -> list[dict[str, object]]:
    lines = []
    for text in log.read_text().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line["route"] != "/healthz":  # the test harness's polls until ready
                lines.append(line)
    return lines


def test_the_issuer_logs_every_request_and_no_secret(
    tmp_path: Path, key_file: Path, ops_keys: IssuerKeys
) -> None:
    db = tmp_path / "issuer.sqlite"
    upgrade_to_head(str(db))
    token = new_operator_token(DeterministicRandom("token"))
    with open_store(str(db)) as store, store.transaction() as tx:
        tx.admin.add_operator_token("ops", token_hash(token))
    wrong = new_operator_token(DeterministicRandom("wrong"))
    env = {"FARTHING_ISSUER_DB": str(db), "FARTHING_ISSUER_KEYS": str(key_file)}
    command, port = serve("farthing.issuer.app:app_from_env")
    log = tmp_path / "issuer.log"
    with (
        command_server(command, port, env=env, log_path=log) as base,
        httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as op,
    ):
        merchant = op.post("/v1/merchants", json={"merchant_id": "shop", "currency": "EUR"})
        batch = op.post(
            "/v1/szm/batches",
            json={"protocol": "szm:chain", "count": 2, "units": 10, "unit_micros": 1000,
                  "currency": "EUR", "expires_at": int(time.time()) + 86_400},
        )  # fmt: skip
        codes = op.get(f"/v1/szm/batches/{batch.json()['batch_id']}/codes")
        refused = httpx.get(
            f"{base}/v1/merchants/shop", headers={"authorization": f"Bearer {wrong}"}
        )
        missing = op.get("/v1/no/such/thing")
    assert [merchant.status_code, batch.status_code, codes.status_code] == [201, 201, 200]
    assert [refused.status_code, missing.status_code] == [401, 404]
    lines = access_lines(log)
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("POST", "/v1/merchants", 201),
        ("POST", "/v1/szm/batches", 201),
        ("GET", "/v1/szm/batches/{batch_id}/codes", 200),
        ("GET", "/v1/merchants/{merchant_id}", 401),
        ("GET", "unmatched", 404),
    ]
    assert all(set(line) == FIELDS for line in lines)
    assert len({line["correlation_id"] for line in lines}) == len(lines)
    secrets = [token, wrong, merchant.json()["key"]]
    secrets += [card["code"] for card in codes.json()["cards"]]
    secrets += [ops_keys.szm_chain_master.hex(), ops_keys.merchant_key_wrap.hex()]
    text = log.read_text()
    assert [s for s in secrets if s in text] == []


def test_the_vendor_logs_each_payment_with_its_method_and_no_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = open_store(str(tmp_path / "vendor.sqlite"))
    card = issue_chain_cards(store, 1)[0]
    store.close()
    command, port = serve("farthing.paywall.serve:app_from_env")
    log = tmp_path / "vendor.log"
    env = {"FARTHING_VENDOR_CONFIG": str(config)}
    with (
        command_server(command, port, env=env, log_path=log) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        unpaid = client.get("/articles/a.txt")
        challenge = parse_challenges(unpaid.headers.get_list("www-authenticate"))[0]
        card, payment, key = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        paid = client.get("/articles/a.txt", headers=credential(challenge, payment))
        _, later, _ = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        encoded = szm_chain.encode_payment(later)
        forged = encoded[:-1] + bytes([encoded[-1] ^ 1])
        payload = {"payment": b64url_encode(forged)}
        forged_header = format_credential(Credential.answering(challenge, payload))
        refused = client.get("/articles/a.txt", headers={"authorization": forged_header})
        free = client.get("/readyz")
    assert [unpaid.status_code, paid.status_code, free.status_code] == [402, 200, 200]
    assert refused.status_code == 402
    chain = METHOD_OF["szm:chain"]
    lines = access_lines(log)
    assert [(line["route"], line["status"], line["payment"]) for line in lines] == [
        ("/articles/*", 402, None),
        ("/articles/*", 200, chain),
        ("/articles/*", 402, chain),
        ("/readyz", 200, None),
    ]
    text = log.read_text()
    secrets = [
        credential(challenge, payment)["authorization"],
        forged_header,
        b64url_encode(forged),
        b64url_encode(szm_chain.encode_payment(payment)),
        key.hex(),
        b64url_encode(key),
        card.secret.hex(),
        b64url_encode(card.secret),
    ]
    assert [s for s in secrets if s in text] == []


@pytest.mark.anyio
async def test_a_5xx_is_logged_with_the_correlation_id_of_its_body(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from farthing.paywall.app import build_vendor
    from farthing.testing import FixedClock
    from tests.paywall.helpers import NOW, SETTINGS, content, prices

    store = open_store(str(tmp_path / "vendor.sqlite"))
    card = issue_chain_cards(store, 1)[0]
    vendor = build_vendor(
        SETTINGS, content=content(), prices=prices(), store=store, clock=FixedClock(NOW)
    )

    async def explode(context: object) -> object:
        raise RuntimeError("the database went away")

    vendor.paywall.methods[METHOD_OF["szm:chain"]].settle = explode  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=vendor.app)
    caplog.set_level(logging.INFO, logger="farthing.access")
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        unpaid = await client.get("/articles/x")
        challenges = parse_challenges(unpaid.headers.get_list("www-authenticate"))
        chain = next(c for c in challenges if c.method == METHOD_OF["szm:chain"])
        _, payment, _ = szm_chain.next_payment(card, 2, now=NOW)
        failed = await client.get("/articles/x", headers=credential(chain, payment))
    store.close()
    assert failed.status_code == 500
    correlation = failed.json()["correlationId"]
    errors = [r for r in caplog.records if r.name == "farthing.access" and r.levelno >= 40]
    assert len(errors) == 1
    line = json.loads(errors[0].getMessage())
    assert line["correlation_id"] == correlation
    assert (line["status"], line["payment"]) == (500, METHOD_OF["szm:chain"])
    settle_logs = [r for r in caplog.records if r.name == "farthing.paywall"]
    assert any(correlation in r.getMessage() for r in settle_logs)
