"""PayWord in the wallet: per-vendor commitments, checked by the reference vendor and broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode, LocalProtocolError
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import payword
from farthing.http.methods.payword import PaywordRequest
from farthing.http.payment_auth import Challenge, JsonObject, Receipt, parse_credential
from farthing.testing import FixedClock
from farthing.testing.payword import PaywordBroker, PaywordVendor
from farthing.wallet.auth import PreparedPayment
from farthing.wallet.testing import taken
from farthing.wallet.wallet import Wallet

EUR = Denomination(currency="EUR", unit_micros=1000)
BROKER_KEY = b"B" * 32
USER_KEY = b"U" * 32


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def broker() -> PaywordBroker:
    broker = PaywordBroker(broker_id="broker", private_key=BROKER_KEY)
    broker.register_vendor("shop", "EUR")
    return broker


@pytest.fixture
def wallet(tmp_path: Path, clock: FixedClock, broker: PaywordBroker) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "pw", clock=clock) as w:
        certificate = broker.issue(
            user_id="alice",
            user_public_key=ed25519_public_key(USER_KEY),
            credit_limit=50,
            denomination=EUR,
            now=clock.now(),
            ttl=7 * 86_400,
        )
        w.add_payword(
            certificate, USER_KEY, site=["https://shop.test", "https://a.test", "https://b.test"]
        )
        yield w


def challenge(clock: FixedClock, *, vendor: str = "shop", broker: str = "broker") -> Challenge:
    return Challenge(
        id="cid",
        realm=vendor,
        method="payword",
        intent="charge",
        request=PaywordRequest(
            amount=3000,
            currency="EUR",
            resource="/articles/*",
            vendor=vendor,
            broker=broker,
            units=3,
            unit_micros=1000,
        ).to_json(),
        expires=clock.now() + 300,
    )


def payload(payment: PreparedPayment) -> JsonObject:
    return parse_credential(payment.authorization).payload


def vendor_takes(
    vendor: PaywordVendor,
    payment: PreparedPayment,
    now: int,
    *,
    broker: PaywordBroker | None = None,
) -> payword.PaywordAccepted:
    """What the vendor adapter does: introduce a carried commitment (admitted by the
    ``broker`` first, if it has one), then check the payword."""
    body = payload(payment)
    if "commitment" in body:
        commitment = b64url_decode(str(body["commitment"]))
        if broker is not None:
            broker.admit(commitment, vendor_id=vendor.vendor_id, now=now)
        vendor.accept_commitment(commitment, now=now)
    return vendor.receive(b64url_decode(str(body["payment"])), units=3, now=now)


RECEIPT = Receipt(method="payword", timestamp=0, reference="r")


def test_first_payment_carries_the_commitment_until_acknowledged(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    vendor = PaywordVendor(vendor_id="shop", broker_public=broker.public_key)
    url = "https://shop.test/articles/a"
    first = wallet.pay(url, [challenge(clock)])
    assert "commitment" in payload(first)
    accepted = vendor_takes(vendor, first, clock.now(), broker=broker)
    assert (accepted.index, accepted.units) == (3, 3)
    assert wallet.settle(first, RECEIPT, b"article") == b"article"
    second = wallet.pay(url, [challenge(clock)])
    assert "commitment" not in payload(second)
    assert vendor_takes(vendor, second, clock.now()).index == 6
    wallet.settle(second, RECEIPT, b"article")
    credit = broker.redeem(
        payword.encode_redemption(vendor.redemption(accepted.commitment_id)),
        vendor_id="shop",
        now=clock.now(),
    )
    assert credit.credited_units == 6
    assert broker.user_debit("alice", "EUR") == 6000


def test_commitment_length_fits_the_credit_limit(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    paid = wallet.pay("https://shop.test/articles/a", [challenge(clock)])
    commitment = payword.decode_commitment(b64url_decode(str(payload(paid)["commitment"])))
    # A quarter of the credit (50 units of 1000 micros; vendor unit 1000): the broker caps
    # the sum of the user's open commitments, so one vendor must not take it all.
    assert commitment.length == 12
    assert commitment.vendor_id == "shop"
    assert commitment.certificate.broker_id == "broker"


def test_a_payment_refused_without_a_receipt_is_given_back_and_its_index_reused(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    vendor = PaywordVendor(vendor_id="shop", broker_public=broker.public_key)
    url = "https://shop.test/articles/a"
    lost = wallet.pay(url, [challenge(clock)])  # never reaches the vendor
    wallet.refused(lost, 503)
    fresh = wallet.pay(url, [challenge(clock)])
    # The same commitment, still sent along (the vendor never accepted it), the same index.
    assert payload(fresh)["commitment"] == payload(lost)["commitment"]
    assert fresh.authorization == lost.authorization  # deterministic: the same payword
    assert vendor_takes(vendor, fresh, clock.now()).index == 3
    assert [(h.outcome, h.status) for h in wallet.history()] == [
        ("pending", None),
        ("released", 503),
    ]


def test_each_vendor_gets_its_own_commitment(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    shops = {
        name: PaywordVendor(vendor_id=name, broker_public=broker.public_key) for name in ("a", "b")
    }
    for name, vendor in shops.items():
        paid = wallet.pay(f"https://{name}.test/articles/x", [challenge(clock, vendor=name)])
        assert vendor_takes(vendor, paid, clock.now()).index == 3
        taken(wallet, paid)


def test_another_broker_is_not_payable(wallet: Wallet, clock: FixedClock) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        wallet.pay("https://shop.test/articles/a", [challenge(clock, broker="other")])
    assert caught.value.code is ErrorCode.WRONG_ISSUER
    assert wallet.history() == []


def test_expired_commitment_is_replaced(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    url = "https://shop.test/articles/a"
    first = wallet.pay(url, [challenge(clock)])
    taken(wallet, first)
    clock.advance(86_400)  # the commitment lived one day
    second = wallet.pay(url, [challenge(clock)])
    assert payload(second)["commitment"] != payload(first)["commitment"]
    vendor = PaywordVendor(vendor_id="shop", broker_public=broker.public_key)
    assert vendor_takes(vendor, second, clock.now()).index == 3


def test_wrong_user_key_is_refused(tmp_path: Path, broker: PaywordBroker) -> None:
    certificate = broker.issue(
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=5,
        denomination=EUR,
        now=0,
        ttl=100,
    )
    with (
        Wallet.create(tmp_path / "w", "pw") as w,
        pytest.raises(LocalProtocolError, match="does not belong"),
    ):
        w.add_payword(certificate, b"X" * 32, site="https://shop.test")


def test_a_commitment_the_vendor_does_not_know_is_retired_not_the_account(
    wallet: Wallet, broker: PaywordBroker, clock: FixedClock
) -> None:
    vendor = PaywordVendor(vendor_id="shop", broker_public=broker.public_key)
    url = "https://shop.test/articles/a"
    refused = wallet.pay(url, [challenge(clock)])
    wallet.refused(refused, 401, code=int(ErrorCode.PAYMENT_INVALID))
    fresh = wallet.pay(url, [challenge(clock)])  # the account still pays this vendor
    assert payload(fresh)["commitment"] != payload(refused)["commitment"]
    assert vendor_takes(vendor, fresh, clock.now()).index == 3
