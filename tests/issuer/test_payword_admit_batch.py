"""``POST /v1/payword/commitments/batch`` over a real uvicorn bank, the vendor's broker
client sending the admissions asked for together in one call, and a real vendor in front
of both: one outcome per commitment, one transaction per batch, the credit limit kept
across the commitments of one batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.errors import (
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    MalformedMessage,
    Unavailable,
)
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.http.issuer_client import IssuerClient
from farthing.http.issuer_wire import admit_batch_tag, admit_request_tag
from farthing.http.methods import SCHEME_OF
from farthing.http.payment_auth import Challenge, Credential, format_credential, parse_challenges
from farthing.issuer.payword_service import Admitted
from farthing.issuer.routes_payword import MAX_ADMIT_BATCH
from farthing.store import open_store
from farthing.testing import DeterministicRandom
from farthing.testing.payword import PaywordSpender
from tests.issuer.helpers import (
    ACTOR,
    BACKENDS,
    EUR,
    Harness,
    add_customer,
    add_merchant,
    answered_calls,
    assert_problem,
)
from tests.issuer.test_hll_verify_batch import answers_lost
from tests.servers import app_server, free_port, uvicorn_server

ADMIT = "/v1/payword/commitments"
ADMIT_BATCH = "/v1/payword/commitments/batch"
PRICE_UNITS = 2


@dataclass
class User:
    user_id: str
    private: bytes
    cert: payword.Certificate


@dataclass
class Chain:
    """A user's commitment to a vendor, with the seed its paywords come from."""

    commitment: payword.Commitment
    seed: bytes

    @property
    def encoded(self) -> bytes:
        return payword.encode_commitment(self.commitment)

    @property
    def cid(self) -> bytes:
        return payword.commitment_id(self.commitment)


@pytest.fixture
def bank(harness: Harness) -> Iterator[str]:
    """The issuer app under uvicorn on loopback (its clock and store are the harness's)."""
    with app_server(harness.app) as base:
        yield base


def register(h: Harness, user_id: str, credit_limit: int) -> User:
    """A PayWord user of customer c1 (made on first use) with this credit limit (units)."""
    if not any(c.customer_id == "c1" for c in h.services.accounts.customers()):
        add_customer(h, "c1", 0)
    private = DeterministicRandom(f"user {user_id}")(32)
    user = h.services.payword.register_user(
        ACTOR,
        user_id=user_id,
        customer_id="c1",
        public_key=ed25519_public_key(private),
        credit_limit=credit_limit,
        unit_micros=1000,
    )
    return User(user_id=user_id, private=private, cert=user.certificate)


def commit(h: Harness, user: User, length: int, *, vendor: str = "m1") -> Chain:
    seed = h.rng(32)
    commitment = payword.commit(
        user.private, user.cert, vendor_id=vendor, seed=seed, length=length,
        now=h.clock.now(), ttl=3600, rng=h.rng,
    )  # fmt: skip
    return Chain(commitment=commitment, seed=seed)


def batch_body(
    merchant_id: str, key: bytes, commitments: list[bytes], *, tag_key: bytes | None = None
) -> dict[str, object]:
    tag = admit_batch_tag(tag_key or key, merchant_id, commitments)
    return {
        "merchant_id": merchant_id,
        "items": [{"commitment": b64url_encode(c)} for c in commitments],
        "tag": b64url_encode(tag),
    }


def single_body(merchant_id: str, key: bytes, commitment: bytes) -> dict[str, str]:
    return {
        "merchant_id": merchant_id,
        "commitment": b64url_encode(commitment),
        "tag": b64url_encode(admit_request_tag(key, merchant_id, commitment)),
    }


def admitted(h: Harness, chains: list[Chain]) -> list[bool]:
    """Which of these commitments the broker holds as admitted."""
    with h.store.transaction(readonly=True) as tx:
        return [tx.payword.admitted(c.cid) is not None for c in chains]


def admitted_count(h: Harness) -> int:
    with h.store.transaction(readonly=True) as tx:
        rows = tx.payword.open_commitments_of(
            [u.user_id for u in tx.payword.users_list(limit=1000)], expired_before=0
        )
    return sum(len(r) for r in rows.values())


def code_of(result: dict[str, object]) -> tuple[object, object]:
    problem = result["problem"]
    assert isinstance(problem, dict)
    return problem["status"], problem["farthingCode"]


def forged(chain: Chain) -> Chain:
    signature = bytes([chain.commitment.signature[0] ^ 1]) + chain.commitment.signature[1:]
    return Chain(commitment=replace(chain.commitment, signature=signature), seed=chain.seed)


