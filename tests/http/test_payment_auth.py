"""The Payment scheme's headers (draft-httpauth-payment-02): challenges, credentials with
their echoed challenge, receipts, and the HMAC challenge binding."""

import hashlib
import hmac
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, MalformedMessage, PaymentExpired
from farthing.http.payment_auth import (
    Challenge,
    ChallengeBinder,
    ChallengeEcho,
    Credential,
    Receipt,
    decode_json_b64,
    encode_jcs_b64,
    encode_json_b64,
    format_challenge,
    format_credential,
    parse_challenges,
    parse_credential,
)

NOW = 1_800_000_000
REQUEST = {"amount": "1000", "currency": "micro-eur", "methodDetails": {"resource": "/a/*"}}


def make_challenge(**overrides: object) -> Challenge:
    fields: dict[str, object] = dict(
        id="abc",
        realm="news",
        method="szmchain",
        intent="charge",
        request=REQUEST,
        expires=NOW + 60,
    )
    fields.update(overrides)
    return Challenge(**fields)  # type: ignore[arg-type]


def test_challenge_round_trip_with_description_and_quotes() -> None:
    challenge = make_challenge(description='a "quoted", comma\\backslash')
    assert parse_challenges([format_challenge(challenge)]) == [challenge]


def test_challenge_round_trip_with_every_optional_parameter() -> None:
    challenge = make_challenge(
        digest="sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        opaque={"nonce": "abc"},
        header="Payment-Authorization",
    )
    (parsed,) = parse_challenges([format_challenge(challenge)])
    assert parsed == challenge
    assert parsed.echo() == challenge.echo()


def test_the_request_is_jcs_in_base64url() -> None:
    challenge = make_challenge(request={"b": 1, "a": {"d": "x", "c": True}})
    assert b64url_decode(challenge.request_b64) == b'{"a":{"c":true,"d":"x"},"b":1}'


def test_several_challenges_in_one_header_and_foreign_schemes() -> None:
    one, two = make_challenge(id="1"), make_challenge(id="2", method="hll")
    header = 'Basic realm="x", ' + format_challenge(one) + ", " + format_challenge(two)
    assert [c.id for c in parse_challenges([header])] == ["1", "2"]


def test_broken_payment_challenge_is_skipped() -> None:
    good = format_challenge(make_challenge())
    bad = 'Payment id="x", realm="r"'
    other_header = format_challenge(make_challenge()).replace(
        'request="', 'header="X-Pay", request="'
    )
    empty_id = format_challenge(make_challenge()).replace('id="abc"', 'id=""')
    assert parse_challenges([bad, good, other_header, empty_id]) == [make_challenge()]


def test_duplicate_challenge_parameter_refused() -> None:
    with pytest.raises(MalformedMessage):
        parse_challenges(['Payment id="a", id="b"'])


@pytest.mark.parametrize("method", ["SZM", "szm:chain", "szm-chain", "szm1", ""])
def test_method_identifiers_are_lowercase_letters_only(method: str) -> None:
    with pytest.raises(MalformedMessage):
        make_challenge(method=method)


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
    credential = Credential.answering(make_challenge(id=cid), payload, source=source)
    assert parse_credential(format_credential(credential)) == credential


def test_a_credential_echoes_the_challenge_as_received() -> None:
    challenge = make_challenge(opaque={"nonce": "n"})
    obj = decode_json_b64(format_credential(Credential.answering(challenge, {"p": 1}))[8:])
    assert obj == {
        "challenge": {
            "id": "abc",
            "realm": "news",
            "method": "szmchain",
            "intent": "charge",
            "request": challenge.request_b64,
            "expires": "2027-01-15T08:01:00Z",
            "opaque": encode_jcs_b64({"nonce": "n"}),
        },
        "payload": {"p": 1},
    }


ECHO = b'{"id":"x","realm":"r","method":"m","intent":"charge","request":"e30"}'


