import base64
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.cardcode import (
    CARD_DOMAIN,
    CardCode,
    Generator,
    Protocol,
    decode_card,
    encode_card,
    from_compact,
    from_text,
    to_compact,
    to_text,
)
from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage, UnsupportedMethod
from farthing.core.primitives import sha256

BASE = CardCode(
    protocol=Protocol.CHAIN,
    card_id=bytes(range(16)),
    secret=bytes(range(100, 132)),
    units=1000,
    currency="EUR",
    unit_micros=1000,
    expires_at=1_900_000_000,
    generator=Generator.SHA256_CHAIN,
    realm="news.example",
)
BBS = replace(BASE, protocol=Protocol.PRBG, generator=Generator.BBS, modulus=b"\xc5" + bytes(255))

kinds = st.sampled_from(
    [
        (Protocol.CHAIN, Generator.SHA256_CHAIN),
        (Protocol.PRBG, Generator.HMAC_CTR),
        (Protocol.PRBG, Generator.BBS),
    ]
)


@st.composite
def card_codes(draw: st.DrawFn) -> CardCode:
    protocol, generator = draw(kinds)
    modulus = b""
    if generator is Generator.BBS:
        top = draw(st.integers(1, 255)).to_bytes(1, "big")  # 2041..2048 bits and longer
        modulus = top + draw(st.binary(min_size=255, max_size=300))
        if int.from_bytes(modulus, "big").bit_length() < 2048:
            modulus = b"\x80" + modulus[1:]
    return CardCode(
        protocol=protocol,
        card_id=draw(st.binary(min_size=16, max_size=16)),
        secret=draw(st.binary(min_size=32, max_size=32)),
        units=draw(st.integers(1, 2**63 - 1)),
        currency=draw(st.from_regex(r"\A[A-Z]{3}\Z")),
        unit_micros=draw(st.integers(1, 10**12)),
        expires_at=draw(st.integers(0, 2**63 - 1)),
        generator=generator,
        realm=draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-", min_size=1, max_size=60)),
        modulus=modulus,
    )


@given(card_codes())
def test_round_trips(code: CardCode) -> None:
    assert decode_card(encode_card(code)) == code
    assert from_text(to_text(code)) == code
    assert from_compact(to_compact(code)) == code


@given(card_codes())
def test_text_shape(code: CardCode) -> None:
    text = to_text(code)
    prefix, *groups = text.split("-")
    assert prefix == "FTH1"
    assert all(len(g) == 5 for g in groups[:-1])
    assert 1 <= len(groups[-1]) <= 5
    assert re.fullmatch(r"[A-Z2-7]+", "".join(groups))
    payload = base64.b32decode("".join(groups) + "=" * (-len("".join(groups)) % 8))
    assert payload == encode_card(code) + sha256(encode_card(code))[:4]
    assert b64url_decode(to_compact(code)) == payload


def test_parsing_ignores_case_whitespace_and_dashes() -> None:
    text = to_text(BASE)
    sloppy = "  " + text.lower().replace("-", " ", 7).replace("-", "\n", 3) + "--\t"
    assert from_text(sloppy) == BASE
    assert from_text(text.replace("-", "")) == BASE


@given(st.data())
def test_any_typo_is_caught(data: st.DataObject) -> None:
    text = to_text(BASE)
    positions = [i for i, ch in enumerate(text) if i >= 5 and ch != "-"]
    pos = data.draw(st.sampled_from(positions))
    new = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567").filter(lambda c: c != text[pos])
    )
    with pytest.raises(MalformedMessage):
        from_text(text[:pos] + new + text[pos + 1 :])


def test_swapped_neighbours_are_caught() -> None:
    body = to_text(BASE).replace("-", "")[4:]
    swaps = [i for i in range(len(body) - 1) if body[i] != body[i + 1]]
    for i in swaps[:40]:
        swapped = body[:i] + body[i + 1] + body[i] + body[i + 2 :]
        with pytest.raises(MalformedMessage):
            from_text("FTH1" + swapped)


