"""Idempotent retry: a paid request sent again after its answer was lost gets the same good
again, with no new charge, while its challenge is valid (docs/http.md, "Retrying a paid
request"). Through the vendor app on a real store, for every method the vendor verifies.

Each payer pays once; the answer is dropped; the identical request is sent again. The
vendor's books (card or commitment ``spent``, HLL purchase rows) are read from the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.core.sealing import open_sealed
from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.paywall.app import create_vendor_app
from farthing.paywall.middleware import Paywall
from farthing.store import Store, open_store
from farthing.testing import DeterministicRandom, FixedClock
from farthing.testing.hll import SoftwareCard
from farthing.testing.payword import PaywordSpender
from tests.paywall.helpers import EUR, NOW, content, issue_chain_cards, issue_prbg_cards
from tests.paywall.helpers import prices as article_prices
from tests.paywall.slow_vendor import BANK_MASTER, BROKER_KEY, SETTINGS, BankDown

pytestmark = pytest.mark.anyio
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
USER_KEY = b"U" * 32


def sealed_type(response: httpx.Response) -> str:
    """The original content type the receipt names (the seal binds it)."""
    sealed = Receipt.from_header(response.headers["payment-receipt"]).extra["sealed"]
    assert isinstance(sealed, dict)
    return str(sealed["contentType"])


class Payer(Protocol):
    """One method's wallet side, and how much the vendor's books hold against it."""

    method: str

    def pay(self, challenge: Challenge, path: str) -> dict[str, object]:
        """The next credential payload for ``path``."""
        ...

    def good(self, response: httpx.Response, path: str) -> bytes:
        """The good in a 200 answer to the last payment (opened, for SZM)."""
        ...

    def charged(self, store: Store) -> int:
        """Units the vendor's books hold against this card or commitment."""
        ...


@dataclass
class SzmPayer:
    """Either SZM card: the two protocols differ only in how the next payment is made."""

    card: szm_chain.ChainCard | szm_prbg.PrbgCard
    method: str
    key: bytes = b""
    index: int = 0

    def pay(self, challenge: Challenge, path: str) -> dict[str, object]:
        if isinstance(self.card, szm_chain.ChainCard):
            self.card, chain, self.key = szm_chain.next_payment(self.card, 2, now=NOW)
            self.index, encoded = chain.index, szm_chain.encode_payment(chain)
        else:
            self.card, prbg, self.key = szm_prbg.next_payment(self.card, 2, now=NOW)
            self.index, encoded = prbg.index, szm_prbg.encode_payment(prbg)
        return {"payment": b64url_encode(encoded)}

    def good(self, response: httpx.Response, path: str) -> bytes:
        return open_sealed(
            self.key,
            response.content,
            method=self.method,
            card_id=self.card.card_id,
            index=self.index,
            resource=path,
            status=response.status_code,
            content_type=sealed_type(response),
        )

    def charged(self, store: Store) -> int:
        row = store.szm_card(self.card.card_id)
        assert row is not None
        return row.spent


@dataclass
class PaywordPayer:
    spender: PaywordSpender
    method: str = "payword"
    sent_commitment: bool = False

    @classmethod
    def make(cls) -> PaywordPayer:
        cert = payword.issue_certificate(
            BROKER_KEY,
            broker_id="broker",
            user_id="alice",
            user_public_key=ed25519_public_key(USER_KEY),
            credit_limit=1000,
            denomination=EUR,
            expires_at=NOW + 86_400,
        )
        seed = DeterministicRandom("seed")(32)
        commitment = payword.commit(
            USER_KEY,
            cert,
            vendor_id="shop",
            seed=seed,
            length=100,
            now=NOW,
            ttl=3600,
            rng=DeterministicRandom("n"),
        )
        return cls(PaywordSpender(commitment, seed))

    def pay(self, challenge: Challenge, path: str) -> dict[str, object]:
        payment = self.spender.reserve(2, now=NOW).payment
        payload: dict[str, object] = {
            "payment": b64url_encode(payword.encode_payment(payment)),
        }
        if not self.sent_commitment:  # the first payment carries the commitment
            payload["commitment"] = b64url_encode(
                payword.encode_commitment(self.spender.commitment)
            )
            self.sent_commitment = True
        return payload

    def good(self, response: httpx.Response, path: str) -> bytes:
        return response.content

    def charged(self, store: Store) -> int:
        row = store.payword_commitment(self.spender.commitment_id)
        return 0 if row is None else row.spent


