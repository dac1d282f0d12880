from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core.cardcode import from_text, to_text
from farthing.core.encoding import Reader, Writer
from farthing.core.errors import (
    CardExhausted,
    Conflict,
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    PaymentExpired,
)
from farthing.core.hashchain import chain_anchor, chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import hkdf_sha256, hmac_sha256
from farthing.core.schemes._advance import accept
from farthing.core.schemes.szm_chain import (
    CHAIN_TAG,
    METHOD,
    PAYMENT_DOMAIN,
    ChainAccepted,
    ChainCard,
    ChainCardState,
    KeyMode,
    Payment,
    card_from_code,
    card_payment_key,
    card_secret,
    card_walker,
    chain_seed,
    decode_payment,
    encode_payment,
    issue_card,
    issuer_payment_key,
    next_payment,
    payment_key,
    to_card_code,
    verify_payment,
    verify_payment_bytes,
)
from farthing.core.sealing import open_sealed, seal
from farthing.testing import DeterministicRandom
from farthing.testing.szm import ChainVerifier

MASTER = DeterministicRandom("test/szm-chain/master")(32)
EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
NO_CARDS: dict[bytes, None] = {}
EXPIRES = NOW + 3600


def fresh(length: int = 20, seed: str = "card") -> tuple[ChainCardState, ChainCard]:
    rng = DeterministicRandom(f"test/szm-chain/{seed}")
    return issue_card(MASTER, rng, length=length, denomination=EUR, expires_at=EXPIRES)


def setup(length: int = 20) -> tuple[ChainVerifier, ChainCard]:
    state, card = fresh(length)
    verifier = ChainVerifier()
    verifier.add(state)
    return verifier, card


# --- issuance and derivations ----------------------------------------------------------------


def test_issuance_derives_everything_from_the_master_key() -> None:
    state, card = fresh()
    short_msg = Writer("farthing/szm/short-secret").bytes(card.card_id).finish()
    short = int.from_bytes(hmac_sha256(MASTER, short_msg), "big") >> (256 - 115)
    symbols = "".join(
        "0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(short >> 5 * (22 - i)) & 31] for i in range(23)
    )
    message = Writer("farthing/szm-chain/card-secret").bytes(card.card_id).finish()
    by_hand = hkdf_sha256(symbols.encode(), info=message)
    assert card.secret == by_hand == card_secret(MASTER, card.card_id)
    seed_msg = Writer("farthing/szm-chain/chain-seed").bytes(card.card_id).finish()
    assert chain_seed(card.secret, card.card_id) == hmac_sha256(card.secret, seed_msg)
    seed = chain_seed(card.secret, card.card_id)
    assert state.anchor == chain_anchor(CHAIN_TAG, seed, 20)
    assert (state.spent, state.length, card.spent) == (0, 20, 0)
    assert len(CHAIN_TAG) < 24


def test_issuer_state_holds_no_secret() -> None:
    assert set(ChainCardState._fields) == {
        "card_id",
        "anchor",
        "spent",
        "length",
        "denomination",
        "expires_at",
        "last_request",  # a digest of the paid request, for retries
        "last_units",
    }


def test_card_code_round_trip() -> None:
    _, card = fresh()
    code = to_card_code(card, realm="news.example")
    assert card_from_code(from_text(to_text(code))) == card
    with pytest.raises(ValueError):
        to_card_code(replace(card, spent=1), realm="news.example")


# --- paying --------------------------------------------------------------------------------


def test_single_and_multi_unit_payments_and_keys_agree() -> None:
    verifier, card = setup()
    walker = card_walker(card)
    for units in [1, 1, 3, 5, 1, 9]:
        card, payment, key = next_payment(card, units, now=NOW, walker=walker)
        receipt = verifier.verify(payment, units=units, now=NOW)
        assert (receipt.index, receipt.units) == (card.spent, units)
        state = verifier.state(card.card_id)
        assert state is not None
        assert state.spent == card.spent
        assert state.anchor == payment.value
        assert key == issuer_payment_key(MASTER, state, payment.index)
    assert card.remaining == 0
    with pytest.raises(CardExhausted):
        next_payment(card, 1, now=NOW, walker=walker)


