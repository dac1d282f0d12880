"""The short card code: every single typo and every swap of neighbours is caught (all of
them, not a sample), the derivations against vectors/shortcode, the issuer's answer tag."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.core.shortcode import (
    ALPHABET,
    SECRET_LEN,
    ShortSecret,
    answer_tag,
    check_answer,
    format_code,
    lookup_id,
    parse_code,
    short_secret,
    syndrome,
)
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

SYMBOLS = SECRET_LEN + 1
secrets = st.text(alphabet=ALPHABET, min_size=SECRET_LEN, max_size=SECRET_LEN).map(ShortSecret)


def typo_code(text: str) -> ErrorCode:
    with pytest.raises(MalformedMessage) as caught:
        parse_code(text)
    return caught.value.code


def test_the_printed_code_is_short_and_carries_over_100_bits() -> None:
    code = format_code(short_secret(bytes(32), bytes(16)))
    assert len(code) == 29 <= 32
    assert [len(group) for group in code.split("-")] == [4] * 6
    assert shortcode.SECRET_BITS == 115 >= 100


def test_every_single_error_and_every_swap_changes_the_syndrome() -> None:
    """The check is linear: an error is caught on every code iff it changes the syndrome of
    the all-zero code. All 24 positions x 31 differences, all 23 neighbour pairs x all
    ordered pairs of different symbols."""
    for position in range(SYMBOLS):
        for value in range(1, 32):
            error = [0] * SYMBOLS
            error[position] = value
            assert syndrome(error) != 0, (position, value)
    for position in range(SYMBOLS - 1):
        for a in range(32):
            for b in range(32):
                if a != b:
                    error = [0] * SYMBOLS
                    error[position], error[position + 1] = a ^ b, a ^ b
                    assert syndrome(error) != 0, (position, a, b)


@settings(max_examples=40, deadline=None)
@given(secrets)
def test_every_typo_in_a_code_is_refused_in_words(secret: ShortSecret) -> None:
    code = format_code(secret)
    assert parse_code(code) == secret
    symbols = code.replace("-", "")
    for position in range(SYMBOLS):
        for symbol in ALPHABET:
            if symbol != symbols[position]:
                typo = symbols[:position] + symbol + symbols[position + 1 :]
                assert typo_code(typo) is ErrorCode.CARD_CODE_TYPO
    for position in range(SYMBOLS - 1):
        a, b = symbols[position], symbols[position + 1]
        if a != b:
            swapped = symbols[:position] + b + a + symbols[position + 2 :]
            assert typo_code(swapped) is ErrorCode.CARD_CODE_TYPO


def test_reading_forgives_case_spaces_and_crockford_look_alikes() -> None:
    secret = ShortSecret("0" * 11 + "1" * 12)
    code = format_code(secret)
    assert parse_code(code.lower().replace("-", " ")) == secret
    assert parse_code(code.replace("0", "O").replace("1", "l")) == secret


def test_a_typo_is_told_in_words() -> None:
    good = format_code(short_secret(bytes(32), bytes(16)))
    bad = ("1" if good[0] != "1" else "2") + good[1:]
    with pytest.raises(MalformedMessage, match="typo: its check symbol does not match"):
        parse_code(bad)
    with pytest.raises(MalformedMessage, match=r"'U' .* not a card code symbol"):
        parse_code("U" + good[1:])
    with pytest.raises(MalformedMessage, match=r"24 symbols .* this one 23"):
        parse_code(good[:-1])


def test_the_issuers_answer_is_checked_against_the_code() -> None:
    master, card_id = bytes(range(32)), bytes(range(16))
    secret = short_secret(master, card_id)
    card = CardCode(
        protocol=Protocol.CHAIN,
        card_id=card_id,
        secret=szm_chain.card_secret(master, card_id),
        units=10,
        currency="EUR",
        unit_micros=1000,
        expires_at=2_000_000_000,
        generator=Generator.SHA256_CHAIN,
        realm="farthing",
    )
    tag = answer_tag(secret, card)
    check_answer(secret, card, tag)
    for changed in (
        dataclasses.replace(card, units=11),
        dataclasses.replace(card, unit_micros=10_000),
        dataclasses.replace(card, realm="other"),
    ):
        with pytest.raises(MalformedMessage):
            check_answer(secret, changed, tag)
    other = short_secret(master, bytes(15) + b"\x01")
    with pytest.raises(MalformedMessage):
        check_answer(other, card, tag)
    assert len(lookup_id(secret)) == 16
    assert lookup_id(secret) != lookup_id(other)


@json_parametrize("shortcode", "derive")
def test_derive(vector: dict[str, Any]) -> None:
    master, card_id = bytes.fromhex(vector["master_key"]), bytes.fromhex(vector["card_id"])
    secret = short_secret(master, card_id)
    assert secret.symbols == vector["short_secret"]
    assert format_code(secret) == vector["code"]
    assert parse_code(vector["code"]) == secret
    assert lookup_id(secret).hex() == vector["lookup_id"]
    assert szm_chain.card_secret(master, card_id).hex() == vector["chain_secret"]
    assert szm_prbg.card_secret(master, card_id).hex() == vector["prbg_secret"]
    # The holder reaches the same S from the printed code alone.
    typed = parse_code(vector["code"])
    chain = shortcode.card_secret(typed, szm_chain.DERIVATION_DOMAIN, card_id)
    assert chain.hex() == vector["chain_secret"]


@json_parametrize("shortcode", "invalid")
def test_invalid(vector: dict[str, Any]) -> None:
    assert typo_code(vector["code"]) is ErrorCode[vector["error"]]


def test_vector_files_match_their_generator() -> None:
    spec = importlib.util.spec_from_file_location("make_shortcode", VECTORS / "make_shortcode.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"derive", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "shortcode" / f"{kind}.json").read_text(encoding="utf-8"))
        assert document == stored, kind
        assert load_vectors("shortcode", kind) == stored["vectors"]
