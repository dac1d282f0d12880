"""``POST /v1/hll/verify-batch`` over a real uvicorn bank, and a real vendor whose bank
client sends the online verifications that arrive together in fewer calls."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import Conflict, ErrorCode, InvalidPayment, Unavailable
from farthing.core.schemes import hll
from farthing.http.issuer_client import IssuerClient
from farthing.http.issuer_wire import verify_batch_tag
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.issuer.routes_hll import MAX_VERIFY_BATCH
from tests.issuer.helpers import (
    EUR,
    Harness,
    Shop,
    answered_calls,
    balanced,
    buy,
    open_shop,
    verify_body,
)
from tests.servers import app_server, free_port, uvicorn_server

Pair = tuple[hll.Offer, hll.Purchase]


@pytest.fixture
def bank(harness: Harness) -> Iterator[str]:
    """The issuer app under uvicorn on loopback (its clock and store are the harness's)."""
    with app_server(harness.app) as base:
        yield base


def batch_body(shop: Shop, pairs: list[Pair], *, key: bytes | None = None) -> dict[str, object]:
    items = [(hll.encode_offer(o), hll.encode_payment(p)) for o, p in pairs]
    tag = verify_batch_tag(key or shop.merchant_key, shop.merchant_id, items)
    return {
        "merchant_id": shop.merchant_id,
        "items": [{"offer": b64url_encode(o), "payment": b64url_encode(p)} for o, p in items],
        "tag": b64url_encode(tag),
    }


def settled(h: Harness, shop: Shop) -> tuple[int, int, int]:
    """(units spent on the card, micros owed to the merchant, spend rows of the card)."""
    with h.store.transaction(readonly=True) as tx:
        card = tx.hll.card(shop.card_id)
        rows = sum(tx.hll.spend(shop.card_id, c) is not None for c in range(1, 300))
    assert card is not None
    owed = h.services.accounts.merchant(shop.merchant_id).owed_micros
    return card.spent_units, owed, rows


def code_of(result: dict[str, object]) -> tuple[object, object]:
    problem = result["problem"]
    assert isinstance(problem, dict)
    return problem["status"], problem["farthingCode"]


def test_a_mixed_batch_gets_one_right_outcome_per_item(harness: Harness, bank: str) -> None:
    shop = open_shop(harness)
    earlier = buy(harness, shop, 3)
    valid = buy(harness, shop, 2)
    offer, purchase = buy(harness, shop, 2)
    forged = (offer, replace(purchase, sigma=bytes(32)))
    # The counter of `earlier` under another offer: only the card's key could make it.
    other = replace(earlier[0], good="/elsewhere")
    sigma = hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id)).mac(
        hll.purchase_message(shop.card_id, other, earlier[1].counter)
    )
    replayed = (other, replace(earlier[1], sigma=sigma))
    unknown = (valid[0], hll.Purchase(card_id=bytes(16), counter=1, sigma=valid[1].sigma))
    theirs = replace(valid[0], merchant_id="m2")  # another shop's purchase, forwarded
    foreign = (theirs, shop.card.purchase(theirs, harness.clock.now()))
    with httpx.Client(base_url=bank, timeout=10) as client:
        first = client.post("/v1/hll/verify", json=verify_body(shop, *earlier))
        assert first.status_code == 200, first.text
        pairs = [valid, forged, replayed, earlier, unknown, valid, foreign]
        answer = client.post("/v1/hll/verify-batch", json=batch_body(shop, pairs))
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(pairs)
    assert results[0]["repeated"] is False
    assert results[0]["units"] == 2
    assert code_of(results[1]) == (401, ErrorCode.PAYMENT_INVALID)
    assert code_of(results[2]) == (409, ErrorCode.DUPLICATE_SPEND)
    assert results[3]["repeated"] is True  # settled by the single call before: no charge
    assert code_of(results[4]) == (401, ErrorCode.PAYMENT_INVALID)
    assert results[5]["repeated"] is True  # the same purchase twice in one batch: once
    assert code_of(results[6]) == (403, ErrorCode.ACCESS_DENIED)
    assert b64url_decode(results[0]["card_id"]) == shop.card_id
    # earlier (3) and valid (2) are each charged and credited once; nothing else is.
    assert settled(harness, shop) == (5, 5000, 2)
    assert balanced(harness)


