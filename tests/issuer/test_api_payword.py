"""The PayWord broker over HTTP: users and certificates, redemptions credited once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InsufficientFunds
from farthing.core.hashchain import chain_walk
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.http.issuer_wire import admit_request_tag, redeem_request_tag
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
    return _commit(h, private, cert, rng, vendor=vendor)


def _commit(
    h: Harness,
    private: bytes,
    cert: payword.Certificate,
    rng: DeterministicRandom,
    *,
    vendor: str = "m1",
    length: int = LENGTH,
) -> Chain:
    seed = rng(32)
    commitment = payword.commit(
        private,
        cert,
        vendor_id=vendor,
        seed=seed,
        length=length,
        now=h.clock.now(),
        ttl=3600,
        rng=rng,
    )
    return Chain(commitment=commitment, seed=seed)


def _admit_body(chain: Chain, key: bytes, merchant_id: str = "m1") -> dict[str, str]:
    encoded = payword.encode_commitment(chain.commitment)
    return {
        "merchant_id": merchant_id,
        "commitment": b64url_encode(encoded),
        "tag": b64url_encode(admit_request_tag(key, merchant_id, encoded)),
    }


async def _admit(api: httpx.AsyncClient, chain: Chain, key: bytes, merchant_id: str = "m1") -> None:
    admitted = await api.post("/v1/payword/commitments", json=_admit_body(chain, key, merchant_id))
    assert admitted.status_code == 200, admitted.text


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
    await _admit(api, chain, key)
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
    await _admit(api, chain, key)
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


async def test_the_broker_caps_a_users_open_commitments_across_vendors(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    """Credit limit 1000 units: 400 to each of three vendors would owe them 1200."""
    keys = {m: add_merchant(harness, m) for m in ("m1", "m2", "m3")}
    rng = DeterministicRandom("user")
    private = rng(32)
    cert = await _register(api, harness, private)
    chains = {m: _commit(harness, private, cert, rng, vendor=m, length=400) for m in keys}
    for m in ("m1", "m2"):
        await _admit(api, chains[m], keys[m], m)
    again = await api.post("/v1/payword/commitments", json=_admit_body(chains["m1"], keys["m1"]))
    assert again.json()["outstanding_micros"] == 800_000  # admitting twice counts once
    third = await api.post(
        "/v1/payword/commitments", json=_admit_body(chains["m3"], keys["m3"], "m3")
    )
    assert_problem(third, 402, ErrorCode.CREDIT_LIMIT)
    wrong_vendor = await api.post(
        "/v1/payword/commitments", json=_admit_body(chains["m3"], keys["m1"], "m1")
    )
    assert_problem(wrong_vendor, 401, ErrorCode.PAYMENT_INVALID)

    credited = 0
    for m, chain in chains.items():
        answer = await api.post(
            "/v1/payword/redemptions", json=_redeem_body(chain.claim(400), keys[m], m)
        )
        if m == "m3":  # never admitted: the broker pays nothing for it
            assert_problem(answer, 401, ErrorCode.DEPOSIT_INVALID)
        else:
            credited += answer.json()["credited_units"]
    assert credited == 800 <= cert.credit_limit
    assert harness.services.accounts.customer("c1").available_micros == -800_000
    # Redeemed units are the user's debt now: the credit they held is free again.
    await _admit(api, chains["m3"], keys["m3"], "m3")
    assert balanced(harness)


async def test_admissions_at_once_never_pass_the_limit_together(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    """Six vendors present 400-unit commitments of one user (limit 1000) at the same moment,
    from six threads: exactly two are admitted, whatever the interleaving."""
    vendors = [f"m{n}" for n in range(6)]
    keys = {m: add_merchant(harness, m) for m in vendors}
    rng = DeterministicRandom("user")
    private = rng(32)
    cert = await _register(api, harness, private)
    chains = {m: _commit(harness, private, cert, rng, vendor=m, length=400) for m in vendors}
    barrier = threading.Barrier(len(vendors))

    def present(m: str) -> str:
        encoded = payword.encode_commitment(chains[m].commitment)
        barrier.wait()
        try:
            harness.services.payword.admit(m, encoded, admit_request_tag(keys[m], m, encoded))
        except InsufficientFunds as refused:
            return refused.code.name
        return "admitted"

    with ThreadPoolExecutor(max_workers=len(vendors)) as pool:
        outcomes = sorted(pool.map(present, vendors))
    assert outcomes == ["CREDIT_LIMIT"] * 4 + ["admitted"] * 2
