from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core import shortcode
from farthing.core.cardcode import Generator, from_compact, from_text, to_compact, to_text
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
from farthing.core.money import Denomination
from farthing.core.prbg import (
    HmacCounterPrbg,
    bbs_block,
    bbs_read,
    bbs_seed,
    blum_modulus_of_any_size,
    generate_blum_modulus,
)
from farthing.core.primitives import hkdf_sha256
from farthing.core.schemes.szm_prbg import (
    METHOD,
    PAYMENT_DOMAIN,
    STREAM_DOMAIN,
    Payment,
    PrbgAccepted,
    PrbgCard,
    PrbgCardState,
    card_from_code,
    card_payment_key,
    card_secret,
    decode_payment,
    encode_payment,
    issue_card,
    issuer_payment_key,
    new_card,
    next_payment,
    stream_block,
    to_card_code,
    verify_payment,
    verify_payment_bytes,
)
from farthing.core.sealing import open_sealed, seal
from farthing.testing import DeterministicRandom
from farthing.testing.szm import PrbgVerifier

MASTER = DeterministicRandom("test/szm-prbg/master")(32)
BBS_KEY = generate_blum_modulus(2048, DeterministicRandom("test/szm-prbg/bbs-2048"))
EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
NO_CARDS: dict[bytes, None] = {}
EXPIRES = NOW + 3600
GENERATORS = [Generator.HMAC_CTR, Generator.BBS]


def fresh(
    generator: Generator, units: int = 20, seed: str = "card"
) -> tuple[PrbgCardState, PrbgCard]:
    rng = DeterministicRandom(f"test/szm-prbg/{generator.value}/{seed}")
    return issue_card(
        MASTER,
        rng,
        units=units,
        denomination=EUR,
        expires_at=EXPIRES,
        generator=generator,
        bbs=BBS_KEY.public,
    )


def setup(generator: Generator, units: int = 20) -> tuple[PrbgVerifier, PrbgCard]:
    state, card = fresh(generator, units)
    verifier = PrbgVerifier(MASTER, bbs_key=BBS_KEY)
    verifier.add(state)
    return verifier, card


# --- the stream and its derivations --------------------------------------------------------


def test_card_secret_is_derived_from_the_short_secret() -> None:
    card_id = bytes(range(16))
    message = Writer("farthing/szm-prbg/card-secret").bytes(card_id).finish()
    short = shortcode.short_secret(MASTER, card_id)
    assert card_secret(MASTER, card_id) == hkdf_sha256(short.ikm, info=message)
    with pytest.raises(ValueError):
        card_secret(MASTER[:16], card_id)


def test_tokens_and_keys_alternate_in_the_stream() -> None:
    _, card = fresh(Generator.HMAC_CTR)
    stream = HmacCounterPrbg(card.secret, domain=STREAM_DOMAIN)
    card2, payment, key = next_payment(card, 1, now=NOW)
    assert (payment.token, key) == (stream.block(0), stream.block(1))
    _, payment3, key3 = next_payment(card2, 2, now=NOW)
    assert (payment3.token, key3) == (stream.block(4), stream.block(5))


def test_bbs_card_walks_where_the_issuer_jumps() -> None:
    _, card = fresh(Generator.BBS)
    assert card.modulus == BBS_KEY.public
    x0 = bbs_seed(BBS_KEY.public, card.secret)
    assert card.bbs_x == x0
    stream, _ = bbs_read(BBS_KEY.public, x0, 32 * 12)
    for units in (1, 2, 3):
        card, payment, key = next_payment(card, units, now=NOW)
        t_block, k_block = 2 * (payment.index - 1), 2 * payment.index - 1
        assert payment.token == stream[32 * t_block : 32 * t_block + 32]
        assert key == stream[32 * k_block : 32 * k_block + 32]
        assert payment.token == bbs_block(BBS_KEY, x0, t_block)
        assert payment.token == stream_block(Generator.BBS, card.secret, t_block, bbs_key=BBS_KEY)


@pytest.mark.parametrize("generator", GENERATORS)
def test_issuer_state_holds_no_secret(generator: Generator) -> None:
    state, card = fresh(generator)
    assert {f.name for f in fields(PrbgCardState)} == {
        "card_id",
        "spent",
        "units",
        "generator",
        "denomination",
        "expires_at",
        "last_request",  # a digest of the paid request, for retries
        "last_units",
    }
    assert card.secret == card_secret(MASTER, state.card_id)


