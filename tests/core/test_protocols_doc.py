"""docs/protocols/common.md says what the code does: each claim, computed here.

``python -m tests.core.test_protocols_doc`` rewrites the doc's error-code table from
:class:`ErrorCode` (run it after adding a code; the test below fails until then).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from farthing.core import cardcode, prbg
from farthing.core.encoding import Reader, Writer, b64url_decode, b64url_encode
from farthing.core.errors import CLASS_OF_CODE, ErrorCode, MalformedMessage
from farthing.core.money import Denomination
from farthing.core.sealing import seal_binding
from farthing.testing import DeterministicRandom
from farthing.wallet.lookup import looks_short
from tests.vectorlib import VECTORS, load_vectors

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "common.md"
BEGIN, END = "<!-- error-codes:begin -->", "<!-- error-codes:end -->"
_HEX_PAIR = re.compile(r"\A[0-9a-f]{2}\Z")


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def hex_block_after(marker: str) -> tuple[int, bytes]:
    """(the byte count the sentence states, the bytes of the next ``` block) after
    ``marker``: each block line's leading two-digit hex tokens; the rest is commentary."""
    text = doc()
    start = text.index(marker)
    stated = int(re.search(r"these (\d+) bytes", text[start:]).group(1))  # type: ignore[union-attr]
    block = text[start:].split("```", 2)[1]
    data = bytearray()
    for line in block.splitlines():
        for token in line.split():
            if not _HEX_PAIR.match(token):
                break
            data.append(int(token, 16))
    return stated, bytes(data)


# --- canonical encoding ----------------------------------------------------------------------


def test_the_worked_canonical_example_is_the_writers_bytes() -> None:
    stated, shown = hex_block_after("Worked example:")
    built = Writer("farthing/example").u64(1000).bytes(b"\xca\xfe").text("café").finish()
    assert shown == built
    assert stated == len(built) == 37


def test_integers_are_u64_big_endian_and_nothing_else() -> None:
    fields = sorted(name for name in vars(Writer) if not name.startswith("_"))
    assert fields == ["bytes", "finish", "text", "u64"]
    assert Writer("d").u64(1).finish()[-8:] == bytes(7) + b"\x01"
    assert Writer("d").u64(2**64 - 1).finish()[-8:] == b"\xff" * 8
    for outside in (-1, 2**64):
        with pytest.raises(ValueError):
            Writer("d").u64(outside)


def test_fixed_size_bytes_keep_their_prefix_and_other_lengths_are_refused() -> None:
    message = Writer("d").bytes(bytes(16)).finish()
    assert message[-18:-16] == b"\x00\x10"
    with pytest.raises(MalformedMessage) as info:
        Reader(Writer("d").bytes(bytes(15)).finish(), "d").bytes(exact=16)
    assert info.value.code is ErrorCode.BAD_FIELD


@pytest.mark.parametrize("text", ["cafe\u0301", "a\x00b", "tab\there", "\x85"])
def test_text_must_be_nfc_without_control_characters(text: str) -> None:
    with pytest.raises(ValueError):
        Writer("d").text(text)
    raw = Writer("d").bytes(text.encode("utf-8")).finish()
    with pytest.raises(MalformedMessage) as info:
        Reader(raw, "d").text()
    assert info.value.code is ErrorCode.NON_CANONICAL


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x02\x01d", ErrorCode.UNKNOWN_VERSION),
        (b"\x01\x01e", ErrorCode.WRONG_DOMAIN),
        (b"\x01\x01d\x00", ErrorCode.TRUNCATED),
        (b"\x01\x01d" + bytes(4096), ErrorCode.OVERSIZED),
    ],
)
def test_the_decoder_refuses_what_the_doc_lists(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(MalformedMessage) as info:
        Reader(data, "d").u64()
    assert info.value.code is code


def test_trailing_bytes_are_non_canonical() -> None:
    reader = Reader(b"\x01\x01d\x00", "d")
    with pytest.raises(MalformedMessage) as info:
        reader.finish()
    assert info.value.code is ErrorCode.NON_CANONICAL


@pytest.mark.parametrize("text", ["AA==", "A", "AB", "A+", "A/"])
def test_base64url_has_one_form(text: str) -> None:
    with pytest.raises(MalformedMessage):
        b64url_decode(text)
    assert b64url_encode(b"\xfb\xff") == "-_8"


# --- HKDF and the key mode ---------------------------------------------------------------------


def rfc5869(ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 with the salt written out: 32 zero bytes (RFC 5869, no salt given)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=bytes(32), info=info).derive(ikm)


def test_szm_chain_keys_are_hkdf_with_zero_salt_and_32_bytes() -> None:
    for vector in load_vectors("szm_chain", "generate"):
        secret, card_id = bytes.fromhex(vector["card_secret"]), bytes.fromhex(vector["card_id"])
        for payment in vector["payments"]:
            info = Writer("farthing/szm-chain/key").bytes(card_id).u64(payment["index"]).finish()
            assert rfc5869(secret, info, 32).hex() == payment["key_derived"]


def test_the_bbs_seed_expands_to_the_modulus_length_plus_16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[bytes | None, int]] = []
    real = prbg.hkdf_sha256

    def spy(ikm: bytes, *, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
        seen.append((salt, length))
        out = real(ikm, info=info, salt=salt, length=length)
        assert out == rfc5869(ikm, info, length)
        return out

    monkeypatch.setattr(prbg, "hkdf_sha256", spy)
    public = prbg.BbsPublic(n=prbg.blum_modulus_of_any_size(2048, DeterministicRandom("n")).n)
    prbg.bbs_seed(public, bytes(32))
    assert seen == [(None, 256 + 16)]


@pytest.mark.parametrize("vector", load_vectors("shortcode", "derive"), ids=lambda v: v["name"])
def test_short_code_derivations_are_hkdf_with_zero_salt(vector: dict[str, str]) -> None:
    ikm, card_id = vector["short_secret"].encode("ascii"), bytes.fromhex(vector["card_id"])
    for protocol in ("chain", "prbg"):
        info = Writer(f"farthing/szm-{protocol}/card-secret").bytes(card_id).finish()
        assert rfc5869(ikm, info, 32).hex() == vector[f"{protocol}_secret"]
    lookup = Writer("farthing/szm/card-lookup").finish()
    assert rfc5869(ikm, lookup, 16).hex() == vector["lookup_id"]
    assert re.fullmatch(r"([0-9A-HJKMNP-TV-Z]{4}-){5}[0-9A-HJKMNP-TV-Z]{4}", vector["code"])
    assert looks_short(vector["code"])
    assert not looks_short(cardcode.to_text(a_card()))
    assert not looks_short(cardcode.to_compact(a_card()))


# --- the seal ----------------------------------------------------------------------------------


def test_the_seal_binding_example_is_the_cores_bytes() -> None:
    stated, shown = hex_block_after('For `method="szm:chain"`')
    built = seal_binding(
        method="szm:chain",
        card_id=bytes(range(16)),
        index=3,
        resource="/articles/café",
        status=200,
        content_type="text/plain",
    )
    assert shown == built
    assert stated == len(built)


# --- card codes --------------------------------------------------------------------------------


def a_card(realm: str = "news.example") -> cardcode.CardCode:
    rng = DeterministicRandom("doc-card")
    return cardcode.CardCode(
        protocol=cardcode.Protocol.CHAIN,
        card_id=rng(16),
        secret=rng(32),
        units=100,
        currency="EUR",
        unit_micros=1000,
        expires_at=1_800_000_000,
        generator=cardcode.Generator.SHA256_CHAIN,
        realm=realm,
    )


@pytest.mark.parametrize("realm", ["a", "news.example", "x" * 255])
def test_compact_codes_start_with_arfm_and_text_codes_with_fth1(realm: str) -> None:
    code = a_card(realm)
    compact, text = cardcode.to_compact(code), cardcode.to_text(code)
    assert compact.startswith("ARFm")
    assert re.fullmatch(r"FTH1(-[A-Z2-7]{1,5})+", text)
    assert all(len(group) == 5 for group in text.split("-")[1:-1])
    payload = b64url_decode(compact)
    card = cardcode.encode_card(code)
    assert payload[:-4] == card
    assert payload[-4:] == hashlib.sha256(card).digest()[:4]


def test_text_codes_ignore_case_whitespace_and_dashes() -> None:
    code = a_card()
    text = cardcode.to_text(code)
    messy = " ".join(text.lower().replace("-", "")[i : i + 7] for i in range(0, len(text), 7))
    assert cardcode.from_text(messy) == code


def test_the_card_fields_are_in_the_documented_order() -> None:
    code = a_card()
    reader = Reader(cardcode.encode_card(code), cardcode.CARD_DOMAIN)
    fields = (
        reader.text(), reader.bytes(exact=16), reader.bytes(exact=32), reader.u64(),
        reader.text(), reader.u64(), reader.u64(), reader.text(), reader.text(), reader.bytes(),
    )  # fmt: skip
    reader.finish()
    assert fields == (
        "szm:chain", code.card_id, code.secret, 100, "EUR", 1000, 1_800_000_000,
        "sha256-chain", "news.example", b"",
    )  # fmt: skip


# --- over-payment --------------------------------------------------------------------------------


def test_the_documented_over_payment_vectors_exist_and_take_index_minus_spent() -> None:
    for scheme, name in [
        ("szm_chain", "over-payment-price-1-pays-3"),
        ("szm_prbg", "hmac-ctr-over-payment-price-1-pays-3"),
        ("payword", "over-payment-price-1-pays-3"),
    ]:
        assert f"`{name}`" in doc()
        text = (VECTORS / scheme / "verify.json").read_text(encoding="utf-8")
        (vector,) = [v for v in json.loads(text)["vectors"] if v["name"] == name]
        assert vector["units"] == 1
        paid = vector.get("paid_units") or vector["accepted"]["units"]
        assert paid == 3


def test_an_szm_card_pays_whole_units_rounded_up() -> None:
    assert Denomination(currency="EUR", unit_micros=1000).units_for(2001) == 3


# --- error codes -----------------------------------------------------------------------


def error_table() -> str:
    rows = [
        f"| {int(code)} | `{code.name}` | `{CLASS_OF_CODE[code].__name__}` |" for code in ErrorCode
    ]
    return "\n".join(["| code | name | raised as |", "|---|---|---|", *rows])


def documented_table() -> str:
    text = doc()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def test_the_doc_lists_exactly_the_error_codes() -> None:
    assert documented_table() == error_table(), "run: python -m tests.core.test_protocols_doc"


def rewrite_error_table() -> None:
    text = doc()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{error_table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    rewrite_error_table()
