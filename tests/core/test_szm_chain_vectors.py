"""SZM protocol 1 against vectors/szm_chain/*.json, and the files against their generator."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from farthing.core import errors
from farthing.core.cardcode import from_compact, from_text
from farthing.core.money import Denomination
from farthing.core.schemes.szm_chain import (
    ChainCardState,
    KeyMode,
    card_from_code,
    card_secret,
    card_walker,
    chain_seed,
    decode_payment,
    encode_payment,
    initial_state,
    issuer_payment_key,
    next_payment,
    verify_payment,
    verify_payment_bytes,
)
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

Vector = dict[str, Any]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def card_state(v: Vector) -> ChainCardState:
    return ChainCardState(
        card_id=h(v["card_id"]),
        anchor=h(v["anchor"]),
        spent=v["spent"],
        length=v["length"],
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
        expires_at=v["expires_at"],
    )


@json_parametrize("szm_chain", "generate")
def test_generate(vector: Vector) -> None:
    master, card_id = h(vector["master_key"]), h(vector["card_id"])
    secret = card_secret(master, card_id)
    assert secret == h(vector["card_secret"])
    assert chain_seed(secret, card_id) == h(vector["chain_seed"])
    denomination = Denomination(currency=vector["currency"], unit_micros=vector["unit_micros"])
    state = initial_state(
        master,
        card_id,
        length=vector["length"],
        denomination=denomination,
        expires_at=vector["expires_at"],
    )
    assert state.anchor == h(vector["anchor"])
    card = card_from_code(from_text(vector["card_code_text"]))
    assert card_from_code(from_compact(vector["card_code_compact"])) == card
    assert (card.card_id, card.secret, card.length) == (card_id, secret, vector["length"])
    assert (card.denomination, card.expires_at) == (denomination, vector["expires_at"])
    walker = card_walker(card)
    for p in vector["payments"]:
        card, payment, key = next_payment(card, p["units"], now=vector["now"], walker=walker)
        assert (payment.index, payment.value) == (p["index"], h(p["value"]))
        assert encode_payment(payment) == h(p["payment"])
        assert decode_payment(h(p["payment"])) == payment
        assert key == h(p["key_derived"])
        state, _ = verify_payment(state, payment, units=p["units"], now=vector["now"])
        assert issuer_payment_key(master, state, payment.index) == key
        literal = issuer_payment_key(master, state, payment.index, mode=KeyMode.NEXT_VALUE)
        assert literal == h(p["key_next_value"])


@json_parametrize("szm_chain", "verify")
def test_verify(vector: Vector) -> None:
    before = card_state(vector["state"])
    new_state, receipt = verify_payment_bytes(
        {before.card_id: before}.get,
        h(vector["payment"]),
        units=vector["units"],
        now=vector["now"],
    )
    assert new_state == card_state(vector["state_after"])
    assert (receipt.index, receipt.units) == (
        vector["accepted"]["index"],
        vector["accepted"]["units"],
    )


@json_parametrize("szm_chain", "invalid")
def test_invalid(vector: Vector) -> None:
    state = card_state(vector["state"])
    error = getattr(errors, vector["error"])
    with pytest.raises(error) as info:
        verify_payment_bytes(
            {state.card_id: state}.get,
            h(vector["payment"]),
            units=vector["units"],
            now=vector["now"],
        )
    assert type(info.value) is error
    assert info.value.code is errors.ErrorCode[vector["code"]]


def test_files_match_their_generator() -> None:
    path = VECTORS / "make_szm_chain.py"
    spec = importlib.util.spec_from_file_location("make_szm_chain", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"generate", "verify", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "szm_chain" / f"{kind}.json").read_text(encoding="utf-8"))
        assert document == stored, kind
        assert load_vectors("szm_chain", kind) == stored["vectors"]
