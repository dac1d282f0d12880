import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, MalformedMessage, PaymentExpired
from farthing.http.payment_auth import (
    Challenge,
    ChallengeSigner,
    Credential,
    Receipt,
    decode_json_b64,
    format_challenge,
    format_credential,
    parse_challenges,
    parse_credential,
)

NOW = 1_800_000_000


def make_challenge(**overrides: object) -> Challenge:
    fields: dict[str, object] = dict(
        id="abc",
        realm="news",
        method="szm:chain",
        intent="charge",
        request={"amount": "1000", "currency": "EUR", "resource": "/a/*"},
        expires=NOW + 60,
    )
    fields.update(overrides)
    return Challenge(**fields)  # type: ignore[arg-type]


def test_challenge_round_trip_with_description_and_quotes() -> None:
    challenge = make_challenge(description='a "quoted", comma\\backslash')
    assert parse_challenges([format_challenge(challenge)]) == [challenge]


def test_several_challenges_in_one_header_and_foreign_schemes() -> None:
    one, two = make_challenge(id="1"), make_challenge(id="2", method="hll:mac")
    header = 'Basic realm="x", ' + format_challenge(one) + ", " + format_challenge(two)
    assert [c.id for c in parse_challenges([header])] == ["1", "2"]


def test_broken_payment_challenge_is_skipped() -> None:
    good = format_challenge(make_challenge())
    bad = 'Payment id="x", realm="r"'
    assert len(parse_challenges([bad, good])) == 1


def test_duplicate_challenge_parameter_refused() -> None:
    with pytest.raises(MalformedMessage):
        parse_challenges(['Payment id="a", id="b"'])


def test_bad_method_identifier() -> None:
    with pytest.raises(MalformedMessage):
        make_challenge(method="SZM Chain")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(
    st.text(min_size=1, max_size=40),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    st.none() | st.text(max_size=20),
)
def test_credential_round_trip(cid: str, payload: dict[str, object], source: str | None) -> None:
    credential = Credential(id=cid, payload=payload, source=source)
    assert parse_credential(format_credential(credential)) == credential


@pytest.mark.parametrize(
    "header",
    [
        "Basic abc",
        "Payment",
        "Payment a b",
        "Payment " + b64url_encode(b"[1,2]"),
        "Payment " + b64url_encode(b'{"id":"x"}'),
        "Payment " + b64url_encode(b'{"id":"x","payload":{},"extra":1}'),
        "Payment " + b64url_encode(b'{"id":1,"payload":{}}'),
        "Payment " + b64url_encode(b'{"id":"x","payload":[]}'),
        "Payment " + b64url_encode(b'{"id":"x","id":"y","payload":{}}'),
        "Payment " + b64url_encode(b'{"id":"x","payload":{"a":NaN}}'),
        "Payment " + b64url_encode(b"\xff\xfe"),
        "Payment " + "A" * 9000,
        "Payment abc=",
    ],
)
def test_malformed_credentials(header: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_credential(header)


def test_receipt_round_trip() -> None:
    receipt = Receipt(method="payword", timestamp=NOW, reference="r1", extra={"units": 2})
    assert Receipt.from_header(receipt.to_header()) == receipt


def test_receipt_missing_member() -> None:
    with pytest.raises(MalformedMessage):
        Receipt.from_header(b64url_encode(b'{"status":"success"}'))


def test_decode_json_refuses_non_object() -> None:
    with pytest.raises(MalformedMessage):
        decode_json_b64(b64url_encode(b'"x"'))


SIGNER = ChallengeSigner(b"k" * 32)
BINDING = dict(realm="news", method="szm:chain", scope="/a/*", price="1000 EUR")


def test_challenge_id_verifies_and_binds_every_field() -> None:
    cid = SIGNER.issue(nonce=b"n" * 16, expires=NOW + 60, **BINDING)
    assert SIGNER.verify(cid, now=NOW, **BINDING).nonce == b"n" * 16
    for name in BINDING:
        changed = dict(BINDING, **{name: BINDING[name] + "x"})
        with pytest.raises(InvalidPayment):
            SIGNER.verify(cid, now=NOW, **changed)
    with pytest.raises(InvalidPayment):
        ChallengeSigner(b"j" * 32).verify(cid, now=NOW, **BINDING)


def test_challenge_id_expiry_and_garbage() -> None:
    cid = SIGNER.issue(nonce=b"n" * 16, expires=NOW + 60, **BINDING)
    with pytest.raises(PaymentExpired) as info:
        SIGNER.verify(cid, now=NOW + 60, **BINDING)
    assert info.value.code is ErrorCode.CHALLENGE_EXPIRED
    for garbage in ["", "!!", b64url_encode(b"x" * 40), cid[:-2]]:
        with pytest.raises(InvalidPayment):
            SIGNER.verify(garbage, now=NOW, **BINDING)


@given(st.integers(0, 40 * 8 - 1))
def test_challenge_id_bit_flip_refused(bit: int) -> None:
    from farthing.core.encoding import b64url_decode

    raw = bytearray(b64url_decode(SIGNER.issue(nonce=b"n" * 16, expires=NOW + 60, **BINDING)))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((InvalidPayment, PaymentExpired)):
        SIGNER.verify(b64url_encode(bytes(raw)), now=NOW, **BINDING)


def test_signer_refuses_short_secret_and_nonce() -> None:
    with pytest.raises(ValueError):
        ChallengeSigner(b"short")
    with pytest.raises(ValueError):
        SIGNER.issue(nonce=b"n", expires=NOW, **BINDING)