def unregistered(h: Harness) -> User:
    """A user whose certificate the broker signed but never kept (never registered)."""
    private = DeterministicRandom("ghost")(32)
    cert = payword.issue_certificate(
        h.config.keys.payword_broker_key,
        broker_id=h.config.keys.broker_id,
        user_id="ghost",
        user_public_key=ed25519_public_key(private),
        credit_limit=1000,
        denomination=EUR,
        expires_at=h.clock.now() + 86_400,
    )
    return User(user_id="ghost", private=private, cert=cert)


# --- the route ------------------------------------------------------------------------------


@pytest.mark.parametrize("store_target", BACKENDS, indirect=True)
def test_a_mixed_batch_gets_one_outcome_per_commitment(harness: Harness, bank: str) -> None:
    """One batch: admitted ones with their figures; each refused one with the answer the
    single route gives it alone; two commitments of one user that together pass its
    limit are not both admitted; the same commitment twice counts once."""
    key = add_merchant(harness, "m1")
    rich, small = register(harness, "rich", 1000), register(harness, "small", 100)
    pair = register(harness, "pair", 100)
    ok = commit(harness, rich, 400)
    earlier, over = commit(harness, small, 80), commit(harness, small, 80)
    pair_1, pair_2 = commit(harness, pair, 60), commit(harness, pair, 60)
    bad_signature = forged(commit(harness, rich, 10))
    elsewhere = commit(harness, rich, 10, vendor="m2")
    ghost = commit(harness, unregistered(harness), 10)
    items = [ok.encoded, over.encoded, pair_1.encoded, pair_2.encoded, bad_signature.encoded,
             elsewhere.encoded, ghost.encoded, b"\x01not a commitment", ok.encoded]  # fmt: skip
    with httpx.Client(base_url=bank, timeout=30) as client:
        first = client.post(ADMIT, json=single_body("m1", key, earlier.encoded))
        assert first.status_code == 200, first.text
        answer = client.post(ADMIT_BATCH, json=batch_body("m1", key, items))
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        # Each commitment alone, through the single route afterwards: the same answers.
        alone = [client.post(ADMIT, json=single_body("m1", key, c)) for c in items]
    assert len(results) == len(items)
    assert results[0] == {
        "commitment_id": b64url_encode(ok.cid),
        "outstanding_micros": 400_000,
        "credit_limit_micros": 1_000_000,
    }
    assert code_of(results[1]) == (402, ErrorCode.CREDIT_LIMIT)  # 80 admitted before
    assert results[2]["outstanding_micros"] == 60_000
    assert code_of(results[3]) == (402, ErrorCode.CREDIT_LIMIT)  # 60 + 60 > 100
    assert code_of(results[4]) == (401, ErrorCode.SIGNATURE_INVALID)
    assert code_of(results[5]) == (401, ErrorCode.PAYMENT_INVALID)  # made to vendor m2
    assert code_of(results[6]) == (401, ErrorCode.DEPOSIT_INVALID)
    assert code_of(results[7])[0] == 400
    assert results[8] == results[0]  # twice in the batch: admitted once
    assert admitted(harness, [ok, over, pair_1, pair_2, bad_signature, elsewhere, ghost]) == [
        True, False, True, False, False, False, False,
    ]  # fmt: skip
    assert admitted_count(harness) == 3  # earlier, ok, pair_1
    for single, result in zip(alone, results, strict=True):
        if "problem" in result:
            assert (single.status_code, single.json()["farthingCode"]) == code_of(result)
        else:
            assert single.json() == result, single.text


