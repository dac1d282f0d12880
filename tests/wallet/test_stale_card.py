"""One card in two wallets (typed into a laptop and a phone, or a backup restored after the
card paid): the vendor tells the wallet that pays behind the card where the card is
(PAYMENT_STALE with the card's position), and the wallet moves its card there and pays
again, once. A real wallet against a real Paywall (httpx.ASGITransport), units counted at
both ends.

Measured on the code before this change (main, 2026-12-08): A buys 3 two-unit articles,
then B asks for one: 402 (PAYMENT_INVALID), and B's next request failed with "this vendor
refused chain-... (unknown, used up or blocked there)"; B showed 50 units left, the card
had 44, and B could never pay that vendor again with it. The same with a restored backup.
PayWord: the restored wallet's request was answered 402 and its commitment retired.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farthing.core import cardcode
from farthing.core.cardcode import Generator
from farthing.core.money import Denomination
from farthing.core.schemes import szm_prbg
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.wallet.backup import export_backup, import_backup
from farthing.wallet.store import Outcome
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet
from tests.core.test_szm_prbg import BBS_KEY, GENERATORS
from tests.wallet.test_card_binding import SITE as PAYWORD_SITE
from tests.wallet.test_card_binding import add_payword, get, payword_vendor
from tests.wallet.test_money_safety import (
    MASTER,
    add,
    article_shop,
    client,
    issue,
    units_left,
    vendor,
    vendor_spent,
)

pytestmark = pytest.mark.anyio
EUR = Denomination(currency="EUR", unit_micros=1000)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


async def buy(paywall: object, wallet: Wallet, *slugs: str) -> list[int]:
    async with client(paywall, wallet) as http:
        return [(await http.get(f"/articles/{slug}")).status_code for slug in slugs]


async def test_a_card_spent_by_another_wallet_pays_from_where_the_vendor_says(
    tmp_path: Path, clock: FixedClock
) -> None:
    card = issue(clock)
    paywall, book = vendor(clock, card)
    with (
        cheap_wallet_kdf(),
        Wallet.create(tmp_path / "a", "pw", clock=clock) as a,
        Wallet.create(tmp_path / "b", "pw", clock=clock) as b,
    ):
        add(a, card)
        add(b, card)
        assert await buy(paywall, a, "a", "b", "c") == [200, 200, 200]
        assert vendor_spent(book, card) == 6
        async with client(paywall, b) as http:
            first = await http.get("/articles/a")
            second = await http.get("/articles/b")  # was LocalProtocolError: refused for good
        assert (first.status_code, first.text) == (200, "secret article a")
        assert (second.status_code, second.text) == (200, "secret article b")
        assert vendor_spent(book, card) == 10  # 6 by A, 2 + 2 by B: nothing taken twice
        assert units_left(b) == 40  # was 50: B showed units the card no longer had
        assert [(h.outcome, h.position, h.units) for h in b.history()] == [
            (Outcome.PAID, 10, 2),
            (Outcome.PAID, 8, 2),
            (Outcome.SPENT_ELSEWHERE, 6, 6),  # what the vendor said was spent before
            (Outcome.RELEASED, 2, 2),
        ]
        # The policy counts the units spent elsewhere: only the vendor says so.
        assert b._store.usage(host="news.test", since=0) == {"EUR": (10_000, 10_000)}
        # A is now behind in turn, and catches up the same way.
        assert await buy(paywall, a, "a") == [200]
        assert (vendor_spent(book, card), units_left(a)) == (12, 38)


async def test_a_restored_backup_pays_again_after_the_card_paid_since(
    tmp_path: Path, clock: FixedClock
) -> None:
    card = issue(clock)
    paywall, book = vendor(clock, card)
    with cheap_wallet_kdf():
        with Wallet.create(tmp_path / "w", "pw", clock=clock) as wallet:
            add(wallet, card)
            export_backup(tmp_path / "w", "pw", tmp_path / "backup", rng=os.urandom)
            assert await buy(paywall, wallet, "a", "b") == [200, 200]
        import_backup(tmp_path / "backup", "pw", tmp_path / "restored", rng=os.urandom)
        with Wallet.open(tmp_path / "restored", "pw", clock=clock) as restored:
            assert units_left(restored) == 50
            assert await buy(paywall, restored, "c", "a") == [200, 200]  # was [402, refused]
            assert (vendor_spent(book, card), units_left(restored)) == (8, 42)


def prbg_vendor(
    clock: FixedClock, generator: Generator
) -> tuple[Paywall, MemoryCardBook, szm_prbg.PrbgCard]:
    state, card = szm_prbg.issue_card(
        MASTER, DeterministicRandom("prbg"), units=50, denomination=EUR,
        expires_at=clock.now() + 86_400, generator=generator, bbs=BBS_KEY.public,
    )  # fmt: skip
    book = MemoryCardBook()
    book.add(state)
    method = OfflineMethod(SzmScheme.prbg(MASTER, bbs_key=BBS_KEY), book)  # type: ignore[misc]
    paywall = article_shop(clock, method)
    return paywall, book, card


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.value)
async def test_a_prbg_card_spent_by_another_wallet_pays_from_where_the_vendor_says(
    tmp_path: Path, clock: FixedClock, generator: Generator
) -> None:
    """For BBS the wallet also walks its generator over the skipped units."""
    paywall, book, card = prbg_vendor(clock, generator)
    code = cardcode.to_text(szm_prbg.to_card_code(card, realm="news"))
    with (
        cheap_wallet_kdf(),
        Wallet.create(tmp_path / "a", "pw", clock=clock) as a,
        Wallet.create(tmp_path / "b", "pw", clock=clock) as b,
    ):
        a.add_szm_code(code, site="https://news.test")
        b.add_szm_code(code, site="https://news.test")
        assert await buy(paywall, a, "a", "b", "c") == [200, 200, 200]
        assert await buy(paywall, b, "a", "b") == [200, 200]  # was [402, refused]
        assert (book.states[card.card_id].spent, units_left(b)) == (10, 40)  # type: ignore[attr-defined]


async def test_a_payword_commitment_restored_from_a_backup_pays_on_where_the_vendor_is(
    tmp_path: Path, clock: FixedClock
) -> None:
    paywall, book = payword_vendor(clock)
    with cheap_wallet_kdf():
        with Wallet.create(tmp_path / "w", "pw", clock=clock) as wallet:
            add_payword(wallet, clock)
            assert (await get(wallet, paywall, f"{PAYWORD_SITE}/articles/a")).status_code == 200
            export_backup(tmp_path / "w", "pw", tmp_path / "backup", rng=os.urandom)
            for slug in "bc":
                assert (
                    await get(wallet, paywall, f"{PAYWORD_SITE}/articles/{slug}")
                ).status_code == 200
        (held,) = book.states.values()
        assert held.state.spent == 9  # type: ignore[attr-defined]
        import_backup(tmp_path / "backup", "pw", tmp_path / "restored", rng=os.urandom)
        with Wallet.open(tmp_path / "restored", "pw", clock=clock) as restored:
            answer = await get(restored, paywall, f"{PAYWORD_SITE}/articles/d")
            assert (answer.status_code, answer.text) == (200, "article d")  # was 402
            assert len(book.states) == 1  # the same commitment, not a new one
            (now,) = book.states.values()
            assert now.state.spent == 12  # type: ignore[attr-defined]
            (commitment,) = restored._store.commitments(restored._store.cards()[0].id)
            assert (commitment.spent, commitment.retired) == (12, False)


# --- what the wallet does not take from a stale answer -----------------------------------


async def test_a_position_past_the_card_or_behind_it_is_not_taken(
    tmp_path: Path, clock: FixedClock
) -> None:
    """The issuer's word is taken only forward and within the card: anything else is the
    old refusal (the card is not offered at that realm again)."""
    from farthing.core.errors import ErrorCode, LocalProtocolError
    from farthing.http.payment_auth import parse_challenges

    card = issue(clock)
    paywall, _ = vendor(clock, card)
    for position in (51, 0):
        with cheap_wallet_kdf(), Wallet.create(tmp_path / f"w{position}", "pw", clock=clock) as w:
            add(w, card)
            async with client(paywall, w) as http:
                asked = await http.get("/articles/a", auth=None)
            url = "https://news.test/articles/a"
            challenges = parse_challenges(asked.headers.get_list("www-authenticate"))
            payment = w.pay(url, challenges)
            w.refused(payment, 402, code=int(ErrorCode.PAYMENT_STALE), position=position)
            assert units_left(w) == 50
            assert [h.outcome for h in w.history()] == [Outcome.RELEASED]
            with pytest.raises(LocalProtocolError) as refused:
                w.pay(url, challenges)
            assert refused.value.code is ErrorCode.NOT_FOUND


def test_a_payword_position_is_taken_only_with_the_commitments_own_value(
    tmp_path: Path, clock: FixedClock
) -> None:
    """PayWord's vendor is not the user's issuer: its last payword must be the value of the
    wallet's own chain at the position it names, else the commitment is retired (the next
    payment opens a new one) and nothing is skipped."""
    from farthing.core.errors import ErrorCode
    from farthing.core.hashchain import ChainWalker
    from farthing.core.schemes import payword
    from farthing.wallet.secretbox import record_id
    from tests.wallet.test_wallet_payword import challenge

    url = f"{PAYWORD_SITE}/articles/a"
    with cheap_wallet_kdf(), Wallet.create(tmp_path / "w", "pw", clock=clock) as w:
        add_payword(w, clock)
        card = w._store.cards()[0]
        for last_value in (bytes(32), None):
            payment = w.pay(url, [challenge(clock)])
            (row,) = [c for c in w._store.commitments(card.id) if not c.retired]
            seed = w._store.box.open(record_id("commitments", row.id, "seed"), row.seed)
            own = ChainWalker(payword.CHAIN_TAG, seed, row.length).value(6)
            w.refused(
                payment, 402, code=int(ErrorCode.PAYMENT_STALE), position=6,
                last_value=last_value if last_value is not None else own,
            )  # fmt: skip
            (after,) = [c for c in w._store.commitments(card.id) if c.id == row.id]
            if last_value is not None:
                assert (after.spent, after.retired) == (0, True)
            else:
                assert (after.spent, after.retired) == (6, False)
                assert w.history()[0].outcome == Outcome.SPENT_ELSEWHERE


async def test_two_wallets_taking_turns_with_one_card_each_pay_on(
    tmp_path: Path, clock: FixedClock
) -> None:
    """A phone and a laptop reading in turns: each one's payment is the card's last payment
    made by the other (same index, same value). Before: B's first request 402, its second
    "this vendor refused ..." (measured with A one payment ahead); the vendor answered
    PAYMENT_INVALID, as to a replay."""
    card = issue(clock)
    paywall, book = vendor(clock, card)
    with (
        cheap_wallet_kdf(),
        Wallet.create(tmp_path / "a", "pw", clock=clock) as a,
        Wallet.create(tmp_path / "b", "pw", clock=clock) as b,
    ):
        add(a, card)
        add(b, card)
        statuses = []
        for turn in range(6):
            statuses += await buy(paywall, (a, b)[turn % 2], "abc"[turn % 3])
        assert statuses == [200] * 6
        assert vendor_spent(book, card) == 12  # 6 articles, 2 units each: nothing twice
        # a learns of b's last purchase only when it pays next: 40 left at a, 38 at b.
        assert (units_left(a), units_left(b)) == (40, 38)