def test_payment_without_a_walker_matches() -> None:
    _, card = fresh()
    with_walker = next_payment(card, 4, now=NOW, walker=card_walker(card))
    assert next_payment(card, 4, now=NOW) == with_walker


def test_replay_stale_and_out_of_order_refused() -> None:
    verifier, card = setup()
    walker = card_walker(card)
    card1, first, _ = next_payment(card, 1, now=NOW, walker=walker)
    _, two_ahead, _ = next_payment(card1, 2, now=NOW, walker=walker)
    verifier.verify(two_ahead, units=3, now=NOW)  # the holder may skip ahead
    for stale in (first, two_ahead):
        with pytest.raises(InvalidPayment) as info:
            verifier.verify(stale, units=1, now=NOW)
        assert info.value.code is ErrorCode.PAYMENT_INVALID
    state = verifier.state(card.card_id)
    assert state is not None
    assert state.spent == 3


def test_amount_checks() -> None:
    verifier, card = setup()
    _, payment, _ = next_payment(card, 3, now=NOW)
    for wrong in (4, 5):
        with pytest.raises(InsufficientFunds) as info:
            verifier.verify(payment, units=wrong, now=NOW)
        assert info.value.code is ErrorCode.AMOUNT_MISMATCH
    beyond = Payment(card_id=card.card_id, index=21, value=bytes(32))
    with pytest.raises(InsufficientFunds) as info:
        verifier.verify(beyond, units=21, now=NOW)
    assert info.value.code is ErrorCode.INSUFFICIENT_FUNDS
    with pytest.raises(ValueError):
        verifier.verify(payment, units=0, now=NOW)
    with pytest.raises(ValueError):
        verifier.verify(payment, units=10_001, now=NOW)
    assert verifier.verify(payment, units=1, now=NOW).units == 3  # pays more than asked


def test_hostile_index_is_refused_before_hashing() -> None:
    state, card = fresh()
    hostile = Payment(card_id=card.card_id, index=2**63, value=bytes(32))
    with pytest.raises(InsufficientFunds):
        verify_payment(state, hostile, units=1, now=NOW)


def test_expiry_on_both_sides() -> None:
    verifier, card = setup()
    _, payment, _ = next_payment(card, 1, now=EXPIRES - 1)
    with pytest.raises(PaymentExpired) as info:
        verifier.verify(payment, units=1, now=EXPIRES)
    assert info.value.code is ErrorCode.CARD_EXPIRED
    with pytest.raises(PaymentExpired):
        next_payment(card, 1, now=EXPIRES)
    assert verifier.verify(payment, units=1, now=EXPIRES - 1).index == 1


def test_forged_unknown_and_foreign_cards_refused() -> None:
    verifier, card = setup()
    other_state, other_card = fresh(seed="other")
    _, theirs, _ = next_payment(other_card, 1, now=NOW)
    forged = Payment(card_id=card.card_id, index=1, value=theirs.value)
    for bad in (theirs, forged):
        with pytest.raises(InvalidPayment):
            verifier.verify(bad, units=1, now=NOW)
    with pytest.raises(InvalidPayment):
        verify_payment(verifier.state(card.card_id) or other_state, theirs, units=1, now=NOW)
    verifier.add(other_state)
    assert verifier.verify(theirs, units=1, now=NOW).card_id == other_card.card_id
    with pytest.raises(Conflict):
        verifier.add(other_state)


def test_receipts_cannot_be_forged() -> None:
    with pytest.raises(LocalProtocolError):
        ChainAccepted(card_id=bytes(16), index=1, units=1)
    with pytest.raises(LocalProtocolError):
        ChainAccepted(bytes(16), 1, 1, object())
    # The verifiers' own shortcut to a receipt wants the module's token too.
    with pytest.raises(LocalProtocolError):
        accept(ChainAccepted, object(), bytes(16), 1, 1)