def test_a_batch_is_refused_whole_for_a_bad_tag_or_its_size(harness: Harness, bank: str) -> None:
    """Too many items: 400 BATCH_TOO_LARGE; a body past the issuer's limit: 413; a wrong
    or stale tag: 401; each a problem, nothing admitted. At the cap: every one admitted."""
    key = add_merchant(harness, "m1")
    user = register(harness, "u1", 100_000)
    chains = [commit(harness, user, 10) for _ in range(MAX_ADMIT_BATCH + 1)]
    encoded = [c.encoded for c in chains]
    with httpx.Client(base_url=bank, timeout=30) as client:
        too_many = client.post(ADMIT_BATCH, json=batch_body("m1", key, encoded))
        wrong = batch_body("m1", key, encoded[:3], tag_key=bytes(32))
        wrong_key = client.post(ADMIT_BATCH, json=wrong)
        # The tag binds the items: one taken out of a tagged batch fails it.
        cut = batch_body("m1", key, encoded[:3])
        cut["items"] = batch_body("m1", key, encoded[:2])["items"]
        tampered = client.post(ADMIT_BATCH, json=cut)
        huge = [b"\x00" * 3000] * 30  # ~120 KiB of JSON, under the item count
        oversized = client.post(ADMIT_BATCH, json=batch_body("m1", key, huge))
        empty = client.post(ADMIT_BATCH, json=batch_body("m1", key, []))
        assert admitted_count(harness) == 0
        at_cap = client.post(ADMIT_BATCH, json=batch_body("m1", key, encoded[:-1]))
    assert_problem(too_many, 400, ErrorCode.BATCH_TOO_LARGE)
    assert_problem(wrong_key, 401, ErrorCode.UNAUTHENTICATED)
    assert_problem(tampered, 401, ErrorCode.UNAUTHENTICATED)
    assert_problem(oversized, 413)
    assert_problem(empty, 400)
    assert at_cap.status_code == 200, at_cap.text
    figures = [r["outstanding_micros"] for r in at_cap.json()["results"]]
    assert figures == [10_000 * (n + 1) for n in range(MAX_ADMIT_BATCH)]
    assert admitted_count(harness) == MAX_ADMIT_BATCH


@pytest.mark.parametrize("store_target", BACKENDS, indirect=True)
def test_concurrent_batches_over_the_same_users_never_pass_a_limit(harness: Harness) -> None:
    """Four vendors each present, at the same moment, one batch holding a 400-unit
    commitment of each of four users (limit 1000), in four different orders: every batch
    ends (no deadlock between their user locks) and each user has exactly two admitted."""
    vendors = [f"m{n}" for n in range(4)]
    keys = {m: add_merchant(harness, m) for m in vendors}
    users = [register(harness, f"u{n}", 1000) for n in range(4)]
    batches = {}
    for n, m in enumerate(vendors):  # rotated, every other one reversed
        batch = [commit(harness, users[(n + k) % 4], 400, vendor=m).encoded for k in range(4)]
        batches[m] = batch[::-1] if n % 2 else batch
    barrier = threading.Barrier(len(vendors))

    def present(m: str) -> list[Admitted | FarthingError]:
        items = batches[m]
        barrier.wait()
        return harness.services.payword.admit_batch(m, items, admit_batch_tag(keys[m], m, items))

    with ThreadPoolExecutor(max_workers=len(vendors)) as pool:
        outcomes = [o for batch in pool.map(present, vendors) for o in batch]
    refused = [o for o in outcomes if isinstance(o, FarthingError)]
    assert len(refused) == 8
    assert all(isinstance(o, InsufficientFunds) for o in refused), refused
    with harness.store.transaction(readonly=True) as tx:
        held = tx.payword.open_commitments_of([u.user_id for u in users], expired_before=0)
    assert {user: len(rows) for user, rows in held.items()} == {u.user_id: 2 for u in users}


# --- the vendor's broker client ----------------------------------------------------------


def bank_calls(bank: str, token: str) -> dict[str, float]:
    """Successful admission calls the bank has answered, by route (its metrics)."""
    return answered_calls(bank, token, (ADMIT, ADMIT_BATCH))


@pytest.mark.anyio
async def test_admissions_asked_for_together_go_in_one_call(harness: Harness, bank: str) -> None:
    """Admissions asked for in one pass go in one batch call (before: one call each);
    each caller gets what the single call gives it: admitted, or its own refusal."""
    key = add_merchant(harness, "m1")
    rich, pair = register(harness, "rich", 1000), register(harness, "pair", 100)
    oks = [commit(harness, rich, 100) for _ in range(5)]
    pair_1, pair_2 = commit(harness, pair, 60), commit(harness, pair, 60)
    chains = [*oks, pair_1, pair_2, forged(commit(harness, rich, 10)), oks[0]]
    before = bank_calls(bank, harness.token)
    async with IssuerClient(bank, merchant_id="m1", merchant_key=key) as client:
        outcomes = await asyncio.gather(
            *(client.admit_payword(c.encoded) for c in chains), return_exceptions=True
        )
    after = bank_calls(bank, harness.token)
    assert outcomes[:6] == [None] * 6
    assert isinstance(outcomes[6], InsufficientFunds)
    assert outcomes[6].code is ErrorCode.CREDIT_LIMIT
    assert isinstance(outcomes[7], InvalidPayment)
    assert outcomes[7].code is ErrorCode.SIGNATURE_INVALID
    assert outcomes[8] is None
    assert {route: after[route] - before[route] for route in after} == {ADMIT: 0, ADMIT_BATCH: 1}
    assert admitted(harness, chains[:8]) == [True] * 6 + [False] * 2


