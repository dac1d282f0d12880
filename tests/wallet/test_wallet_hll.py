"""HLL cards in the wallet (software key, and a real PKCS#11 token), checked by the
reference bank of farthing.core.schemes.hll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import (
    CardExhausted,
    ErrorCode,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    WrongPin,
)
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.http.methods.hll import HllMode, HllRequest
from farthing.http.payment_auth import Challenge, parse_credential
from farthing.testing import DeterministicRandom, FixedClock
from farthing.testing.hll import HllBank
from farthing.wallet.cards import HllCardFile, Pkcs11Location
from farthing.wallet.pkcs11_card import SoftHsmToken, install_card_key
from farthing.wallet.testing import taken
from farthing.wallet.wallet import Wallet

EUR = Denomination(currency="EUR", unit_micros=1000)
BANK_MASTER = b"K" * 32
MERCHANT = "shop"
SITE = "https://shop.test"
BANK_KEY = hll.card_certification_public_key(BANK_MASTER)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def wallet(tmp_path: Path, clock: FixedClock) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "pw", clock=clock) as w:
        yield w


@pytest.fixture
def bank() -> HllBank:
    bank = HllBank(denomination=EUR)
    bank.register_merchant(MERCHANT, b"m" * 32)
    return bank


def issue(bank: HllBank, *, balance: int, seed: str = "card") -> HllCardFile:
    card_id = hll.new_card_id(DeterministicRandom(seed))
    key = hll.derive_card_key(BANK_MASTER, card_id)
    bank.register_card(card_id, key, balance)
    return HllCardFile(
        card_id=card_id, balance=balance, denomination=EUR, card_key=key, bank_key=BANK_KEY
    )


def challenge(clock: FixedClock, *, units: int = 3, seed: str = "challenge") -> Challenge:
    return Challenge(
        id=b64url_encode(DeterministicRandom(seed)(40)),
        realm="shop",
        method="hll",
        intent="charge",
        request=HllRequest(
            amount=units * 1000,
            currency="EUR",
            resource="/articles/*",
            merchant=MERCHANT,
            units=units,
            unit_micros=1000,
            mode=HllMode.ONLINE,
        ).to_json(),
        expires=clock.now() + 300,
    )


def bank_checks(
    bank: HllBank, authorization: str, offer_challenge: Challenge, path: str, now: int
) -> hll.VerifiedPurchase:
    """What the vendor and the bank do: rebuild the offer and verify the purchase."""
    payload = parse_credential(authorization).payload
    assert isinstance(payload["payment"], str)
    purchase = hll.decode_payment(b64url_decode(payload["payment"]))
    request = offer_challenge.request
    details = request["methodDetails"]
    assert isinstance(details, dict)
    assert isinstance(details["units"], int)
    offer = hll.Offer(
        merchant_id=MERCHANT,
        good=path,
        amount=details["units"],
        denomination=EUR,
        challenge=b64url_decode(offer_challenge.id),
        expires_at=offer_challenge.expires,
    )
    return bank.verify_online(offer, purchase, now)


def test_software_card_pays_and_the_bank_accepts(
    wallet: Wallet, bank: HllBank, clock: FixedClock
) -> None:
    card = issue(bank, balance=10)
    wallet.add_hll_card(card, site=SITE)
    offered = challenge(clock)
    for counter in (1, 2, 3):
        paid = wallet.pay("https://shop.test/articles/a", [offered])
        verified = bank_checks(bank, paid.authorization, offered, "/articles/a", clock.now())
        assert (verified.counter, verified.amount, paid.index) == (counter, 3, counter)
        assert paid.sealing_key is None
        taken(wallet, paid)
    assert wallet.cards()[0].units_left == 1
    assert bank.spent(card.card_id) == 9
    with pytest.raises(CardExhausted):
        wallet.pay("https://shop.test/articles/a", [offered])
    assert wallet.cards()[0].spent == 3


def test_mac_is_bound_to_the_path(wallet: Wallet, bank: HllBank, clock: FixedClock) -> None:
    wallet.add_hll_card(issue(bank, balance=10), site=SITE)
    offered = challenge(clock)
    paid = wallet.pay("https://shop.test/articles/a", [offered])
    with pytest.raises(InvalidPayment):
        bank_checks(bank, paid.authorization, offered, "/articles/other", clock.now())


def test_other_unit_value_does_not_fit(wallet: Wallet, bank: HllBank, clock: FixedClock) -> None:
    wallet.add_hll_card(issue(bank, balance=10), site=SITE)
    offered = challenge(clock)
    details = offered.request["methodDetails"]
    assert isinstance(details, dict)
    request = dict(offered.request, methodDetails=dict(details, unitMicros=10))
    other = Challenge(
        id=offered.id,
        realm=offered.realm,
        method="hll",
        intent="charge",
        request=request,
        expires=offered.expires,
    )
    with pytest.raises(LocalProtocolError, match="holds no card") as caught:
        wallet.pay("https://shop.test/articles/a", [other])
    assert caught.value.code is ErrorCode.NO_CARD_FITS


def test_card_file_round_trips_and_refuses_junk() -> None:
    card = HllCardFile(
        card_id=bytes(range(16)),
        balance=5000,
        denomination=EUR,
        expires_at=1_900_000_000,
        wrapped_key=b"w" * 384,
        certificate=b"c" * 136,
    )
    assert HllCardFile.from_json(card.to_json()) == card
    keyless = HllCardFile(card_id=bytes(16), balance=1, denomination=EUR, bank_key=BANK_KEY)
    assert HllCardFile.from_json(keyless.to_json()) == keyless
    issuer_answer = (
        '{"card_id": "000102030405060708090a0b0c0d0e0f", "wrapped_card_key": "d3d3",'
        ' "certificate": "Y2Nj", "units": 5000, "currency": "EUR", "unit_micros": 1000}'
    )
    assert HllCardFile.from_json(issuer_answer) == HllCardFile(
        card_id=bytes(range(16)),
        balance=5000,
        denomination=EUR,
        wrapped_key=b"www",
        certificate=b"ccc",
    )
    for junk in ("", "[]", '{"format": "other"}', card.to_json().replace("5000", '"5000"')):
        with pytest.raises(MalformedMessage):
            HllCardFile.from_json(junk)


def test_a_card_file_never_carries_k_c_in_the_clear() -> None:
    """A software card's key stays out of its file, and a key put in a file is not read."""
    software = HllCardFile(card_id=bytes(16), balance=1, denomination=EUR, card_key=b"k" * 32)
    text = software.to_json()
    assert "cardKey" not in text
    assert b64url_encode(b"k" * 32) not in text
    with_key = text.replace('"balance"', f'"cardKey": "{b64url_encode(b"k" * 32)}", "balance"')
    assert HllCardFile.from_json(with_key).card_key is None
    old_answer = (
        '{"card_id": "000102030405060708090a0b0c0d0e0f", "card_key_hex": "' + "00" * 32 + '",'
        ' "units": 5000, "currency": "EUR", "unit_micros": 1000}'
    )
    with pytest.raises(MalformedMessage):  # the old issuer answer, K_C in hex: not a card file
        HllCardFile.from_json(old_answer)


