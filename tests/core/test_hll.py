"""HLL: encodings, the card, the bank, the merchant and deposits (properties and cases)."""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from farthing.core.encoding import Writer
from farthing.core.errors import (
    CardExhausted,
    CardLocked,
    Conflict,
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    NotFound,
    PaymentExpired,
    UnsupportedMethod,
    WrongPin,
)
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key, hmac_sha256
from farthing.core.schemes import hll
from farthing.core.schemes.hll import (
    MAX_PIN_TRIES,
    CardState,
    DeferredDecision,
    DeferredRisk,
    DepositBatch,
    DepositItem,
    DepositReport,
    Offer,
    Purchase,
    SoftwareCardKey,
    VerifiedPurchase,
    authorize_purchase,
    batch_tag,
    card_certification_key,
    card_certification_public_key,
    complete_purchase,
    decide_deferred,
    decode_batch,
    decode_card_certificate,
    decode_offer,
    decode_payment,
    decode_report,
    derive_card_key,
    encode_batch,
    encode_card_certificate,
    encode_offer,
    encode_payment,
    encode_report,
    issue_card_certificate,
    make_offer,
    new_card_id,
    new_merchant_key,
    purchase_message,
    verify_batch_tag,
    verify_card_certificate,
    verify_purchase,
    verify_purchase_bytes,
    verify_received_batch_tag,
)
from farthing.testing import DeterministicRandom
from farthing.testing.hll import HllBank, HllMerchant, SoftwareCard

NOW = 1_800_000_000
EUR = Denomination(currency="EUR", unit_micros=1000)
USD = Denomination(currency="USD", unit_micros=1000)
MASTER = bytes(range(32))
MERCHANT = "news.example"
OTHER = "shop.example"
PIN = "2468"
U64_MAX = 2**64 - 1


# --- helpers ------------------------------------------------------------------------------


def key_of(card_id: bytes) -> bytes:
    return derive_card_key(MASTER, card_id)


def offer_for(
    rng: DeterministicRandom,
    amount: int = 3,
    *,
    good: str = "/articles/1",
    merchant_id: str = MERCHANT,
    denomination: Denomination = EUR,
) -> Offer:
    return make_offer(
        merchant_id=merchant_id,
        good=good,
        amount=amount,
        denomination=denomination,
        rng=rng,
        now=NOW,
        ttl=300,
    )


def new_card(rng: DeterministicRandom, balance: int = 100) -> SoftwareCard:
    card_id = new_card_id(rng)
    state = CardState(card_id=card_id, denomination=EUR, balance=balance)
    card = SoftwareCard(key=SoftwareCardKey(key_of(card_id)), state=state, pin=PIN)
    card.verify_pin(PIN)
    return card


def forged(card_id: bytes, offer: Offer, counter: int) -> Purchase:
    """What a holder of K_C (a broken card, or the bank) can make for any counter."""
    sigma = hmac_sha256(key_of(card_id), purchase_message(card_id, offer, counter))
    return Purchase(card_id=card_id, counter=counter, sigma=sigma)


CERT_KEY = b"C" * 32  # the bank's card-certification key in these tests


@dataclass
class World:
    rng: DeterministicRandom
    bank: HllBank
    merchant: HllMerchant
    merchant_key: bytes
    certificates: dict[bytes, bytes] = field(default_factory=dict)

    def card(self, balance: int = 100, loaded: int | None = None) -> SoftwareCard:
        card = new_card(self.rng, balance)
        card_id = card.state.card_id
        self.bank.register_card(card_id, key_of(card_id), balance if loaded is None else loaded)
        self.certificates[card_id] = self.bank.certify(card_id, NOW + 86_400)
        return card

    def cert(self, purchase: Purchase) -> bytes | None:
        return self.certificates.get(purchase.card_id)

    def offer(self, amount: int = 3, good: str = "/articles/1") -> Offer:
        return self.merchant.offer(good=good, amount=amount, denomination=EUR, now=NOW)

    def deposit(self, batch: DepositBatch, now: int = NOW) -> DepositReport:
        return self.bank.deposit(batch, batch_tag(self.merchant_key, batch), now)


def world(seed: str = "world", risk_limit: int = 1000, merchant_cap: int = 10**6) -> World:
    rng = DeterministicRandom(seed)
    bank = HllBank(denomination=EUR, certification_key=CERT_KEY)
    merchant_key = new_merchant_key(rng)
    bank.register_merchant(MERCHANT, merchant_key)
    bank.register_merchant(OTHER, new_merchant_key(rng))
    merchant = HllMerchant(
        merchant_id=MERCHANT,
        merchant_key=merchant_key,
        rng=rng,
        risk=DeferredRisk(limit=risk_limit, merchant_cap=merchant_cap),
        bank_public_key=ed25519_public_key(CERT_KEY),
    )
    return World(rng=rng, bank=bank, merchant=merchant, merchant_key=merchant_key)


def batch_of(
    rng: DeterministicRandom, items: list[DepositItem], merchant_id: str = MERCHANT
) -> DepositBatch:
    return DepositBatch(batch_id=rng(16), merchant_id=merchant_id, items=tuple(items))


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    """('ok', value) or (error class name, code name), so two paths can be compared."""
    try:
        return "ok", call()
    except FarthingError as error:
        return type(error).__name__, error.code.name


# --- strategies ---------------------------------------------------------------------------


def canonical_text(max_bytes: int) -> st.SearchStrategy[str]:
    return (
        st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=24)
        .map(lambda s: unicodedata.normalize("NFC", s))
        .filter(lambda s: 0 < len(s.encode()) <= max_bytes)
    )