@pytest.mark.anyio
async def test_a_lone_admission_still_goes_to_the_single_route(harness: Harness, bank: str) -> None:
    key = add_merchant(harness, "m1")
    chain = commit(harness, register(harness, "u1", 1000), 100)
    before = bank_calls(bank, harness.token)
    async with IssuerClient(bank, merchant_id="m1", merchant_key=key) as client:
        await client.admit_payword(chain.encoded)  # admitted: no error
        with pytest.raises(MalformedMessage):
            await client.admit_payword(b"\x01not a commitment")
    after = bank_calls(bank, harness.token)
    assert {route: after[route] - before[route] for route in after} == {ADMIT: 1, ADMIT_BATCH: 0}


@pytest.mark.anyio
async def test_a_batch_whose_answer_is_lost_fails_each_caller_and_its_resend_counts_once(
    harness: Harness, bank: str
) -> None:
    """The bank admits the batch but its answer is lost: every caller gets Unavailable
    (each its own exception), as a single call's would; sent again, each commitment is
    answered as admitted, and the user's limit counts each once."""
    key = add_merchant(harness, "m1")
    user = register(harness, "u1", 400)
    chains = [commit(harness, user, 100) for _ in range(4)]
    with answers_lost(bank) as lossy:
        async with IssuerClient(lossy, merchant_id="m1", merchant_key=key) as client:
            lost = await asyncio.gather(
                *(client.admit_payword(c.encoded) for c in chains), return_exceptions=True
            )
    assert all(isinstance(e, Unavailable) for e in lost), lost
    assert all(e.code is ErrorCode.ISSUER_UNAVAILABLE for e in lost)  # type: ignore[union-attr]
    assert len({id(e) for e in lost}) == len(chains)
    assert admitted(harness, chains) == [True] * 4  # the bank did admit them
    async with IssuerClient(bank, merchant_id="m1", merchant_key=key) as client:
        again = await asyncio.gather(*(client.admit_payword(c.encoded) for c in chains))
    assert again == [None] * 4  # 4 x 100 = the limit: each counted once
    assert admitted_count(harness) == 4


# --- a real vendor in front of the bank ----------------------------------------------------


def write_vendor(folder: Path, harness: Harness, issuer_url: str, key: bytes) -> Path:
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True, exist_ok=True)
    for i in range(PAID):
        (goods / f"a{i}.txt").write_text(f"secret article {i}")
    (folder / "merchant.key").write_text(key.hex())
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        'database = "vendor.sqlite"\n'
        'content_dir = "goods"\n'
        "deposit_interval = 3600\n"
        "[prices]\n"
        f'"/articles/*" = "{PRICE_UNITS * 1000} EUR"\n'
        "[payword]\n"
        'vendor_id = "m1"\n'
        f'broker_id = "{harness.config.keys.broker_id}"\n'
        f'broker_public_key = "{harness.config.keys.broker_public_key.hex()}"\n'
        "unit_micros = 1000\n"
        f'issuer_url = "{issuer_url}"\n'
        'merchant_key_file = "merchant.key"\n'
    )
    return config


PAID = 16


def first_payments(vendor: str, chains: list[Chain]) -> list[dict[str, str]]:
    """For each commitment, a request paying its first 2 units, commitment attached,
    answering a challenge of the vendor's for /articles/a<i>.txt."""
    with httpx.Client(base_url=vendor, timeout=30) as client:
        challenges = [payword_challenge(client, f"/articles/a{i}.txt") for i in range(len(chains))]
    now = int(time.time())
    headers = []
    for chain, challenge in zip(chains, challenges, strict=True):
        spender = PaywordSpender(chain.commitment, chain.seed)
        payment = payword.encode_payment(spender.reserve(PRICE_UNITS, now=now).payment)
        payload: dict[str, object] = {
            "payment": b64url_encode(payment),
            "commitment": b64url_encode(chain.encoded),
        }
        credential = Credential.answering(challenge, payload)
        headers.append({"authorization": format_credential(credential)})
    return headers


def payword_challenge(client: httpx.Client, path: str) -> Challenge:
    offered = parse_challenges(client.get(path).headers.get_list("www-authenticate"))
    return next(c for c in offered if SCHEME_OF.get(c.method) == "payword")


def fetch_all(vendor: str, headers: list[dict[str, str]]) -> list[httpx.Response]:
    """Every paid request at once, each on a connection of its own."""

    def fetch(i: int) -> httpx.Response:
        with httpx.Client(base_url=vendor, timeout=30) as own:
            return own.get(f"/articles/a{i}.txt", headers=headers[i])

    with ThreadPoolExecutor(len(headers)) as pool:
        return list(pool.map(fetch, range(len(headers))))


