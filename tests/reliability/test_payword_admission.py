"""The vendor takes paywords only under commitments the broker admitted within the user's
credit, and a broker it cannot reach is a 503, never a 500 or an accepted payment."""

from __future__ import annotations

import json

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.hashchain import chain_walk
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.http.issuer_client import IssuerClient
from farthing.paywall.app import create_vendor_app
from farthing.paywall.config import load_vendor_config
from farthing.paywall.goods import GoodsApp
from farthing.paywall.middleware import Paywall
from tests.reliability.world import (
    ACTOR,
    CUSTOMER_ID,
    MERCHANT_ID,
    World,
    authorization,
    challenge_ids,
)

pytestmark = pytest.mark.anyio
PATH = "/articles/a.txt"


def assert_problem(response: httpx.Response, status: int, code: ErrorCode) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert json.loads(response.content)["farthingCode"] == int(code)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vendor_with_broker(world: World, broker: IssuerClient) -> Paywall:
    config = load_vendor_config(world.config_path)
    goods = GoodsApp(config.content_dir)
    return create_vendor_app(
        config.settings,
        content=goods,
        prices=config.prices,
        store=world.store,
        bank=broker,  # the config sells HLL online too
        broker=broker,
        offers=goods.offers,
    )


async def pay_payword(app: Paywall, payment: bytes, commitment: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as http:
        unpaid = await http.get(PATH)
        cid = challenge_ids(unpaid.headers.get_list("www-authenticate"))["payword"][0]
        header = authorization(cid, "payword", payment, commitment=commitment)
        return await http.get(PATH, headers={"authorization": header})


async def test_an_unreachable_broker_is_503_and_nothing_is_taken(sqlite_world: World) -> None:
    world = sqlite_world
    holder = world.commitments(1)[0]
    nowhere = IssuerClient(
        "http://127.0.0.1:9", merchant_id=MERCHANT_ID, merchant_key=world.merchant_key
    )  # the discard port: nothing listens there
    async with nowhere:
        answer = await pay_payword(
            vendor_with_broker(world, nowhere), holder.at(2, world.clock.now()), holder.encoded
        )
    assert_problem(answer, 503, ErrorCode.ISSUER_UNAVAILABLE)
    assert answer.headers["retry-after"] == "5"
    assert world.store.payword_commitment(holder.commitment_id) is None


async def test_a_commitment_past_the_users_credit_is_refused_by_the_vendor(
    sqlite_world: World,
) -> None:
    """A user with 100 units of credit commits 80 to this vendor (admitted, paid), then 80
    more: refused at the vendor (402 CREDIT_LIMIT), not stored, nothing delivered."""
    world = sqlite_world
    private = world.rng(32)
    user = world.services.payword.register_user(
        ACTOR, user_id="small", customer_id=CUSTOMER_ID,
        public_key=ed25519_public_key(private), credit_limit=100, unit_micros=1000,
    )  # fmt: skip
    answers, ids = [], []
    bank = world.bank()
    async with bank:
        app = vendor_with_broker(world, bank)
        for _ in range(2):
            seed = world.rng(32)
            commitment = payword.commit(
                private, user.certificate, vendor_id=MERCHANT_ID, seed=seed, length=80,
                now=world.clock.now(), ttl=3600, rng=world.rng,
            )  # fmt: skip
            cid = payword.commitment_id(commitment)
            value = chain_walk(payword.CHAIN_TAG, seed, 80 - 2)
            payment = payword.encode_payment(
                payword.Payment(commitment_id=cid, index=2, value=value)
            )
            answers.append(await pay_payword(app, payment, payword.encode_commitment(commitment)))
            ids.append(cid)
    assert answers[0].status_code == 200, answers[0].text[:300]
    assert_problem(answers[1], 402, ErrorCode.CREDIT_LIMIT)
    assert world.store.payword_commitment(ids[1]) is None, b64url_encode(ids[1])
