"""The spending policy: limits, confirmation, and refusal before anything is spent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core import cardcode
from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage, PolicyRefused
from farthing.core.money import Denomination
from farthing.core.schemes import hll, szm_chain
from farthing.http.methods.hll import HllMode, HllRequest
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge
from farthing.testing import DeterministicRandom, FixedClock
from farthing.wallet.cards import HllCardFile
from farthing.wallet.policy import (
    Limits,
    PriceOffer,
    SpendingPolicy,
    Usage,
    format_micros,
    parse_amount,
)
from farthing.wallet.testing import taken
from farthing.wallet.wallet import Wallet

EUR = Denomination(currency="EUR", unit_micros=1000)
URL = "https://news.test/articles/a"


# --- amounts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.00 EUR"), (2500, "0.0025 EUR"), (1_000_000, "1.00 EUR"), (1_234_567, "1.234567 EUR")],
)
def test_format_micros(micros: int, text: str) -> None:
    assert format_micros(micros, "EUR") == text


@given(micros=st.integers(min_value=0, max_value=10**15))
def test_parse_reads_what_format_writes(micros: int) -> None:
    assert parse_amount(format_micros(micros, "EUR")) == (micros, "EUR")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.05", (50_000, None)),
        ("0.05eur", (50_000, "EUR")),
        (" 2 USD", (2_000_000, "USD")),
        (".5", (500_000, None)),
    ],
)
def test_parse_amount(text: str, parsed: tuple[int, str | None]) -> None:
    assert parse_amount(text) == parsed


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "0.0000001", "-1", "1e3", "5 EURO"])
def test_parse_amount_refuses_junk(text: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_amount(text)


# --- the checks --------------------------------------------------------------------------


def offer(micros: int, currency: str = "EUR") -> PriceOffer:
    return PriceOffer(
        url=URL,
        host="news.test",
        method="szm:chain",
        card_label="c",
        units=micros // 1000,
        charged_micros=micros,
        price_micros=micros,
        currency=currency,
    )


def test_each_limit_refuses_with_its_own_message() -> None:
    policy = SpendingPolicy(limits={"EUR": Limits(per_request=5000, per_host=8000, per_day=10_000)})
    policy.check(offer(5000), Usage(day=5000, host=3000))
    with pytest.raises(PolicyRefused, match=r"per-request limit of 0\.005 EUR"):
        policy.check(offer(6000), Usage())
    with pytest.raises(PolicyRefused, match=r"at news\.test .*per-host limit"):
        policy.check(offer(4000), Usage(day=4000, host=4001))
    with pytest.raises(PolicyRefused, match=r"daily limit of 0\.01 EUR") as caught:
        policy.check(offer(4000), Usage(day=6001, host=0))
    assert caught.value.code is ErrorCode.POLICY_REFUSED


def test_currency_without_limits_uses_the_default_or_is_refused() -> None:
    SpendingPolicy().check(offer(10**9, "USD"), Usage())
    strict = SpendingPolicy(limits={"EUR": Limits()}, default=None)
    strict.check(offer(10**9), Usage())
    with pytest.raises(PolicyRefused, match="no payments in USD"):
        strict.check(offer(1, "USD"), Usage())


def test_max_price_override_keeps_the_other_limits() -> None:
    base = SpendingPolicy(limits={"EUR": Limits(per_day=10)}, default=None)
    capped = base.with_per_request(5, None)
    assert capped.limits["EUR"] == Limits(per_request=5, per_day=10)
    assert capped.default is None
    assert SpendingPolicy().with_per_request(7, "EUR").limits["EUR"].per_request == 7


def test_policy_survives_saving() -> None:
    policy = SpendingPolicy(
        limits={"EUR": Limits(per_request=1, per_host=2, per_day=3)},
        default=None,
        retry_after_refusal=True,
    )
    assert SpendingPolicy.from_json(policy.to_json()) == policy


# --- in the wallet: nothing is spent on a refusal -----------------------------------------


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def wallet(tmp_path: Path, clock: FixedClock) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "pw", clock=clock) as w:
        yield w


def add_chain_card(wallet: Wallet, clock: FixedClock, *, unit_micros: int = 1000) -> None:
    _, card = szm_chain.issue_card(
        b"M" * 32,
        DeterministicRandom(f"card{unit_micros}"),
        length=50,
        denomination=Denomination(currency="EUR", unit_micros=unit_micros),
        expires_at=clock.now() + 30 * 86_400,
    )
    wallet.add_szm_code(
        cardcode.to_text(szm_chain.to_card_code(card, realm="news")), site="https://news.test"
    )


def add_hll_card(wallet: Wallet) -> None:
    card_id = hll.new_card_id(DeterministicRandom("hll"))
    wallet.add_hll_card(
        HllCardFile(
            card_id=card_id, balance=100, denomination=EUR, card_key=b"k" * 32, bank_key=b"b" * 32
        ),
        site=["https://news.test", "https://other.test", "https://third.test"],
    )


def chain_challenge(clock: FixedClock, micros: int = 2000) -> Challenge:
    return Challenge(
        id="cid",
        realm="news",
        method="szmchain",
        intent="charge",
        request=SzmRequest(amount=micros, currency="EUR", resource="/articles/*").to_json(),
        expires=clock.now() + 300,
    )


def hll_challenge(clock: FixedClock, units: int = 2) -> Challenge:
    return Challenge(
        id=b64url_encode(bytes(40)),
        realm="news",
        method="hll",
        intent="charge",
        request=HllRequest(
            amount=units * 1000,
            currency="EUR",
            resource="/articles/*",
            merchant="news",
            units=units,
            unit_micros=1000,
            mode=HllMode.ONLINE,
        ).to_json(),
        expires=clock.now() + 300,
    )


def test_refusal_changes_no_card(wallet: Wallet, clock: FixedClock) -> None:
    add_chain_card(wallet, clock)
    wallet.use_policy(SpendingPolicy(limits={"EUR": Limits(per_request=1000)}))
    with pytest.raises(PolicyRefused, match="above the per-request limit"):
        wallet.pay(URL, [chain_challenge(clock)])
    assert wallet.cards()[0].spent == 0
    assert wallet.history() == []


def test_daily_and_host_limits_count_earlier_payments(wallet: Wallet, clock: FixedClock) -> None:
    add_hll_card(wallet)  # a bank card pays the merchants it was added for
    wallet.use_policy(SpendingPolicy(limits={"EUR": Limits(per_host=5000, per_day=7000)}))
    taken(wallet, wallet.pay(URL, [hll_challenge(clock)]))
    taken(wallet, wallet.pay(URL, [hll_challenge(clock)]))
    with pytest.raises(PolicyRefused, match="per-host"):
        wallet.pay(URL, [hll_challenge(clock)])
    taken(wallet, wallet.pay("https://other.test/articles/a", [hll_challenge(clock)]))
    with pytest.raises(PolicyRefused, match="daily"):
        wallet.pay("https://third.test/articles/a", [hll_challenge(clock)])
    clock.advance(86_400)  # the window moves on
    wallet.pay(URL, [hll_challenge(clock)])
    assert wallet.cards()[0].units_left == 100 - 8


def test_confirm_callback_decides_above_its_threshold(wallet: Wallet, clock: FixedClock) -> None:
    add_chain_card(wallet, clock)
    asked: list[PriceOffer] = []

    def decline(offer: PriceOffer) -> bool:
        asked.append(offer)
        return False

    wallet.use_policy(SpendingPolicy(confirm=decline, confirm_above=2000))
    taken(wallet, wallet.pay(URL, [chain_challenge(clock, 2000)]))  # at the threshold: not asked
    with pytest.raises(PolicyRefused, match="declined"):
        wallet.pay(URL, [chain_challenge(clock, 3000)])
    assert [o.charged_micros for o in asked] == [3000]
    assert wallet.cards()[0].spent == 2


def test_preference_order_is_configurable(tmp_path: Path, clock: FixedClock) -> None:
    challenges = [chain_challenge(clock), hll_challenge(clock)]
    with Wallet.create(tmp_path / "a", "pw", clock=clock) as default:
        add_chain_card(default, clock)
        add_hll_card(default)
        assert default.pay(URL, challenges).method == "szm:chain"
    with Wallet.open(tmp_path / "a", "pw", clock=clock, preference=("hll:mac",)) as hll_first:
        assert hll_first.pay(URL, challenges).method == "hll:mac"


def test_policy_picks_the_best_method_it_allows(wallet: Wallet, clock: FixedClock) -> None:
    add_chain_card(wallet, clock, unit_micros=5000)  # charges 5000 for a 2000 price
    add_hll_card(wallet)
    wallet.use_policy(SpendingPolicy(limits={"EUR": Limits(per_request=3000)}))
    paid = wallet.pay(URL, [chain_challenge(clock), hll_challenge(clock)])
    assert (paid.method, paid.price_micros) == ("hll:mac", 2000)


def test_saved_policy_is_used_on_open(tmp_path: Path, clock: FixedClock) -> None:
    policy = SpendingPolicy(limits={"EUR": Limits(per_request=1)}, retry_after_refusal=True)
    with Wallet.create(tmp_path / "w", "pw", clock=clock) as wallet:
        assert wallet.retry_after_refusal() is False
        wallet.use_policy(policy, save=True)
    with Wallet.open(tmp_path / "w", "pw", clock=clock) as reopened:
        assert reopened.policy == policy
        assert reopened.retry_after_refusal() is True