@pytest.mark.parametrize("generator", GENERATORS)
def test_card_code_round_trip(generator: Generator) -> None:
    _, card = fresh(generator)
    code = to_card_code(card, realm="news.example")
    assert card_from_code(from_text(to_text(code))) == card
    assert card_from_code(from_compact(to_compact(code))) == card
    assert (code.modulus != b"") == (generator is Generator.BBS)
    with pytest.raises(ValueError):
        to_card_code(replace(card, spent=1), realm="news.example")


@pytest.mark.parametrize("bits", [128, 1024, 2047])
def test_bbs_card_needs_a_2048_bit_modulus(bits: int) -> None:
    small = blum_modulus_of_any_size(bits, DeterministicRandom("small")).public
    with pytest.raises(ValueError, match="2048"):
        new_card(
            bytes(16),
            bytes(32),
            units=1,
            generator=Generator.BBS,
            denomination=EUR,
            expires_at=EXPIRES,
            modulus=small,
        )
    with pytest.raises(ValueError):
        PrbgCard(
            card_id=bytes(16),
            secret=bytes(32),
            units=1,
            spent=0,
            generator=Generator.BBS,
            denomination=EUR,
            expires_at=EXPIRES,
        )


# --- paying --------------------------------------------------------------------------------


@pytest.mark.parametrize("generator", GENERATORS)
def test_payments_and_keys_agree(generator: Generator) -> None:
    verifier, card = setup(generator)
    keys = {}
    for units in [1, 1, 4, 2, 12]:
        card, payment, key = next_payment(card, units, now=NOW)
        receipt = verifier.verify(payment, units=units, now=NOW)
        assert (receipt.index, receipt.units) == (card.spent, units)
        assert key == verifier.payment_key(card.card_id, payment.index)
        keys[payment.index] = key
    assert card.remaining == 0
    assert len(set(keys.values())) == len(keys)
    for index, key in keys.items():
        assert card_payment_key(card, index) == key
    with pytest.raises(CardExhausted):
        next_payment(card, 1, now=NOW)


@pytest.mark.parametrize("generator", GENERATORS)
def test_replay_stale_and_out_of_order_refused(generator: Generator) -> None:
    verifier, card = setup(generator)
    card1, first, _ = next_payment(card, 1, now=NOW)
    _, third, _ = next_payment(card1, 2, now=NOW)
    verifier.verify(third, units=3, now=NOW)
    for stale in (first, third):
        with pytest.raises(InvalidPayment) as info:
            verifier.verify(stale, units=1, now=NOW)
        assert info.value.code is ErrorCode.PAYMENT_INVALID


@pytest.mark.parametrize("generator", GENERATORS)
def test_forgeries_refused(generator: Generator) -> None:
    verifier, card = setup(generator)
    _, payment, key = next_payment(card, 1, now=NOW)
    other_state, other_card = fresh(generator, seed="other")
    _, theirs, _ = next_payment(other_card, 1, now=NOW)
    forgeries = [
        replace(payment, token=bytes(32)),
        replace(payment, token=key),  # the key block is not a token
        replace(payment, token=theirs.token),
        theirs,  # an unknown card
    ]
    for bad in forgeries:
        with pytest.raises(InvalidPayment):
            verifier.verify(bad, units=1, now=NOW)
    with pytest.raises(InvalidPayment):
        verify_payment(other_state, payment, master_key=MASTER, units=1, now=NOW, bbs_key=BBS_KEY)
    with pytest.raises(InvalidPayment):  # another issuer's master key
        verify_payment(
            fresh(generator)[0], payment, master_key=bytes(32), units=1, now=NOW, bbs_key=BBS_KEY
        )
    verifier.add(other_state)
    assert verifier.verify(theirs, units=1, now=NOW).card_id == other_card.card_id
    with pytest.raises(Conflict):
        verifier.add(other_state)


def test_bbs_needs_the_issuers_key() -> None:
    state, card = fresh(Generator.BBS)
    _, payment, _ = next_payment(card, 1, now=NOW)
    with pytest.raises(LocalProtocolError):
        verify_payment(state, payment, master_key=MASTER, units=1, now=NOW)
    other_key = generate_blum_modulus(2048, DeterministicRandom("another issuer"))
    with pytest.raises(InvalidPayment):
        verify_payment(state, payment, master_key=MASTER, units=1, now=NOW, bbs_key=other_key)