denominations = st.builds(
    Denomination, currency=st.from_regex(r"\A[A-Z]{3}\Z"), unit_micros=st.integers(1, 10**12)
)
offers = st.builds(
    Offer,
    merchant_id=canonical_text(64),
    good=canonical_text(512),
    amount=st.integers(1, U64_MAX),
    denomination=denominations,
    challenge=st.binary(min_size=16, max_size=64),
    expires_at=st.integers(NOW + 1, U64_MAX),
)
card_ids = st.binary(min_size=16, max_size=16)
counters = st.integers(1, U64_MAX)


# --- encodings ----------------------------------------------------------------------------


@given(offers)
def test_offer_round_trip(offer: Offer) -> None:
    assert decode_offer(encode_offer(offer)) == offer


@given(card_ids, st.integers(0, U64_MAX), st.binary(min_size=32, max_size=32))
def test_payment_round_trip(card_id: bytes, counter: int, sigma: bytes) -> None:
    purchase = Purchase(card_id=card_id, counter=counter, sigma=sigma)
    assert decode_payment(encode_payment(purchase)) == purchase


@settings(max_examples=30)
@given(
    st.binary(min_size=16, max_size=16),
    canonical_text(64),
    st.lists(st.tuples(offers, card_ids, counters), max_size=4),
)
def test_batch_round_trip(
    batch_id: bytes, merchant_id: str, entries: list[tuple[Offer, bytes, int]]
) -> None:
    items = tuple(
        DepositItem(offer=o, purchase=Purchase(card_id=c, counter=n, sigma=bytes(32)))
        for o, c, n in entries
    )
    batch = DepositBatch(batch_id=batch_id, merchant_id=merchant_id, items=items)
    assert decode_batch(encode_batch(batch)) == batch


@given(
    st.binary(min_size=16, max_size=16),
    st.lists(st.tuples(card_ids, counters, st.integers(1, 10**6)), max_size=5),
    st.lists(st.tuples(card_ids, counters), max_size=5),
    st.lists(st.tuples(card_ids, counters), max_size=5),
)
def test_report_round_trip(
    batch_id: bytes,
    accepted: list[tuple[bytes, int, int]],
    duplicates: list[tuple[bytes, int]],
    invalid: list[tuple[bytes, int]],
) -> None:
    report = DepositReport(
        batch_id=batch_id,
        accepted=tuple(accepted),
        duplicates=tuple(duplicates),
        invalid=tuple(invalid),
        credited=sum(a for _, _, a in accepted),
    )
    assert decode_report(encode_report(report)) == report


@given(card_ids, offers, st.integers(0, U64_MAX))
def test_purchase_message_is_the_canonical_encoding(
    card_id: bytes, offer: Offer, counter: int
) -> None:
    canonical = (
        Writer(hll.DOMAIN_PURCHASE)
        .bytes(card_id)
        .text(offer.merchant_id)
        .text(offer.good)
        .u64(offer.amount)
        .text(offer.denomination.currency)
        .u64(offer.denomination.unit_micros)
        .bytes(offer.challenge)
        .u64(counter)
        .u64(offer.expires_at)
        .finish()
    )
    assert purchase_message(card_id, offer, counter) == canonical


def test_purchase_message_refuses_bad_arguments() -> None:
    offer = offer_for(DeterministicRandom("pm"))
    with pytest.raises(ValueError):
        purchase_message(bytes(15), offer, 1)
    with pytest.raises(ValueError):
        purchase_message(bytes(16), offer, 2**64)


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("merchant_id", ""),
        ("merchant_id", "m" * 65),
        ("merchant_id", "e\u0301"),  # not NFC
        ("good", "a\x00b"),
        ("good", "g" * 513),
        ("good", "\ud800"),  # lone surrogate
        ("amount", 0),
        ("amount", 2**64),
        ("amount", True),
        ("challenge", bytes(15)),
        ("challenge", bytes(65)),
        ("expires_at", -1),
    ],
)
def test_offer_refuses_bad_fields(change: str, value: Any) -> None:
    base = offer_for(DeterministicRandom("bad"))
    with pytest.raises(MalformedMessage) as info:
        replace(base, **{change: value})
    assert info.value.code is ErrorCode.BAD_FIELD


def test_decode_offer_refuses_a_short_challenge() -> None:
    raw = (
        Writer(hll.DOMAIN_OFFER)
        .text(MERCHANT)
        .text("/a")
        .u64(1)
        .text("EUR")
        .u64(1000)
        .bytes(bytes(15))
        .u64(NOW)
        .finish()
    )
    with pytest.raises(MalformedMessage):
        decode_offer(raw)


def test_make_offer() -> None:
    rng = DeterministicRandom("mk")
    offer = offer_for(rng)
    assert len(offer.challenge) == hll.DEFAULT_CHALLENGE_LEN
    assert offer.expires_at == NOW + 300
    assert offer_for(rng).challenge != offer.challenge
    given_id = bytes(range(40))
    offer = make_offer(
        merchant_id=MERCHANT,
        good="/x",
        amount=1,
        denomination=EUR,
        rng=rng,
        now=NOW,
        ttl=1,
        challenge=given_id,
    )
    assert offer.challenge == given_id
    with pytest.raises(ValueError):
        make_offer(
            merchant_id=MERCHANT, good="/x", amount=1, denomination=EUR, rng=rng, now=NOW, ttl=0
        )


# --- keys ---------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32), card_ids, card_ids)
def test_card_key_derivation(master: bytes, card_id: bytes, other_id: bytes) -> None:
    key = derive_card_key(master, card_id)
    expected = hmac_sha256(master, Writer(hll.DOMAIN_CARD_KEY).bytes(card_id).finish())
    assert key == expected
    assert len(key) == 32
    assert (derive_card_key(master, other_id) == key) == (other_id == card_id)