# --- a real PKCS#11 token (SoftHSM2) ---------------------------------------------------------


def token_card(
    bank: HllBank, token: SoftHsmToken, *, balance: int = 10
) -> tuple[HllCardFile, Pkcs11Location]:
    issued = issue(bank, balance=balance, seed=token.label)
    assert issued.card_key is not None
    install_card_key(token.module_path, token.label, token.user_pin, "hll", issued.card_key)
    keyless = HllCardFile(
        card_id=issued.card_id, balance=balance, denomination=EUR, bank_key=BANK_KEY
    )
    where = Pkcs11Location(module_path=token.module_path, token_label=token.label, key_label="hll")
    return keyless, where


@pytest.mark.softhsm
def test_pkcs11_card_pays_with_the_stored_pin(
    wallet: Wallet, bank: HllBank, clock: FixedClock, softhsm_token: SoftHsmToken
) -> None:
    card, where = token_card(bank, softhsm_token)
    wallet.add_hll_card(card, token=where, pin=softhsm_token.user_pin, site=SITE)
    offered = challenge(clock)
    for counter in (1, 2):
        paid = wallet.pay("https://shop.test/articles/a", [offered])
        verified = bank_checks(bank, paid.authorization, offered, "/articles/a", clock.now())
        assert verified.counter == counter
        taken(wallet, paid)
    info = wallet.cards()[0]
    assert info.units_left == 4
    assert "PKCS#11" in info.where


@pytest.mark.softhsm
def test_pkcs11_wrong_pin_spends_nothing(
    wallet: Wallet, bank: HllBank, clock: FixedClock, softhsm_token: SoftHsmToken
) -> None:
    card, where = token_card(bank, softhsm_token)
    wallet.add_hll_card(card, token=where, pin="not-the-pin", site=SITE)
    with pytest.raises(WrongPin) as caught:
        wallet.pay("https://shop.test/articles/a", [challenge(clock)])
    assert caught.value.code is ErrorCode.WRONG_PIN
    assert wallet.cards()[0].spent == 0
    assert wallet.cards()[0].units_left == 10
    assert wallet.history() == []


def test_pkcs11_card_needs_a_pin(wallet: Wallet, bank: HllBank, tmp_path: Path) -> None:
    keyless = HllCardFile(card_id=bytes(16), balance=1, denomination=EUR, bank_key=BANK_KEY)
    where = Pkcs11Location(module_path=str(tmp_path / "x.so"), token_label="t", key_label="k")
    with pytest.raises(LocalProtocolError, match="PIN"):
        wallet.add_hll_card(keyless, token=where, site=SITE)
    with pytest.raises(LocalProtocolError, match="no key"):
        wallet.add_hll_card(keyless, site=SITE)
