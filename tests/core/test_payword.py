"""PayWord: certificates, commitments, paywords, redemption, and the in-memory parties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core.encoding import Reader
from farthing.core.errors import (
    AccessDenied,
    CardExhausted,
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    PaymentExpired,
    RemoteProtocolError,
)
from farthing.core.hashchain import chain_anchor, chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key, ed25519_sign
from farthing.core.schemes.payword import (
    CHAIN_TAG,
    DEFAULT_REDEEM_WINDOW,
    MAX_LENGTH,
    PAYMENT_DOMAIN,
    BrokerCredit,
    Certificate,
    Commitment,
    CommitmentState,
    OpenCommitment,
    Payment,
    PaywordAccepted,
    Redemption,
    RedemptionState,
    accept_commitment,
    admit_commitment,
    broker_redeem,
    commit,
    commitment_body,
    commitment_id,
    decode_certificate,
    decode_commitment,
    decode_payment,
    decode_redemption,
    encode_certificate,
    encode_commitment,
    encode_payment,
    encode_redemption,
    issue_certificate,
    require_admitted,
    verify_certificate,
    verify_payment,
    verify_payment_bytes,
)
from farthing.testing import DeterministicRandom
from farthing.testing.payword import PaywordBroker, PaywordSpender, PaywordVendor, PaywordWallet

NOW = 1_800_000_000
DAY = 86_400
EUR = Denomination(currency="EUR", unit_micros=1000)
_keys = DeterministicRandom("farthing/tests/payword/keys")
BROKER_KEY = _keys(32)
USER_KEY = _keys(32)
MALLORY_KEY = _keys(32)
SEED = _keys(32)
BROKER_PUBLIC = ed25519_public_key(BROKER_KEY)
LENGTH = 50
VENDOR = "shop.example"


def make_cert(*, signer: bytes = BROKER_KEY, expires_at: int = NOW + 30 * DAY) -> Certificate:
    return issue_certificate(
        signer,
        broker_id="broker.example",
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=1000,
        denomination=EUR,
        expires_at=expires_at,
    )


def make_commitment(
    cert: Certificate | None = None, *, vendor_id: str = VENDOR, length: int = LENGTH
) -> Commitment:
    return commit(
        USER_KEY,
        cert or make_cert(),
        vendor_id=vendor_id,
        seed=SEED,
        length=length,
        now=NOW,
        ttl=DAY,
        rng=DeterministicRandom("nonce"),
    )


def signed(unsigned: Commitment, signer: bytes = USER_KEY) -> Commitment:
    return replace(unsigned, signature=ed25519_sign(signer, commitment_body(unsigned)))


def w(index: int, length: int = LENGTH) -> bytes:
    return chain_walk(CHAIN_TAG, SEED, length - index)


def accept(commitment: Commitment, *, now: int = NOW, vendor_id: str = VENDOR) -> CommitmentState:
    return accept_commitment(BROKER_PUBLIC, commitment, vendor_id=vendor_id, now=now)


def pay(state: CommitmentState, index: int, value: bytes | None = None) -> Payment:
    return Payment(commitment_id=state.commitment_id, index=index, value=value or w(index))


COMMITMENT = make_commitment()
STATE0 = accept(COMMITMENT)


def code_of(info: pytest.ExceptionInfo[Exception]) -> ErrorCode:
    value = info.value
    assert isinstance(value, RemoteProtocolError | LocalProtocolError)
    return value.code


# --- certificates ------------------------------------------------------------------------


def test_certificate_verifies_until_it_expires() -> None:
    cert = make_cert()
    verify_certificate(BROKER_PUBLIC, cert, cert.expires_at - 1)
    with pytest.raises(PaymentExpired) as info:
        verify_certificate(BROKER_PUBLIC, cert, cert.expires_at)
    assert code_of(info) is ErrorCode.CERTIFICATE_EXPIRED


@pytest.mark.parametrize(
    "cert",
    [
        make_cert(signer=MALLORY_KEY),
        replace(make_cert(), credit_limit=10**9),
        replace(make_cert(), user_public_key=ed25519_public_key(MALLORY_KEY)),
        replace(make_cert(), expires_at=NOW + 365 * DAY),
    ],
    ids=["other-signer", "raised-limit", "swapped-key", "extended"],
)
def test_forged_certificate_is_refused(cert: Certificate) -> None:
    with pytest.raises(InvalidPayment) as info:
        verify_certificate(BROKER_PUBLIC, cert, NOW)
    assert code_of(info) is ErrorCode.SIGNATURE_INVALID


def test_forged_certificate_wins_nothing_even_when_expired() -> None:
    # The signature is checked before the expiry, so a forgery never gets the expiry answer.
    with pytest.raises(InvalidPayment):
        verify_certificate(BROKER_PUBLIC, make_cert(signer=MALLORY_KEY), NOW + 365 * DAY)


def test_issue_refuses_bad_arguments() -> None:
    good = {"broker_id": "b", "user_id": "u", "credit_limit": 1, "denomination": EUR}
    with pytest.raises(ValueError, match="32-byte"):
        issue_certificate(BROKER_KEY, user_public_key=b"k", expires_at=NOW, **good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifiers"):
        issue_certificate(
            BROKER_KEY,
            broker_id="",
            user_id="u",
            user_public_key=bytes(32),
            credit_limit=1,
            denomination=EUR,
            expires_at=NOW,
        )


# --- commitments -------------------------------------------------------------------------


def test_commit_makes_a_verifiable_commitment() -> None:
    assert COMMITMENT.anchor == chain_anchor(CHAIN_TAG, SEED, LENGTH)
    assert COMMITMENT.expires_at == NOW + DAY
    expected = CommitmentState(
        commitment_id=commitment_id(COMMITMENT),
        last_value=COMMITMENT.anchor,
        spent=0,
        length=LENGTH,
        denomination=EUR,
        expires_at=NOW + DAY,
    )
    assert expected == STATE0


def test_commitment_id_covers_the_nonce() -> None:
    other_nonce = commit(
        USER_KEY,
        make_cert(),
        vendor_id=VENDOR,
        seed=SEED,
        length=LENGTH,
        now=NOW,
        ttl=DAY,
        rng=DeterministicRandom("another nonce"),
    )
    assert commitment_id(other_nonce) != commitment_id(COMMITMENT)
    assert len(commitment_id(COMMITMENT)) == 32


def test_commitment_never_outlives_its_certificate() -> None:
    cert = make_cert(expires_at=NOW + 3600)
    assert make_commitment(cert).expires_at == NOW + 3600


def test_commit_refuses_misuse() -> None:
    cert = make_cert()
    common = {"vendor_id": VENDOR, "now": NOW, "ttl": DAY, "rng": DeterministicRandom("n")}
    with pytest.raises(ValueError, match="does not match"):
        commit(MALLORY_KEY, cert, seed=SEED, length=5, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32-byte seed"):
        commit(USER_KEY, cert, seed=b"short", length=5, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length"):
        commit(USER_KEY, cert, seed=SEED, length=MAX_LENGTH + 1, **common)  # type: ignore[arg-type]
    with pytest.raises(InsufficientFunds):
        commit(USER_KEY, cert, seed=SEED, length=1001, **common)  # type: ignore[arg-type]
    with pytest.raises(PaymentExpired):
        commit(USER_KEY, make_cert(expires_at=NOW), seed=SEED, length=5, **common)  # type: ignore[arg-type]


def test_forged_commitment_signature_is_refused() -> None:
    for forged in (signed(COMMITMENT, MALLORY_KEY), replace(COMMITMENT, length=LENGTH + 1)):
        with pytest.raises(InvalidPayment) as info:
            accept(forged)
        assert code_of(info) is ErrorCode.SIGNATURE_INVALID


def test_commitment_under_forged_certificate_is_refused() -> None:
    # Mallory's own key and a certificate she signed herself as "broker".
    cert = replace(make_cert(signer=MALLORY_KEY), user_public_key=ed25519_public_key(MALLORY_KEY))
    forged = signed(replace(COMMITMENT, certificate=cert), MALLORY_KEY)
    with pytest.raises(InvalidPayment) as info:
        accept(forged)
    assert code_of(info) is ErrorCode.SIGNATURE_INVALID


def test_commitment_to_another_vendor_is_refused() -> None:
    with pytest.raises(InvalidPayment) as info:
        accept(COMMITMENT, vendor_id="other.example")
    assert code_of(info) is ErrorCode.PAYMENT_INVALID


def test_expired_commitment_and_certificate() -> None:
    accept(COMMITMENT, now=COMMITMENT.expires_at - 1)
    with pytest.raises(PaymentExpired) as info:
        accept(COMMITMENT, now=COMMITMENT.expires_at)
    assert code_of(info) is ErrorCode.CARD_EXPIRED
    short = make_commitment(make_cert(expires_at=NOW + 10))
    with pytest.raises(PaymentExpired) as info:
        accept(short, now=NOW + 10)
    assert code_of(info) is ErrorCode.CERTIFICATE_EXPIRED


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"length": 1001}, InsufficientFunds),
        ({"denomination": Denomination(currency="EUR", unit_micros=20_001)}, InsufficientFunds),
        ({"denomination": Denomination(currency="USD", unit_micros=1000)}, InvalidPayment),
        ({"expires_at": NOW + 31 * DAY}, InvalidPayment),
    ],
    ids=["too-long", "units-too-big", "other-currency", "outlives-certificate"],
)
def test_commitment_beyond_the_certificate_is_refused(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        accept(signed(replace(COMMITMENT, **changes)))  # type: ignore[arg-type]


def test_commitment_of_the_whole_limit_is_accepted() -> None:
    exact = make_commitment(length=1000)
    assert accept(exact).length == 1000
    # 20 units of 50 milli-EUR fill a 1000 x 1 milli-EUR limit exactly.
    bigger_units = signed(
        replace(exact, length=20, denomination=Denomination(currency="EUR", unit_micros=50_000))
    )
    assert accept(bigger_units).length == 20


# --- paywords ----------------------------------------------------------------------------


def test_paywords_in_order_and_skipping_ahead() -> None:
    state = STATE0
    total = 0
    for index, units in [(1, 1), (2, 1), (7, 5), (8, 1), (LENGTH, LENGTH - 8)]:
        state, receipt = verify_payment(state, pay(state, index), units=units, now=NOW)
        assert (receipt.index, receipt.units, receipt.commitment_id) == (
            index,
            units,
            state.commitment_id,
        )
        assert state.last_value == w(index)
        total += receipt.units
    assert state.spent == total == LENGTH


def test_verify_does_not_mutate_the_state() -> None:
    after, _ = verify_payment(STATE0, pay(STATE0, 1), units=1, now=NOW)
    assert STATE0.spent == 0
    assert after.spent == 1
    # The same payment against the old state value verifies again: the adapter's conditional
    # update (WHERE spent = 0) is what makes the second one lose.
    assert verify_payment(STATE0, pay(STATE0, 1), units=1, now=NOW)[0] == after


def test_states_and_receipts_are_immutable_values() -> None:
    after, receipt = verify_payment(STATE0, pay(STATE0, 2), units=2, now=NOW)
    assert verify_payment(STATE0, pay(STATE0, 2), units=2, now=NOW) == (after, receipt)
    assert after == CommitmentState(
        commitment_id=STATE0.commitment_id,
        last_value=w(2),
        spent=2,
        length=LENGTH,
        denomination=STATE0.denomination,
        expires_at=STATE0.expires_at,
    )
    assert after == STATE0._replace(last_value=w(2), spent=2) != STATE0
    assert (receipt.commitment_id, receipt.index, receipt.units) == (STATE0.commitment_id, 2, 2)
    assert hash(receipt) == hash(verify_payment(STATE0, pay(STATE0, 2), units=1, now=NOW)[1])
    assert receipt != verify_payment(STATE0, pay(STATE0, 3), units=3, now=NOW)[1]
    assert receipt != (STATE0.commitment_id, 2, 2)
    assert repr(receipt) == (
        f"PaywordAccepted(commitment_id={STATE0.commitment_id!r}, index=2, units=2)"
    )
    with pytest.raises(AttributeError):
        receipt.units = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        after.spent = 0  # type: ignore[misc]


def test_overspend_past_n() -> None:
    state = STATE0._replace(spent=LENGTH, last_value=w(LENGTH))
    with pytest.raises(InsufficientFunds) as info:
        verify_payment(state, pay(state, LENGTH + 1, bytes(32)), units=1, now=NOW)
    assert code_of(info) is ErrorCode.INSUFFICIENT_FUNDS


def test_replay_and_stale_index_are_refused() -> None:
    state, _ = verify_payment(STATE0, pay(STATE0, 3), units=3, now=NOW)
    for index in (3, 2, 0):
        with pytest.raises(InvalidPayment) as info:
            verify_payment(state, pay(state, index), units=1, now=NOW)
        assert code_of(info) is ErrorCode.PAYMENT_INVALID


def test_payment_over_a_lost_gap_is_accepted_for_what_it_pays() -> None:
    new_state, receipt = verify_payment(STATE0, pay(STATE0, 3), units=1, now=NOW)
    assert (new_state.spent, receipt.units) == (3, 3)


def test_gap_beyond_the_hashing_bound_is_refused() -> None:
    with pytest.raises(InvalidPayment):
        verify_payment(STATE0, pay(STATE0, 3), units=1, now=NOW, max_units=2)


@pytest.mark.parametrize(("index", "units"), [(1, 2), (2, 3)])
def test_too_little_is_refused(index: int, units: int) -> None:
    with pytest.raises(InsufficientFunds) as info:
        verify_payment(STATE0, pay(STATE0, index), units=units, now=NOW)
    assert code_of(info) is ErrorCode.AMOUNT_MISMATCH


def test_wrong_value_is_refused() -> None:
    for value in (w(2), w(0), bytes(32), STATE0.last_value):
        with pytest.raises(InvalidPayment):
            verify_payment(STATE0, pay(STATE0, 1, value), units=1, now=NOW)


def test_payment_for_another_commitment_is_refused() -> None:
    other = accept(make_commitment(length=LENGTH + 1))
    with pytest.raises(InvalidPayment):
        verify_payment(STATE0, pay(other, 1, w(1, LENGTH + 1)), units=1, now=NOW)
    unknown: dict[bytes, CommitmentState] = {other.commitment_id: other}
    with pytest.raises(InvalidPayment):
        verify_payment_bytes(unknown.get, encode_payment(pay(STATE0, 1)), units=1, now=NOW)


def test_payment_names_its_commitment_even_when_chains_coincide() -> None:
    # Same seed and length, another nonce: the chains are equal, the commitments are not.
    twin = accept(
        commit(
            USER_KEY,
            make_cert(),
            vendor_id=VENDOR,
            seed=SEED,
            length=LENGTH,
            now=NOW,
            ttl=DAY,
            rng=DeterministicRandom("twin"),
        )
    )
    assert twin.last_value == STATE0.last_value
    assert twin.commitment_id != STATE0.commitment_id
    with pytest.raises(InvalidPayment):
        verify_payment(twin, pay(STATE0, 1), units=1, now=NOW)


def test_expired_commitment_takes_no_payment() -> None:
    with pytest.raises(PaymentExpired) as info:
        verify_payment(STATE0, pay(STATE0, 1), units=1, now=STATE0.expires_at)
    assert code_of(info) is ErrorCode.CARD_EXPIRED


def test_price_bound() -> None:
    long_state = accept(make_commitment(length=1000))
    with pytest.raises(ValueError, match="price"):
        verify_payment(long_state, pay(long_state, 11, bytes(32)), units=11, now=NOW, max_units=10)
    with pytest.raises(ValueError, match="price"):
        verify_payment(STATE0, pay(STATE0, 0), units=0, now=NOW)


def test_receipts_cannot_be_forged() -> None:
    with pytest.raises(LocalProtocolError):
        PaywordAccepted(commitment_id=bytes(32), index=1, units=1)
    with pytest.raises(LocalProtocolError):
        PaywordAccepted(bytes(32), 1, 1, object())
    with pytest.raises(LocalProtocolError):
        BrokerCredit(
            state=RedemptionState(
                commitment_id=bytes(32), redeemed_index=1, redeemed_value=bytes(32)
            ),
            credited_units=1,
            vendor_id=VENDOR,
            user_id="alice",
            denomination=EUR,
            _token=object(),
        )


# --- encodings ---------------------------------------------------------------------------

ids = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
    min_size=1,
    max_size=40,
).filter(lambda s: __import__("unicodedata").normalize("NFC", s) == s)


def reader_decode(data: bytes) -> Payment:
    reader = Reader(data, PAYMENT_DOMAIN, max_size=200)
    payment = Payment(
        commitment_id=reader.bytes(exact=32), index=reader.u64(), value=reader.bytes(exact=32)
    )
    reader.finish()
    return payment


@given(ids, u64, ids)
def test_payment_round_trip(cid: bytes, index: int, value: bytes) -> None:
    payment = Payment(commitment_id=cid, index=index, value=value)
    data = encode_payment(payment)
    assert decode_payment(data) == payment == reader_decode(data)


@given(ids, u64, ids, st.data())
def test_payment_fast_path_agrees_with_the_reader(
    cid: bytes, index: int, value: bytes, data: st.DataObject
) -> None:
    raw = bytearray(encode_payment(Payment(commitment_id=cid, index=index, value=value)))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    try:
        expected = reader_decode(mutated)
    except MalformedMessage:
        with pytest.raises(MalformedMessage):
            decode_payment(mutated)
    else:
        assert decode_payment(mutated) == expected


def test_payment_decoder_refuses_non_canonical_bytes() -> None:
    good = encode_payment(pay(STATE0, 1))
    for bad in (good[:-1], good + b"\x00", b"", good.replace(b"payword", b"paywerd")):
        with pytest.raises(MalformedMessage):
            decode_payment(bad)
    with pytest.raises(MalformedMessage):
        decode_payment(bytearray(good))  # type: ignore[arg-type]


@settings(max_examples=30)
@given(names, names, st.integers(1, 2**40), st.integers(0, 2**40))
def test_certificate_round_trip(broker: str, user: str, limit: int, expires: int) -> None:
    cert = issue_certificate(
        BROKER_KEY,
        broker_id=broker,
        user_id=user,
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=limit,
        denomination=EUR,
        expires_at=expires,
    )
    assert decode_certificate(encode_certificate(cert)) == cert
    verify_certificate(BROKER_PUBLIC, cert, expires - 1)


@settings(max_examples=30)
@given(names, st.integers(1, 1000), st.binary(min_size=16, max_size=16))
def test_commitment_round_trip(vendor: str, length: int, nonce: bytes) -> None:
    commitment = signed(replace(COMMITMENT, vendor_id=vendor, length=length, nonce=nonce))
    assert decode_commitment(encode_commitment(commitment)) == commitment
    claim = Redemption(commitment=commitment, index=length, value=bytes(32))
    assert decode_redemption(encode_redemption(claim)) == claim


@settings(max_examples=200)
@given(st.data())
def test_any_bit_flip_in_a_payment_is_refused(data: st.DataObject) -> None:
    state = STATE0._replace(spent=4, last_value=w(4))
    raw = bytearray(encode_payment(pay(state, 5)))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    states = {state.commitment_id: state}
    with pytest.raises(RemoteProtocolError):
        verify_payment_bytes(states.get, bytes(raw), units=1, now=NOW)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_bit_flip_in_a_commitment_is_refused(data: st.DataObject) -> None:
    raw = bytearray(encode_commitment(COMMITMENT))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RemoteProtocolError):
        accept(decode_commitment(bytes(raw)))


# --- properties of a whole session -------------------------------------------------------

prices = st.lists(st.integers(1, 6), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(prices, st.lists(st.integers(0, 40), max_size=10))
def test_accepted_units_equal_spent_and_never_exceed_n(
    units_list: list[int], replays: list[int]
) -> None:
    state = STATE0
    accepted = 0
    sent: list[Payment] = []
    for units in units_list:
        index = state.spent + units
        if index > LENGTH:
            with pytest.raises(InsufficientFunds):
                verify_payment(state, pay(state, index, bytes(32)), units=units, now=NOW)
            continue
        payment = pay(state, index)
        state, receipt = verify_payment(state, payment, units=units, now=NOW)
        accepted += receipt.units
        sent.append(payment)
    for position in replays:  # every earlier payword is now stale
        if sent:
            old = sent[position % len(sent)]
            with pytest.raises(InvalidPayment):
                verify_payment(state, old, units=1, now=NOW)
    assert accepted == state.spent <= LENGTH


# --- redemption --------------------------------------------------------------------------


def redeem(
    state: RedemptionState | None,
    index: int,
    *,
    value: bytes | None = None,
    vendor_id: str = VENDOR,
    now: int = NOW + DAY,
    commitment: Commitment = COMMITMENT,
) -> BrokerCredit:
    claim = Redemption(commitment=commitment, index=index, value=value or w(index))
    return broker_redeem(BROKER_PUBLIC, state, claim, vendor_id=vendor_id, now=now)


def test_redemption_is_incremental_and_idempotent() -> None:
    first = redeem(None, 7)
    assert first.credited_units == 7
    assert first.credited_micros == 7000
    assert (first.vendor_id, first.user_id) == (VENDOR, "alice")
    assert first.state == RedemptionState(
        commitment_id=commitment_id(COMMITMENT), redeemed_index=7, redeemed_value=w(7)
    )
    again = redeem(first.state, 7)
    lower = redeem(first.state, 3)
    assert again.credited_units == lower.credited_units == 0
    assert again.state == lower.state == first.state
    more = redeem(first.state, 12)
    assert more.credited_units == 5
    assert first.credited_units + more.credited_units == 12


def test_redemption_with_a_wrong_value_is_refused() -> None:
    state = redeem(None, 12).state
    for before, index, value in [(None, 5, bytes(32)), (state, 7, w(8)), (None, 5, w(6))]:
        with pytest.raises(InvalidPayment) as info:
            redeem(before, index, value=value)
        assert code_of(info) is ErrorCode.DEPOSIT_INVALID
    with pytest.raises(InvalidPayment):
        redeem(None, LENGTH + 1, value=bytes(32))


def test_nothing_beyond_n_even_for_a_user_who_knows_a_preimage_of_the_seed() -> None:
    # A user may pick seed = h(x): then x is a valid "w_{N+1}". Neither party may take it.
    extra = DeterministicRandom("preimage")(32)
    seed = chain_walk(CHAIN_TAG, extra, 1)
    commitment = commit(
        USER_KEY,
        make_cert(),
        vendor_id=VENDOR,
        seed=seed,
        length=5,
        now=NOW,
        ttl=DAY,
        rng=DeterministicRandom("n"),
    )
    state = accept(commitment)
    state = state._replace(spent=5, last_value=seed)
    with pytest.raises(InsufficientFunds):
        verify_payment(state, pay(state, 6, extra), units=1, now=NOW)
    with pytest.raises(InvalidPayment):
        redeem(None, 6, value=extra, commitment=commitment)
    assert redeem(None, 5, value=seed, commitment=commitment).credited_units == 5


def test_redemption_by_another_vendor_is_denied() -> None:
    with pytest.raises(AccessDenied):
        redeem(None, 5, vendor_id="other.example")


def test_redemption_window() -> None:
    last = COMMITMENT.expires_at + 30 * DAY - 1
    assert redeem(None, 5, now=last).credited_units == 5
    with pytest.raises(PaymentExpired) as info:
        redeem(None, 5, now=last + 1)
    assert code_of(info) is ErrorCode.CARD_EXPIRED


def test_redemption_of_a_forged_commitment_is_refused() -> None:
    for forged in (signed(COMMITMENT, MALLORY_KEY), replace(COMMITMENT, length=1000)):
        with pytest.raises(InvalidPayment) as info:
            redeem(None, 5, commitment=forged)
        assert code_of(info) is ErrorCode.SIGNATURE_INVALID
    over_limit = signed(replace(COMMITMENT, length=1001))
    with pytest.raises(InsufficientFunds):
        redeem(None, 5, commitment=over_limit, value=w(5, 1001))


def test_redemption_state_of_another_commitment_is_misuse() -> None:
    other = make_commitment(length=LENGTH + 1)
    state = redeem(None, 2, commitment=other, value=w(2, LENGTH + 1)).state
    with pytest.raises(LocalProtocolError):
        redeem(state, 5)


# --- the user's side ---------------------------------------------------------------------


def test_spender_produces_paywords_in_order() -> None:
    spender = PaywordSpender(COMMITMENT, SEED)
    first = spender.reserve(1, now=NOW)
    second = spender.reserve(4, now=NOW)
    assert (first.payment.index, first.payment.value) == (1, w(1))
    assert (second.payment.index, second.payment.value) == (5, w(5))
    assert second.state.spent == spender.spent == 5
    assert spender.remaining == LENGTH - 5
    assert second.state.commitment_id == spender.commitment_id == STATE0.commitment_id


def test_spender_resumes_from_the_persisted_state() -> None:
    spender = PaywordSpender(COMMITMENT, SEED)
    reservation = spender.reserve(3, now=NOW)
    resumed = PaywordSpender(COMMITMENT, spender.seed, spent=reservation.state.spent)
    assert resumed.reserve(1, now=NOW).payment == pay(STATE0, 4)


def test_spender_limits() -> None:
    spender = PaywordSpender(COMMITMENT, SEED, spent=LENGTH - 1)
    with pytest.raises(CardExhausted) as info:
        spender.reserve(2, now=NOW)
    assert code_of(info) is ErrorCode.CARD_EXHAUSTED
    assert spender.spent == LENGTH - 1  # a refused reservation spends nothing
    with pytest.raises(CardExhausted) as info:
        spender.reserve(1, now=COMMITMENT.expires_at)
    assert code_of(info) is ErrorCode.CARD_EXPIRED
    with pytest.raises(ValueError, match="positive"):
        spender.reserve(0, now=NOW)
    with pytest.raises(ValueError, match="seed"):
        PaywordSpender(COMMITMENT, bytes(32))
    with pytest.raises(ValueError, match="spent"):
        PaywordSpender(COMMITMENT, SEED, spent=LENGTH + 1)


# --- the three parties together ----------------------------------------------------------


def parties() -> tuple[PaywordBroker, PaywordWallet, PaywordVendor, PaywordVendor]:
    broker = PaywordBroker(broker_id="broker.example", private_key=BROKER_KEY)
    cert = broker.issue(
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=1000,
        denomination=EUR,
        now=NOW,
        ttl=30 * DAY,
    )
    wallet = PaywordWallet(private_key=USER_KEY, certificate=cert)
    news = PaywordVendor(vendor_id="news.example", broker_public=broker.public_key)
    music = PaywordVendor(vendor_id="music.example", broker_public=broker.public_key)
    for vendor in (news, music):
        broker.register_vendor(vendor.vendor_id, "EUR")
    return broker, wallet, news, music


def test_session_credits_exactly_what_each_vendor_was_paid() -> None:
    broker, wallet, news, music = parties()
    rng = DeterministicRandom("session")
    for vendor, prices_paid in ((news, [1, 1, 3, 2]), (music, [5, 1])):
        spender = wallet.open(vendor.vendor_id, length=40, now=NOW, ttl=DAY, rng=rng)
        broker.admit(encode_commitment(spender.commitment), vendor_id=vendor.vendor_id, now=NOW)
        vendor.accept_commitment(encode_commitment(spender.commitment), now=NOW)
        for units in prices_paid:
            reservation = wallet.reserve(vendor.vendor_id, units, now=NOW + 1)
            receipt = vendor.receive(encode_payment(reservation.payment), units=units, now=NOW)
            assert receipt.units == units
    for vendor in (news, music):
        for claim in vendor.redemptions():
            data = encode_redemption(claim)
            broker.redeem(data, vendor_id=vendor.vendor_id, now=NOW + DAY)
            assert (
                broker.redeem(data, vendor_id=vendor.vendor_id, now=NOW + DAY).credited_units == 0
            )
    assert broker.vendor_credit("news.example", "EUR") == 7 * 1000
    assert broker.vendor_credit("music.example", "EUR") == 6 * 1000
    assert broker.user_debit("alice", "EUR") == 13 * 1000


def test_vendor_does_not_reset_a_known_commitment() -> None:
    _, wallet, news, _ = parties()
    spender = wallet.open("news.example", length=10, now=NOW, ttl=DAY, rng=DeterministicRandom("x"))
    data = encode_commitment(spender.commitment)
    news.accept_commitment(data, now=NOW)
    payment = encode_payment(wallet.reserve("news.example", 2, now=NOW).payment)
    news.receive(payment, units=2, now=NOW)
    assert news.accept_commitment(data, now=NOW).spent == 2
    with pytest.raises(InvalidPayment):
        news.receive(payment, units=2, now=NOW)


def test_vendor_refuses_commitments_for_others_and_unknown_paywords() -> None:
    _, wallet, news, music = parties()
    spender = wallet.open(
        "music.example", length=10, now=NOW, ttl=DAY, rng=DeterministicRandom("y")
    )
    with pytest.raises(InvalidPayment):
        news.accept_commitment(encode_commitment(spender.commitment), now=NOW)
    payment = encode_payment(wallet.reserve("music.example", 1, now=NOW).payment)
    with pytest.raises(InvalidPayment):
        news.receive(payment, units=1, now=NOW)
    with pytest.raises(CardExhausted):
        wallet.reserve("nobody.example", 1, now=NOW)
    with pytest.raises(LocalProtocolError):
        music.redemption(bytes(32))
    assert wallet.spender("music.example") is spender
    assert music.state(spender.commitment_id) is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4), max_size=15), st.integers(0, 3))
def test_redeemed_total_equals_units_spent(prices_paid: list[int], redeem_every: int) -> None:
    broker, wallet, news, _ = parties()
    spender = wallet.open("news.example", length=30, now=NOW, ttl=DAY, rng=DeterministicRandom("z"))
    broker.admit(encode_commitment(spender.commitment), vendor_id="news.example", now=NOW)
    news.accept_commitment(encode_commitment(spender.commitment), now=NOW)
    credited = 0
    for count, units in enumerate(prices_paid, start=1):
        if units > spender.remaining:
            with pytest.raises(CardExhausted):
                wallet.reserve("news.example", units, now=NOW)
            continue
        payment = encode_payment(wallet.reserve("news.example", units, now=NOW).payment)
        news.receive(payment, units=units, now=NOW)
        if redeem_every and count % redeem_every == 0:
            claim = encode_redemption(news.redemption(spender.commitment_id))
            credited += broker.redeem(claim, vendor_id="news.example", now=NOW).credited_units
    if spender.spent:
        claim = encode_redemption(news.redemption(spender.commitment_id))
        credited += broker.redeem(claim, vendor_id="news.example", now=NOW).credited_units
    assert credited == spender.spent == sum(p for p in prices_paid if p) - skipped(prices_paid)
    assert broker.vendor_credit("news.example", "EUR") == credited * 1000


def skipped(prices_paid: list[int]) -> int:
    """Units the wallet refused because the 30-unit chain had too few left."""
    spent = 0
    refused = 0
    for units in prices_paid:
        if spent + units > 30:
            refused += units
        else:
            spent += units
    return refused


# --- the broker caps a user's open commitments, not only each one -----------------------


def admit(
    commitment: Commitment, admitted: list[OpenCommitment], *, now: int = NOW
) -> OpenCommitment:
    return admit_commitment(
        BROKER_PUBLIC,
        commitment,
        vendor_id=commitment.vendor_id,
        open_commitments=admitted,
        now=now,
    )


def test_the_broker_caps_the_sum_of_a_users_commitments_across_vendors() -> None:
    # credit limit 1000 units: each 400-unit commitment fits alone, three do not together.
    admitted: list[OpenCommitment] = []
    for vendor in ("a.example", "b.example"):
        admitted.append(admit(make_commitment(vendor_id=vendor, length=400), admitted))
    third = make_commitment(vendor_id="c.example", length=400)
    accept(third, vendor_id="c.example")  # the per-commitment check alone lets it through
    with pytest.raises(InsufficientFunds) as refused:
        admit(third, admitted)
    assert code_of(refused) is ErrorCode.CREDIT_LIMIT
    assert sum(c.outstanding_micros(now=NOW) for c in admitted) == 800 * 1000
    admit(make_commitment(vendor_id="c.example", length=200), admitted)  # exactly the limit


def test_redeemed_and_closed_commitments_free_the_credit() -> None:
    first = admit(make_commitment(vendor_id="a.example", length=1000), [])
    second = make_commitment(vendor_id="b.example", length=300)
    with pytest.raises(InsufficientFunds):
        admit(second, [first])
    # Redeemed units are the user's debt, billed through the ledger: only what vendors may
    # still claim counts as open.
    partly = replace(first, redeemed=299)
    assert partly.outstanding_micros(now=NOW) == 701 * 1000
    with pytest.raises(InsufficientFunds):
        admit(second, [partly])
    admit(second, [replace(first, redeemed=300)])
    closed = first.expires_at + DEFAULT_REDEEM_WINDOW  # no vendor can redeem any more
    assert first.outstanding_micros(now=closed) == 0


def test_admitting_is_idempotent_and_checks_the_commitment() -> None:
    commitment = make_commitment(length=1000)
    once = admit(commitment, [])
    assert admit(commitment, [once]) == once  # not counted twice
    with pytest.raises(InvalidPayment):
        admit_commitment(BROKER_PUBLIC, commitment, vendor_id="other", open_commitments=[], now=NOW)
    with pytest.raises(PaymentExpired):
        admit(commitment, [], now=commitment.expires_at)


def test_the_broker_pays_only_for_commitments_it_admitted() -> None:
    commitment = make_commitment(length=10)
    redemption = Redemption(commitment=commitment, index=3, value=chain_walk(CHAIN_TAG, SEED, 7))
    with pytest.raises(InvalidPayment) as refused:
        require_admitted(None, redemption)
    assert code_of(refused) is ErrorCode.DEPOSIT_INVALID
    other = admit(make_commitment(vendor_id="b.example", length=10), [])
    with pytest.raises(InvalidPayment):
        require_admitted(other, redemption)
    require_admitted(admit(commitment, []), redemption)