def test_key_helpers_check_lengths() -> None:
    with pytest.raises(ValueError):
        derive_card_key(bytes(31), bytes(16))
    with pytest.raises(ValueError):
        derive_card_key(bytes(32), bytes(17))
    rng = DeterministicRandom("keys")
    assert len(new_merchant_key(rng)) == 32
    assert len(new_card_id(rng)) == 16
    with pytest.raises(ValueError):
        new_merchant_key(lambda n: bytes(n - 1))
    with pytest.raises(ValueError):
        SoftwareCardKey(bytes(31))
    assert "secret" in repr(SoftwareCardKey(bytes(32)))
    assert bytes(32).hex() not in repr(SoftwareCardKey(bytes(32)))


# --- the card -----------------------------------------------------------------------------


def test_card_refusals_leave_the_state_alone() -> None:
    rng = DeterministicRandom("refuse")
    card = new_card(rng, balance=5)
    before = card.state
    usd = Denomination(currency="USD", unit_micros=1000)
    cases: list[tuple[Offer, int, type[FarthingError], ErrorCode]] = [
        (offer_for(rng, 6), NOW, CardExhausted, ErrorCode.CARD_EXHAUSTED),
        (offer_for(rng, 1), NOW + 300, PaymentExpired, ErrorCode.CHALLENGE_EXPIRED),
        (offer_for(rng, 1, denomination=usd), NOW, UnsupportedMethod, ErrorCode.UNSUPPORTED_METHOD),
        (
            offer_for(rng, 1, denomination=Denomination(currency="EUR", unit_micros=10)),
            NOW,
            UnsupportedMethod,
            ErrorCode.UNSUPPORTED_METHOD,
        ),
    ]
    for offer, now, error, code in cases:
        with pytest.raises(error) as info:
            card.purchase(offer, now)
        assert info.value.code is code
        assert card.state == before
    card.purchase(offer_for(rng, 5), NOW + 299)  # the whole balance, in the last second
    assert card.state.balance == 0


def test_card_refuses_a_non_positive_amount_from_its_host() -> None:
    offer = offer_for(DeterministicRandom("zero"))
    object.__setattr__(offer, "amount", 0)  # an Offer cannot hold it; a hostile host might
    state = CardState(card_id=bytes(16), denomination=EUR, balance=10)
    with pytest.raises(MalformedMessage):
        authorize_purchase(state, offer, NOW)


def test_card_counter_can_be_used_up() -> None:
    state = CardState(card_id=bytes(16), denomination=EUR, balance=10, counter=U64_MAX)
    with pytest.raises(CardExhausted):
        authorize_purchase(state, offer_for(DeterministicRandom("max")), NOW)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_counter_strictly_increases_and_balance_never_goes_negative(amounts: list[int]) -> None:
    rng = DeterministicRandom("counter")
    card = new_card(rng, balance=100)
    counters = []
    for amount in amounts:
        before = card.state
        try:
            purchase = card.purchase(offer_for(rng, amount), NOW)
        except CardExhausted:
            assert amount > before.balance
            assert card.state == before
            continue
        assert purchase.counter == before.counter + 1 == card.state.counter
        assert card.state.balance == before.balance - amount >= 0
        counters.append(purchase.counter)
    assert counters == sorted(set(counters))


def test_authorize_purchase_is_pure() -> None:
    state = CardState(card_id=bytes(16), denomination=EUR, balance=10)
    offer = offer_for(DeterministicRandom("pure"))
    new_state, message = authorize_purchase(state, offer, NOW)
    assert state == CardState(card_id=bytes(16), denomination=EUR, balance=10)
    assert (new_state.balance, new_state.counter) == (7, 1)
    assert message == purchase_message(bytes(16), offer, 1)
    assert authorize_purchase(state, offer, NOW) == (new_state, message)


def test_complete_purchase_macs_only_that_purchase() -> None:
    rng = DeterministicRandom("oracle")
    offer = offer_for(rng)
    key = SoftwareCardKey(key_of(bytes(16)))
    state = CardState(card_id=bytes(16), denomination=EUR, balance=10)
    new_state, message = authorize_purchase(state, offer, NOW)
    assert new_state.counter == 1
    good = complete_purchase(bytes(16), 1, offer.challenge, key, message)
    assert good.sigma == hmac_sha256(key_of(bytes(16)), message)
    wrong = [
        (bytes(16), 2, offer.challenge, message),
        (b"\x01" * 16, 1, offer.challenge, message),
        (bytes(16), 1, bytes(16), message),
        (bytes(16), 1, offer.challenge, b"anything the host wants MACed"),
        (bytes(16), 1, offer.challenge, message + b"\x00"),
    ]
    for card_id, counter, challenge, msg in wrong:
        with pytest.raises(LocalProtocolError) as info:
            complete_purchase(card_id, counter, challenge, key, msg)
        assert info.value.code is ErrorCode.MISUSE


def test_pin_lockout() -> None:
    rng = DeterministicRandom("pin")
    card_id = new_card_id(rng)
    state = CardState(card_id=card_id, denomination=EUR, balance=10)
    card = SoftwareCard(key=SoftwareCardKey(key_of(card_id)), state=state, pin=PIN)
    with pytest.raises(LocalProtocolError) as info:
        card.purchase(offer_for(rng), NOW)  # no PIN yet
    assert info.value.code is ErrorCode.MISUSE
    for tries_left in (2, 1):
        with pytest.raises(WrongPin) as wrong:
            card.verify_pin("0000")
        assert wrong.value.tries_left == tries_left
        assert card.state.pin_tries_left == tries_left
    card.verify_pin(PIN)  # a right PIN resets the count
    assert card.state.pin_tries_left == MAX_PIN_TRIES
    card.purchase(offer_for(rng), NOW)
    for _ in range(MAX_PIN_TRIES - 1):
        with pytest.raises(WrongPin):
            card.verify_pin("1111")
    with pytest.raises(CardLocked):
        card.verify_pin("1111")
    assert card.state.pin_tries_left == 0
    with pytest.raises(CardLocked):
        card.verify_pin(PIN)  # even the right PIN
    with pytest.raises(CardLocked):
        card.purchase(offer_for(rng), NOW)
    with pytest.raises(CardLocked):
        authorize_purchase(card.state, offer_for(rng), NOW)


