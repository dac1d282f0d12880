"""Operators, customers, cash-in, merchants, the ledger check and the report, over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode
from farthing.issuer import app_from_env, write_key_file
from tests.issuer.helpers import (
    ACTOR,
    BOTH_BACKENDS,
    Harness,
    add_customer,
    assert_problem,
    balanced,
)

pytestmark = pytest.mark.anyio


@BOTH_BACKENDS
async def test_customer_lifecycle_and_cash_in(api: httpx.AsyncClient, harness: Harness) -> None:
    made = await api.post("/v1/customers", json={"customer_id": "c-42", "currency": "EUR"})
    assert made.status_code == 201
    assert made.json() == {"customer_id": "c-42", "currency": "EUR", "available_micros": 0}

    load = {"amount_micros": 2_500_000, "reference": "till-1:0001"}
    first = await api.post("/v1/customers/c-42/loads", json=load)
    assert first.status_code == 201
    assert first.json()["available_micros"] == 2_500_000
    again = await api.post("/v1/customers/c-42/loads", json=load)  # idempotent by reference
    assert again.json()["available_micros"] == 2_500_000
    other = await api.post("/v1/customers/c-42/loads", json={**load, "amount_micros": 7})
    assert_problem(other, 409, ErrorCode.CONFLICT)

    shown = await api.get("/v1/customers/c-42")
    assert shown.json()["available_micros"] == 2_500_000
    assert balanced(harness)


async def test_duplicate_and_unknown_customers(api: httpx.AsyncClient) -> None:
    body = {"customer_id": "dup", "currency": "EUR"}
    assert (await api.post("/v1/customers", json=body)).status_code == 201
    assert_problem(await api.post("/v1/customers", json=body), 409, ErrorCode.CONFLICT)
    assert_problem(await api.get("/v1/customers/nobody"), 404, ErrorCode.NOT_FOUND)
    load = {"amount_micros": 1, "reference": "r"}
    assert_problem(await api.post("/v1/customers/nobody/loads", json=load), 404)


async def test_currency_the_issuer_does_not_keep(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/customers", json={"customer_id": "x", "currency": "JPY"})
    assert_problem(response, 400, ErrorCode.UNSUPPORTED_METHOD)


@BOTH_BACKENDS
async def test_merchant_key_is_returned_once_and_stored_sealed(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    made = await api.post("/v1/merchants", json={"merchant_id": "shop-1", "currency": "EUR"})
    assert made.status_code == 201
    key = b64url_decode(made.json()["key"])
    assert len(key) == 32
    with harness.store.transaction(readonly=True) as tx:
        row = tx.admin.merchant("shop-1")
    assert row is not None
    assert key not in row.key_sealed  # sealed, not stored in the clear
    assert harness.services.merchants.get("shop-1") is not None
    shown = await api.get("/v1/merchants/shop-1")
    assert shown.json() == {"merchant_id": "shop-1", "currency": "EUR", "owed_micros": 0}
    assert "key" not in shown.json()
    again = await api.post("/v1/merchants", json={"merchant_id": "shop-1", "currency": "EUR"})
    assert_problem(again, 409)


@BOTH_BACKENDS
async def test_every_operator_write_is_audited(api: httpx.AsyncClient, harness: Harness) -> None:
    await api.post("/v1/customers", json={"customer_id": "aud", "currency": "EUR"})
    await api.post("/v1/customers/aud/loads", json={"amount_micros": 5, "reference": "r1"})
    await api.post("/v1/merchants", json={"merchant_id": "m-aud", "currency": "EUR"})
    with harness.store.transaction(readonly=True) as tx:
        entries = tx.admin.audit_entries(10)
    actions = [(e.actor, e.action) for e in entries if e.actor == "operator:alice"]
    assert actions == [
        ("operator:alice", "merchant.create"),
        ("operator:alice", "customer.load"),
        ("operator:alice", "customer.create"),
    ]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer nope", "Basic YWxpY2U6cHc=", "bearer fop_" + "A" * 43],
)
async def test_missing_or_bad_token_is_401(harness: Harness, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        response = await c.get("/v1/ledger/check")
    assert_problem(response, 401, ErrorCode.UNAUTHENTICATED)
    assert response.headers["www-authenticate"].startswith("Bearer")


@BOTH_BACKENDS
async def test_revoked_token_is_401(api: httpx.AsyncClient, harness: Harness) -> None:
    made = harness.services.accounts.create_operator_token(ACTOR, "bob")
    headers = {"Authorization": f"Bearer {made.token}"}
    assert (await api.get("/v1/ledger/check", headers=headers)).status_code == 200
    assert harness.services.accounts.revoke_operator_token(ACTOR, made.operator_id)
    assert_problem(
        await api.get("/v1/ledger/check", headers=headers), 401, ErrorCode.UNAUTHENTICATED
    )


async def test_only_token_hashes_are_stored(harness: Harness) -> None:
    made = harness.services.accounts.create_operator_token(ACTOR, "carol")
    with harness.store.transaction(readonly=True) as tx:
        entries = tx.admin.audit_entries(5)
    assert all(made.token not in str(entry.detail) for entry in entries)
    assert "token" not in repr(made)


@BOTH_BACKENDS
async def test_ledger_check_and_report(api: httpx.AsyncClient, harness: Harness) -> None:
    add_customer(harness, "c1", 4_000_000)
    check = await api.get("/v1/ledger/check")
    assert check.json()["balanced"] is True
    report = (await api.get("/v1/report")).json()
    eur = next(c for c in report["currencies"] if c["currency"] == "EUR")
    assert eur["balances_micros"]["cash"] == 4_000_000
    assert eur["balances_micros"]["customer"] == -4_000_000
    assert sum(eur["balances_micros"].values()) == 0
    assert report["ledger"]["balanced"] is True


async def test_openapi_is_published(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    paths = document["paths"]
    assert {"/v1/hll/verify", "/v1/hll/deposits", "/v1/szm/batches", "/v1/report"} <= set(paths)


async def test_the_uvicorn_factory_builds_from_the_environment(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys, harness.config.keys)
    monkeypatch.setenv("FARTHING_ISSUER_DB", harness.target)
    monkeypatch.setenv("FARTHING_ISSUER_KEYS", str(keys))
    app = app_from_env()
    headers = {"Authorization": f"Bearer {harness.token}"}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # closes the app's own store at the end
        httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c,
    ):
        assert (await c.get("/v1/ledger/check")).json()["balanced"] is True