@pytest.mark.parametrize(
    "header",
    [
        "Basic abc",
        "Payment",
        "Payment a b",
        "Payment " + b64url_encode(b"[1,2]"),
        "Payment " + b64url_encode(b'{"id":"x","payload":{}}'),  # the old shape
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b"}"),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":[]}'),
        "Payment " + b64url_encode(b'{"challenge":"x","payload":{}}'),
        "Payment " + b64url_encode(b'{"challenge":{"id":"x"},"payload":{}}'),
        "Payment " + b64url_encode(b'{"challenge":{"id":1},"payload":{}}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":{},"source":1}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":{},"payload":{}}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":{"a":NaN}}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":{"a":1e400}}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO + b',"payload":{"a":1,"a":1}}'),
        "Payment " + b64url_encode(b'{"challenge":' + ECHO[:-1] + b',"id":"y"},"payload":{}}'),
        "Payment " + b64url_encode("\ufeff".encode() + b'{"challenge":' + ECHO + b',"payload":{}}'),
        "Payment " + b64url_encode(b"\xff\xfe"),
        "Payment " + "A" * 9000,
        "Payment abc=",
    ],
)
def test_malformed_credentials(header: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_credential(header)


def test_unknown_credential_members_are_ignored() -> None:
    raw = b'{"challenge":' + ECHO[:-1] + b',"new":"x"},"payload":{},"later":1}'
    credential = parse_credential("Payment " + b64url_encode(raw))
    assert credential.challenge.id == "x"


def test_receipt_round_trip() -> None:
    receipt = Receipt(method="payword", timestamp=NOW, reference="r1", extra={"units": 2})
    assert Receipt.from_header(receipt.to_header()) == receipt


def test_receipt_missing_member() -> None:
    with pytest.raises(MalformedMessage):
        Receipt.from_header(b64url_encode(b'{"status":"success"}'))


def test_decode_json_refuses_non_object() -> None:
    with pytest.raises(MalformedMessage):
        decode_json_b64(b64url_encode(b'"x"'))


# --- the binding ------------------------------------------------------------------------------

SECRET = b"k" * 32
BINDER = ChallengeBinder(SECRET)


def issue(**overrides: object) -> Challenge:
    fields: dict[str, object] = dict(
        realm="news",
        method="szmchain",
        request=REQUEST,
        request_b64=encode_jcs_b64(REQUEST),
        expires=NOW + 60,
        nonce=b"n" * 16,
    )
    fields.update(overrides)
    return BINDER.issue(**fields)  # type: ignore[arg-type]


def verify(echo: ChallengeEcho, **overrides: object) -> object:
    expected: dict[str, object] = dict(realm="news", request_b64=encode_jcs_b64(REQUEST))
    expected.update(overrides)
    return BINDER.verify(echo, now=NOW, **expected)  # type: ignore[arg-type]


def test_the_id_is_the_drafts_hmac_over_its_slots() -> None:
    """draft-httpauth-payment-02, "Recommended: HMAC-SHA256 Binding": seven slots joined by
    "|", an eighth for ``header`` only when present."""
    challenge = issue(digest="sha-256=:AA==:")
    slots = [
        "news",
        "szmchain",
        "charge",
        challenge.request_b64,
        challenge.expires_text,
        "sha-256=:AA==:",
        challenge.opaque_b64,
    ]
    mac = hmac.new(SECRET, "|".join(slots).encode(), hashlib.sha256).digest()
    assert challenge.id == b64url_encode(mac)
    with_header = issue(header="Payment-Authorization")
    slots = [*slots[:5], "", slots[6], "Payment-Authorization"]
    mac = hmac.new(SECRET, "|".join(slots).encode(), hashlib.sha256).digest()
    assert with_header.id == b64url_encode(mac)


def test_the_binding_covers_every_parameter_but_description() -> None:
    echo = issue().echo()
    assert verify(echo) is not None
    assert verify(replace(echo, description="anything")) is not None
    changed = [
        replace(echo, realm="other"),
        replace(echo, method="payword"),
        replace(echo, intent="session"),
        replace(echo, request=encode_jcs_b64({**REQUEST, "amount": "1"})),
        replace(echo, expires="2099-01-01T00:00:00Z"),
        replace(echo, digest="sha-256=:AA==:"),
        replace(echo, opaque=encode_jcs_b64({"nonce": "other"})),
        replace(echo, header="Payment-Authorization"),
        replace(echo, id=issue(nonce=b"m" * 16).id),
    ]
    for forged in changed:
        with pytest.raises(InvalidPayment) as info:
            verify(forged)
        assert info.value.code is ErrorCode.CHALLENGE_INVALID
    with pytest.raises(InvalidPayment):
        ChallengeBinder(b"j" * 32).verify(echo, now=NOW, realm="news", request_b64=echo.request)


def test_a_genuine_challenge_for_another_request_or_field_is_refused() -> None:
    echo = issue(header="Payment-Authorization").echo()
    verify(echo, header="Payment-Authorization")
    for expected in (
        {"realm": "other"},
        {"request_b64": encode_jcs_b64({**REQUEST, "amount": "1"})},
        {"header": None},
        {"digest": "sha-256=:AA==:"},
    ):
        with pytest.raises(InvalidPayment):
            verify(echo, **{"header": "Payment-Authorization", **expected})


def test_challenge_expiry_and_garbage_ids() -> None:
    echo = issue().echo()
    with pytest.raises(PaymentExpired) as info:
        BINDER.verify(echo, now=NOW + 60, realm="news", request_b64=echo.request)
    assert info.value.code is ErrorCode.CHALLENGE_EXPIRED
    for garbage in ["-", "!!", b64url_encode(b"x" * 40), echo.id[:-2]]:
        with pytest.raises(InvalidPayment):
            verify(replace(echo, id=garbage))


@given(st.integers(0, 32 * 8 - 1))
def test_challenge_id_bit_flip_refused(bit: int) -> None:
    echo = issue().echo()
    raw = bytearray(b64url_decode(echo.id))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidPayment):
        verify(replace(echo, id=b64url_encode(bytes(raw))))