def test_wrong_pin_closes_an_open_card() -> None:
    card = new_card(DeterministicRandom("close"))
    with pytest.raises(WrongPin):
        card.verify_pin("9999")
    with pytest.raises(LocalProtocolError):
        card.purchase(offer_for(DeterministicRandom("o")), NOW)


def test_card_state_validation() -> None:
    with pytest.raises(ValueError):
        CardState(card_id=bytes(15), denomination=EUR, balance=1)
    with pytest.raises(ValueError):
        CardState(card_id=bytes(16), denomination=EUR, balance=-1)
    with pytest.raises(ValueError):
        CardState(card_id=bytes(16), denomination=EUR, balance=1, pin_tries_left=4)


# --- verification -------------------------------------------------------------------------


@given(card_ids, offers, counters, st.data())
def test_any_bit_flip_of_the_payment_is_refused(
    card_id: bytes, offer: Offer, counter: int, data: st.DataObject
) -> None:
    payment = encode_payment(forged(card_id, offer, counter))
    keys = {card_id: key_of(card_id)}
    assert verify_purchase_bytes(keys.get, offer, payment, NOW).counter == counter
    bit = data.draw(st.integers(0, len(payment) * 8 - 1))
    flipped = bytearray(payment)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((MalformedMessage, InvalidPayment)):
        verify_purchase_bytes(keys.get, offer, bytes(flipped), NOW)
    with pytest.raises((MalformedMessage, InvalidPayment)):
        verify_purchase(key_of(card_id), offer, decode_payment(bytes(flipped)), NOW)


OFFER_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "merchant_id": canonical_text(64),
    "good": canonical_text(512),
    "amount": st.integers(1, U64_MAX),
    "denomination": denominations,
    "challenge": st.binary(min_size=16, max_size=64),
    "expires_at": st.integers(NOW + 1, U64_MAX),
}


@given(card_ids, offers, counters, st.sampled_from(sorted(OFFER_CHANGES)), st.data())
def test_any_change_of_an_offer_field_is_refused(
    card_id: bytes, offer: Offer, counter: int, name: str, data: st.DataObject
) -> None:
    purchase = forged(card_id, offer, counter)
    new_value: Any = data.draw(OFFER_CHANGES[name])
    assume(new_value != getattr(offer, name))
    changed = replace(offer, **{name: new_value})
    assert verify_purchase(key_of(card_id), offer, purchase, NOW).offer == offer
    with pytest.raises(InvalidPayment) as info:
        verify_purchase(key_of(card_id), changed, purchase, NOW)
    assert info.value.code is ErrorCode.PAYMENT_INVALID


def test_offer_fields_are_all_covered_by_the_change_test() -> None:
    names = {f.name for f in fields(Offer) if not f.name.startswith("_")}
    assert names == set(OFFER_CHANGES)


def _payment_mutations() -> st.SearchStrategy[bytes]:
    payment = encode_payment(forged(bytes(16), offer_for(DeterministicRandom("m")), 1))
    cut = st.integers(0, len(payment)).map(lambda n: payment[:n])
    grow = st.binary(min_size=1, max_size=3).map(lambda b: payment + b)
    splice = st.tuples(st.integers(0, len(payment) - 1), st.integers(0, 255)).map(
        lambda p: payment[: p[0]] + bytes([p[1]]) + payment[p[0] + 1 :]
    )
    return st.one_of(cut, grow, splice, st.binary(max_size=100), st.just(payment))


@given(_payment_mutations())
def test_fast_path_agrees_with_the_reader(raw: bytes) -> None:
    offer = offer_for(DeterministicRandom("m"))
    keys = {bytes(16): key_of(bytes(16))}
    fast = outcome(lambda: verify_purchase_bytes(keys.get, offer, raw, NOW))

    def slow() -> VerifiedPurchase:
        purchase = decode_payment(raw)
        key = keys.get(purchase.card_id)
        if key is None:
            raise InvalidPayment("unknown card")
        return verify_purchase(key, offer, purchase, NOW)

    assert fast == outcome(slow)


def test_fast_path_refuses_non_bytes() -> None:
    offer = offer_for(DeterministicRandom("m"))
    payment = encode_payment(forged(bytes(16), offer, 1))
    with pytest.raises(MalformedMessage):
        verify_purchase_bytes({bytes(16): key_of(bytes(16))}.get, offer, bytearray(payment), NOW)  # type: ignore[arg-type]


def test_verification_refuses_expired_offers_and_counter_zero() -> None:
    offer = offer_for(DeterministicRandom("exp"))
    purchase = forged(bytes(16), offer, 1)
    verify_purchase(key_of(bytes(16)), offer, purchase, offer.expires_at - 1)
    with pytest.raises(PaymentExpired) as info:
        verify_purchase(key_of(bytes(16)), offer, purchase, offer.expires_at)
    assert info.value.code is ErrorCode.CHALLENGE_EXPIRED
    with pytest.raises(InvalidPayment):
        verify_purchase(key_of(bytes(16)), offer, forged(bytes(16), offer, 0), NOW)
    with pytest.raises(InvalidPayment):
        verify_purchase(bytes(16), offer, purchase, NOW)  # a malformed key verifies nothing