def test_a_batch_is_refused_whole_for_a_bad_tag_or_too_many_items(
    harness: Harness, bank: str
) -> None:
    shop = open_shop(harness)
    pairs = [buy(harness, shop, 1) for _ in range(MAX_VERIFY_BATCH + 1)]
    with httpx.Client(base_url=bank, timeout=10) as client:
        too_many = client.post("/v1/hll/verify-batch", json=batch_body(shop, pairs))
        wrong_key = batch_body(shop, pairs[:3], key=bytes(32))
        unauthenticated = client.post("/v1/hll/verify-batch", json=wrong_key)
        # The tag binds the items: one taken out of a tagged batch fails it.
        cut = {**batch_body(shop, pairs[:3]), "items": batch_body(shop, pairs[:2])["items"]}
        tampered = client.post("/v1/hll/verify-batch", json=cut)
        assert settled(harness, shop) == (0, 0, 0)
        at_cap = client.post("/v1/hll/verify-batch", json=batch_body(shop, pairs[:-1]))
    assert too_many.status_code == 400, too_many.text
    assert too_many.json()["farthingCode"] == ErrorCode.BATCH_TOO_LARGE
    for refused in (unauthenticated, tampered):
        assert refused.status_code == 401, refused.text
        assert refused.json()["farthingCode"] == ErrorCode.UNAUTHENTICATED
    assert at_cap.status_code == 200, at_cap.text
    assert [r["repeated"] for r in at_cap.json()["results"]] == [False] * MAX_VERIFY_BATCH
    assert settled(harness, shop) == (MAX_VERIFY_BATCH, MAX_VERIFY_BATCH * 1000, MAX_VERIFY_BATCH)


# --- a real vendor in front of the bank ----------------------------------------------------


def write_vendor(folder: Path, bank: str, shop: Shop) -> Path:
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True)
    for i in range(PAID):
        (goods / f"a{i}.txt").write_text(f"secret article {i}")
    (folder / "merchant.key").write_text(shop.merchant_key.hex())
    (folder / "challenge.key").write_text("c" * 64)
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        'database = "vendor.sqlite"\n'
        'content_dir = "goods"\n'
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n'
        "[hll]\n"
        f'issuer_url = "{bank}"\n'
        f'merchant_id = "{shop.merchant_id}"\n'
        'merchant_key_file = "merchant.key"\n'
        "unit_micros = 1000\n"
    )
    return config


PAID = 16


def bank_calls(bank: str, token: str) -> dict[str, float]:
    """Successful HLL verification calls the bank has answered, by route (its metrics)."""
    return answered_calls(bank, token, ("/v1/hll/verify", "/v1/hll/verify-batch"))


def pay(shop: Shop, challenge: Challenge, path: str, now: int) -> dict[str, str]:
    details = challenge.request["methodDetails"]
    assert isinstance(details, dict)
    offer = hll.Offer(
        merchant_id=str(challenge.request["recipient"]),
        good=path,
        amount=int(str(details["units"])),
        denomination=EUR,
        challenge=b64url_decode(challenge.id),
        expires_at=challenge.expires,
    )
    payment = hll.encode_payment(shop.card.purchase(offer, now))
    payload = {"payment": b64url_encode(payment)}
    return {"authorization": format_credential(Credential.answering(challenge, payload))}


def paid_credentials(vendor: str, shop: Shop, paths: list[str]) -> list[dict[str, str]]:
    """A paid request's headers for each path, answering the challenge the vendor sent."""
    with httpx.Client(base_url=vendor, timeout=30) as client:
        challenges = [
            parse_challenges(client.get(p).headers.get_list("www-authenticate"))[0] for p in paths
        ]
    now = int(time.time())
    return [pay(shop, c, p, now) for c, p in zip(challenges, paths, strict=True)]


