"""pympp's own server code takes farthing payments (issue 13, "Interoperability").

The vendor (tests.interop.pympp_vendor.py) is a Starlette app priced with pympp's ``Mpp``,
under uvicorn on loopback; its methods are farthing's (:mod:`farthing.mpp.server`), so
verification runs through farthing's core and store. Credentials are built with pympp's
own client types (``Challenge.to_echo``, ``Credential.to_authorization``) from the
challenges pympp's parser reads; the payment inside is farthing's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
from mpp import Challenge, Credential, Receipt

from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword, szm_chain
from farthing.http.methods.payword import METHOD as PAYWORD
from farthing.http.methods.payword import PaywordPayload
from farthing.http.methods.szm import CHAIN_METHOD, PRBG_METHOD, SzmPayload
from farthing.http.payment_auth import parse_challenges
from farthing.store import Store, open_store
from farthing.testing import DeterministicRandom
from farthing.testing.payword import PaywordSpender
from tests.interop.pympp_vendor import BROKER_KEY, PAYWORD_BROKER, PAYWORD_VENDOR
from tests.paywall.helpers import EUR, issue_chain_cards
from tests.servers import uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")
ARTICLE = "/articles/a"


@dataclass
class Vendor:
    base: str
    store: Store

    def challenges(self) -> list[Challenge]:
        response = httpx.get(self.base + ARTICLE, timeout=10)
        assert response.status_code == 402, response.text
        return [
            Challenge.from_www_authenticate(value)
            for value in response.headers.get_list("www-authenticate")
        ]

    def chain_challenge(self) -> Challenge:
        (chosen,) = [c for c in self.challenges() if c.method == CHAIN_METHOD]
        return chosen

    def spent(self, card: szm_chain.ChainCard) -> int:
        row = self.store.szm_card(card.card_id)
        assert row is not None
        return row.spent


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendor]:
    folder = tmp_path_factory.mktemp("pympp-vendor")
    target = str(folder / "vendor.sqlite")
    store = open_store(target)
    with uvicorn_server(
        "tests.interop.pympp_vendor:app_from_env",
        env={"FARTHING_MPP_DATABASE": target},
        workers=2,
        log_path=folder / "server.log",
    ) as base:
        yield Vendor(base, store)
    store.close()


def paid(challenge: Challenge, card: szm_chain.ChainCard) -> str:
    """pympp's credential for ``challenge``, carrying the card's next payment of 2 units."""
    expires = datetime.fromisoformat(str(challenge.expires).replace("Z", "+00:00"))
    _, payment, _ = szm_chain.next_payment(card, 2, now=int(expires.timestamp()) - 60)
    payload = dict(SzmPayload(payment=szm_chain.encode_payment(payment)).to_json())
    return Credential(challenge=challenge.to_echo(), payload=payload).to_authorization()


def test_pympp_offers_every_farthing_method_and_a_paid_request_is_served(vendor: Vendor) -> None:
    (card,) = issue_chain_cards(vendor.store, 1, seed="pympp-served")
    offered = {c.method for c in vendor.challenges()}
    assert offered == {CHAIN_METHOD, PRBG_METHOD, PAYWORD}
    authorization = paid(vendor.chain_challenge(), card)
    response = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    assert response.status_code == 200, response.text
    assert response.text == "article a"
    receipt = Receipt.from_payment_receipt(response.headers["payment-receipt"])
    assert receipt.status == "success"
    assert receipt.method == CHAIN_METHOD
    assert vendor.spent(card) == 2


def test_the_same_credential_twice_settles_once(vendor: Vendor) -> None:
    (card,) = issue_chain_cards(vendor.store, 1, seed="pympp-twice")
    authorization = paid(vendor.chain_challenge(), card)
    first = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    second = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    assert first.status_code == 200, first.text
    assert second.status_code == 402, second.text
    assert "payment-receipt" not in second.headers
    assert second.json()["type"].endswith("/verification-failed")
    assert vendor.spent(card) == 2


def test_two_concurrent_credentials_for_one_payment_settle_once(vendor: Vendor) -> None:
    """The same payment under two fresh challenges, sent at once to two workers: pympp
    finds both credentials valid, and farthing's store lets one settle."""
    (card,) = issue_chain_cards(vendor.store, 1, seed="pympp-concurrent")
    credentials = [paid(vendor.chain_challenge(), card) for _ in range(2)]
    start = threading.Barrier(len(credentials))

    def send(authorization: str) -> int:
        with httpx.Client(base_url=vendor.base, timeout=10) as own:
            start.wait(timeout=10)
            return own.get(ARTICLE, headers={"authorization": authorization}).status_code

    with ThreadPoolExecutor(max_workers=len(credentials)) as pool:
        statuses = sorted(pool.map(send, credentials))
    assert statuses == [200, 402]
    assert vendor.spent(card) == 2


