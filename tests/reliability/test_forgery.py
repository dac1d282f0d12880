"""Forgeries, end to end over HTTP: the vendor app and the issuer app in process, on one
real SQLite store, the vendor's bank being the issuer (``hll:mac`` online).

Each attack is refused, charges nothing, and does not burn the honest payment: the genuine
payment (or a fresh purchase at the same counter) is still accepted afterwards. What the
core and vendor suites already show in memory (tests/core bit flips, tests/paywall
test_szm_methods, test_payword_method, test_paywall) is not repeated; see
docs/reliability.md for the map.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment
from farthing.core.primitives import hmac_sha256
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.core.sealing import open_sealed
from farthing.http.issuer_client import IssuerClient
from farthing.http.issuer_wire import verify_request_tag
from farthing.paywall.app import HllSettings, VendorSettings, create_vendor_app
from farthing.paywall.goods import GoodsApp
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import FixedClock, SoftwareWrappingKey
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.store import Outcome
from farthing.wallet.wallet import Wallet
from tests.reliability.problems import assert_problem
from tests.reliability.world import (
    ACTOR,
    MERCHANT_ID,
    PRICE_MICROS,
    REALM,
    UNIT,
    ChainHolder,
    HllHolder,
    Holder,
    PrbgHolder,
    World,
    authorization,
    build_world,
    challenge_ids,
    hll_offer,
)

pytestmark = pytest.mark.anyio
PATH = "/articles/a.txt"
REFUSED = {400, 401, 402}


@dataclasses.dataclass
class Shop:
    world: World
    http: httpx.AsyncClient
    cids: dict[str, tuple[str, int]]

    async def pay(
        self, method: str, payment: bytes, path: str = PATH, **extra: bytes
    ) -> httpx.Response:
        cid = self.cids[method][0]
        header = authorization(cid, method, payment, **extra)
        return await self.http.get(path, headers={"authorization": header})

    async def fresh(self, path: str = PATH) -> None:
        unpaid = await self.http.get(path)
        assert unpaid.status_code == 402
        self.cids = challenge_ids(unpaid.headers.get_list("www-authenticate"))


def client(app: Paywall) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vendor.test")


@pytest.fixture
async def shop(sqlite_world: World) -> AsyncIterator[Shop]:
    async with client(sqlite_world.vendor_app()) as http:
        shop = Shop(sqlite_world, http, {})
        await shop.fresh()
        yield shop


def flips(data: bytes) -> list[bytes]:
    """One flipped bit in every byte (a different bit each time)."""
    return [data[:i] + bytes([data[i] ^ (1 << (i % 8))]) + data[i + 1 :] for i in range(len(data))]


def charged(world: World, holders: list[Holder]) -> list[int]:
    return [world.spent(holder) for holder in holders]


# --- bit flips ---------------------------------------------------------------------------


async def test_a_flipped_bit_anywhere_is_refused_and_burns_nothing(shop: Shop) -> None:
    world, now = shop.world, shop.world.clock.now()
    chain, prbg = world.chain_cards(1)[0], world.prbg_cards(1)[0]
    commitment, card = world.commitments(1)[0], world.hll_cards(1)[0]
    offer = hll_offer(*shop.cids["hll:mac"], good=PATH)
    genuine = {
        "szm:chain": (chain.at(2, now)[0], {}),
        "szm:prbg": (prbg.at(2, now)[0], {}),
        "hll:mac": (card.pay(offer, 1), {}),
        "payword": (commitment.at(2, now), {"commitment": commitment.encoded}),
    }
    holders: list[Holder] = [chain, prbg, commitment, card]
    tried = 0
    for method, (payment, extra) in genuine.items():
        if extra:  # first, while the vendor does not know the commitment yet
            for forged in flips(extra["commitment"])[::3]:
                response = await shop.pay(method, payment, commitment=forged)
                assert_problem(response, families=REFUSED)
                tried += 1
            assert world.store.payword_commitment(commitment.commitment_id) is None
        for forged in flips(payment):
            assert_problem(await shop.pay(method, forged, **extra), families=REFUSED)
            tried += 1
        cid = shop.cids[method][0]
        for forged_id in flips(b64url_decode(cid.id)):
            forged_challenge = dataclasses.replace(cid, id=b64url_encode(forged_id))
            header = authorization(forged_challenge, method, payment, **extra)
            response = await shop.http.get(PATH, headers={"authorization": header})
            assert_problem(response, families={402})
            tried += 1
    assert charged(world, holders) == [0, 0, 0, 0]
    assert tried > 400
    for method, (payment, extra) in genuine.items():
        assert (await shop.pay(method, payment, **extra)).status_code == 200, method


# --- the wrong card ------------------------------------------------------------------------


async def test_payments_of_the_wrong_card_are_refused(shop: Shop) -> None:
    world, now = shop.world, shop.world.clock.now()
    a, b = world.chain_cards(2)
    pa, pb = world.prbg_cards(2)
    ca, cb = world.commitments(2)
    ha, hb = world.hll_cards(2)
    offer = hll_offer(*shop.cids["hll:mac"], good=PATH)
    stranger = ChainHolder(dataclasses.replace(a.card, secret=bytes(32)))  # another issuer's
    forged = {
        "a's chain value under b's id": ("szm:chain", _rename_chain(a.at(2, now)[0], b), {}),
        "a card of another issuer": ("szm:chain", stranger.at(2, now)[0], {}),
        "a chain payment as szm:prbg": ("szm:prbg", a.at(2, now)[0], {}),
        "a's prbg token under b's id": ("szm:prbg", _rename_prbg(pa.at(2, now)[0], pb), {}),
        "b's payword under a's commitment": (
            "payword",
            _reword(ca.at(2, now), cb.at(2, now)),
            {"commitment": ca.encoded},
        ),
        "a's purchase signed with b's key": ("hll:mac", _resign(ha, hb, offer), {}),
    }
    holders: list[Holder] = [a, b, pa, pb, ca, cb, ha, hb]
    for name, (method, payment, extra) in forged.items():
        response = await shop.pay(method, payment, **extra)
        assert response.status_code in REFUSED, name
        assert_problem(response)
    assert charged(world, holders) == [0] * len(holders)
    assert (await shop.pay("szm:chain", a.at(2, now)[0])).status_code == 200
    assert (await shop.pay("hll:mac", ha.pay(offer, 1))).status_code == 200


def _rename_chain(payment: bytes, other: ChainHolder) -> bytes:
    decoded = szm_chain.decode_payment(payment)
    renamed = dataclasses.replace(decoded, card_id=other.card.card_id)
    return szm_chain.encode_payment(renamed)


def _rename_prbg(payment: bytes, other: PrbgHolder) -> bytes:
    decoded = szm_prbg.decode_payment(payment)
    renamed = dataclasses.replace(decoded, card_id=other.card.card_id)
    return szm_prbg.encode_payment(renamed)


def _reword(mine: bytes, theirs: bytes) -> bytes:
    a, b = payword.decode_payment(mine), payword.decode_payment(theirs)
    return payword.encode_payment(dataclasses.replace(a, value=b.value))


def _resign(card: HllHolder, other: HllHolder, offer: hll.Offer) -> bytes:
    card_id, key = card.card_id, other.card_key
    sigma = hmac_sha256(key, hll.purchase_message(card_id, offer, 1))
    return hll.encode_payment(hll.Purchase(card_id=card_id, counter=1, sigma=sigma))


# --- the wrong vendor ---------------------------------------------------------------------


async def test_a_payword_commitment_to_another_vendor_is_refused_and_not_stored(
    shop: Shop,
) -> None:
    world, now = shop.world, shop.world.clock.now()
    elsewhere = world.commitments(1, vendor_id="elsewhere")[0]
    response = await shop.pay("payword", elsewhere.at(2, now), commitment=elsewhere.encoded)
    assert_problem(response, families={402})
    assert world.store.payword_commitment(elsewhere.commitment_id) is None


async def test_an_hll_purchase_made_for_another_merchant_is_refused_by_both(
    shop: Shop, tmp_path: Path
) -> None:
    """The card MACs the merchant's id into the purchase: a purchase made for shop does not
    pay at the merchant 'other' (same bank), nor does one made for 'other' pay at shop."""
    world = shop.world
    other_key = world.services.accounts.create_merchant(ACTOR, "other", "EUR").key
    card = world.hll_cards(1)[0]
    for_shop = card.pay(hll_offer(*shop.cids["hll:mac"], good=PATH), 1)
    async with client(_other_vendor(world, other_key)) as other:
        unpaid = await other.get(PATH)
        cid, expires = challenge_ids(unpaid.headers.get_list("www-authenticate"))["hll:mac"]
        stolen = await other.get(
            PATH, headers={"authorization": authorization(cid, "hll:mac", for_shop)}
        )
        for_other = card.pay(hll_offer(cid, expires, good=PATH, merchant="other"), 1)
    assert_problem(stolen, families={402})
    assert_problem(await shop.pay("hll:mac", for_other), families={402})
    assert world.services.hll.card(card.card_id).spent_units == 0
    assert (await shop.pay("hll:mac", for_shop)).status_code == 200


def _other_vendor(world: World, key: bytes) -> Paywall:
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=PRICE_MICROS, currency="EUR"))
    settings = VendorSettings(
        realm=REALM,
        challenge_secret=b"o" * 32,
        hll=HllSettings(merchant_id="other", merchant_key=key, unit_micros=UNIT),
    )
    bank = IssuerClient(
        "http://issuer.test", merchant_id="other", merchant_key=key,
        transport=httpx.ASGITransport(app=world.issuer_app()),
    )  # fmt: skip
    goods = GoodsApp(world.folder / "goods")
    return create_vendor_app(
        settings, content=goods, prices=prices, store=world.store, bank=bank, offers=goods.offers
    )


# --- expired challenges ---------------------------------------------------------------------


async def test_an_expired_challenge_charges_nothing_and_the_payment_stays_good(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    clock = FixedClock(world.clock.now())
    chain, commitment, card = (
        world.chain_cards(1)[0],
        world.commitments(1)[0],
        world.hll_cards(1)[0],
    )
    async with client(world.vendor_app(clock=clock)) as http:
        shop = Shop(world, http, {})
        await shop.fresh()
        payments = {
            "szm:chain": (chain.at(2, clock.now())[0], {}),
            "payword": (commitment.at(2, clock.now()), {"commitment": commitment.encoded}),
            "hll:mac": (card.pay(hll_offer(*shop.cids["hll:mac"], good=PATH), 1), {}),
        }
        clock.advance(301)
        for method, (payment, extra) in payments.items():
            late = await shop.pay(method, payment, **extra)
            assert assert_problem(late, families={402}) == ErrorCode.CHALLENGE_EXPIRED
        assert charged(world, [chain, commitment, card]) == [0, 0, 0]
        await shop.fresh()
        for method, (payment, extra) in payments.items():
            if method == "hll:mac":  # the MAC covers the challenge: a new purchase, same counter
                payment = card.pay(hll_offer(*shop.cids["hll:mac"], good=PATH), 1)
            assert (await shop.pay(method, payment, **extra)).status_code == 200, method


# --- sealed bodies ---------------------------------------------------------------------------


async def test_a_sealed_body_opens_only_for_its_own_payment_and_path(shop: Shop) -> None:
    world, now = shop.world, shop.world.clock.now()
    for method, card in (
        ("szm:chain", world.chain_cards(1)[0]),
        ("szm:prbg", world.prbg_cards(1)[0]),
    ):
        first, key2 = card.at(2, now)  # type: ignore[attr-defined]
        second, key4 = card.at(4, now)  # type: ignore[attr-defined]
        body_a = (await shop.pay(method, first, "/articles/a.txt")).content
        await shop.fresh()  # a challenge id pays once
        body_b = (await shop.pay(method, second, "/articles/b.txt")).content
        card_id = card.card.card_id  # type: ignore[attr-defined]
        own = {
            "method": method, "card_id": card_id, "index": 2, "resource": "/articles/a.txt",
            "status": 200, "content_type": "text/plain; charset=utf-8",
        }  # fmt: skip
        assert open_sealed(key2, body_a, **own).startswith(b"article a")  # type: ignore[arg-type]
        other = "szm:prbg" if method == "szm:chain" else "szm:chain"
        wrong = [
            (key4, own),
            (key2, {**own, "resource": "/articles/b.txt"}),
            (key2, {**own, "index": 4}),
            (key2, {**own, "method": other}),
            (key2, {**own, "card_id": bytes(16)}),
            (key2, {**own, "status": 404}),  # a 200 turned into another answer
            (key2, {**own, "content_type": "text/html; charset=utf-8"}),  # relabelled
        ]
        for key, binding in wrong:
            with pytest.raises(InvalidPayment):
                open_sealed(key, body_a, **binding)  # type: ignore[arg-type]
        replayed = {**own, "index": 4, "resource": "/articles/b.txt"}
        with pytest.raises(InvalidPayment):
            open_sealed(key4, body_a, **replayed)  # type: ignore[arg-type]
        assert open_sealed(key4, body_b, **replayed).startswith(b"article b")  # type: ignore[arg-type]


class ReplayingProxy(httpx.AsyncBaseTransport):
    """A man in the middle that answers every paid request after the first with the first
    paid response's (sealed) body, keeping the genuine headers and receipt."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self.first: bytes | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code != 200:
            return response
        body = await response.aread()
        headers = [(k, v) for k, v in response.headers.items() if k != "content-length"]
        if self.first is None:
            self.first = body
        return httpx.Response(200, headers=headers, content=self.first)


