"""``Idempotency-Key`` for a paid POST (draft-httpauth-payment-02, "Idempotency and Side
Effects"), against a real uvicorn on loopback whose app counts the orders it runs
(tests/paywall/slow_vendor.py), on SQLite and PostgreSQL, across a vendor restart
(docs/http.md, "Idempotency-Key")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.paywall.idempotency import MAX_KEY_LEN
from farthing.store import Store, open_store
from tests.paywall.helpers import issue_chain_cards
from tests.servers import uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
BODY = b'{"item": "tea", "count": 2}'
COPIES = 4


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store]]:
    target = (
        str(tmp_path / "vendor.sqlite")
        if request.param == "sqlite"
        else str(request.getfixturevalue("fresh_pg_dsn"))
    )
    store = open_store(target)
    yield target, store
    store.close()


def serve(target: str, tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    return uvicorn_server(
        "tests.paywall.slow_vendor:app_from_env",
        env={"FARTHING_TEST_VENDOR_DB": target},
        log_path=tmp_path / f"{name}.log",
    )


def order_challenge(base: str, body: bytes = BODY) -> Challenge:
    first = httpx.post(base + "/orders/x", content=body, timeout=10)
    assert first.status_code == 402, first.text
    offered = parse_challenges(first.headers.get_list("www-authenticate"))
    (chosen,) = [c for c in offered if c.method == "szmchain"]
    return chosen


def paid_order(
    base: str, authorization: str, key: str | None, body: bytes = BODY
) -> httpx.Response:
    headers = {"authorization": authorization}
    if key is not None:
        headers["idempotency-key"] = key
    return httpx.post(base + "/orders/x", content=body, headers=headers, timeout=10)


def test_a_paid_post_retried_with_its_key_gets_the_same_answer_without_running_again(
    tmp_path: Path, database: tuple[str, Store]
) -> None:
    target, store = database
    card = issue_chain_cards(store, 1)[0]

    keys: dict[str, tuple[bytes, szm_chain.Payment]] = {}

    def pay(challenge: Challenge, *, keep: bool = True) -> str:
        """A credential paying the card's next 2 units (``keep``: the card moves on)."""
        nonlocal card
        moved, payment, key = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        card = moved if keep else card
        payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
        authorization = format_credential(Credential.answering(challenge, payload))
        keys[authorization] = (key, payment)
        return authorization

    def opened(response: httpx.Response, authorization: str) -> bytes:
        key, payment = keys[authorization]
        return open_sealed(
            key,
            response.content,
            method="szm:chain",
            card_id=payment.card_id,
            index=payment.index,
            resource="/orders/x",
            status=response.status_code,
            content_type="text/plain",
        )

    with serve(target, tmp_path, "first") as base:
        authorization = pay(order_challenge(base))
        original = paid_order(base, authorization, "order-1")
        again = paid_order(base, authorization, "order-1")
        other_body = paid_order(base, authorization, "order-1", body=b'{"item": "coffee"}')
        other_credential = paid_order(base, pay(order_challenge(base), keep=False), "order-1")
        second = pay(order_challenge(base))
        next_order = paid_order(base, second, "order-2")
        too_long = paid_order(base, authorization, "k" * (MAX_KEY_LEN + 1))
    with serve(target, tmp_path, "restarted") as base:
        after_restart = paid_order(base, authorization, "order-1")
        third = pay(order_challenge(base))
        first_after_restart = paid_order(base, third, "order-3")
    assert original.status_code == 201, original.text
    assert opened(original, authorization) == b"order 1 of %d bytes" % len(BODY)
    for same in (again, after_restart):
        assert same.status_code == 201, same.text
        assert same.content == original.content  # the kept answer (the seal, as sent)
        assert same.headers["payment-receipt"] == original.headers["payment-receipt"]
    # Not run again: the next order is the app's second; after the restart its first.
    assert opened(next_order, second) == b"order 2 of %d bytes" % len(BODY)
    assert opened(first_after_restart, third) == b"order 1 of %d bytes" % len(BODY)
    for reused in (other_body, other_credential):
        assert reused.status_code == 422, reused.text
        assert reused.json()["farthingCode"] == ErrorCode.IDEMPOTENCY_KEY_REUSED
        assert reused.json()["reason"] == "x-idempotency-key-reused"
    assert too_long.status_code == 400
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2 * 3  # three orders paid; the refused credential was not looked at


def test_a_paid_post_sent_again_while_its_first_copy_runs_is_told_it_is_running(
    tmp_path: Path, database: tuple[str, Store]
) -> None:
    """The order app takes 0.4 s (slow_vendor.ORDER_PAUSE): a copy with the same key,
    credential and body that arrives meanwhile gets 409, and once the first is answered, the
    kept answer. (With 0.1 s, copies that a loaded machine delayed past the first one's
    answer got the kept answer, 201, in about 1 run in 5.)"""
    target, store = database
    card = issue_chain_cards(store, 1)[0]
    with serve(target, tmp_path, "vendor") as base:
        challenge = order_challenge(base)
        _, payment, _ = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
        authorization = format_credential(Credential.answering(challenge, payload))
        start = threading.Barrier(COPIES)

        def send(_: int) -> httpx.Response:
            start.wait(timeout=10)
            return paid_order(base, authorization, "order-9")

        with ThreadPoolExecutor(max_workers=COPIES) as pool:
            copies = list(pool.map(send, range(COPIES)))
        later = paid_order(base, authorization, "order-9")
    statuses = sorted(r.status_code for r in copies)
    assert statuses == [201] + [409] * (COPIES - 1), statuses
    for running in (r for r in copies if r.status_code == 409):
        assert running.json()["farthingCode"] == ErrorCode.IDEMPOTENCY_IN_PROGRESS
        assert b"order" not in running.content
    (first,) = [r for r in copies if r.status_code == 201]
    assert later.status_code == 201
    assert later.content == first.content  # the kept answer, not a second run
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2  # one order paid
