"""SZM protocol 2 against vectors/szm_prbg/*.json, and the files against their generator."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from farthing.core import errors
from farthing.core.cardcode import Generator, from_compact, from_text
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey
from farthing.core.schemes.szm_prbg import (
    PrbgCardState,
    card_from_code,
    card_secret,
    decode_payment,
    encode_payment,
    issuer_payment_key,
    next_payment,
    stream_block,
    verify_payment,
    verify_payment_bytes,
)
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

Vector = dict[str, Any]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def bbs_key(v: Vector | None) -> BbsKey | None:
    if v is None:
        return None
    n, p, q = (int.from_bytes(h(v[k]), "big") for k in ("n", "p", "q"))
    return BbsKey(n=n, p=p, q=q)


def card_state(v: Vector) -> PrbgCardState:
    return PrbgCardState(
        card_id=h(v["card_id"]),
        spent=v["spent"],
        units=v["units"],
        generator=Generator(v["generator"]),
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
        expires_at=v["expires_at"],
    )


@json_parametrize("szm_prbg", "generate")
def test_generate(vector: Vector) -> None:
    master, card_id = h(vector["master_key"]), h(vector["card_id"])
    key = bbs_key(vector["bbs"])
    generator = Generator(vector["generator"])
    secret = card_secret(master, card_id)
    assert secret == h(vector["card_secret"])
    blocks = [stream_block(generator, secret, j, bbs_key=key) for j in range(4)]
    assert blocks == [h(b) for b in vector["first_blocks"]]
    card = card_from_code(from_text(vector["card_code_text"]))
    assert card_from_code(from_compact(vector["card_code_compact"])) == card
    assert (card.card_id, card.secret, card.generator) == (card_id, secret, generator)
    assert card.modulus == (key.public if key is not None else None)
    state = PrbgCardState(
        card_id=card_id,
        spent=0,
        units=vector["units"],
        generator=generator,
        denomination=Denomination(currency=vector["currency"], unit_micros=vector["unit_micros"]),
        expires_at=vector["expires_at"],
    )
    for p in vector["payments"]:
        card, payment, pay_key = next_payment(card, p["units"], now=vector["now"])
        assert (payment.index, payment.token) == (p["index"], h(p["token"]))
        assert encode_payment(payment) == h(p["payment"])
        assert decode_payment(h(p["payment"])) == payment
        assert pay_key == h(p["key"])
        state, _ = verify_payment(
            state, payment, master_key=master, units=p["units"], now=vector["now"], bbs_key=key
        )
        assert issuer_payment_key(master, state, payment.index, bbs_key=key) == pay_key


@json_parametrize("szm_prbg", "verify")
def test_verify(vector: Vector) -> None:
    before = card_state(vector["state"])
    new_state, receipt = verify_payment_bytes(
        {before.card_id: before}.get,
        h(vector["payment"]),
        master_key=h(vector["master_key"]),
        units=vector["units"],
        now=vector["now"],
        bbs_key=bbs_key(vector["bbs"]),
    )
    assert new_state == card_state(vector["state_after"])
    accepted = vector["accepted"]
    assert (receipt.index, receipt.units) == (accepted["index"], accepted["units"])


@json_parametrize("szm_prbg", "invalid")
def test_invalid(vector: Vector) -> None:
    state = card_state(vector["state"])
    error = getattr(errors, vector["error"])
    with pytest.raises(error) as info:
        verify_payment_bytes(
            {state.card_id: state}.get,
            h(vector["payment"]),
            master_key=h(vector["master_key"]),
            units=vector["units"],
            now=vector["now"],
            bbs_key=bbs_key(vector["bbs"]),
        )
    assert type(info.value) is error
    assert info.value.code is errors.ErrorCode[vector["code"]]


def test_files_match_their_generator() -> None:
    path = VECTORS / "make_szm_prbg.py"
    spec = importlib.util.spec_from_file_location("make_szm_prbg", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"generate", "verify", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "szm_prbg" / f"{kind}.json").read_text(encoding="utf-8"))
        assert document == stored, kind
        assert load_vectors("szm_prbg", kind) == stored["vectors"]