def test_key_lookup_by_derivation() -> None:
    rng = DeterministicRandom("derive")
    card = new_card(rng)
    offer = offer_for(rng)
    payment = encode_payment(card.purchase(offer, NOW))
    verified = verify_purchase_bytes(key_of, offer, payment, NOW)
    assert (verified.card_id, verified.counter) == (card.state.card_id, 1)
    assert (verified.merchant_id, verified.amount, verified.good) == (MERCHANT, 3, "/articles/1")
    assert verified.denomination == EUR
    with pytest.raises(InvalidPayment):
        verify_purchase_bytes(lambda _: None, offer, payment, NOW)


def test_verified_purchase_is_only_made_by_the_verifier() -> None:
    offer = offer_for(DeterministicRandom("vp"))
    with pytest.raises(LocalProtocolError):
        VerifiedPurchase(card_id=bytes(16), counter=1, offer=offer)
    with pytest.raises(LocalProtocolError):
        VerifiedPurchase(card_id=bytes(16), counter=1, offer=offer, _token=object())
    with pytest.raises(LocalProtocolError):
        VerifiedPurchase(bytes(16), 1, offer, object())


def test_verified_purchase_is_an_immutable_value() -> None:
    offer = offer_for(DeterministicRandom("vp-value"))
    keys = {bytes(16): key_of(bytes(16))}
    payment = encode_payment(forged(bytes(16), offer, 1))
    verified = verify_purchase_bytes(keys.get, offer, payment, NOW)
    same = verify_purchase_bytes(keys.get, offer, payment, NOW)
    assert (verified.card_id, verified.counter, verified.offer) == (bytes(16), 1, offer)
    assert verified == same
    assert hash(verified) == hash(same)
    other = verify_purchase_bytes(keys.get, offer, encode_payment(forged(bytes(16), offer, 2)), NOW)
    assert verified != other
    assert verified != (bytes(16), 1, offer)
    assert repr(verified) == f"VerifiedPurchase(card_id={bytes(16)!r}, counter=1, offer={offer!r})"
    with pytest.raises(AttributeError):
        verified.counter = 2  # type: ignore[misc]


# --- the bank online ----------------------------------------------------------------------


def test_online_duplicate_and_replay() -> None:
    w = world()
    card = w.card()
    offer = w.offer()
    purchase = card.purchase(offer, NOW)
    assert not w.bank.settle_online(offer, purchase, NOW).repeated
    resent = w.bank.settle_online(offer, purchase, NOW)  # the merchant lost the answer
    assert resent.repeated  # settled before: answered as settled, charged nothing
    assert resent.verified.amount == 3
    with pytest.raises(InvalidPayment):  # the MAC binds the challenge: no moving it
        w.bank.verify_online(w.offer(), purchase, NOW)
    assert w.bank.spent(card.state.card_id) == 3
    assert w.bank.credited(MERCHANT) == 3


@settings(max_examples=40)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=15), st.data())
def test_online_sum_of_payments_equals_spent(amounts: list[int], data: st.DataObject) -> None:
    w = world()
    card = w.card(balance=100)
    paid: list[tuple[Offer, Purchase]] = []
    for amount in amounts:
        offer = w.offer(amount)
        try:
            purchase = card.purchase(offer, NOW)
        except CardExhausted:
            continue
        w.bank.verify_online(offer, purchase, NOW)
        paid.append((offer, purchase))
    card_id = card.state.card_id
    total = sum(offer.amount for offer, _ in paid)
    assert w.bank.spent(card_id) == total == 100 - card.state.balance <= 100
    assert w.bank.credited(MERCHANT) == total
    if paid:
        offer, purchase = data.draw(st.sampled_from(paid))
        assert w.bank.settle_online(offer, purchase, NOW).repeated  # an exact resend
        assert w.bank.spent(card_id) == total
        assert w.bank.credited(MERCHANT) == total


def test_bank_caps_a_card_at_its_loaded_value() -> None:
    w = world()
    card = w.card(balance=100, loaded=10)  # a card claiming more than the bank loaded
    first = w.offer(8)
    w.bank.verify_online(first, card.purchase(first, NOW), NOW)
    second = w.offer(8)
    with pytest.raises(InsufficientFunds) as info:
        w.bank.verify_online(second, card.purchase(second, NOW), NOW)
    assert info.value.code is ErrorCode.INSUFFICIENT_FUNDS
    assert w.bank.spent(card.state.card_id) == 8


def test_online_refusals() -> None:
    w = world()
    card = w.card()
    offer = w.offer()
    purchase = card.purchase(offer, NOW)
    stranger = replace(offer, merchant_id="unknown.example")
    with pytest.raises(NotFound):
        w.bank.verify_online(stranger, forged(card.state.card_id, stranger, 2), NOW)
    with pytest.raises(InvalidPayment):
        w.bank.verify_online(offer, replace(purchase, card_id=bytes(16)), NOW)
    usd = replace(offer, denomination=Denomination(currency="USD", unit_micros=1000))
    with pytest.raises(InvalidPayment):
        w.bank.verify_online(usd, forged(card.state.card_id, usd, 2), NOW)
    with pytest.raises(PaymentExpired):
        w.bank.verify_online(offer, purchase, offer.expires_at)
    assert w.bank.spent(card.state.card_id) == 0
    w.bank.verify_online(offer, purchase, NOW)  # nothing above used the counter up


def test_registration_conflicts_and_checks() -> None:
    w = world()
    w.bank.register_card(bytes(16), bytes(32), 5)
    with pytest.raises(Conflict):
        w.bank.register_card(bytes(16), bytes(32), 5)
    with pytest.raises(Conflict):
        w.bank.register_merchant(MERCHANT, bytes(32))
    with pytest.raises(ValueError):
        w.bank.register_card(bytes(15), bytes(32), 5)
    with pytest.raises(ValueError):
        w.bank.register_merchant("x" * 65, bytes(32))


# --- deposits -----------------------------------------------------------------------------


