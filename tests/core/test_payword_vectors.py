"""PayWord against vectors/payword/*.json, and the vector files against their generator."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from farthing.core import errors
from farthing.core.hashchain import chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes.payword import (
    CHAIN_TAG,
    CommitmentState,
    Payment,
    Redemption,
    RedemptionState,
    accept_commitment,
    broker_redeem,
    certificate_body,
    commit,
    commitment_body,
    commitment_id,
    decode_certificate,
    decode_commitment,
    decode_payment,
    decode_redemption,
    encode_certificate,
    encode_commitment,
    encode_payment,
    encode_redemption,
    issue_certificate,
    verify_certificate,
    verify_payment_bytes,
)
from farthing.testing import DeterministicRandom
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

Vector = dict[str, Any]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def commitment_state(v: Vector) -> CommitmentState:
    return CommitmentState(
        commitment_id=h(v["commitment_id"]),
        last_value=h(v["last_value"]),
        spent=v["spent"],
        length=v["length"],
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
        expires_at=v["expires_at"],
    )


def redemption_state(v: Vector | None) -> RedemptionState | None:
    if v is None:
        return None
    return RedemptionState(
        commitment_id=h(v["commitment_id"]),
        redeemed_index=v["redeemed_index"],
        redeemed_value=h(v["redeemed_value"]),
    )


# --- generate ----------------------------------------------------------------------------


def check_certificate(v: Vector) -> None:
    assert ed25519_public_key(h(v["broker_private"])) == h(v["broker_public"])
    cert = issue_certificate(
        h(v["broker_private"]),
        broker_id=v["broker_id"],
        user_id=v["user_id"],
        user_public_key=h(v["user_public_key"]),
        credit_limit=v["credit_limit"],
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
        expires_at=v["expires_at"],
    )
    assert certificate_body(cert) == h(v["body"])
    assert cert.signature == h(v["signature"])
    assert encode_certificate(cert) == h(v["encoded"])
    assert decode_certificate(h(v["encoded"])) == cert


def check_commitment(v: Vector) -> None:
    made = commit(
        h(v["user_private"]),
        decode_certificate(h(v["certificate"])),
        vendor_id=v["vendor_id"],
        seed=h(v["seed"]),
        length=v["length"],
        now=v["now"],
        ttl=v["ttl"],
        rng=DeterministicRandom(v["nonce_rng_seed"]),
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
    )
    assert made.anchor == h(v["anchor"])
    assert made.nonce == h(v["nonce"])
    assert made.expires_at == v["expires_at"]
    assert commitment_body(made) == h(v["body"])
    assert commitment_id(made) == h(v["commitment_id"])
    assert encode_commitment(made) == h(v["encoded"])
    assert decode_commitment(h(v["encoded"])) == made


def check_chain(v: Vector) -> None:
    assert h(v["tag"]) == CHAIN_TAG
    length = v["length"]
    values = [h(x) for x in v["values"]]
    assert values[length] == h(v["seed"])
    for i, value in enumerate(values):
        assert chain_walk(CHAIN_TAG, h(v["seed"]), length - i) == value


def check_payment(v: Vector) -> None:
    payment = Payment(commitment_id=h(v["commitment_id"]), index=v["index"], value=h(v["value"]))
    assert encode_payment(payment) == h(v["encoded"])
    assert decode_payment(h(v["encoded"])) == payment


def check_redemption(v: Vector) -> None:
    claim = Redemption(
        commitment=decode_commitment(h(v["commitment"])), index=v["index"], value=h(v["value"])
    )
    assert encode_redemption(claim) == h(v["encoded"])
    assert decode_redemption(h(v["encoded"])) == claim


GENERATE = {
    "certificate": check_certificate,
    "commitment": check_commitment,
    "chain": check_chain,
    "payment": check_payment,
    "redemption": check_redemption,
}


@json_parametrize("payword", "generate")
def test_generate(vector: Vector) -> None:
    GENERATE[vector["kind"]](vector)


# --- verify and invalid: one runner per kind ---------------------------------------------


def run_certificate(v: Vector) -> None:
    verify_certificate(h(v["broker_public"]), decode_certificate(h(v["certificate"])), v["now"])


def run_commitment(v: Vector) -> CommitmentState:
    commitment = decode_commitment(h(v["commitment"]))
    return accept_commitment(
        h(v["broker_public"]), commitment, vendor_id=v["vendor_id"], now=v["now"]
    )


def run_payment(v: Vector) -> tuple[CommitmentState, int, int]:
    before = commitment_state(v["state_before"])
    states = {before.commitment_id: before}
    after, receipt = verify_payment_bytes(
        states.get, h(v["payment"]), units=v["units"], now=v["now"]
    )
    assert receipt.commitment_id == after.commitment_id
    return after, receipt.index, receipt.units


def run_redemption(v: Vector) -> tuple[RedemptionState, int]:
    credit = broker_redeem(
        h(v["broker_public"]),
        redemption_state(v["state_before"]),
        decode_redemption(h(v["redemption"])),
        vendor_id=v["vendor_id"],
        now=v["now"],
    )
    assert credit.vendor_id == v["vendor_id"]
    return credit.state, credit.credited_units


@json_parametrize("payword", "verify")
def test_verify(vector: Vector) -> None:
    kind = vector["kind"]
    if kind == "commitment":
        assert run_commitment(vector) == commitment_state(vector["state"])
    elif kind == "payment":
        after, index, units = run_payment(vector)
        assert after == commitment_state(vector["state_after"])
        assert (index, units) == (after.spent, vector["paid_units"])
    else:
        assert kind == "redemption"
        assert run_redemption(vector) == (
            redemption_state(vector["state_after"]),
            vector["credited_units"],
        )


RUNNERS = {
    "certificate": run_certificate,
    "commitment": run_commitment,
    "payment": run_payment,
    "redemption": run_redemption,
}


@json_parametrize("payword", "invalid")
def test_invalid(vector: Vector) -> None:
    error = getattr(errors, vector["error"])
    with pytest.raises(error) as info:
        RUNNERS[vector["kind"]](vector)
    assert type(info.value) is error
    assert info.value.code is errors.ErrorCode[vector["code"]]


# --- the files are what the generator makes ----------------------------------------------


def test_vector_files_are_current() -> None:
    path = VECTORS / "make_payword.py"
    spec = importlib.util.spec_from_file_location("make_payword", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"generate", "verify", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "payword" / f"{kind}.json").read_text(encoding="utf-8"))
        assert json.loads(json.dumps(document)) == stored
        assert load_vectors("payword", kind) == stored["vectors"]


def test_every_kind_is_covered() -> None:
    kinds = {k: {v["kind"] for v in load_vectors("payword", k)} for k in ("verify", "invalid")}
    assert kinds["verify"] == {"commitment", "payment", "redemption"}
    assert kinds["invalid"] == set(RUNNERS)
    assert {v["kind"] for v in load_vectors("payword", "generate")} == set(GENERATE)
