"""The vendor's fast path (``parse_payment`` + ``advance``) of szm:chain and PayWord
against the reference path: the protocol written out plainly here (decode_payment,
units_paid, the hash walk, the new state; what verify_payment did before the fast path)
and the public decode_payment + verify_payment. The same new state, the same units, the
same typed error (type, code, message) for the same input, on the vectors and on random
and adversarial payments (wrong index, skipped units, exhausted card, bad hash, another
card, expired, prices out of range, malformed encodings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core import errors
from farthing.core.errors import FarthingError
from farthing.core.hashchain import chain_walk
from farthing.core.money import Denomination
from farthing.core.schemes import payword, szm_chain
from farthing.core.schemes._advance import IndexPaymentCodec, units_paid
from tests.vectorlib import load_vectors

EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
LENGTH = 12
SEED = b"\x5a" * 32
TAG = b"t" * 32  # a request tag


@dataclass(frozen=True)
class Scheme:
    """One scheme's two paths, and how to build its states and payments."""

    name: str
    key_len: int
    tag: bytes
    what: str
    max_units: int
    codec: IndexPaymentCodec
    state: Callable[..., Any]
    payment: Callable[[bytes, int, bytes], Any]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    verify: Callable[..., tuple[Any, Any]]
    parse: Callable[[bytes], tuple[bytes, int, bytes]]
    advance: Callable[..., Any]


def _chain_state(key: bytes, value: bytes, spent: int, expires_at: int) -> Any:
    return szm_chain.ChainCardState(
        card_id=key, anchor=value, spent=spent, length=LENGTH, denomination=EUR,
        expires_at=expires_at,
    )  # fmt: skip


def _payword_state(key: bytes, value: bytes, spent: int, expires_at: int) -> Any:
    return payword.CommitmentState(
        commitment_id=key, last_value=value, spent=spent, length=LENGTH, denomination=EUR,
        expires_at=expires_at,
    )  # fmt: skip


SCHEMES = {
    "szm:chain": Scheme(
        "szm:chain", 16, szm_chain.CHAIN_TAG, "card", szm_chain.DEFAULT_MAX_UNITS,
        szm_chain._CODEC, _chain_state,
        lambda k, i, v: szm_chain.Payment(card_id=k, index=i, value=v),
        szm_chain.encode_payment, szm_chain.decode_payment, szm_chain.verify_payment,
        szm_chain.parse_payment, szm_chain.advance,
    ),
    "payword": Scheme(
        "payword", 32, payword.CHAIN_TAG, "commitment", payword.DEFAULT_MAX_UNITS,
        payword._CODEC, _payword_state,
        lambda k, i, v: payword.Payment(commitment_id=k, index=i, value=v),
        payword.encode_payment, payword.decode_payment, payword.verify_payment,
        payword.parse_payment, payword.advance,
    ),
}  # fmt: skip


def chain_value(scheme: Scheme, index: int) -> bytes:
    """w_index of a chain of LENGTH units from SEED (w_LENGTH = SEED)."""
    return chain_walk(scheme.tag, SEED, LENGTH - index)


def outcome(run: Callable[[], Any]) -> Any:
    try:
        return ("ok", run())
    except (FarthingError, ValueError) as error:
        code = getattr(error, "code", None)
        return ("error", type(error), code, str(error))


def model(scheme: Scheme, state: Any, raw: bytes, units: int, now: int, **kw: Any) -> Any:
    """The protocol written out plainly, as the reference path was before the fast path:
    decode, units_paid's checks, h^paid(value) = the last value, the new state."""

    def run() -> Any:
        key, index, value = astuple(scheme.decode(raw))
        paid = units_paid(
            key == state[0], state.spent, index, state.length, state.expires_at, units, now,
            kw.get("max_units", scheme.max_units), scheme.what,
        )  # fmt: skip
        if chain_walk(scheme.tag, value, paid) != state[1]:
            raise errors.InvalidPayment()
        request = kw.get("request")
        new = state._replace(
            spent=index, last_request=request, last_units=0 if request is None else paid
        )
        return new._replace(**{new._fields[1]: value}), index, paid

    return outcome(run)