def test_states_and_receipts_are_immutable_values() -> None:
    state, card = fresh()
    _, payment, _ = next_payment(card, 2, now=NOW)
    new_state, receipt = verify_payment(state, payment, units=2, now=NOW)
    assert verify_payment(state, payment, units=2, now=NOW) == (new_state, receipt)
    assert new_state == ChainCardState(
        card_id=card.card_id,
        anchor=payment.value,
        spent=2,
        length=20,
        denomination=EUR,
        expires_at=EXPIRES,
    )
    assert new_state == state._replace(anchor=payment.value, spent=2) != state
    assert (receipt.card_id, receipt.index, receipt.units) == (card.card_id, 2, 2)
    assert hash(receipt) == hash(verify_payment(state, payment, units=1, now=NOW)[1])
    _, one_more, _ = next_payment(card, 3, now=NOW)
    assert receipt != verify_payment(state, one_more, units=3, now=NOW)[1]
    assert receipt != (card.card_id, 2, 2)
    assert repr(receipt) == f"ChainAccepted(card_id={card.card_id!r}, index=2, units=2)"
    with pytest.raises(AttributeError):
        receipt.units = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        new_state.spent = 0  # type: ignore[misc]


def test_bad_card_values_refused() -> None:
    _, card = fresh()
    for bad in ({"secret": bytes(31)}, {"length": 0}, {"spent": 21}, {"card_id": bytes(8)}):
        with pytest.raises(ValueError):
            replace(card, **bad)
    with pytest.raises(ValueError):
        next_payment(card, 0, now=NOW)
    with pytest.raises(ValueError):
        next_payment(card, 1, now=NOW, walker=card_walker(fresh(length=5)[1]))


# --- wire encoding -------------------------------------------------------------------------

payments = st.builds(
    Payment,
    card_id=st.binary(min_size=16, max_size=16),
    index=st.integers(0, 2**64 - 1),
    value=st.binary(min_size=32, max_size=32),
)


@given(payments)
def test_encoding_round_trips(payment: Payment) -> None:
    raw = encode_payment(payment)
    assert decode_payment(raw) == payment
    assert (
        raw
        == Writer(PAYMENT_DOMAIN)
        .bytes(payment.card_id)
        .u64(payment.index)
        .bytes(payment.value)
        .finish()
    )


@given(payments, st.integers(0, 30))
def test_truncated_or_extended_payments_refused(payment: Payment, cut: int) -> None:
    raw = encode_payment(payment)
    with pytest.raises(MalformedMessage):
        decode_payment(raw[: len(raw) - 1 - cut])
    with pytest.raises(MalformedMessage):
        decode_payment(raw + bytes(cut + 1))


def reader_decode(data: bytes) -> Payment:
    reader = Reader(data, PAYMENT_DOMAIN)
    card_id, index = reader.bytes(exact=16), reader.u64()
    payment = Payment(card_id=card_id, index=index, value=reader.bytes(exact=32))
    reader.finish()
    return payment


@given(payments, st.data())
def test_fast_path_agrees_with_the_reader(payment: Payment, data: st.DataObject) -> None:
    raw = bytearray(encode_payment(payment))
    raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    try:
        expected = reader_decode(mutated)
    except MalformedMessage:
        with pytest.raises(MalformedMessage):
            decode_payment(mutated)
    else:
        assert decode_payment(mutated) == expected


