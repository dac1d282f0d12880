import base64
import binascii
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.encoding import Reader, Writer, b64url_decode, b64url_encode, header
from farthing.core.errors import ErrorCode, MalformedMessage

DOMAIN = "farthing/test/msg"
text_st = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40).map(
    lambda s: __import__("unicodedata").normalize("NFC", s)
)


def encode(n: int, b: bytes, t: str) -> bytes:
    return Writer(DOMAIN).u64(n).bytes(b).text(t).finish()


def decode(data: bytes) -> tuple[int, bytes, str]:
    r = Reader(data, DOMAIN)
    out = (r.u64(), r.bytes(max_len=100), r.text(max_len=200))
    r.finish()
    return out


@given(st.integers(0, 2**64 - 1), st.binary(max_size=100), text_st)
def test_round_trip(n: int, b: bytes, t: str) -> None:
    assert decode(encode(n, b, t)) == (n, b, t)


@given(st.integers(0, 2**64 - 1), st.binary(max_size=100), text_st, st.data())
def test_every_truncation_is_rejected(n: int, b: bytes, t: str, data: st.DataObject) -> None:
    raw = encode(n, b, t)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MalformedMessage):
        decode(raw[:cut])


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(MalformedMessage) as info:
        decode(encode(1, b"x", "y") + b"\x00")
    assert info.value.code is ErrorCode.NON_CANONICAL


def test_wrong_domain_and_version() -> None:
    other = Writer("farthing/test/other").u64(1).finish()
    with pytest.raises(MalformedMessage) as info:
        Reader(other, DOMAIN)
    assert info.value.code is ErrorCode.WRONG_DOMAIN
    bumped = b"\x02" + encode(1, b"", "")[1:]
    with pytest.raises(MalformedMessage) as info:
        Reader(bumped, DOMAIN)
    assert info.value.code is ErrorCode.UNKNOWN_VERSION


def test_oversized_message_and_field() -> None:
    with pytest.raises(MalformedMessage) as info:
        Reader(b"\x01" * 5000, DOMAIN)
    assert info.value.code is ErrorCode.OVERSIZED
    raw = Writer(DOMAIN).u64(0).bytes(b"x" * 101).text("").finish()
    with pytest.raises(MalformedMessage):
        decode(raw)


def test_exact_length_field() -> None:
    raw = Writer(DOMAIN).bytes(b"abc").finish()
    with pytest.raises(MalformedMessage) as info:
        Reader(raw, DOMAIN).bytes(exact=4)
    assert info.value.code is ErrorCode.BAD_FIELD


@pytest.mark.parametrize("bad", ["e\u0301", "a\x00b", "tab\there"])
def test_non_canonical_text_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        Writer(DOMAIN).text(bad)
    raw = Writer(DOMAIN).u64(0).bytes(b"").bytes(bad.encode()).finish()
    with pytest.raises(MalformedMessage):
        decode(raw)


def test_invalid_utf8_rejected() -> None:
    raw = Writer(DOMAIN).u64(0).bytes(b"").bytes(b"\xff\xfe").finish()
    with pytest.raises(MalformedMessage):
        decode(raw)


def test_non_bytes_rejected() -> None:
    with pytest.raises(MalformedMessage):
        Reader("text", DOMAIN)  # type: ignore[arg-type]


def test_u64_range() -> None:
    with pytest.raises(ValueError):
        Writer(DOMAIN).u64(-1)
    with pytest.raises(ValueError):
        Writer(DOMAIN).u64(2**64)


def test_header_limits() -> None:
    with pytest.raises(ValueError):
        header("")
    with pytest.raises(ValueError):
        header("x" * 256)


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("bad", ["AA==", "A", "a+b/", "AB", "zz z", "é"])
def test_b64url_strict(bad: str) -> None:
    # "AB" has non-zero spare bits (canonical form of b"\x00" is "AA").
    with pytest.raises(MalformedMessage):
        b64url_decode(bad)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="))
def test_b64url_decode_accepts_exactly_the_canonical_texts(text: str) -> None:
    """Accepted iff encoding the bytes again gives the very same text (the definition the
    decoder's spare-bit check replaces)."""
    try:
        data = b64url_decode(text)
    except MalformedMessage:
        padded = text + "=" * (-len(text) % 4)
        try:
            again = base64.urlsafe_b64encode(base64.urlsafe_b64decode(padded)).rstrip(b"=")
        except (binascii.Error, ValueError):
            return
        assert again.decode() != text
        return
    assert b64url_encode(data) == text


def test_b64url_length_cap() -> None:
    with pytest.raises(MalformedMessage):
        b64url_decode("A" * 100, max_len=10)


def _canonical_by_definition(value: str) -> bool:
    """The text rule as Unicode states it: NFC, and no character of category Cc."""
    return unicodedata.normalize("NFC", value) == value and not any(
        unicodedata.category(ch) == "Cc" for ch in value
    )


def _accepted(value: str) -> bool:
    try:
        Writer("t").text(value)
    except ValueError:
        return False
    return True


def test_every_control_character_is_refused_and_nothing_else() -> None:
    for code in range(0x110000):
        ch = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates cannot be encoded as UTF-8 at all
        assert _accepted(ch) == _canonical_by_definition(ch), hex(code)


@given(st.text(max_size=40))
def test_text_rule_matches_its_definition(value: str) -> None:
    assert _accepted(value) == _canonical_by_definition(value)