def deferred_items(w: World, card: SoftwareCard, amounts: list[int]) -> list[DepositItem]:
    items = []
    for amount in amounts:
        offer = w.offer(amount)
        purchase = card.purchase(offer, NOW)
        w.merchant.accept_deferred(offer, purchase, NOW, certificate=w.cert(purchase))
        items.append(DepositItem(offer=offer, purchase=purchase))
    return items


def test_deposit_is_idempotent_and_refuses_reused_batch_ids() -> None:
    w = world()
    card = w.card()
    items = deferred_items(w, card, [3, 4, 5])
    batch = batch_of(w.rng, items)
    report = w.deposit(batch)
    card_id = card.state.card_id
    assert report.accepted == ((card_id, 1, 3), (card_id, 2, 4), (card_id, 3, 5))
    assert (report.duplicates, report.invalid, report.credited) == ((), (), 12)
    assert w.deposit(batch) == report  # resent: same answer, nothing new
    assert w.bank.credited(MERCHANT) == 12 == w.bank.spent(card_id)
    with pytest.raises(Conflict) as info:
        w.deposit(replace(batch, items=batch.items[:1]))
    assert info.value.code is ErrorCode.CONFLICT
    assert w.bank.credited(MERCHANT) == 12


def test_duplicates_within_and_across_batches_and_after_online() -> None:
    w = world()
    card = w.card()
    first, second = deferred_items(w, card, [3, 4])
    report = w.deposit(batch_of(w.rng, [first, first, second]))
    card_id = card.state.card_id
    assert report.duplicates == ((card_id, 1),)
    assert report.credited == 7
    again = w.deposit(batch_of(w.rng, [second]))
    assert (again.accepted, again.duplicates, again.credited) == ((), ((card_id, 2),), 0)
    online_offer = w.offer(2)
    online = card.purchase(online_offer, NOW)
    w.bank.verify_online(online_offer, online, NOW)
    late = w.deposit(batch_of(w.rng, [DepositItem(offer=online_offer, purchase=online)]))
    assert late.duplicates == ((card_id, 3),)
    assert w.bank.credited(MERCHANT) == 9 == w.bank.spent(card_id)


def test_another_merchants_items_are_invalid() -> None:
    w = world()
    card = w.card()
    rng = DeterministicRandom("other")
    theirs = offer_for(rng, 5, merchant_id=OTHER)
    stolen = DepositItem(offer=theirs, purchase=card.purchase(theirs, NOW))
    (mine,) = deferred_items(w, card, [2])
    report = w.deposit(batch_of(w.rng, [stolen, mine]))
    card_id = card.state.card_id
    assert report.invalid == ((card_id, 1),)
    assert report.accepted == ((card_id, 2, 2),)
    assert w.bank.credited(OTHER) == 0
    # claiming the batch is the other merchant's does not help without its key
    relabelled = batch_of(w.rng, [stolen], merchant_id=OTHER)
    with pytest.raises(InvalidPayment) as info:
        w.deposit(relabelled)
    assert info.value.code is ErrorCode.DEPOSIT_INVALID


def test_wrong_batch_tag_and_unknown_merchant() -> None:
    w = world()
    batch = batch_of(w.rng, deferred_items(w, w.card(), [1]))
    tag = batch_tag(w.merchant_key, batch)
    with pytest.raises(InvalidPayment) as info:
        w.bank.deposit(batch, bytes(32), NOW)
    assert info.value.code is ErrorCode.DEPOSIT_INVALID
    with pytest.raises(InvalidPayment):
        verify_batch_tag(w.merchant_key, replace(batch, batch_id=bytes(16)), tag)
    verify_batch_tag(w.merchant_key, batch, tag)
    bank = HllBank(denomination=EUR)
    with pytest.raises(InvalidPayment) as info:
        bank.deposit(batch, tag, NOW)
    assert info.value.code is ErrorCode.DEPOSIT_INVALID


def test_forged_and_overspent_items_are_invalid() -> None:
    w = world()
    card = w.card(balance=100, loaded=10)
    good = deferred_items(w, card, [6])[0]
    forged_item = replace(good, purchase=replace(good.purchase, counter=7))
    over = deferred_items(w, card, [6])[0]  # 6 + 6 > 10 loaded
    report = w.deposit(batch_of(w.rng, [forged_item, good, over]))
    card_id = card.state.card_id
    assert report.invalid == ((card_id, 7), (card_id, 2))
    assert report.accepted == ((card_id, 1, 6),)
    assert w.bank.spent(card_id) == 6


def test_deposit_window() -> None:
    w = world()
    items = deferred_items(w, w.card(), [1, 2])
    expiry = items[0].offer.expires_at
    window = 30 * 86400
    late = w.deposit(batch_of(w.rng, items[:1]), now=expiry + window)
    assert late.credited == 0
    assert len(late.invalid) == 1
    in_time = w.deposit(batch_of(w.rng, items[1:]), now=expiry + window - 1)
    assert in_time.credited == 2


@settings(max_examples=30)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 20)), min_size=1, max_size=12),
    st.data(),
)
def test_deposits_credit_exactly_what_cards_spent(
    purchases: list[tuple[int, int]], data: st.DataObject
) -> None:
    w = world()
    cards = [w.card(balance=40) for _ in range(3)]
    items: list[DepositItem] = []
    for which, amount in purchases:
        with contextlib.suppress(CardExhausted):  # the card refuses; nothing to deposit
            items += deferred_items(w, cards[which], [amount])
    indexes = st.lists(st.integers(0, len(items) - 1), max_size=8) if items else st.just([])
    batches = data.draw(st.lists(indexes, min_size=1, max_size=4))
    batches.append(list(range(len(items))))  # finally everything, so all is settled
    accepted: list[tuple[bytes, int, int]] = []
    for chosen in batches:
        report = w.deposit(batch_of(w.rng, [items[i] for i in chosen]))
        assert report.credited == sum(a for _, _, a in report.accepted)
        accepted += report.accepted
    pairs = [(c, n) for c, n, _ in accepted]
    assert len(pairs) == len(set(pairs)) == len(items)
    total = sum(a for _, _, a in accepted)
    assert w.bank.credited(MERCHANT) == total
    for card in cards:
        card_id = card.state.card_id
        assert w.bank.spent(card_id) == 40 - card.state.balance