async def test_the_wallet_refuses_a_replayed_sealed_body(
    sqlite_world: World, tmp_path: Path
) -> None:
    world = sqlite_world
    card = world.chain_cards(1)[0]
    with Wallet.create(tmp_path / "wallet.sqlite", "pass phrase") as wallet:
        wallet.add_szm_card(
            szm_chain.to_card_code(card.card, realm=REALM), site="https://vendor.test"
        )
        proxy = ReplayingProxy(httpx.ASGITransport(app=world.vendor_app()))
        async with httpx.AsyncClient(
            transport=proxy, base_url="https://vendor.test", auth=PaymentAuth(wallet)
        ) as http:
            first = await http.get("/articles/a.txt")
            assert first.text.startswith("article a")
            with pytest.raises(InvalidPayment) as refused:
                await http.get("/articles/b.txt")
        assert refused.value.code is ErrorCode.SEAL_BROKEN
        assert wallet.history(limit=1)[0].outcome == Outcome.SEAL_BROKEN


# --- deposits of another merchant's payments -----------------------------------------------


async def test_a_merchant_cannot_deposit_another_merchants_purchases(sqlite_world: World) -> None:
    """'other' (a registered merchant with its own key) puts shop's deferred purchases in
    its own, correctly tagged batch: every item is invalid, nothing is credited, and the
    items are not burned: shop deposits them afterwards and is credited in full."""
    world = sqlite_world
    other_key = world.services.accounts.create_merchant(ACTOR, "other", "EUR").key
    card = world.hll_cards(1)[0]
    items = []
    for counter in (1, 2, 3):
        offer = hll_offer(b64url_encode(world.rng(40)), world.clock.now() + 300, good=PATH)
        items.append(
            hll.DepositItem(offer=offer, purchase=hll.decode_payment(card.pay(offer, counter)))
        )
    transport = httpx.ASGITransport(app=world.issuer_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer.test") as issuer:
        stolen = await issuer.post(
            "/v1/hll/deposits", json=_deposit("other", other_key, items, world)
        )
        honest = await issuer.post(
            "/v1/hll/deposits", json=_deposit(MERCHANT_ID, world.merchant_key, items, world)
        )
        again = await issuer.post(
            "/v1/hll/deposits", json=_deposit("other", other_key, items, world)
        )
        # shop's purchase replayed by 'other' to the online verification, under its own tag
        offer_bytes, payment = (
            hll.encode_offer(items[0].offer),
            hll.encode_payment(items[0].purchase),
        )
        online = await issuer.post(
            "/v1/hll/verify",
            json={
                "merchant_id": "other",
                "offer": b64url_encode(offer_bytes),
                "payment": b64url_encode(payment),
                "tag": b64url_encode(verify_request_tag(other_key, "other", offer_bytes, payment)),
            },
        )
    assert stolen.status_code == 200
    assert (len(stolen.json()["invalid"]), stolen.json()["credited_micros"]) == (3, 0)
    assert honest.json()["credited_micros"] == 3 * PRICE_MICROS
    assert len(again.json()["invalid"]) == 3
    assert_problem(online, families={403})
    assert world.services.accounts.merchant("other").owed_micros == 0
    assert world.services.accounts.merchant(MERCHANT_ID).owed_micros == 3 * PRICE_MICROS
    assert world.store.check_ledger().balanced


def _deposit(
    merchant: str, key: bytes, items: list[hll.DepositItem], world: World
) -> dict[str, str]:
    batch = hll.DepositBatch(batch_id=world.rng(16), merchant_id=merchant, items=tuple(items))
    return {
        "batch": b64url_encode(hll.encode_batch(batch)),
        "tag": b64url_encode(hll.batch_tag(key, batch)),
    }


# --- operators --------------------------------------------------------------------------------

TOKEN_PUBLIC_KEY = b64url_encode(SoftwareWrappingKey().public_key())
OPERATOR_CALLS = [
    ("POST", "/v1/customers", {"customer_id": "mallory", "currency": "EUR"}),
    ("GET", "/v1/customers/alice", None),
    ("POST", "/v1/customers/alice/loads", {"amount_micros": 1000, "reference": "evil-1"}),
    ("POST", "/v1/merchants", {"merchant_id": "mallory", "currency": "EUR"}),
    ("GET", "/v1/merchants/shop", None),
    ("GET", "/v1/ledger/check", None),
    ("GET", "/v1/report", None),
    (
        "POST",
        "/v1/hll/cards",
        {"customer_id": "alice", "units": 5, "token_public_key": TOKEN_PUBLIC_KEY},
    ),
    ("GET", "/v1/hll/cards/{hll_card}", None),
    (
        "POST",
        "/v1/szm/batches",
        {
            "protocol": "szm:chain",
            "count": 1,
            "units": 5,
            "unit_micros": 1000,
            "currency": "EUR",
            "expires_at": 4_000_000_000,
        },
    ),
    ("GET", "/v1/szm/batches/{batch}", None),
    ("GET", "/v1/szm/batches/{batch}/codes", None),
    ("GET", "/v1/szm/cards/{szm_card}/code", None),
    ("GET", "/v1/szm/cards/{szm_card}/qr.png", None),
    ("POST", "/v1/szm/revenue", {"currency": "EUR"}),
    (
        "POST",
        "/v1/payword/users",
        {
            "user_id": "mallory",
            "customer_id": "alice",
            "public_key": b64url_encode(bytes(32)),
            "credit_limit_units": 10,
            "unit_micros": 1000,
        },
    ),
]


async def test_operator_calls_need_a_live_operator_token(sqlite_world: World) -> None:
    """Every operator route (the list is checked against the OpenAPI document) refuses a
    missing, malformed, unknown or revoked token, and a merchant key posing as one, with 401
    and nothing changed; the same calls with a live token succeed."""
    world = sqlite_world
    app = world.issuer_app()
    spec_routes = {
        (verb.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for verb in operations
    }
    assert len(spec_routes) - 10 == len(OPERATOR_CALLS)  # ten routes need no operator
    revoked = world.services.accounts.create_operator_token(ACTOR, "gone")
    world.services.accounts.revoke_operator_token(ACTOR, revoked.operator_id)
    fills = _fill_ids(world)
    bad = [
        None,
        "Bearer",
        "Bearer " + b64url_encode(world.rng(32)),
        "Bearer fop_" + b64url_encode(world.rng(32)),
        "Bearer " + revoked.token,
        "Bearer " + b64url_encode(world.merchant_key),
        "Basic " + b64url_encode(b"ops:" + world.operator_token.encode()),
        world.operator_token,
        "Bearer " + world.operator_token + "x",
        "Bearer " + world.operator_token[:-1],
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer.test") as issuer:
        before = world.store.check_ledger().txn_count, _audit_count(world)
        for verb, path, body in OPERATOR_CALLS:
            url = path.format(**fills)
            for header in bad:
                headers = {} if header is None else {"authorization": header}
                response = await issuer.request(verb, url, json=body, headers=headers)
                assert assert_problem(response, families={401}) == ErrorCode.UNAUTHENTICATED
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (world.store.check_ledger().txn_count, _audit_count(world)) == before
        live = {"authorization": "Bearer " + world.operator_token}
        for verb, path, body in OPERATOR_CALLS:
            response = await issuer.request(verb, path.format(**fills), json=body, headers=live)
            assert response.status_code < 300, (path, response.text)


def _fill_ids(world: World) -> dict[str, str]:
    card = world.hll_cards(1)[0]
    szm = world.chain_cards(1)[0]
    batch = world.store.szm_card(szm.card.card_id)
    assert batch is not None
    return {
        "hll_card": card.key,
        "szm_card": szm.key,
        "batch": b64url_encode(batch.batch_id),
    }


def _audit_count(world: World) -> int:
    with world.store.transaction(readonly=True) as tx:
        return len(tx.admin.audit_entries(limit=1_000_000))


# --- HLL deferred mode: made-up cards ----------------------------------------------------


@pytest.fixture
def deferred_world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path / "world", str(tmp_path / "deferred.sqlite"), hll_mode="deferred")
    yield world
    world.close()


async def test_made_up_hll_cards_get_nothing_from_a_deferred_vendor(
    deferred_world: World,
) -> None:
    """50 purchases with random card ids, counter 1 and random MACs, against the vendor app
    of `vendor serve` in deferred mode (its store, the issuer app as its bank): 50 of 50 were
    served before card certificates; now each goes to the bank and is refused. Half carry a
    real certificate of another card. A certified card still buys deferred."""
    world = deferred_world
    honest = world.hll_cards(1)[0]
    served = 0
    async with client(world.vendor_app()) as http:
        shop = Shop(world, http, {})
        for attempt in range(50):
            await shop.fresh()
            forged = hll.Purchase(card_id=os.urandom(16), counter=1, sigma=os.urandom(32))
            extra = {"certificate": honest.certificate} if attempt % 2 else {}
            answer = await shop.pay("hll:mac", hll.encode_payment(forged), **extra)
            assert answer.status_code in REFUSED, answer.text
            served += answer.status_code == 200
        with world.store.transaction(readonly=True) as tx:
            assert tx.vendor.hll_outstanding_total() == 0  # nothing delivered on credit
        await shop.fresh()
        offer = hll_offer(*shop.cids["hll:mac"], good=PATH)
        bought = await shop.pay("hll:mac", honest.pay(offer, 1), certificate=honest.certificate)
    assert served == 0
    assert bought.status_code == 200
    receipt = json.loads(b64url_decode(bought.headers["payment-receipt"]))
    assert receipt["mode"] == "deferred"
    with world.store.transaction(readonly=True) as tx:
        assert tx.vendor.hll_outstanding_total() == offer.amount
