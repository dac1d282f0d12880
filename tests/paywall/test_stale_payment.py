"""The vendor alone: a payment that names an index the card reached already (up to its last
payment) is told apart from a forged or unknown one only when its value proves it is the
card's own (PAYMENT_STALE, 2090, with the card's position); everything else stays the one
vague PAYMENT_INVALID (2000). Measured before this change: every one of these answers was
PAYMENT_INVALID."""

from __future__ import annotations

import httpx
import pytest

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode
from farthing.core.schemes import payword, szm_chain
from farthing.testing import DeterministicRandom, FixedClock
from tests.http.test_schemas import errors as schema_errors
from tests.paywall.test_szm_methods import EUR, MASTER, auth, challenge_id, client, setup

pytestmark = pytest.mark.anyio


async def pay(c: httpx.AsyncClient, payment: szm_chain.Payment) -> httpx.Response:
    return await c.get("/articles/a", headers=auth(await challenge_id(c), payment))


async def spend(
    c: httpx.AsyncClient, card: szm_chain.ChainCard, units: int, clock: FixedClock
) -> tuple[szm_chain.ChainCard, szm_chain.Payment]:
    card, payment, _ = szm_chain.next_payment(card, units, now=clock.now())
    assert (await pay(c, payment)).status_code == 200
    return card, payment


def at(card: szm_chain.ChainCard, index: int) -> szm_chain.Payment:
    walker = szm_chain.card_walker(card)
    return szm_chain.Payment(card_id=card.card_id, index=index, value=walker.value(index))


def codes(response: httpx.Response) -> tuple[int, int, int | None]:
    body = response.json()
    return response.status_code, body["farthingCode"], body.get("position")


async def test_a_stale_payment_is_told_where_the_card_is() -> None:
    clock = FixedClock()
    paywall, book, fresh = setup(clock)
    async with client(paywall) as c:
        card = fresh
        for _ in range(3):
            card, last = await spend(c, card, 2, clock)
        stale = await pay(c, at(fresh, 2))
        older = await pay(c, at(fresh, 1))
        assert codes(stale) == (402, int(ErrorCode.PAYMENT_STALE), 6)  # was 2000, no position
        assert codes(older) == (402, int(ErrorCode.PAYMENT_STALE), 6)
        assert stale.json()["reason"] == "x-payment-stale"
        assert schema_errors("problem.json", stale.json()) == []
        assert "www-authenticate" in stale.headers  # fresh challenges, as every refusal

        good = at(fresh, 4)
        forged = szm_chain.Payment(card_id=good.card_id, index=4, value=bytes(32))
        flipped = szm_chain.Payment(
            card_id=good.card_id, index=4, value=bytes(b ^ 1 for b in good.value)
        )
        zero = szm_chain.Payment(card_id=good.card_id, index=0, value=at(fresh, 1).value)
        vague = [await pay(c, p) for p in (forged, flipped, zero)]
        for answer in vague:
            assert codes(answer) == (402, int(ErrorCode.PAYMENT_INVALID), None)
            assert answer.json()["detail"] == "payment did not verify"
        # The card's last payment itself, under a new challenge: what a copy of the card one
        # payment behind sends (a phone and a laptop taking turns). Its holder learns only
        # its own index. (Before: 2000, and that copy was refused for good.)
        assert codes(await pay(c, last)) == (402, int(ErrorCode.PAYMENT_STALE), 6)
    assert book.states[card.card_id].spent == 6  # type: ignore[attr-defined]