def reference(scheme: Scheme, state: Any, raw: bytes, units: int, now: int, **kw: Any) -> Any:
    """The public API: decode_payment and verify_payment (with its receipt)."""

    def run() -> Any:
        new, receipt = scheme.verify(state, scheme.decode(raw), units=units, now=now, **kw)
        return new, receipt.index, receipt.units

    return outcome(run)


def fast(scheme: Scheme, state: Any, raw: bytes, units: int, now: int, **kw: Any) -> Any:
    args = (kw["max_units"],) if "max_units" in kw else ()

    def run() -> Any:
        new = scheme.advance(state, scheme.parse(raw), units, now, kw.get("request"), *args)
        return new, new.spent, new.spent - state.spent

    return outcome(run)


# --- the vectors --------------------------------------------------------------------------


def _vector_state(scheme: Scheme, v: dict[str, Any]) -> Any:
    value = v["anchor"] if "anchor" in v else v["last_value"]
    key = v["card_id"] if "card_id" in v else v["commitment_id"]
    state = scheme.state(bytes.fromhex(key), bytes.fromhex(value), v["spent"], v["expires_at"])
    return state._replace(
        length=v["length"],
        denomination=Denomination(currency=v["currency"], unit_micros=v["unit_micros"]),
    )


def _payment_vectors() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for kind in ("verify", "invalid"):
        cases += [("szm:chain", v, kind) for v in load_vectors("szm_chain", kind)]
        cases += [
            ("payword", v, kind)
            for v in load_vectors("payword", kind)
            if v.get("kind") == "payment"
        ]
    return cases


@pytest.mark.parametrize(
    ("name", "vector", "kind"),
    _payment_vectors(),
    ids=lambda x: x["name"] if isinstance(x, dict) else str(x),
)
def test_the_fast_path_decides_every_payment_vector_as_written(
    name: str, vector: dict[str, Any], kind: str
) -> None:
    scheme = SCHEMES[name]
    state = _vector_state(scheme, vector.get("state") or vector["state_before"])
    raw = bytes.fromhex(vector["payment"])
    got = fast(scheme, state, raw, vector["units"], vector["now"])
    if kind == "invalid":
        assert got[:3] == (
            "error",
            getattr(errors, vector["error"]),
            errors.ErrorCode[vector["code"]],
        )
        return
    assert got[0] == "ok"
    new, index, units = got[1]
    assert new == _vector_state(scheme, vector["state_after"])
    expected = vector.get("accepted") or {"index": new.spent, "units": vector["paid_units"]}
    assert (index, units) == (expected["index"], expected["units"])


# --- random and adversarial payments ------------------------------------------------------


@st.composite
def attempts(draw: st.DrawFn, scheme: Scheme) -> tuple[Any, bytes, int, int, dict[str, Any]]:
    """A state at some ``spent`` and a payment aimed at it, mostly near the edges."""
    spent = draw(st.integers(0, LENGTH))
    key = b"k" * scheme.key_len
    expires_at = NOW + draw(st.sampled_from([-1, 0, 1, 3600]))
    state = scheme.state(key, chain_value(scheme, spent), spent, expires_at)
    index = draw(
        st.one_of(
            st.integers(spent - 1, LENGTH + 2).filter(lambda i: i >= 0),  # stale .. exhausted
            st.sampled_from([0, 2**63, 2**64 - 1]),
        )
    )
    value = draw(
        st.one_of(
            st.just(chain_value(scheme, index) if index <= LENGTH else bytes(32)),
            st.integers(0, LENGTH).map(lambda i: chain_value(scheme, i)),  # another index's
            st.binary(min_size=32, max_size=32),  # a bad hash
        )
    )
    payment_key = draw(st.sampled_from([key, b"o" * scheme.key_len]))
    units = draw(st.one_of(st.integers(-1, 4), st.sampled_from([10_000, 10_001])))
    kw: dict[str, Any] = {"request": draw(st.sampled_from([None, TAG]))}
    if draw(st.booleans()):
        kw["max_units"] = draw(st.integers(1, 5))
    raw = scheme.encode(scheme.payment(payment_key, index, value))
    return state, raw, units, NOW, kw