# --- the merchant -------------------------------------------------------------------------


def test_merchant_deferred_flow_and_settlement() -> None:
    w = world(risk_limit=10)
    card = w.card()
    deferred_items(w, card, [4, 5])
    card_id = card.state.card_id
    assert w.merchant.outstanding(card_id) == 9
    batch, tag = w.merchant.make_deposit()
    assert len(batch.items) == 2
    report = w.bank.deposit(batch, tag, NOW)
    assert report.credited == 9
    w.merchant.settle(report)
    assert w.merchant.outstanding(card_id) == 0
    with pytest.raises(LocalProtocolError):
        w.merchant.settle(report)
    empty, _ = w.merchant.make_deposit()
    assert empty.items == ()


def test_merchant_keeps_refused_payments_charged_to_the_card() -> None:
    """As the paywall's deferred book: what the bank refused stays against the card's limit
    (a card that cheated stays charged); the merchant's total counts only unanswered ones."""
    w = world(risk_limit=20)
    card = w.card(balance=100, loaded=10)
    deferred_items(w, card, [8, 8])  # the bank covers only the first
    batch, tag = w.merchant.make_deposit()
    report = w.bank.deposit(batch, tag, NOW)
    assert (len(report.accepted), len(report.invalid)) == (1, 1)
    w.merchant.settle(report)
    assert w.merchant.outstanding(card.state.card_id) == 8
    assert w.merchant.outstanding_total() == 0


def test_merchant_refusals() -> None:
    w = world()
    card = w.card()
    offer = w.offer()
    purchase = card.purchase(offer, NOW)
    foreign = offer_for(DeterministicRandom("foreign"))
    with pytest.raises(InvalidPayment) as info:
        w.merchant.accept_deferred(foreign, purchase, NOW, certificate=w.cert(purchase))
    assert info.value.code is ErrorCode.CHALLENGE_INVALID
    with pytest.raises(InvalidPayment):  # same challenge, other price: not our offer
        w.merchant.accept_deferred(
            replace(offer, amount=1), purchase, NOW, certificate=w.cert(purchase)
        )
    with pytest.raises(PaymentExpired):
        w.merchant.accept_deferred(offer, purchase, offer.expires_at, certificate=w.cert(purchase))
    with pytest.raises(InvalidPayment):
        w.merchant.accept_deferred(
            offer, replace(purchase, counter=0), NOW, certificate=w.cert(purchase)
        )
    w.merchant.accept_deferred(offer, purchase, NOW, certificate=w.cert(purchase))
    # A repeat of (card, counter) that is not its own request's retry gets the vague
    # refusal, as at the paywall (check_merchant_repeat): the same offer again ...
    with pytest.raises(InvalidPayment) as info:
        w.merchant.accept_deferred(offer, purchase, NOW, certificate=w.cert(purchase))
    assert info.value.code is ErrorCode.PAYMENT_INVALID
    with pytest.raises(InvalidPayment) as repeat:  # ... or on a new offer
        w.merchant.accept_deferred(w.offer(), purchase, NOW, certificate=w.cert(purchase))
    assert repeat.value.code is ErrorCode.PAYMENT_INVALID
    other = w.card().purchase(offer, NOW)  # the used offer with a new (card, counter)
    with pytest.raises(InvalidPayment) as used:
        w.merchant.accept_deferred(offer, other, NOW, certificate=w.cert(other))
    assert used.value.code is ErrorCode.CHALLENGE_INVALID


def test_risk_limit_then_online_fallback() -> None:
    w = world(risk_limit=5)
    card = w.card()
    deferred_items(w, card, [4])
    offer = w.offer(2)
    purchase = card.purchase(offer, NOW)
    with pytest.raises(InsufficientFunds) as info:
        w.merchant.accept_deferred(offer, purchase, NOW, certificate=w.cert(purchase))
    assert info.value.code is ErrorCode.RISK_LIMIT
    verified = w.merchant.accept_online(offer, purchase, NOW, w.bank.verify_online)
    assert verified.amount == 2
    assert w.merchant.outstanding(card.state.card_id) == 4
    batch, _ = w.merchant.make_deposit()
    assert [item.purchase.counter for item in batch.items] == [1]  # online is settled already
    with pytest.raises(InvalidPayment):
        w.merchant.accept_online(offer, purchase, NOW, w.bank.verify_online)


def test_online_failure_leaves_the_offer_open() -> None:
    w = world()
    card = w.card()
    offer = w.offer()
    purchase = card.purchase(offer, NOW)
    with pytest.raises(InvalidPayment):
        w.merchant.accept_online(
            offer, replace(purchase, sigma=bytes(32)), NOW, w.bank.verify_online
        )
    w.merchant.accept_online(offer, purchase, NOW, w.bank.verify_online)


def test_deferred_risk() -> None:
    risk = DeferredRisk(limit=10, merchant_cap=25)
    assert risk.fits(0, 0, 10)
    assert risk.fits(4, 20, 5)
    assert not risk.fits(6, 0, 5)  # the card's limit
    assert not risk.fits(0, 21, 5)  # the merchant's cap
    assert not risk.fits(0, 0, 0)
    assert risk.settle(9, 4) == 5
    assert risk.settle(3, 4) == 0
    for bad in ((0, 1), (1, 0), (-1, 5)):
        with pytest.raises(ValueError):
            DeferredRisk(limit=bad[0], merchant_cap=bad[1])