def test_the_vendor_sends_concurrent_verifications_in_fewer_calls(
    harness: Harness, bank: str, tmp_path: Path
) -> None:
    harness.clock.set(int(time.time()))  # the vendor's offers run on the real clock
    shop = open_shop(harness)
    env = {"FARTHING_VENDOR_CONFIG": str(write_vendor(tmp_path, bank, shop))}
    log = tmp_path / "vendor.log"
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env, log_path=log) as vendor:
        paths = [f"/articles/a{i}.txt" for i in range(PAID)]
        credentials = paid_credentials(vendor, shop, paths)
        before = bank_calls(bank, harness.token)

        def fetch(i: int) -> httpx.Response:
            with httpx.Client(base_url=vendor, timeout=30) as own:
                return own.get(paths[i], headers=credentials[i])

        with ThreadPoolExecutor(PAID) as pool:
            answers = list(pool.map(fetch, range(PAID)))
        after = bank_calls(bank, harness.token)
    assert [a.status_code for a in answers] == [200] * PAID, [a.text for a in answers]
    assert [a.text for a in answers] == [f"secret article {i}" for i in range(PAID)]
    calls = {route: after[route] - before[route] for route in after}
    # Every purchase reached the bank and was settled once, in fewer calls than purchases
    # (before: one /v1/hll/verify call each, 16 calls).
    assert settled(harness, shop) == (2 * PAID, 2000 * PAID, PAID)
    assert sum(calls.values()) < PAID, calls
    assert calls["/v1/hll/verify-batch"] >= 1, calls
    assert balanced(harness)


# --- the vendor's bank client: one outcome per caller ------------------------------------


@pytest.mark.anyio
async def test_coalesced_callers_each_get_their_own_answer(harness: Harness, bank: str) -> None:
    """Purchases asked for together go in one batch call; each caller gets what the single
    call gives it: False (settled), True (a retry, not charged), or its own error."""
    shop = open_shop(harness)
    earlier, valid, other_valid = (buy(harness, shop, 2) for _ in range(3))
    forged = (valid[0], replace(valid[1], sigma=bytes(32)))
    elsewhere = replace(earlier[0], good="/elsewhere")
    sigma = hll.SoftwareCardKey(harness.services.hll.card_key(shop.card_id)).mac(
        hll.purchase_message(shop.card_id, elsewhere, earlier[1].counter)
    )
    replayed = (elsewhere, replace(earlier[1], sigma=sigma))
    async with IssuerClient(
        bank, merchant_id=shop.merchant_id, merchant_key=shop.merchant_key
    ) as client:
        assert await client.verify_online(*encoded(earlier)) is False
        before = bank_calls(bank, harness.token)
        pairs = [valid, forged, replayed, other_valid, valid, earlier]
        outcomes = await asyncio.gather(
            *(client.verify_online(*encoded(p)) for p in pairs), return_exceptions=True
        )
    after = bank_calls(bank, harness.token)
    assert outcomes[0] is False
    assert isinstance(outcomes[1], InvalidPayment)
    assert outcomes[1].code is ErrorCode.PAYMENT_INVALID
    assert isinstance(outcomes[2], Conflict)
    assert outcomes[2].code is ErrorCode.DUPLICATE_SPEND
    assert outcomes[3:] == [False, True, True]
    assert {r: after[r] - before[r] for r in after} == {
        "/v1/hll/verify": 0,
        "/v1/hll/verify-batch": 1,
    }
    assert settled(harness, shop) == (6, 6000, 3)


def encoded(pair: Pair) -> tuple[bytes, bytes]:
    return hll.encode_offer(pair[0]), hll.encode_payment(pair[1])