def vendor_spent(folder: Path, chains: list[Chain]) -> list[int | None]:
    """What the vendor's store holds as spent under each commitment (None: not stored)."""
    store = open_store(str(folder / "vendor.sqlite"))
    try:
        rows = [store.payword_commitment(c.cid) for c in chains]
    finally:
        store.close()
    return [None if row is None else row.spent for row in rows]


def test_concurrent_first_payments_share_batch_calls_and_one_refusal_stays_its_own(
    harness: Harness, bank: str, tmp_path: Path
) -> None:
    """16 first payments at once under new commitments (before: one admission call
    each): fewer calls, at least one a batch, every commitment admitted once and each
    payment served, except the one commitment of a pair that passes its user's limit
    together with the other: 402 CREDIT_LIMIT, nothing delivered or stored."""
    harness.clock.set(int(time.time()))  # the vendor runs on the real clock
    key = add_merchant(harness, "m1")
    users = [register(harness, f"u{n}", 1000) for n in range(PAID - 2)]
    pair = register(harness, "pair", 100)
    chains = [commit(harness, u, 60) for u in users]
    chains += [commit(harness, pair, 60) for _ in range(2)]
    config = write_vendor(tmp_path, harness, bank, key)
    env = {"FARTHING_VENDOR_CONFIG": str(config)}
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env) as vendor:
        headers = first_payments(vendor, chains)
        before = bank_calls(bank, harness.token)
        answers = fetch_all(vendor, headers)
        after = bank_calls(bank, harness.token)
    calls = {route: after[route] - before[route] for route in after}
    statuses = [a.status_code for a in answers]
    assert statuses[: PAID - 2] == [200] * (PAID - 2), [a.text for a in answers]
    served = [a.text for a in answers[: PAID - 2]]
    assert served == [f"secret article {i}" for i in range(PAID - 2)]
    assert sorted(statuses[PAID - 2 :]) == [200, 402], [a.text for a in answers[PAID - 2 :]]
    refused = answers[PAID - 2 + statuses[PAID - 2 :].index(402)]
    assert refused.json()["farthingCode"] == ErrorCode.CREDIT_LIMIT
    assert "secret" not in refused.text
    assert sum(calls.values()) < PAID, calls
    assert calls[ADMIT_BATCH] >= 1, calls
    held = admitted(harness, chains)
    assert held[: PAID - 2] == [True] * (PAID - 2)
    assert sorted(held[PAID - 2 :]) == [False, True]
    assert vendor_spent(tmp_path, chains) == [PRICE_UNITS if h else None for h in held]


def test_a_broker_that_is_out_fails_each_first_payment_and_the_resends_are_admitted_once(
    harness: Harness, tmp_path: Path
) -> None:
    """First payments at once while the bank's port is closed: each 503 Retry-After with
    ISSUER_UNAVAILABLE, nothing delivered, stored or admitted. The same requests sent
    again to the same vendor once the bank listens on that port: each served, each
    commitment admitted once."""
    harness.clock.set(int(time.time()))
    key = add_merchant(harness, "m1")
    chains = [commit(harness, register(harness, f"u{n}", 1000), 60) for n in range(PAID)]
    port = free_port()
    config = write_vendor(tmp_path, harness, f"http://127.0.0.1:{port}", key)
    env = {"FARTHING_VENDOR_CONFIG": str(config)}
    with uvicorn_server("farthing.paywall.serve:app_from_env", env=env) as vendor:
        headers = first_payments(vendor, chains)
        out = fetch_all(vendor, headers)
        assert [a.status_code for a in out] == [503] * PAID, [a.text for a in out]
        assert [a.headers.get("retry-after") for a in out] == ["5"] * PAID
        assert all(a.json()["farthingCode"] == ErrorCode.ISSUER_UNAVAILABLE for a in out)
        assert all("secret" not in a.text for a in out)
        assert vendor_spent(tmp_path, chains) == [None] * PAID
        assert admitted_count(harness) == 0
        with app_server(harness.app, port=port):
            up = fetch_all(vendor, headers)
    assert [a.status_code for a in up] == [200] * PAID, [a.text for a in up]
    assert [a.text for a in up] == [f"secret article {i}" for i in range(PAID)]
    assert admitted(harness, chains) == [True] * PAID
    assert vendor_spent(tmp_path, chains) == [PRICE_UNITS] * PAID