def test_compact_tamper_and_garbage_refused() -> None:
    raw = bytearray(b64url_decode(to_compact(BBS)))
    raw[40] ^= 0x01
    with pytest.raises(MalformedMessage):
        from_compact(b64url_encode(bytes(raw)))
    with pytest.raises(MalformedMessage):
        from_compact(to_compact(BBS) + "=")
    with pytest.raises(MalformedMessage):
        from_compact("")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("FTH2-AAAAA", ErrorCode.UNKNOWN_VERSION),
        ("hello", ErrorCode.UNKNOWN_VERSION),
        ("FTH1-AAAA1", ErrorCode.NON_CANONICAL),
        ("FTH1-A", ErrorCode.NON_CANONICAL),
        ("FTH1-" + "A" * 9000, ErrorCode.OVERSIZED),
        ("FTH1", ErrorCode.NON_CANONICAL),
    ],
)
def test_bad_text_refused(text: str, code: ErrorCode) -> None:
    with pytest.raises(MalformedMessage) as info:
        from_text(text)
    assert info.value.code is code


def test_non_canonical_base32_spare_bits_refused() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    code = next(
        c
        for c in (replace(BASE, realm="r" * k) for k in range(1, 6))
        if (len(encode_card(c)) + 4) % 5
    )
    body = to_text(code).replace("-", "")[4:]
    spare_bits = 5 * len(body) - 8 * (len(encode_card(code)) + 4)
    assert spare_bits > 0
    last = alphabet.index(body[-1])
    for spare in range(1, 1 << spare_bits):
        with pytest.raises(MalformedMessage) as info:
            from_text("FTH1" + body[:-1] + alphabet[last ^ spare])
        assert info.value.code is ErrorCode.NON_CANONICAL


def test_field_rules() -> None:
    with pytest.raises(UnsupportedMethod):
        replace(BASE, generator=Generator.HMAC_CTR)
    with pytest.raises(UnsupportedMethod):
        replace(BBS, generator=Generator.SHA256_CHAIN)
    with pytest.raises(MalformedMessage):
        replace(BBS, modulus=b"")
    with pytest.raises(MalformedMessage):
        replace(BASE, modulus=b"\x01")
    with pytest.raises(MalformedMessage):
        replace(BBS, modulus=b"\x00\x01")


@pytest.mark.parametrize("bits", [8, 512, 1024, 2047])
def test_a_bbs_card_under_2048_bits_is_refused(bits: int) -> None:
    weak = (1 << (bits - 1) | 1).to_bytes((bits + 7) // 8, "big")
    with pytest.raises(MalformedMessage, match="2048"):
        replace(BBS, modulus=weak)
    # A card code someone printed with a weak modulus does not parse either.
    raw = Writer(CARD_DOMAIN).text("szm:prbg").bytes(BBS.card_id).bytes(BBS.secret)
    raw = raw.u64(1).text("EUR").u64(1000).u64(1_900_000_000).text("bbs").text("x").bytes(weak)
    card = raw.finish()
    with pytest.raises(MalformedMessage, match="2048"):
        from_compact(b64url_encode(card + sha256(card)[:4]))
    with pytest.raises(MalformedMessage):
        replace(BASE, card_id=bytes(15))
    with pytest.raises(MalformedMessage):
        replace(BASE, units=0)
    with pytest.raises(MalformedMessage):
        replace(BASE, currency="eur")
    with pytest.raises(MalformedMessage):
        replace(BASE, realm="")
    assert BASE.denomination.unit_micros == 1000


def _raw(protocol: str, generator: str) -> bytes:
    return (
        Writer(CARD_DOMAIN)
        .text(protocol)
        .bytes(bytes(16))
        .bytes(bytes(32))
        .u64(1)
        .text("EUR")
        .u64(1)
        .u64(0)
        .text(generator)
        .text("r")
        .bytes(b"")
        .finish()
    )


def test_unknown_protocol_or_generator_in_bytes() -> None:
    assert decode_card(_raw("szm:chain", "sha256-chain")).units == 1
    with pytest.raises(UnsupportedMethod):
        decode_card(_raw("szm:other", "sha256-chain"))
    with pytest.raises(UnsupportedMethod):
        decode_card(_raw("szm:chain", "md5-chain"))
    with pytest.raises(MalformedMessage):
        decode_card(_raw("szm:chain", "sha256-chain") + b"\x00")
