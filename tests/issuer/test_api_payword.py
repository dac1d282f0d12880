"""The PayWord broker over HTTP: users and certificates, redemptions credited once."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode
from farthing.core.hashchain import chain_walk
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.issuer.wire import redeem_request_tag
from farthing.testing import DeterministicRandom
from tests.issuer.helpers import (
    BOTH_BACKENDS,
    Harness,
    add_customer,
    add_merchant,
    assert_problem,
    balanced,
)

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

LENGTH = 50


@dataclass
class Chain:
    commitment: payword.Commitment
    seed: bytes

    def claim(self, index: int) -> payword.Redemption:
        value = chain_walk(payword.CHAIN_TAG, self.seed, LENGTH - index)
        return payword.Redemption(commitment=self.commitment, index=index, value=value)


async def _register(api: httpx.AsyncClient, h: Harness, user_private: bytes) -> payword.Certificate:
    add_customer(h, "c1", 0)
    body = {
        "user_id": "u1",
        "customer_id": "c1",
        "public_key": b64url_encode(ed25519_public_key(user_private)),
        "credit_limit_units": 1000,
        "unit_micros": 1000,
    }
    made = await api.post("/v1/payword/users", json=body)
    assert made.status_code == 201, made.text
    assert b64url_decode(made.json()["broker_public_key"]) == h.config.keys.broker_public_key
    return payword.decode_certificate(b64url_decode(made.json()["certificate"]))


async def _chain(api: httpx.AsyncClient, h: Harness, vendor: str = "m1") -> Chain:
    rng = DeterministicRandom("user")
    private = rng(32)
    cert = await _register(api, h, private)
    payword.verify_certificate(h.config.keys.broker_public_key, cert, h.clock.now())
    seed = rng(32)
    commitment = payword.commit(
        private,
        cert,
        vendor_id=vendor,
        seed=seed,
        length=LENGTH,
        now=h.clock.now(),
        ttl=3600,
        rng=rng,
    )
    return Chain(commitment=commitment, seed=seed)


def _redeem_body(claim: payword.Redemption, key: bytes, merchant_id: str = "m1") -> dict[str, str]:
    encoded = payword.encode_redemption(claim)
    return {
        "merchant_id": merchant_id,
        "redemption": b64url_encode(encoded),
        "tag": b64url_encode(redeem_request_tag(key, merchant_id, encoded)),
    }


async def test_broker_key_is_public(api: httpx.AsyncClient, harness: Harness) -> None:
    transport = httpx.ASGITransport(app=harness.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://anyone") as public:
        broker = (await public.get("/v1/payword/broker")).json()
    assert broker["broker_id"] == "bank.test"
    assert b64url_decode(broker["public_key"]) == harness.config.keys.broker_public_key


async def test_redemption_credits_each_unit_once(api: httpx.AsyncClient, harness: Harness) -> None:
    key = add_merchant(harness)
    chain = await _chain(api, harness)
    first = await api.post("/v1/payword/redemptions", json=_redeem_body(chain.claim(10), key))
    assert first.status_code == 200, first.text
    assert (first.json()["credited_units"], first.json()["credited_micros"]) == (10, 10_000)
    repeat = await api.post("/v1/payword/redemptions", json=_redeem_body(chain.claim(10), key))
    assert repeat.json()["credited_units"] == 0
    lower = await api.post("/v1/payword/redemptions", json=_redeem_body(chain.claim(4), key))
    assert lower.json()["credited_units"] == 0
    more = await api.post("/v1/payword/redemptions", json=_redeem_body(chain.claim(25), key))
    assert more.json()["credited_units"] == 15
    assert harness.services.accounts.merchant("m1").owed_micros == 25_000
    assert harness.services.accounts.customer("c1").available_micros == -25_000  # on credit
    assert balanced(harness)


async def test_redemption_refusals(api: httpx.AsyncClient, harness: Harness) -> None:
    key = add_merchant(harness)
    other_key = add_merchant(harness, "m2")
    chain = await _chain(api, harness)
    bad_tag = _redeem_body(chain.claim(3), bytes(32))
    assert_problem(
        await api.post("/v1/payword/redemptions", json=bad_tag), 401, ErrorCode.UNAUTHENTICATED
    )
    other_vendor = _redeem_body(chain.claim(3), other_key, "m2")
    assert_problem(await api.post("/v1/payword/redemptions", json=other_vendor), 403)
    wrong_value = payword.Redemption(commitment=chain.commitment, index=3, value=bytes(32))
    forged = _redeem_body(wrong_value, key)
    assert_problem(
        await api.post("/v1/payword/redemptions", json=forged), 401, ErrorCode.DEPOSIT_INVALID
    )
    garbage = {**_redeem_body(chain.claim(3), key), "redemption": b64url_encode(b"junk")}
    garbage["tag"] = b64url_encode(redeem_request_tag(key, "m1", b"junk"))
    response = await api.post("/v1/payword/redemptions", json=garbage)
    assert response.status_code == 400
    assert harness.services.accounts.merchant("m1").owed_micros == 0
    assert balanced(harness)


async def test_certificate_not_issued_here_is_refused(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    key = add_merchant(harness)
    chain = await _chain(api, harness)
    rng = DeterministicRandom("mallory")
    private = rng(32)
    cert = payword.issue_certificate(
        harness.config.keys.payword_broker_key,  # even a validly signed one, if not on file
        broker_id="bank.test",
        user_id="u1",
        user_public_key=ed25519_public_key(private),
        credit_limit=1000,
        denomination=chain.commitment.denomination,
        expires_at=harness.clock.now() + 100,
    )
    seed = rng(32)
    commitment = payword.commit(
        private,
        cert,
        vendor_id="m1",
        seed=seed,
        length=LENGTH,
        now=harness.clock.now(),
        ttl=60,
        rng=rng,
    )
    claim = Chain(commitment=commitment, seed=seed).claim(5)
    response = await api.post("/v1/payword/redemptions", json=_redeem_body(claim, key))
    assert_problem(response, 401, ErrorCode.DEPOSIT_INVALID)


async def test_register_refusals(api: httpx.AsyncClient, harness: Harness) -> None:
    add_customer(harness, "c1", 0)
    body = {
        "user_id": "u1",
        "customer_id": "c1",
        "public_key": b64url_encode(bytes(31)),
        "credit_limit_units": 10,
        "unit_micros": 1000,
    }
    assert_problem(await api.post("/v1/payword/users", json=body), 400, ErrorCode.BAD_FIELD)
    body["public_key"] = b64url_encode(bytes(32))
    assert (await api.post("/v1/payword/users", json=body)).status_code == 201
    assert_problem(await api.post("/v1/payword/users", json=body), 409)
    assert_problem(await api.post("/v1/payword/users", json={**body, "customer_id": "zz"}), 404)
