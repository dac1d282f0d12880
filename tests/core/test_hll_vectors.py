"""HLL against vectors/hll/*.json, and the vector files against their generator."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from farthing.core import errors
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes.hll import (
    CardState,
    DeferredDecision,
    DeferredRisk,
    DepositBatch,
    DepositReport,
    Offer,
    Purchase,
    SoftwareCardKey,
    authorize_purchase,
    batch_tag,
    card_certificate_body,
    complete_purchase,
    decide_deferred,
    decode_batch,
    decode_card_certificate,
    decode_offer,
    decode_payment,
    decode_report,
    derive_card_key,
    encode_batch,
    encode_card_certificate,
    encode_offer,
    encode_payment,
    encode_report,
    issue_card_certificate,
    purchase_message,
    verify_batch_tag,
    verify_card_certificate,
    verify_purchase_bytes,
)
from farthing.testing.hll import HllBank
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

Vector = dict[str, Any]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def denomination(v: Vector) -> Denomination:
    return Denomination(currency=v["currency"], unit_micros=v["unit_micros"])


def bank_from(v: Vector) -> HllBank:
    bank = HllBank(denomination=denomination(v))
    for card in v["cards"]:
        bank.register_card(h(card["card_id"]), h(card["card_key"]), card["loaded"])
    for merchant in v["merchants"]:
        bank.register_merchant(merchant["merchant_id"], h(merchant["merchant_key"]))
    return bank


# --- generate -----------------------------------------------------------------------------


def check_purchase(v: Vector) -> None:
    offer = decode_offer(h(v["offer_encoded"]))
    fields = v["offer"]
    assert offer.merchant_id == fields["merchant_id"]
    assert offer.good == fields["good"]
    assert offer.amount == fields["amount"]
    assert offer.denomination == denomination(fields)
    assert offer.challenge == h(fields["challenge"])
    assert offer.expires_at == fields["expires_at"]
    assert encode_offer(offer) == h(v["offer_encoded"])
    message = purchase_message(h(v["card_id"]), offer, v["counter"])
    assert message == h(v["message"])
    payment = complete_purchase(
        h(v["card_id"]), v["counter"], offer.challenge, SoftwareCardKey(h(v["card_key"])), message
    )
    assert payment.sigma == h(v["sigma"])
    assert encode_payment(payment) == h(v["payment"])
    assert decode_payment(h(v["payment"])) == payment


def check_batch(v: Vector) -> None:
    batch = decode_batch(h(v["batch_encoded"]))
    assert batch.batch_id == h(v["batch_id"])
    assert batch.merchant_id == v["merchant_id"]
    assert [encode_offer(i.offer).hex() for i in batch.items] == [i["offer"] for i in v["items"]]
    assert [encode_payment(i.purchase).hex() for i in batch.items] == [
        i["payment"] for i in v["items"]
    ]
    assert encode_batch(batch) == h(v["batch_encoded"])
    assert batch_tag(h(v["merchant_key"]), batch) == h(v["tag"])
    verify_batch_tag(h(v["merchant_key"]), batch, h(v["tag"]))


def check_report(v: Vector) -> None:
    report = DepositReport(
        batch_id=h(v["batch_id"]),
        accepted=tuple((h(c), n, a) for c, n, a in v["accepted"]),
        duplicates=tuple((h(c), n) for c, n in v["duplicates"]),
        invalid=tuple((h(c), n) for c, n in v["invalid"]),
        credited=v["credited"],
    )
    assert encode_report(report) == h(v["report_encoded"])
    assert decode_report(h(v["report_encoded"])) == report


def decide_for(v: Vector, certificate: bytes, now: int) -> DeferredDecision:
    """What a deferred-mode merchant decides for a purchase by the vector's card in EUR."""
    offer = Offer(
        merchant_id="news.example",
        good="/articles/1",
        amount=3,
        denomination=denomination(v),
        challenge=bytes(16),
        expires_at=now + 300,
    )
    return decide_deferred(
        risk=DeferredRisk(limit=10, merchant_cap=100),
        bank_public_key=h(v["public_key"]),
        certificate=certificate,
        offer=offer,
        purchase=Purchase(card_id=h(v["card_id"]), counter=1, sigma=bytes(32)),
        now=now,
        card_outstanding=0,
        merchant_outstanding=0,
    )


def check_certificate(v: Vector) -> None:
    assert ed25519_public_key(h(v["signing_key"])) == h(v["public_key"])
    card_id, expires_at = h(v["card_id"]), v["expires_at"]
    assert card_certificate_body(card_id, denomination(v), expires_at) == h(v["body"])
    cert = issue_card_certificate(
        h(v["signing_key"]), card_id=card_id, denomination=denomination(v), expires_at=expires_at
    )
    assert cert.signature == h(v["signature"])  # Ed25519 signatures are deterministic
    assert encode_card_certificate(cert) == h(v["certificate"])
    assert decode_card_certificate(h(v["certificate"])) == cert
    now = expires_at - 1
    verify_card_certificate(
        h(v["public_key"]), cert, card_id=card_id, denomination=denomination(v), now=now
    )
    assert decide_for(v, h(v["certificate"]), now) is DeferredDecision.DEFER