@dataclass
class HllPayer:
    card: SoftwareCard
    certificate: bytes
    method: str = "hll:mac"
    counters: list[int] = field(default_factory=list)

    @classmethod
    def make(cls) -> HllPayer:
        card_id = b"c" * 16
        state = hll.CardState(card_id=card_id, denomination=EUR, balance=100, counter=0)
        card = SoftwareCard(
            key=hll.SoftwareCardKey(hll.derive_card_key(BANK_MASTER, card_id)),
            state=state,
            pin="1234",
        )
        card.verify_pin("1234")
        certificate = hll.issue_card_certificate(
            hll.card_certification_key(BANK_MASTER),
            card_id=card_id,
            denomination=EUR,
            expires_at=NOW + 86_400,
        )
        return cls(card, hll.encode_card_certificate(certificate))

    def pay(self, challenge: Challenge, path: str) -> dict[str, object]:
        request = challenge.request
        details = request["methodDetails"]
        assert isinstance(details, dict)
        offer = hll.Offer(
            merchant_id=str(request["recipient"]),
            good=path,
            amount=int(str(details["units"])),
            denomination=EUR,
            challenge=b64url_decode(challenge.id),
            expires_at=challenge.expires,
        )
        purchase = self.card.purchase(offer, NOW)
        return {
            "payment": b64url_encode(hll.encode_payment(purchase)),
            "certificate": b64url_encode(self.certificate),
        }

    def good(self, response: httpx.Response, path: str) -> bytes:
        return response.content

    def charged(self, store: Store) -> int:
        with store.transaction(readonly=True) as tx:
            return tx.vendor.hll_outstanding(self.card.state.card_id)


PAYERS = ["szm:chain", "szm:prbg", "payword", "hll:mac"]


@dataclass
class Vendor:
    app: Paywall
    store: Store
    clock: FixedClock
    payer: Payer

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://v")

    async def challenge(self, c: httpx.AsyncClient, path: str = "/articles/a") -> Challenge:
        response = await c.get(path)
        assert response.status_code == 402
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        return next(ch for ch in challenges if ch.method == METHOD_OF[self.payer.method])


def authorization(challenge: Challenge, payload: dict[str, object]) -> dict[str, str]:
    return {"authorization": format_credential(Credential.answering(challenge, payload))}


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        target = str(tmp_path / "vendor.sqlite")
    else:
        target = request.getfixturevalue("fresh_pg_dsn")
    opened = open_store(target)
    yield opened
    opened.close()


@pytest.fixture(params=PAYERS)
def vendor(request: pytest.FixtureRequest, store: Store) -> Vendor:
    payer: Payer
    if request.param == "szm:chain":
        payer = SzmPayer(issue_chain_cards(store, 1)[0], "szm:chain")
    elif request.param == "szm:prbg":
        payer = SzmPayer(issue_prbg_cards(store, 1)[0], "szm:prbg")
    elif request.param == "payword":
        payer = PaywordPayer.make()
    else:
        payer = HllPayer.make()
    clock = FixedClock(NOW)
    app = create_vendor_app(
        SETTINGS,
        content=content(),
        prices=article_prices(),
        store=store,
        bank=BankDown(),
        clock=clock,
        rng=DeterministicRandom("app"),
    )
    return Vendor(app=app, store=store, clock=clock, payer=payer)


