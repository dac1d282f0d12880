"""SZM at the issuer over HTTP: batches, printable codes that really pay, status, revenue."""

from __future__ import annotations

import httpx
import pytest

from farthing.core import cardcode
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain, szm_prbg, szm_status
from farthing.store import Store, SzmCardRow
from tests.issuer.helpers import BOTH_BACKENDS, Harness, assert_problem, balanced
from tests.store.helpers import advance_szm

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


def _batch(h: Harness, protocol: str = "szm:chain", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "protocol": protocol,
        "count": 3,
        "units": 20,
        "unit_micros": 500,
        "currency": "EUR",
        "expires_at": h.clock.now() + 86_400,
    }
    return {**body, **extra}


def _row(store: Store, card_id: bytes) -> SzmCardRow:
    row = store.szm_card(card_id)
    assert row is not None
    return row


def _denomination(row: SzmCardRow) -> Denomination:
    return Denomination(currency=row.currency, unit_micros=row.unit_micros)


def _pays_chain(h: Harness, code: cardcode.CardCode) -> None:
    """The printed code pays: the issuer's stored anchor accepts the card's payment."""
    row = _row(h.store, code.card_id)
    assert row.anchor is not None
    state = szm_chain.ChainCardState(
        card_id=row.card_id,
        anchor=row.anchor,
        spent=row.spent,
        length=row.units,
        denomination=_denomination(row),
        expires_at=row.expires_at,
    )
    card = szm_chain.card_from_code(code)
    _, payment, _ = szm_chain.next_payment(card, 3, now=h.clock.now())
    _, accepted = szm_chain.verify_payment(state, payment, units=3, now=h.clock.now())
    assert accepted.index == 3


def _pays_prbg(h: Harness, code: cardcode.CardCode) -> None:
    row = _row(h.store, code.card_id)
    assert row.generator is not None
    state = szm_prbg.PrbgCardState(
        card_id=row.card_id,
        spent=row.spent,
        units=row.units,
        generator=cardcode.Generator(row.generator),
        denomination=_denomination(row),
        expires_at=row.expires_at,
    )
    card = szm_prbg.card_from_code(code)
    _, payment, _ = szm_prbg.next_payment(card, 2, now=h.clock.now())
    keys = h.config.keys
    _, accepted = szm_prbg.verify_payment(
        state,
        payment,
        master_key=keys.szm_prbg_master,
        units=2,
        now=h.clock.now(),
        bbs_key=keys.bbs,
    )
    assert accepted.index == 2


@pytest.mark.parametrize(
    ("protocol", "generator"),
    [("szm:chain", None), ("szm:prbg", "hmac-ctr"), ("szm:prbg", "bbs")],
)
async def test_issued_codes_pay_at_the_issuer(
    api: httpx.AsyncClient, harness: Harness, protocol: str, generator: str | None
) -> None:
    body = _batch(harness, protocol, **({"generator": generator} if generator else {}))
    issued = await api.post("/v1/szm/batches", json=body)
    assert issued.status_code == 201, issued.text
    batch = issued.json()
    assert (batch["count"], batch["value_micros"]) == (3, 3 * 20 * 500)

    page = (await api.get(f"/v1/szm/batches/{batch['batch_id']}/codes")).json()
    assert page["count"] == 3
    assert len({c["card_id"] for c in page["cards"]}) == 3
    for exported in page["cards"]:
        code = cardcode.from_text(exported["code"])
        assert cardcode.from_compact(exported["compact"]) == code
        assert b64url_encode(code.card_id) == exported["card_id"]
        assert code.realm == harness.config.keys.realm
        if protocol == "szm:chain":
            _pays_chain(harness, code)
        else:
            _pays_prbg(harness, code)
    assert balanced(harness)


async def test_export_pages_and_is_audited(api: httpx.AsyncClient, harness: Harness) -> None:
    batch = (await api.post("/v1/szm/batches", json=_batch(harness, count=5))).json()
    url = f"/v1/szm/batches/{batch['batch_id']}/codes"
    first = (await api.get(url, params={"offset": 0, "limit": 2})).json()
    rest = (await api.get(url, params={"offset": 2, "limit": 10})).json()
    everything = (await api.get(url)).json()
    assert [c["code"] for c in first["cards"] + rest["cards"]] == [
        c["code"] for c in everything["cards"]
    ]
    with harness.store.transaction(readonly=True) as tx:
        actions = [e.action for e in tx.admin.audit_entries(10)]
    assert actions.count("szm.batch.export") == 3
    assert "szm.batch.issue" in actions


