"""The core's decision on a payment behind the card's position (``stale_position``): the
position for a value that proves it is the card's own, the vague InvalidPayment for
anything else, and no hashing past ``max_back``."""

from __future__ import annotations

import pytest

from farthing.core.cardcode import Generator
from farthing.core.errors import InvalidPayment
from farthing.core.hashchain import ChainWalker
from farthing.core.money import Denomination
from farthing.core.schemes import payword, szm_chain, szm_prbg
from farthing.testing import DeterministicRandom
from tests.core.test_szm_prbg import BBS_KEY, GENERATORS, NOW, fresh
from tests.core.test_szm_prbg import MASTER as PRBG_MASTER

EUR = Denomination(currency="EUR", unit_micros=1000)
MASTER = b"M" * 32
LATER = 10**10


def spent_chain(units: int) -> tuple[szm_chain.ChainCardState, szm_chain.ChainCard]:
    state, card = szm_chain.issue_card(
        MASTER, DeterministicRandom("c"), length=20, denomination=EUR, expires_at=LATER
    )
    _, payment, _ = szm_chain.next_payment(card, units, now=0)
    state, _ = szm_chain.verify_payment(state, payment, units=units, now=0)
    return state, card


def test_a_chain_payment_behind_the_card_says_where_it_is() -> None:
    state, card = spent_chain(6)
    walker = szm_chain.card_walker(card)
    # 6: the card's last payment itself, made by another copy of the card (the retry of the
    # request it was accepted for is judged before, by verify_retry).
    for index in (1, 2, 5, 6):
        assert szm_chain.stale_position(state, (card.card_id, index, walker.value(index))) == 6
    refused = [
        (card.card_id, 2, bytes(32)),  # forged
        (card.card_id, 6, walker.value(5)),  # the last index with another value
        (card.card_id, 7, walker.value(7)),  # ahead: the paid path's business
        (card.card_id, 0, walker.value(0)),  # the anchor the card started from
        (b"x" * 16, 2, walker.value(2)),  # another card's id
    ]
    for payment in refused:
        with pytest.raises(InvalidPayment) as caught:
            szm_chain.stale_position(state, payment)
        assert type(caught.value) is InvalidPayment
    with pytest.raises(InvalidPayment):
        szm_chain.stale_position(state, (card.card_id, 2, walker.value(2)), max_back=3)
    assert szm_chain.stale_position(state, (card.card_id, 3, walker.value(3)), max_back=3) == 6


def test_a_payword_behind_the_commitment_says_where_it_is() -> None:
    seed = b"s" * 32
    walker = ChainWalker(payword.CHAIN_TAG, seed, 10)
    state = payword.CommitmentState(
        commitment_id=b"c" * 32, last_value=walker.value(0), spent=0, length=10,
        denomination=EUR, expires_at=LATER,
    )  # fmt: skip
    state = payword.advance(state, (b"c" * 32, 4, walker.value(4)), 4, 0, None)
    assert payword.stale_position(state, (b"c" * 32, 1, walker.value(1))) == 4
    with pytest.raises(InvalidPayment):
        payword.stale_position(state, (b"d" * 32, 1, walker.value(1)))
    with pytest.raises(InvalidPayment):
        payword.stale_position(state, (b"c" * 32, 1, walker.value(2)))


def test_a_prbg_payment_behind_the_card_says_where_it_is() -> None:
    state, card = szm_prbg.issue_card(
        MASTER, DeterministicRandom("p"), units=20, denomination=EUR, expires_at=LATER
    )
    old, first, _ = szm_prbg.next_payment(card, 2, now=0)
    _, second, _ = szm_prbg.next_payment(old, 3, now=0)
    for payment in (first, second):
        state, _ = szm_prbg.verify_payment(
            state, payment, master_key=MASTER, units=payment.index - state.spent, now=0
        )
    assert szm_prbg.stale_position(state, first, master_key=MASTER) == 5
    assert szm_prbg.stale_position(state, second, master_key=MASTER) == 5  # the last one
    forged = szm_prbg.Payment(card_id=card.card_id, index=2, token=second.token)
    ahead = szm_prbg.Payment(card_id=card.card_id, index=6, token=second.token)
    for payment in (forged, ahead):
        with pytest.raises(InvalidPayment):
            szm_prbg.stale_position(state, payment, master_key=MASTER)
    with pytest.raises(InvalidPayment):
        szm_prbg.stale_position(state, first, master_key=MASTER, max_back=2)


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.value)
def test_a_prbg_card_skipped_forward_pays_what_the_card_that_paid_would(
    generator: Generator,
) -> None:
    """The wallet moves a card to the issuer's position (skip_to): for BBS its generator
    walks over the skipped blocks, so the next payment is the one the copy that paid those
    units makes next, and the issuer's stale_position (direct jump) agrees."""
    state, card = fresh(generator)
    paid, first, _ = szm_prbg.next_payment(card, 2, now=NOW)
    ahead, second, _ = szm_prbg.next_payment(paid, 3, now=NOW)
    moved = szm_prbg.skip_to(card, 5)
    assert (moved.spent, moved.bbs_x) == (ahead.spent, ahead.bbs_x)
    assert (
        szm_prbg.next_payment(moved, 2, now=NOW)[1] == szm_prbg.next_payment(ahead, 2, now=NOW)[1]
    )
    for payment in (first, second):
        state, _ = szm_prbg.verify_payment(
            state, payment, master_key=PRBG_MASTER, units=payment.index - state.spent,
            now=NOW, bbs_key=BBS_KEY,
        )  # fmt: skip
    assert szm_prbg.stale_position(state, first, master_key=PRBG_MASTER, bbs_key=BBS_KEY) == 5
    for spent in (1, 21):
        with pytest.raises(ValueError):
            szm_prbg.skip_to(paid, spent)  # never backward, never past the card
