"""draft-httpauth-payment-02, "Concurrent Request Handling": identical credentials sent at
once get at most one settlement and one delivery, against a real uvicorn on loopback whose
goods are slow to send (tests/paywall/slow_vendor.py), for ``szmchain``, ``payword`` and
``hll`` (deferred), with one worker and with two. A copy that meets the delivery of its
payment in flight is refused
``402`` (``x-payment-in-progress``, with fresh challenges and ``Retry-After``); the resend of
a lost answer, once the first delivery has ended, is still served (docs/http.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.money import Denomination
from farthing.core.schemes import hll, payword, szm_chain
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.store import Store, open_store
from farthing.testing import DeterministicRandom
from farthing.testing.hll import SoftwareCard
from farthing.testing.payword import PaywordSpender
from tests.paywall.helpers import issue_chain_cards
from tests.paywall.slow_vendor import BANK_MASTER, BROKER_KEY, GATE_ENV
from tests.servers import uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")
COPIES = 6
ROUNDS = 3
EUR = Denomination(currency="EUR", unit_micros=1000)


class Vendor(NamedTuple):
    base: str
    store: Store
    gate: Path  # while it is missing, every delivery's last piece waits (slow_vendor.py)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def vendor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vendor]:
    target = str(tmp_path / "vendor.sqlite")
    gate = tmp_path / "gate"
    gate.touch()
    store = open_store(target)
    with uvicorn_server(
        "tests.paywall.slow_vendor:app_from_env",
        env={"FARTHING_TEST_VENDOR_DB": target, GATE_ENV: str(gate)},
        workers=request.param,
        log_path=tmp_path / "server.log",
    ) as base:
        yield Vendor(base, store, gate)
    store.close()


def challenge_of(base: str, method: str) -> Challenge:
    first = httpx.get(base + "/articles/a", timeout=10)
    assert first.status_code == 402
    offered = parse_challenges(first.headers.get_list("www-authenticate"))
    (chosen,) = [c for c in offered if c.method == method]
    return chosen


def at_once(vendor: Vendor, authorization: str, copies: int = COPIES) -> list[httpx.Response]:
    """``copies`` identical paid GETs, each on its own connection, leaving together. The
    gate is closed until all but one are answered, so the one delivery stays in flight
    while every other copy arrives, even if a loaded machine delays one by a second (a copy
    that arrived after the delivery had ended would rightly be served, as a lost answer's
    resend is: that failed CI once as "delivered twice"). If two were delivered, the wait
    ends after 30 s and the count says so."""
    start = threading.Barrier(copies)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=vendor.base, timeout=60) as own:
            start.wait(timeout=10)
            return own.get("/articles/a", headers={"authorization": authorization})

    vendor.gate.unlink()
    try:
        with ThreadPoolExecutor(max_workers=copies) as pool:
            sent = [pool.submit(send, i) for i in range(copies)]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in sent) < copies - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            vendor.gate.touch()
            return [f.result() for f in sent]
    finally:
        vendor.gate.touch()


def assert_one_delivery(responses: list[httpx.Response]) -> None:
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [402] * (len(responses) - 1), statuses
    for refused in (r for r in responses if r.status_code == 402):
        problem = refused.json()
        assert problem["farthingCode"] == ErrorCode.PAYMENT_IN_PROGRESS, problem
        assert problem["reason"] == "x-payment-in-progress"
        assert refused.headers["retry-after"] == str(problem["retry_after"])
        assert parse_challenges(refused.headers.get_list("www-authenticate"))
        assert b"secret" not in refused.content


def resend_after_waiting(base: str, authorization: str) -> httpx.Response:
    """The same request sent again once the others are answered, as a client does after a
    lost answer, waiting ``Retry-After`` while the vendor says it is in progress (another
    worker accepted it less than DELIVERY_LEASE seconds ago); at most five times."""
    for _ in range(5):
        response = httpx.get(
            base + "/articles/a", headers={"authorization": authorization}, timeout=20
        )
        if response.status_code != 402 or "retry-after" not in response.headers:
            return response
        time.sleep(int(response.headers["retry-after"]))
    return response


def chain_credential(challenge: Challenge, payment: szm_chain.Payment) -> str:
    payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
    return format_credential(Credential.answering(challenge, payload))


def test_identical_szmchain_credentials_at_once_are_delivered_once(
    vendor: Vendor,
) -> None:
    base, store, _ = vendor
    card = issue_chain_cards(store, 1)[0]
    answers = []
    for _ in range(ROUNDS):
        challenge = challenge_of(base, "szmchain")
        card, payment, _ = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        answers.append(at_once(vendor, chain_credential(challenge, payment)))
        resend = resend_after_waiting(base, chain_credential(challenge, payment))
        assert resend.status_code == 200, resend.text  # sequential: a lost answer's resend
    delivered = [sum(r.status_code == 200 for r in round_) for round_ in answers]
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2 * ROUNDS  # one settlement each
    assert delivered == [1] * ROUNDS, delivered
    for round_ in answers:
        assert_one_delivery(round_)


def payword_spender(now: int) -> PaywordSpender:
    from farthing.core.primitives import ed25519_public_key

    user_key = b"U" * 32
    cert = payword.issue_certificate(
        BROKER_KEY,
        broker_id="broker",
        user_id="alice",
        user_public_key=ed25519_public_key(user_key),
        credit_limit=1000,
        denomination=EUR,
        expires_at=now + 86_400,
    )
    commitment = payword.commit(
        user_key,
        cert,
        vendor_id="shop",
        seed=DeterministicRandom("seed")(32),
        length=100,
        now=now,
        ttl=3600,
        rng=DeterministicRandom("n"),
    )
    return PaywordSpender(commitment, DeterministicRandom("seed")(32))


def payword_credential(
    challenge: Challenge, payment: payword.Payment, commitment: bytes | None = None
) -> str:
    payload = {"payment": b64url_encode(payword.encode_payment(payment))}
    if commitment is not None:
        payload["commitment"] = b64url_encode(commitment)
    return format_credential(Credential.answering(challenge, payload))


def test_identical_payword_credentials_at_once_are_delivered_once(
    vendor: Vendor,
) -> None:
    base, store, _ = vendor
    challenge = challenge_of(base, "payword")
    now = challenge.expires - 300
    spender = payword_spender(now)
    encoded = payword.encode_commitment(spender.commitment)
    pay: Callable[[Challenge], str] = lambda c: payword_credential(  # noqa: E731
        c, spender.reserve(2, now=now).payment, encoded
    )
    first = pay(challenge)  # the commitment comes with the first payment
    answers = [at_once(vendor, first)]
    for _ in range(ROUNDS - 1):
        answers.append(at_once(vendor, pay(challenge_of(base, "payword"))))
    delivered = [sum(r.status_code == 200 for r in round_) for round_ in answers]
    row = store.payword_commitment(spender.commitment_id)
    assert row is not None
    assert row.spent == 2 * ROUNDS
    assert delivered == [1] * ROUNDS, delivered
    for round_ in answers:
        assert_one_delivery(round_)


def hll_card(now: int) -> tuple[SoftwareCard, bytes]:
    """A card of 100 units certified by the slow vendor's bank, and its certificate."""
    card_id = b"h" * 16
    state = hll.CardState(card_id=card_id, denomination=EUR, balance=100, counter=0)
    key = hll.SoftwareCardKey(hll.derive_card_key(BANK_MASTER, card_id))
    card = SoftwareCard(key=key, state=state, pin="1234")
    card.verify_pin("1234")
    certificate = hll.issue_card_certificate(
        hll.card_certification_key(BANK_MASTER),
        card_id=card_id,
        denomination=EUR,
        expires_at=now + 86_400,
    )
    return card, hll.encode_card_certificate(certificate)