@contextlib.contextmanager
def answers_lost(bank: str) -> Iterator[str]:
    """A link to the bank that delivers every request and loses its answer: the bank acts
    on it, then the connection closes before the answer reaches the caller."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                length = int(found.group(1)) if found else 0
                while len(body) < length:
                    body += conn.recv(65536)
                path = head.split(b" ")[1].decode()
                headers = {"content-type": "application/json"}
                httpx.post(bank + path, content=body, headers=headers, timeout=10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()
        thread.join(10)


@pytest.mark.anyio
async def test_a_batch_whose_answer_is_lost_fails_each_caller_and_its_retry_is_free(
    harness: Harness, bank: str
) -> None:
    """A batch call's outcome is unknown when its answer is lost: every caller in it gets
    Unavailable, as a single call's caller does; the purchases sent again are answered as
    retries, so each is charged once."""
    shop = open_shop(harness)
    pairs = [buy(harness, shop, 2) for _ in range(4)]
    with answers_lost(bank) as lossy:
        async with IssuerClient(
            lossy, merchant_id=shop.merchant_id, merchant_key=shop.merchant_key
        ) as client:
            lost = await asyncio.gather(
                *(client.verify_online(*encoded(p)) for p in pairs), return_exceptions=True
            )
    assert all(isinstance(e, Unavailable) for e in lost), lost
    assert all(e.code is ErrorCode.ISSUER_UNAVAILABLE for e in lost)  # type: ignore[union-attr]
    assert len({id(e) for e in lost}) == len(pairs)  # each caller its own exception
    assert settled(harness, shop) == (8, 8000, 4)  # the bank did act on them
    async with IssuerClient(
        bank, merchant_id=shop.merchant_id, merchant_key=shop.merchant_key
    ) as client:
        again = await asyncio.gather(*(client.verify_online(*encoded(p)) for p in pairs))
    assert again == [True] * len(pairs)
    assert settled(harness, shop) == (8, 8000, 4)
    assert balanced(harness)


def test_a_bank_that_is_out_fails_each_batched_request_and_the_resends_settle_once(
    harness: Harness, bank: str, tmp_path: Path
) -> None:
    """Concurrent paid requests while the bank's port is closed: the vendor's batched
    calls fail, and each request is answered 503 with Retry-After (nothing delivered);
    the same requests sent again once the bank is reachable are each settled once."""
    harness.clock.set(int(time.time()))
    shop = open_shop(harness)
    closed = f"http://127.0.0.1:{free_port()}"
    out_config = write_vendor(tmp_path, closed, shop)
    up_config = tmp_path / "vendor-up.toml"
    up_config.write_text(out_config.read_text().replace(closed, bank))
    paths = [f"/articles/a{i}.txt" for i in range(PAID)]
    env = {"FARTHING_VENDOR_CONFIG": str(out_config)}
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env) as vendor:
        credentials = paid_credentials(vendor, shop, paths)
        out = fetch_all(vendor, paths, credentials)
    assert [a.status_code for a in out] == [503] * PAID, [a.text for a in out]
    assert [a.headers.get("retry-after") for a in out] == ["5"] * PAID
    assert all("secret" not in a.text for a in out)
    assert all(a.json()["farthingCode"] == ErrorCode.ISSUER_UNAVAILABLE for a in out)
    assert settled(harness, shop) == (0, 0, 0)
    env = {"FARTHING_VENDOR_CONFIG": str(up_config)}
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env) as vendor:
        up = fetch_all(vendor, paths, credentials)
    assert [a.status_code for a in up] == [200] * PAID, [a.text for a in up]
    assert settled(harness, shop) == (2 * PAID, 2000 * PAID, PAID)
    assert balanced(harness)


def fetch_all(
    vendor: str, paths: list[str], credentials: list[dict[str, str]]
) -> list[httpx.Response]:
    """Every paid request at once, each on a connection of its own."""

    def fetch(i: int) -> httpx.Response:
        with httpx.Client(base_url=vendor, timeout=30) as own:
            return own.get(paths[i], headers=credentials[i])

    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(fetch, range(len(paths))))