@pytest.mark.parametrize("protocol", ["szm:chain", "szm:prbg"])
async def test_card_status_answers_only_the_card_holder(
    api: httpx.AsyncClient, harness: Harness, protocol: str
) -> None:
    batch = (await api.post("/v1/szm/batches", json=_batch(harness, protocol))).json()
    page = (await api.get(f"/v1/szm/batches/{batch['batch_id']}/codes")).json()
    card_id, code = page["cards"][0]["card_id"], cardcode.from_text(page["cards"][0]["code"])
    other = cardcode.from_text(page["cards"][1]["code"])
    now = harness.clock.now()

    def body(secret: bytes, at: int, cid: bytes = code.card_id) -> dict[str, object]:
        proof = szm_status.status_proof(secret, cid, at)
        return {"at": at, "proof": b64url_encode(proof)}

    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://anyone") as public:
        url = f"/v1/szm/cards/{card_id}/status"
        # Who saw only the card id (it is in every payment) learns nothing: not even
        # whether the card exists.
        by_id = await public.get(f"/v1/szm/cards/{card_id}")
        no_proof = await public.post(url, json={"at": now, "proof": b64url_encode(bytes(32))})
        other_secret = await public.post(url, json=body(other.secret, now))
        unknown_id = b64url_encode(bytes(16))
        unknown = await public.post(
            f"/v1/szm/cards/{unknown_id}/status", json=body(code.secret, now, bytes(16))
        )
        stale = await public.post(url, json=body(code.secret, now - 301))
        holder = await public.post(url, json=body(code.secret, now - 5))
        codes = await public.get(f"/v1/szm/batches/{batch['batch_id']}/codes")
    assert by_id.status_code in (404, 405)
    for refused in (no_proof, other_secret, unknown):
        assert_problem(refused, 404, ErrorCode.NOT_FOUND)
        assert refused.json()["detail"] == "no such card"
    assert_problem(stale, 403, ErrorCode.ACCESS_DENIED)
    assert holder.json() == {
        "card_id": card_id,
        "units": 20,
        "spent": 0,
        "expires_at": harness.clock.now() + 86_400,
        "status": "active",
    }
    assert_problem(codes, 401, ErrorCode.UNAUTHENTICATED)

    assert advance_szm(harness.store, b64url_decode(card_id), 0, 20, bytes(32))
    spent = (await api.post(url, json=body(code.secret, harness.clock.now()))).json()
    assert (spent["spent"], spent["status"]) == (20, "exhausted")
    harness.clock.advance(86_400)
    expired = await api.post(url, json=body(code.secret, harness.clock.now()))
    assert expired.json()["status"] == "expired"


async def test_qr_png_carries_the_compact_code(api: httpx.AsyncClient, harness: Harness) -> None:
    batch = (await api.post("/v1/szm/batches", json=_batch(harness))).json()
    page = (await api.get(f"/v1/szm/batches/{batch['batch_id']}/codes")).json()
    card_id = page["cards"][0]["card_id"]
    png = await api.get(f"/v1/szm/cards/{card_id}/qr.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    code = (await api.get(f"/v1/szm/cards/{card_id}/code")).json()
    assert code == page["cards"][0]


async def test_issuing_posts_cash_to_the_prepaid_float_and_revenue_recognition(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    batch = (await api.post("/v1/szm/batches", json=_batch(harness))).json()
    eur = (await api.get("/v1/report")).json()["currencies"][0]
    assert eur["balances_micros"]["cash"] == 30_000
    assert eur["szm_outstanding_micros"] == 30_000
    page = (await api.get(f"/v1/szm/batches/{batch['batch_id']}/codes")).json()
    card_id = b64url_decode(page["cards"][0]["card_id"])
    assert advance_szm(harness.store, card_id, 0, 4, bytes(32))  # the vendor's hot path
    revenue = await api.post("/v1/szm/revenue", json={"currency": "EUR"})
    assert revenue.json() == {"currency": "EUR", "recognised_micros": 2000}
    again = await api.post("/v1/szm/revenue", json={"currency": "EUR"})
    assert again.json()["recognised_micros"] == 0
    eur = (await api.get("/v1/report")).json()["currencies"][0]
    assert eur["balances_micros"]["revenue"] == -2000
    assert eur["szm_outstanding_micros"] == 28_000
    assert balanced(harness)


async def test_bad_batches(api: httpx.AsyncClient, harness: Harness) -> None:
    past = _batch(harness, expires_at=harness.clock.now())
    assert_problem(await api.post("/v1/szm/batches", json=past), 400, ErrorCode.BAD_FIELD)
    wrong = _batch(harness, "szm:chain", generator="bbs")
    assert_problem(await api.post("/v1/szm/batches", json=wrong), 400, ErrorCode.UNSUPPORTED_METHOD)
    many = _batch(harness, count=harness.config.max_batch_cards + 1)
    assert_problem(await api.post("/v1/szm/batches", json=many), 400, ErrorCode.OVERSIZED)
    units = harness.config.max_batch_chain_units // 100 + 1  # 100 cards: one unit too many
    slow = _batch(harness, count=100, units=units)
    problem = assert_problem(await api.post("/v1/szm/batches", json=slow), 400, ErrorCode.OVERSIZED)
    assert "smaller batches" in problem["detail"]
    same_as_prbg = _batch(harness, "szm:prbg", count=100, units=units)  # no hash per unit
    assert (await api.post("/v1/szm/batches", json=same_as_prbg)).status_code == 201
    huge = _batch(harness, "szm:prbg", count=10_000, units=1 << 20, unit_micros=10**12)
    assert_problem(await api.post("/v1/szm/batches", json=huge), 400, ErrorCode.OVERSIZED)
    buyer = _batch(harness, buyer="Alice Example")  # no buyer identity, anywhere
    assert_problem(await api.post("/v1/szm/batches", json=buyer), 400, ErrorCode.MALFORMED)
    unknown = f"/v1/szm/batches/{b64url_encode(bytes(16))}/codes"
    assert_problem(await api.get(unknown), 404, ErrorCode.NOT_FOUND)
    assert_problem(await api.get("/v1/szm/batches/not*base64"), 400)