@settings(max_examples=60)
@given(st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    verifier, card = setup(length=8)
    _, payment, _ = next_payment(card, 2, now=NOW)
    raw = bytearray(encode_payment(payment))
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((MalformedMessage, InvalidPayment, InsufficientFunds)):
        verifier.verify_bytes(bytes(raw), units=2, now=NOW)
    assert verifier.state(card.card_id) == fresh(length=8)[0]
    assert verifier.verify_bytes(encode_payment(payment), units=2, now=NOW).index == 2


def test_verify_from_bytes_looks_up_the_card() -> None:
    state, card = fresh()
    _, payment, _ = next_payment(card, 2, now=NOW)
    new_state, receipt = verify_payment_bytes(
        {state.card_id: state}.get, encode_payment(payment), units=2, now=NOW
    )
    assert (new_state.spent, receipt.units) == (2, 2)
    with pytest.raises(InvalidPayment):
        verify_payment_bytes(NO_CARDS.get, encode_payment(payment), units=2, now=NOW)


# --- the state machine -----------------------------------------------------------------------

actions = st.lists(
    st.tuples(st.sampled_from(["pay", "replay", "wrong-price"]), st.integers(1, 6)),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(actions)
def test_accepted_units_add_up_and_never_exceed_the_card(plan: list[tuple[str, int]]) -> None:
    verifier, card = setup(length=15)
    walker = card_walker(card)
    accepted = 0
    last: Payment | None = None
    for action, units in plan:
        if action == "replay" and last is not None:
            with pytest.raises(InvalidPayment):
                verifier.verify(last, units=units, now=NOW)
            continue
        if units > card.remaining:
            with pytest.raises(CardExhausted):
                next_payment(card, units, now=NOW, walker=walker)
            continue
        new_card, payment, _ = next_payment(card, units, now=NOW, walker=walker)
        if action == "wrong-price":
            state = verifier.state(card.card_id)
            assert state is not None
            with pytest.raises(InsufficientFunds):  # asks one more than the payment covers
                verifier.verify(payment, units=payment.index - state.spent + 1, now=NOW)
            # The card wrote the index ahead; the next payment covers the gap.
            card = new_card
            continue
        accepted += verifier.verify(payment, units=units, now=NOW).units
        last = payment
        card = new_card
    state = verifier.state(card.card_id)
    assert state is not None
    assert accepted == state.spent <= state.length


# --- key distribution ----------------------------------------------------------------------


def test_sealed_body_opens_only_with_its_own_payment_key() -> None:
    verifier, card = setup()
    walker = card_walker(card)
    card, first, key1 = next_payment(card, 1, now=NOW, walker=walker)
    card, second, key2 = next_payment(card, 2, now=NOW, walker=walker)
    for payment in (first, second):
        verifier.verify(payment, units=payment.index - (1 if payment is second else 0), now=NOW)
    state = verifier.state(card.card_id)
    assert state is not None
    issuer_key = issuer_payment_key(MASTER, state, second.index)
    index = second.index
    sealed = seal(
        issuer_key,
        b"article",
        nonce=bytes(12),
        method=METHOD,
        card_id=card.card_id,
        index=index,
        resource="/a",
        status=200,
        content_type="text/plain",
    )

    def open_with(key: bytes, resource: str = "/a") -> bytes:
        return open_sealed(
            key,
            sealed,
            method=METHOD,
            card_id=card.card_id,
            index=index,
            resource=resource,
            status=200,
            content_type="text/plain",
        )

    assert open_with(key2) == b"article"
    with pytest.raises(InvalidPayment):
        open_with(key1)
    with pytest.raises(InvalidPayment):
        open_with(key2, "/b")
    assert key1 != key2


def test_next_value_keys_leak_with_the_next_payment() -> None:
    state, card = fresh()
    walker = card_walker(card)
    card, _first, _ = next_payment(card, 1, now=NOW, walker=walker, key_mode=KeyMode.NEXT_VALUE)
    literal = card_payment_key(card, 1, mode=KeyMode.NEXT_VALUE)
    assert literal == issuer_payment_key(MASTER, state, 1, mode=KeyMode.NEXT_VALUE)
    _, later, _ = next_payment(card, 3, now=NOW, walker=walker)
    # An eavesdropper hashes the later chain value down to w_2 = K_1: no forward secrecy.
    assert chain_walk(CHAIN_TAG, later.value, later.index - 2) == literal
    derived = card_payment_key(card, 1)
    revealed = {chain_walk(CHAIN_TAG, later.value, k) for k in range(later.index + 1)}
    assert derived not in revealed
    assert literal in revealed


def test_last_unit_key_in_next_value_mode_falls_back_to_derived() -> None:
    state, card = fresh(length=3)
    new_card, _payment, key = next_payment(card, 3, now=NOW, key_mode=KeyMode.NEXT_VALUE)
    assert key == card_payment_key(new_card, 3) == issuer_payment_key(MASTER, state, 3)
    with pytest.raises(ValueError):
        payment_key(card.secret, card_id=card.card_id, index=4, length=3)
    with pytest.raises(ValueError):
        payment_key(card.secret, card_id=card.card_id, index=0, length=3)