@pytest.mark.parametrize("generator", GENERATORS)
def test_amount_and_expiry_checks(generator: Generator) -> None:
    verifier, card = setup(generator)
    _, payment, _ = next_payment(card, 3, now=NOW)
    for wrong in (4, 5):
        with pytest.raises(InsufficientFunds) as info:
            verifier.verify(payment, units=wrong, now=NOW)
        assert info.value.code is ErrorCode.AMOUNT_MISMATCH
    beyond = Payment(card_id=card.card_id, index=21, token=bytes(32))
    with pytest.raises(InsufficientFunds) as info:
        verifier.verify(beyond, units=21, now=NOW)
    assert info.value.code is ErrorCode.INSUFFICIENT_FUNDS
    with pytest.raises(PaymentExpired) as info_expired:
        verifier.verify(payment, units=3, now=EXPIRES)
    assert info_expired.value.code is ErrorCode.CARD_EXPIRED
    with pytest.raises(PaymentExpired):
        next_payment(card, 1, now=EXPIRES)
    with pytest.raises(ValueError):
        verifier.verify(payment, units=0, now=NOW)
    assert verifier.verify(payment, units=3, now=NOW).units == 3


def test_receipts_cannot_be_forged() -> None:
    with pytest.raises(LocalProtocolError):
        PrbgAccepted(card_id=bytes(16), index=1, units=1)
    with pytest.raises(LocalProtocolError):
        PrbgAccepted(bytes(16), 1, 1, object())


def test_receipts_are_immutable_values() -> None:
    state, card = fresh(Generator.HMAC_CTR)
    _, payment, _ = next_payment(card, 2, now=NOW)
    _, receipt = verify_payment(state, payment, master_key=MASTER, units=2, now=NOW)
    _, same = verify_payment(state, payment, master_key=MASTER, units=1, now=NOW)
    assert (receipt.card_id, receipt.index, receipt.units) == (card.card_id, 2, 2)
    assert receipt == same
    assert hash(receipt) == hash(same)
    _, three, _ = next_payment(card, 3, now=NOW)
    assert receipt != verify_payment(state, three, master_key=MASTER, units=3, now=NOW)[1]
    assert receipt != (card.card_id, 2, 2)
    assert repr(receipt) == f"PrbgAccepted(card_id={card.card_id!r}, index=2, units=2)"
    with pytest.raises(AttributeError):
        receipt.units = 5  # type: ignore[misc]


@pytest.mark.parametrize("generator", GENERATORS)
def test_payment_after_a_lost_one_covers_the_gap(generator: Generator) -> None:
    verifier, card = setup(generator)
    card, first, _ = next_payment(card, 2, now=NOW)
    verifier.verify(first, units=2, now=NOW)
    card, _lost, _ = next_payment(card, 3, now=NOW)  # never reaches the issuer
    card, again, key = next_payment(card, 1, now=NOW)
    accepted = verifier.verify(again, units=1, now=NOW)
    assert (accepted.index, accepted.units) == (6, 4)
    assert key == verifier.payment_key(card.card_id, 6)


@pytest.mark.parametrize("generator", GENERATORS)
def test_gap_beyond_the_hashing_bound_is_refused(generator: Generator) -> None:
    verifier, card = setup(generator)
    card, _lost, _ = next_payment(card, 5, now=NOW)
    card, payment, _ = next_payment(card, 1, now=NOW)
    with pytest.raises(InvalidPayment):
        verify_payment(
            verifier.state(card.card_id),  # type: ignore[arg-type]
            payment,
            master_key=MASTER,
            units=1,
            now=NOW,
            max_units=3,
        )


# --- wire encoding -------------------------------------------------------------------------

payments = st.builds(
    Payment,
    card_id=st.binary(min_size=16, max_size=16),
    index=st.integers(0, 2**64 - 1),
    token=st.binary(min_size=32, max_size=32),
)


@given(payments)
def test_encoding_round_trips(payment: Payment) -> None:
    raw = encode_payment(payment)
    assert decode_payment(raw) == payment
    expected = Writer(PAYMENT_DOMAIN).bytes(payment.card_id).u64(payment.index)
    assert raw == expected.bytes(payment.token).finish()


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
    payment = Payment(card_id=card_id, index=index, token=reader.bytes(exact=32))
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


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(GENERATORS), st.data())
def test_any_bit_flip_is_refused(generator: Generator, data: st.DataObject) -> None:
    verifier, card = setup(generator, units=8)
    _, payment, _ = next_payment(card, 2, now=NOW)
    raw = bytearray(encode_payment(payment))
    bit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((MalformedMessage, InvalidPayment, InsufficientFunds)):
        verifier.verify_bytes(bytes(raw), units=2, now=NOW)
    assert verifier.state(card.card_id) == fresh(generator, units=8)[0]
    assert verifier.verify_bytes(encode_payment(payment), units=2, now=NOW).index == 2