def decide(
    w: World,
    offer: Offer,
    purchase: Purchase,
    certificate: bytes | None,
    *,
    now: int = NOW,
    outstanding: tuple[int, int] = (0, 0),
    risk: DeferredRisk | None = None,
) -> DeferredDecision:
    return decide_deferred(
        risk=risk or DeferredRisk(limit=10, merchant_cap=20),
        bank_public_key=ed25519_public_key(CERT_KEY),
        certificate=certificate,
        offer=offer,
        purchase=purchase,
        now=now,
        card_outstanding=outstanding[0],
        merchant_outstanding=outstanding[1],
    )


def test_deferred_only_for_a_card_the_bank_vouches_for() -> None:
    w = world()
    card, other = w.card(), w.card()
    offer = w.offer()
    purchase = card.purchase(offer, NOW)
    mine, theirs = w.cert(purchase), w.certificates[other.state.card_id]
    assert mine is not None
    cert = decode_card_certificate(mine)
    forged = issue_card_certificate(
        b"F" * 32, card_id=cert.card_id, denomination=EUR, expires_at=cert.expires_at
    )
    usd = issue_card_certificate(
        CERT_KEY, card_id=cert.card_id, denomination=USD, expires_at=cert.expires_at
    )
    assert decide(w, offer, purchase, mine) is DeferredDecision.DEFER
    online = {
        "no certificate": decide(w, offer, purchase, None),
        "forged": decide(w, offer, purchase, encode_card_certificate(forged)),
        "another card's": decide(w, offer, purchase, theirs),
        "another denomination": decide(w, offer, purchase, encode_card_certificate(usd)),
        "expired": decide(w, offer, purchase, mine, now=cert.expires_at),
        "card limit reached": decide(w, offer, purchase, mine, outstanding=(8, 8)),
        "merchant cap reached": decide(w, offer, purchase, mine, outstanding=(0, 18)),
    }
    assert online == dict.fromkeys(online, DeferredDecision.ONLINE)
    with pytest.raises(InvalidPayment):  # no card MACs counter 0
        decide(w, offer, replace(purchase, counter=0), mine)
    with pytest.raises(MalformedMessage):
        decide(w, offer, purchase, mine[:-1])


def test_card_certificate_round_trip_and_checks() -> None:
    cert = issue_card_certificate(CERT_KEY, card_id=b"c" * 16, denomination=EUR, expires_at=NOW)
    assert decode_card_certificate(encode_card_certificate(cert)) == cert
    public = card_certification_public_key(b"K" * 32)
    assert public == ed25519_public_key(card_certification_key(b"K" * 32))
    verify_card_certificate(
        ed25519_public_key(CERT_KEY), cert, card_id=b"c" * 16, denomination=EUR, now=NOW - 1
    )
    with pytest.raises(PaymentExpired) as expired:
        verify_card_certificate(
            ed25519_public_key(CERT_KEY), cert, card_id=b"c" * 16, denomination=EUR, now=NOW
        )
    assert expired.value.code is ErrorCode.CERTIFICATE_EXPIRED
    with pytest.raises(InvalidPayment) as forged:
        verify_card_certificate(public, cert, card_id=b"c" * 16, denomination=EUR, now=0)
    assert forged.value.code is ErrorCode.SIGNATURE_INVALID


def test_merchant_goes_online_past_its_cap_and_for_unknown_cards() -> None:
    w = world(risk_limit=10, merchant_cap=9)
    decisions = []
    for _ in range(4):  # four honest cards, 3 units each: the cap (9) holds three
        card = w.card()
        offer = w.offer()
        purchase = card.purchase(offer, NOW)
        decisions.append(
            w.merchant.accept(
                offer,
                purchase,
                NOW,
                certificate=w.cert(purchase),
                verify_online=w.bank.verify_online,
            )
        )
    assert decisions == [(DeferredDecision.DEFER, False)] * 3 + [(DeferredDecision.ONLINE, False)]
    assert w.merchant.outstanding_total() == 9
    stranger = Purchase(card_id=b"s" * 16, counter=1, sigma=bytes(32))
    with pytest.raises(InvalidPayment):  # not vouched for: online, where the bank refuses
        w.merchant.accept(
            w.offer(), stranger, NOW, certificate=None, verify_online=w.bank.verify_online
        )
    assert w.merchant.outstanding_total() == 9


def test_merchant_forgets_expired_offers() -> None:
    w = world()
    card = w.card()
    old = w.offer()
    purchase = card.purchase(old, NOW)
    w.merchant.offer(good="/later", amount=1, denomination=EUR, now=old.expires_at)
    with pytest.raises(InvalidPayment):
        w.merchant.accept_deferred(old, purchase, NOW, certificate=w.cert(purchase))


def test_all_names_exist() -> None:
    assert len(set(hll.__all__)) == len(hll.__all__)
    for name in hll.__all__:
        assert hasattr(hll, name), name


def test_a_received_batch_is_checked_against_the_tag_of_its_batch() -> None:
    """The bank checks the tag over the bytes it received (no second encoding): the same
    answer as over the decoded batch, because decode_batch accepts one encoding per batch."""
    w = world()
    batch = batch_of(w.rng, deferred_items(w, w.card(), [1, 2]))
    tag = batch_tag(w.merchant_key, batch)
    received = encode_batch(batch)
    assert encode_batch(decode_batch(received)) == received
    verify_received_batch_tag(w.merchant_key, received, tag)
    other = encode_batch(replace(batch, batch_id=bytes(16)))
    for key, data, bad_tag in ((w.merchant_key, other, tag), (bytes(32), received, tag)):
        with pytest.raises(InvalidPayment) as info:
            verify_received_batch_tag(key, data, bad_tag)
        assert info.value.code is ErrorCode.DEPOSIT_INVALID