def hll_credential(card: SoftwareCard, certificate: bytes, challenge: Challenge) -> str:
    details = challenge.request["methodDetails"]
    assert isinstance(details, dict)
    offer = hll.Offer(
        merchant_id=str(challenge.request["recipient"]),
        good="/articles/a",
        amount=int(str(details["units"])),
        denomination=EUR,
        challenge=b64url_decode(challenge.id),
        expires_at=challenge.expires,
    )
    purchase = card.purchase(offer, challenge.expires - 300)
    payload = {
        "payment": b64url_encode(hll.encode_payment(purchase)),
        "certificate": b64url_encode(certificate),
    }
    return format_credential(Credential.answering(challenge, payload))


def test_identical_hll_credentials_at_once_are_delivered_once(vendor: Vendor) -> None:
    base, store, _ = vendor
    card, certificate = hll_card(int(time.time()))
    answers = []
    for _ in range(ROUNDS):
        authorization = hll_credential(card, certificate, challenge_of(base, "hll"))
        answers.append(at_once(vendor, authorization))
        resend = resend_after_waiting(base, authorization)
        assert resend.status_code == 200, resend.text  # sequential: a lost answer's resend
    delivered = [sum(r.status_code == 200 for r in round_) for round_ in answers]
    with store.transaction(readonly=True) as tx:
        charged = tx.vendor.hll_outstanding(card.state.card_id)
    assert charged == 2 * ROUNDS  # one purchase recorded each round
    assert delivered == [1] * ROUNDS, delivered
    for round_ in answers:
        assert_one_delivery(round_)