async def test_the_same_request_again_gets_the_same_good_without_a_charge(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        headers = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        first = await c.get("/articles/a", headers=headers)  # its answer is "lost"
        charged = vendor.payer.charged(vendor.store)
        again = await c.get("/articles/a", headers=headers)
    assert first.status_code == 200
    assert again.status_code == 200, again.text
    assert vendor.payer.good(again, "/articles/a") == b"secret article a"
    assert vendor.payer.good(first, "/articles/a") == b"secret article a"
    before = Receipt.from_header(first.headers["payment-receipt"])
    after = Receipt.from_header(again.headers["payment-receipt"])
    assert after.reference == before.reference
    assert after.extra == before.extra  # same units, card and index: the same payment
    assert charged == 2
    assert vendor.payer.charged(vendor.store) == charged


async def test_a_retry_is_counted_in_the_metrics_as_retried(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        headers = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        await c.get("/articles/a", headers=headers)
        await c.get("/articles/a", headers=headers)
        assert vendor.app.metrics is not None  # served on the admin listener, not here
        metrics = vendor.app.metrics.render().decode()
    assert f'method="{METHOD_OF[vendor.payer.method]}",outcome="accepted"}} 1.0' in metrics
    assert f'method="{METHOD_OF[vendor.payer.method]}",outcome="retried"}} 1.0' in metrics


async def test_the_same_credential_for_another_path_is_refused(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        headers = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        assert (await c.get("/articles/a", headers=headers)).status_code == 200
        elsewhere = await c.get("/articles/b", headers=headers)
    assert elsewhere.status_code == 402
    assert b"secret" not in elsewhere.content
    assert "payment-receipt" not in elsewhere.headers
    assert vendor.payer.charged(vendor.store) == 2


async def test_the_same_request_after_the_window_is_refused(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        headers = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        assert (await c.get("/articles/a", headers=headers)).status_code == 200
        vendor.clock.set(challenge.expires - 1)
        last_second = await c.get("/articles/a", headers=headers)
        vendor.clock.set(challenge.expires)
        late = await c.get("/articles/a", headers=headers)
    assert last_second.status_code == 200
    assert late.status_code == 402
    assert late.json()["type"].endswith("/payment-expired")
    assert b"secret" not in late.content
    assert vendor.payer.charged(vendor.store) == 2


async def test_a_credential_with_any_byte_changed_is_refused(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        payload = vendor.payer.pay(challenge, "/articles/a")
        headers = authorization(challenge, payload)
        assert (await c.get("/articles/a", headers=headers)).status_code == 200
        changed = format_credential(Credential.answering(challenge, payload, source="x"))
        response = await c.get("/articles/a", headers={"authorization": changed})
    assert response.status_code == 402
    assert b"secret" not in response.content
    assert vendor.payer.charged(vendor.store) == 2


async def test_only_the_last_payment_can_be_sent_again(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        first = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        assert (await c.get("/articles/a", headers=first)).status_code == 200
        fresh = await vendor.challenge(c)  # a challenge id pays once
        second = authorization(fresh, vendor.payer.pay(fresh, "/articles/a"))
        assert (await c.get("/articles/a", headers=second)).status_code == 200
        stale = await c.get("/articles/a", headers=first)
    # SZM and PayWord keep what a retry needs for the payment that moved ``spent`` last;
    # the HLL vendor keeps every purchase row, so each may be sent again in its window.
    assert stale.status_code == (200 if vendor.payer.method == "hll:mac" else 402)
    assert vendor.payer.charged(vendor.store) == 4


async def test_two_identical_requests_at_once_are_charged_once(vendor: Vendor) -> None:
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        headers = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        answers: list[httpx.Response] = []

        async def send() -> None:
            answers.append(await c.get("/articles/a", headers=headers))

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(send)
    # -02 "Concurrent Request Handling": one settlement and one delivery; the copies that
    # meet it in flight are refused as in progress (before: 8 deliveries of 8).
    assert sorted(a.status_code for a in answers) == [200] + [402] * 7, [a.text for a in answers]
    (served,) = [a for a in answers if a.status_code == 200]
    assert vendor.payer.good(served, "/articles/a") == b"secret article a"
    refused = [a.json() for a in answers if a.status_code == 402]
    assert {p["farthingCode"] for p in refused} == {ErrorCode.PAYMENT_IN_PROGRESS}
    assert vendor.payer.charged(vendor.store) == 2
    async with vendor.client() as c:  # once it is out, the same request is a retry
        again = await c.get("/articles/a", headers=headers)
    assert again.status_code == 200
    assert vendor.payer.good(again, "/articles/a") == b"secret article a"
    assert vendor.payer.charged(vendor.store) == 2


async def test_a_used_challenge_id_takes_no_second_payment(vendor: Vendor) -> None:
    """The draft's MUST: each challenge id pays once, for every method, on SQLite and
    PostgreSQL: a new, valid payment under a used id is 402 invalid-challenge, not taken."""
    async with vendor.client() as c:
        challenge = await vendor.challenge(c)
        first = authorization(challenge, vendor.payer.pay(challenge, "/articles/a"))
        assert (await c.get("/articles/a", headers=first)).status_code == 200
        second = authorization(challenge, vendor.payer.pay(challenge, "/articles/b"))
        again = await c.get("/articles/b", headers=second)
    assert again.status_code == 402
    assert again.json()["type"].endswith("/invalid-challenge")
    assert b"secret" not in again.content
    assert vendor.payer.charged(vendor.store) == 2