async def test_the_same_request_sent_again_is_still_served_not_stale() -> None:
    """The retry of the request a payment was accepted for (its answer was lost) is judged
    before staleness: served again, nothing taken."""
    clock = FixedClock()
    paywall, book, card = setup(clock)
    async with client(paywall) as c:
        _, payment, _ = szm_chain.next_payment(card, 2, now=clock.now())
        headers = auth(await challenge_id(c), payment)
        first = await c.get("/articles/a", headers=headers)
        again = await c.get("/articles/a", headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert book.states[card.card_id].spent == 2  # type: ignore[attr-defined]


async def test_another_cards_value_stays_vague() -> None:
    clock = FixedClock()
    paywall, book, card = setup(clock)
    other_state, other = szm_chain.issue_card(
        MASTER, DeterministicRandom("other"), length=20, denomination=EUR,
        expires_at=clock.now() + 3600,
    )  # fmt: skip
    book.add(other_state)
    async with client(paywall) as c:
        for _ in range(2):
            card, _ = await spend(c, card, 2, clock)
        for _ in range(2):
            other, _ = await spend(c, other, 2, clock)
        theirs = at(other, 2)
        swapped = szm_chain.Payment(card_id=card.card_id, index=2, value=theirs.value)
        unknown = szm_chain.Payment(card_id=b"u" * 16, index=2, value=theirs.value)
        for payment in (swapped, unknown):
            assert codes(await pay(c, payment)) == (402, int(ErrorCode.PAYMENT_INVALID), None)


async def test_an_index_too_far_back_stays_vague() -> None:
    """The value of a stale index is checked by hashing it forward to the card's position:
    at most the scheme's max units per payment (the hashing one paid request may cause
    anyway), so a payment further back is refused without hashing, vaguely."""
    clock = FixedClock()
    bound = szm_chain.DEFAULT_MAX_UNITS
    state, fresh = szm_chain.issue_card(
        MASTER, DeterministicRandom("long"), length=bound + 10, denomination=EUR,
        expires_at=clock.now() + 3600,
    )  # fmt: skip
    paywall, book, _ = setup(clock)
    book.add(state)
    async with client(paywall) as c:
        card, _ = await spend(c, fresh, bound, clock)  # pays the gap: one payment of `bound`
        card, _ = await spend(c, card, 2, clock)
        assert codes(await pay(c, at(fresh, 2))) == (402, int(ErrorCode.PAYMENT_STALE), bound + 2)
        assert codes(await pay(c, at(fresh, 1))) == (402, int(ErrorCode.PAYMENT_INVALID), None)


async def test_a_stale_payword_carries_the_vendors_last_value() -> None:
    """PayWord's vendor is not the wallet's issuer: the answer also carries the vendor's last
    payword (lastValue), which the wallet checks against its own chain before moving."""
    from farthing.core.hashchain import ChainWalker
    from farthing.http.payment_auth import parse_challenges
    from tests.paywall.test_payword_method import auth as payword_auth
    from tests.paywall.test_payword_method import make_paywall, make_spender

    clock = FixedClock()
    paywall, book = make_paywall(clock)
    spender = make_spender(clock)
    encoded = payword.encode_commitment(spender.commitment)
    walker = ChainWalker(payword.CHAIN_TAG, spender.seed, spender.commitment.length)

    def at_index(index: int, value: bytes | None = None) -> payword.Payment:
        return payword.Payment(
            commitment_id=spender.commitment_id, index=index, value=value or walker.value(index)
        )

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=paywall), base_url="http://v"
    ) as c:

        async def send(payment: payword.Payment, commitment: bytes | None = None) -> httpx.Response:
            got = await c.get("/articles/a")
            (challenge,) = parse_challenges(got.headers.get_list("www-authenticate"))
            return await c.get("/articles/a", headers=payword_auth(challenge, payment, commitment))

        for index in (3, 6, 9):
            assert (await send(at_index(index), encoded)).status_code == 200
        stale = await send(at_index(3))
        last = await send(at_index(9))
        forged = await send(at_index(3, bytes(32)))
        ahead = await send(at_index(12, walker.value(9)))
    for answer in (stale, last):
        assert codes(answer) == (402, int(ErrorCode.PAYMENT_STALE), 9)
        assert b64url_decode(answer.json()["lastValue"]) == walker.value(9)
        assert schema_errors("problem.json", answer.json()) == []  # the members are declared
    for answer in (forged, ahead):
        assert codes(answer) == (402, int(ErrorCode.PAYMENT_INVALID), None)
        assert "lastValue" not in answer.json()
    assert book.states[spender.commitment_id].state.spent == 9  # type: ignore[attr-defined]