@json_parametrize("hll", "generate")
def test_generate(vector: Vector) -> None:
    kind = vector["kind"]
    if kind == "card_certificate":
        check_certificate(vector)
    elif kind == "card_key":
        key = derive_card_key(h(vector["master_key"]), h(vector["card_id"]))
        assert key == h(vector["card_key"])
    elif kind == "purchase":
        check_purchase(vector)
    elif kind == "batch":
        check_batch(vector)
    else:
        assert kind == "report"
        check_report(vector)


# --- verify -------------------------------------------------------------------------------


@json_parametrize("hll", "verify")
def test_verify(vector: Vector) -> None:
    offer = decode_offer(h(vector["offer"]))
    before = CardState(
        card_id=h(vector["card_id"]),
        denomination=denomination(vector),
        **vector["card_before"],
    )
    after, message = authorize_purchase(before, offer, vector["now"])
    assert {"balance": after.balance, "counter": after.counter} == vector["card_after"]
    payment = complete_purchase(
        after.card_id,
        after.counter,
        offer.challenge,
        SoftwareCardKey(h(vector["card_key"])),
        message,
    )
    assert encode_payment(payment) == h(vector["payment"])
    keys = {h(vector["card_id"]): h(vector["card_key"])}
    verified = verify_purchase_bytes(keys.get, offer, h(vector["payment"]), vector["now"])
    assert (verified.card_id, verified.counter) == (after.card_id, after.counter)
    expected = vector["verified"]
    assert (verified.merchant_id, verified.good, verified.amount) == (
        expected["merchant_id"],
        expected["good"],
        expected["amount"],
    )
    assert vector["bank_spent_after"] == vector["bank_spent_before"] + verified.amount


def test_verify_sequence_through_bank() -> None:
    vectors = load_vectors("hll", "verify")
    first = vectors[0]
    bank = HllBank(denomination=denomination(first))
    bank.register_card(h(first["card_id"]), h(first["card_key"]), first["loaded"])
    bank.register_merchant(first["verified"]["merchant_id"], bytes(32))
    for vector in vectors:
        assert bank.spent(h(vector["card_id"])) == vector["bank_spent_before"]
        offer = decode_offer(h(vector["offer"]))
        bank.verify_online(offer, decode_payment(h(vector["payment"])), vector["now"])
        assert bank.spent(h(vector["card_id"])) == vector["bank_spent_after"]
    assert bank.spent(h(first["card_id"])) == first["loaded"]  # the sequence empties the card


# --- invalid ------------------------------------------------------------------------------


def expect_error(vector: Vector) -> Any:
    error = getattr(errors, vector["error"])
    assert issubclass(error, errors.FarthingError)
    return pytest.raises(error)


def run_payment_case(vector: Vector) -> None:
    bank = bank_from(vector)
    now = vector["now"]
    for prior in vector["prior"]:
        bank.verify_online(
            decode_offer(h(prior["offer"])), decode_payment(h(prior["payment"])), now
        )
    offer = decode_offer(h(vector["offer"]))
    with expect_error(vector) as info:
        bank.verify_online(offer, decode_payment(h(vector["payment"])), now)
    assert info.value.code.name == vector["code"]
    if vector["bank_only"]:
        return
    keys = {h(c["card_id"]): h(c["card_key"]) for c in vector["cards"]}
    with expect_error(vector) as info:
        verify_purchase_bytes(keys.get, offer, h(vector["payment"]), now)
    assert info.value.code.name == vector["code"]


def run_deposit_case(vector: Vector) -> None:
    bank = bank_from(vector)
    now = vector["now"]
    for prior in vector["prior"]:
        bank.deposit(decode_batch(h(prior["batch"])), h(prior["tag"]), now)
    with expect_error(vector) as info:
        batch: DepositBatch = decode_batch(h(vector["batch"]))
        bank.deposit(batch, h(vector["tag"]), now)
    assert info.value.code.name == vector["code"]


def run_certificate_case(v: Vector) -> None:
    raw, now = h(v["certificate"]), v["now"]
    with expect_error(v) as info:
        cert = decode_card_certificate(raw)
        verify_card_certificate(
            h(v["public_key"]), cert, card_id=h(v["card_id"]), denomination=denomination(v), now=now
        )
    assert info.value.code.name == v["code"]
    if v["decision"] == "online":
        assert decide_for(v, raw, now) is DeferredDecision.ONLINE
    else:
        assert v["decision"] == "refused"
        with expect_error(v) as refused:
            decide_for(v, raw, now)
        assert refused.value.code.name == v["code"]


@json_parametrize("hll", "invalid")
def test_invalid(vector: Vector) -> None:
    if vector["kind"] == "payment":
        run_payment_case(vector)
    elif vector["kind"] == "certificate":
        run_certificate_case(vector)
    else:
        assert vector["kind"] == "deposit"
        run_deposit_case(vector)


# --- the files are current ----------------------------------------------------------------


def test_vector_files_match_generator() -> None:
    spec = importlib.util.spec_from_file_location("make_hll", VECTORS / "make_hll.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"generate", "verify", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "hll" / f"{kind}.json").read_text(encoding="utf-8"))
        assert json.loads(json.dumps(document)) == stored, kind