@pytest.mark.parametrize("name", SCHEMES)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_fast_path_decides_as_the_reference_path(name: str, data: st.DataObject) -> None:
    scheme = SCHEMES[name]
    state, raw, units, now, kw = data.draw(attempts(scheme))
    expected = model(scheme, state, raw, units, now, **kw)
    assert fast(scheme, state, raw, units, now, **kw) == expected
    assert reference(scheme, state, raw, units, now, **kw) == expected


@pytest.mark.parametrize("name", SCHEMES)
def test_the_common_payment_takes_the_fast_test_and_every_refusal_is_typed(name: str) -> None:
    """One payment of each outcome, so that no branch of advance goes untested by chance."""
    scheme = SCHEMES[name]
    key = b"k" * scheme.key_len
    state = scheme.state(key, chain_value(scheme, 3), 3, NOW + 10)

    def pay(index: int, units: int = 1, **kw: Any) -> Any:
        value = kw.pop("value", chain_value(scheme, min(index, LENGTH)))
        raw = scheme.encode(scheme.payment(kw.pop("key", key), index, value))
        now = kw.pop("now", NOW)
        got = fast(scheme, state, raw, units, now, **kw)
        assert got == model(scheme, state, raw, units, now, **kw)
        assert got == reference(scheme, state, raw, units, now, **kw)
        return got[0] if got[0] == "ok" else got[1]

    assert pay(4) == "ok"  # one unit
    assert pay(6, units=2) == "ok"  # skipped units: accepted for all it pays
    assert pay(3) is errors.InvalidPayment  # a replay
    assert pay(4, key=b"o" * scheme.key_len) is errors.InvalidPayment  # another card
    assert pay(4, value=bytes(32)) is errors.InvalidPayment  # a bad hash
    assert pay(4, now=NOW + 10) is errors.PaymentExpired
    assert pay(LENGTH + 1) is errors.InsufficientFunds  # exhausted
    assert pay(4, units=2) is errors.InsufficientFunds  # pays too little
    assert pay(4, units=0) is ValueError  # the caller's price out of range
    assert pay(9, max_units=5) is errors.InvalidPayment  # more hashing than allowed


# --- the parser: the struct layout against the canonical Reader ---------------------------


@st.composite
def encodings(draw: st.DrawFn, scheme: Scheme) -> Any:
    good = scheme.encode(
        scheme.payment(
            draw(st.binary(min_size=scheme.key_len, max_size=scheme.key_len)),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.binary(min_size=32, max_size=32)),
        )
    )
    mutation = draw(st.sampled_from(["none", "flip", "frame", "cut", "extend", "random", "type"]))
    # "frame": a byte of the domain header, the key's length or the value's length.
    head = len(scheme.codec._prefix)
    frame = [*range(head), head + scheme.key_len + 8, head + scheme.key_len + 9]
    if mutation in ("flip", "frame"):
        at = draw(st.integers(0, len(good) - 1) if mutation == "flip" else st.sampled_from(frame))
        return good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))]) + good[at + 1 :]
    if mutation == "cut":
        return good[: draw(st.integers(0, len(good) - 1))]
    if mutation == "extend":
        return good + draw(st.binary(min_size=1, max_size=3))
    if mutation == "random":
        return draw(st.binary(max_size=len(good) + 2))
    if mutation == "type":
        return draw(st.sampled_from([bytearray, memoryview]))(good)
    return good


@pytest.mark.parametrize("name", SCHEMES)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_fast_parser_reads_as_the_canonical_reader(name: str, data: st.DataObject) -> None:
    scheme = SCHEMES[name]
    raw = data.draw(encodings(scheme))
    assert outcome(lambda: scheme.parse(raw)) == outcome(lambda: scheme.codec._read(raw))
    decoded = outcome(lambda: scheme.decode(raw))
    parsed = outcome(lambda: scheme.parse(raw))
    if parsed[0] == "ok":
        payment = decoded[1]
        key = payment.card_id if hasattr(payment, "card_id") else payment.commitment_id
        assert (key, payment.index, payment.value) == parsed[1]
    else:
        assert decoded == parsed