def test_a_forged_payment_is_refused_by_farthings_core(vendor: Vendor) -> None:
    (card,) = issue_chain_cards(vendor.store, 1, seed="pympp-forged")
    challenge = vendor.chain_challenge()
    forged = szm_chain.Payment(card_id=card.card_id, index=2, value=bytes(32))
    payload = dict(SzmPayload(payment=szm_chain.encode_payment(forged)).to_json())
    authorization = Credential(challenge=challenge.to_echo(), payload=payload).to_authorization()
    response = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    assert response.status_code == 402
    assert Challenge.from_www_authenticate(response.headers["www-authenticate"])
    assert vendor.spent(card) == 0


def test_farthings_parser_reads_the_challenges_pympp_sends(vendor: Vendor) -> None:
    response = httpx.get(vendor.base + ARTICLE, timeout=10)
    fields = response.headers.get_list("www-authenticate")
    ours = parse_challenges(fields)
    theirs = [Challenge.from_www_authenticate(value) for value in fields]
    assert len(ours) == len(theirs) == 3
    assert [(c.id, c.method, c.intent, c.request) for c in ours] == [
        (c.id, c.method, c.intent, c.request) for c in theirs
    ]


def payword_spender(name: str) -> PaywordSpender:
    """A PayWord user's commitment to the vendor, certified by the vendor's broker."""
    user_key = DeterministicRandom(f"pympp-user-{name}")(32)
    now = int(time.time())
    certificate = payword.issue_certificate(
        BROKER_KEY,
        broker_id=PAYWORD_BROKER,
        user_id=name,
        user_public_key=ed25519_public_key(user_key),
        credit_limit=1000,
        denomination=EUR,
        expires_at=now + 86_400,
    )
    seed = DeterministicRandom(f"pympp-seed-{name}")(32)
    commitment = payword.commit(
        user_key, certificate, vendor_id=PAYWORD_VENDOR, seed=seed, length=100, now=now,
        ttl=3600, rng=DeterministicRandom(f"pympp-nonce-{name}"),
    )  # fmt: skip
    return PaywordSpender(commitment, seed)


def test_a_payword_payment_is_taken_once(vendor: Vendor) -> None:
    spender = payword_spender("alice")
    (challenge,) = [c for c in vendor.challenges() if c.method == PAYWORD]
    payment = spender.reserve(2, now=int(time.time())).payment
    payload = PaywordPayload(
        payment=payword.encode_payment(payment),
        commitment=payword.encode_commitment(spender.commitment),
    ).to_json()
    authorization = Credential(
        challenge=challenge.to_echo(), payload=dict(payload)
    ).to_authorization()
    first = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    second = httpx.get(vendor.base + ARTICLE, headers={"authorization": authorization})
    assert first.status_code == 200, first.text
    assert second.status_code == 402, second.text
    held = vendor.store.payword_commitment(spender.commitment_id)
    assert held is not None
    assert held.spent == 2