@pytest.mark.parametrize("header", [None, "Payment-Authorization"])
@pytest.mark.parametrize("realm", ["news", 'the "daily" \\ news', "caf\u00e9"])
def test_the_fast_challenge_header_is_the_formatted_challenge(
    header: str | None, realm: str
) -> None:
    """What a paid answer carries (``challenge_header``, no challenge object built) is
    byte for byte ``format_challenge(issue(...))``, and it verifies."""
    for nonce in (b"n" * 16, bytes(range(16)), b"\xff" * 16):
        slow = format_challenge(issue(realm=realm, header=header, nonce=nonce))
        fast = BINDER.challenge_header(
            realm=realm,
            method="szmchain",
            request_b64=encode_jcs_b64(REQUEST),
            expires=NOW + 60,
            nonce=nonce,
            header=header,
        )
        assert fast == slow
        (parsed,) = parse_challenges([fast])
        assert verify(parsed.echo(), realm=realm, header=header) is not None


def test_the_fast_challenge_header_refuses_what_issue_refuses() -> None:
    with pytest.raises(MalformedMessage):
        BINDER.challenge_header(
            realm="news", method="szm:chain", request_b64="e30", expires=NOW, nonce=b"n" * 16
        )
    with pytest.raises(ValueError, match="control character"):
        BINDER.challenge_header(
            realm="a\nb", method="szmchain", request_b64="e30", expires=NOW, nonce=b"n" * 16
        )
    with pytest.raises(ValueError, match="16 random bytes"):
        BINDER.challenge_header(
            realm="news", method="szmchain", request_b64="e30", expires=NOW, nonce=b"n"
        )


@given(
    st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    )
)
def test_receipt_and_credential_json_is_the_json_modules(obj: dict[str, object]) -> None:
    """orjson writes what ``json.dumps(sort_keys, compact, ensure_ascii=False)`` wrote,
    for any JSON of strings, integers (past 64 bits too), booleans, null, lists, objects."""
    import json

    try:
        expected = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        raw = expected.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: neither writes it
        with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
            encode_json_b64(obj)
        return
    assert encode_json_b64(obj) == b64url_encode(raw)