def test_verify_from_bytes_looks_up_the_card() -> None:
    state, card = fresh(Generator.HMAC_CTR)
    _, payment, _ = next_payment(card, 2, now=NOW)
    raw = encode_payment(payment)
    new_state, receipt = verify_payment_bytes(
        {state.card_id: state}.get, raw, master_key=MASTER, units=2, now=NOW
    )
    assert (new_state.spent, receipt.units) == (2, 2)
    with pytest.raises(InvalidPayment):
        verify_payment_bytes(NO_CARDS.get, raw, master_key=MASTER, units=2, now=NOW)


# --- the state machine -----------------------------------------------------------------------

actions = st.lists(
    st.tuples(st.sampled_from(["pay", "replay", "wrong-price"]), st.integers(1, 6)),
    max_size=20,
)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(GENERATORS), actions)
def test_accepted_units_add_up_and_never_exceed_the_card(
    generator: Generator, plan: list[tuple[str, int]]
) -> None:
    verifier, card = setup(generator, units=15)
    accepted = 0
    last: Payment | None = None
    for action, units in plan:
        if action == "replay" and last is not None:
            with pytest.raises(InvalidPayment):
                verifier.verify(last, units=units, now=NOW)
            continue
        if units > card.remaining:
            with pytest.raises(CardExhausted):
                next_payment(card, units, now=NOW)
            continue
        new_card, payment, _ = next_payment(card, units, now=NOW)
        if action == "wrong-price":
            state = verifier.state(card.card_id)
            assert state is not None
            with pytest.raises(InsufficientFunds):  # asks one more than the payment covers
                verifier.verify(payment, units=payment.index - state.spent + 1, now=NOW)
            card = new_card  # the next payment covers the gap
            continue
        accepted += verifier.verify(payment, units=units, now=NOW).units
        last = payment
        card = new_card
    state = verifier.state(card.card_id)
    assert state is not None
    assert accepted == state.spent <= state.units


# --- key distribution ----------------------------------------------------------------------


@pytest.mark.parametrize("generator", GENERATORS)
def test_sealed_body_opens_only_with_its_own_payment_key(generator: Generator) -> None:
    verifier, card = setup(generator)
    card, first, key1 = next_payment(card, 1, now=NOW)
    card, second, key2 = next_payment(card, 2, now=NOW)
    verifier.verify(first, units=1, now=NOW)
    verifier.verify(second, units=2, now=NOW)
    state = verifier.state(card.card_id)
    assert state is not None
    issuer_key = issuer_payment_key(MASTER, state, second.index, bbs_key=BBS_KEY)
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
    for wrong_key in (key1, second.token, first.token):
        with pytest.raises(InvalidPayment):
            open_with(wrong_key)
    with pytest.raises(InvalidPayment):
        open_with(key2, "/b")


def test_payment_key_index_bounds() -> None:
    state, card = fresh(Generator.HMAC_CTR)
    for index in (0, 21):
        with pytest.raises(ValueError):
            card_payment_key(card, index)
        with pytest.raises(ValueError):
            issuer_payment_key(MASTER, state, index)


@pytest.mark.parametrize("generator", GENERATORS)
def test_a_kept_card_secret_verifies_as_the_derived_one(generator: Generator) -> None:
    """A verifier may keep a card's secret (the vendor does); the rules do not change:
    the kept secret gives the same state, receipt and key, and a wrong one verifies
    nothing."""
    state, card = fresh(generator, 10)
    kept = card_secret(MASTER, state.card_id)
    card, payment, key = next_payment(card, 2, now=NOW)
    derived = verify_payment(state, payment, master_key=MASTER, units=2, now=NOW, bbs_key=BBS_KEY)
    given_secret = verify_payment(
        state, payment, master_key=MASTER, units=2, now=NOW, bbs_key=BBS_KEY, secret=kept
    )
    from_bytes = verify_payment_bytes(
        {state.card_id: state}.get, encode_payment(payment), master_key=MASTER, units=2,
        now=NOW, bbs_key=BBS_KEY, secrets={state.card_id: kept}.__getitem__,
    )  # fmt: skip
    assert derived == given_secret == from_bytes
    assert issuer_payment_key(MASTER, state, payment.index, bbs_key=BBS_KEY, secret=kept) == key
    wrong = bytes(32)
    with pytest.raises(InvalidPayment):
        verify_payment(
            state, payment, master_key=MASTER, units=2, now=NOW, bbs_key=BBS_KEY, secret=wrong
        )
