"""The reference SZM verifiers (farthing.testing) and the paywall's card books judge alike.

The same Hypothesis-generated sequences of payments (honest, replayed by the same request
or by another, over-spent, stale, for a wrong or unknown card, expired) run through the
in-memory :class:`~farthing.testing.szm.ChainVerifier` / :class:`PrbgVerifier` and through
the paywall's offline method on its real books (:class:`~farthing.paywall.books.ChainBook`,
``PrbgBook``: the store's compare-and-set, group-committed by the writer), on SQLite and on
PostgreSQL. Every answer (units taken and whether it was a retry, or the error class and
code) and every card's final ``spent`` must be equal.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farthing.core.cardcode import Generator
from farthing.core.errors import FarthingError
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.methods.szm import SzmPayload
from farthing.http.payment_auth import ChallengeId
from farthing.paywall.books import ChainBook, PrbgBook
from farthing.paywall.methods.base import PaymentContext
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.pricing import Price, PricedRoute
from farthing.store import CardStatus, Store, SzmBatchRow, SzmCardRow, SzmProtocol, open_store
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom
from farthing.testing.szm import ChainVerifier, PrbgVerifier
from tests.paywall.helpers import EUR, KEYS, NOW

UNITS = 12  # each card's value: small, so sequences reach the end of a card
LIFETIME = 3600
_seeds = itertools.count()

# One step: (kind, card index, units); the kinds are drawn by Hypothesis.
Step = tuple[str, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["pay", "pay", "pay", "retry", "replay", "stale", "over", "stranger", "swap", "late"]
        ),
        st.integers(0, 1),
        st.integers(1, 4),
    ),
    min_size=1,
    max_size=14,
)


@dataclass(frozen=True)
class Answer:
    """What one side answered: units taken and whether it was a retry, or the error."""

    units: int = 0
    retried: bool = False
    error: tuple[str, int] | None = None


def answer(call: Callable[[], tuple[int, bool]]) -> Answer:
    try:
        units, retried = call()
    except FarthingError as error:
        return Answer(error=(type(error).__name__, int(error.code)))
    return Answer(units=units, retried=retried)


@dataclass
class Sent:
    """A payment as sent: its bytes, the request tag that carried it (also the id of the
    challenge it answers: each new request gets one), its price."""

    card: int
    payment: Any
    request: bytes
    units: int


class Protocol:
    """One SZM protocol, as the sequences need it: issue, pay, forge."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chain = name == "chain"

    def reference(self) -> ChainVerifier | PrbgVerifier:
        return ChainVerifier() if self.chain else PrbgVerifier(KEYS.prbg_master)

    def method(self, store: Store, writer: StoreWriter) -> OfflineMethod[Any, Any]:
        if self.chain:
            return OfflineMethod(SzmScheme.chain(KEYS.chain_master), ChainBook(store, writer))
        return OfflineMethod(SzmScheme.prbg(KEYS.prbg_master), PrbgBook(store, writer))

    def issue(self, rng: DeterministicRandom) -> tuple[Any, Any]:
        if self.chain:
            return szm_chain.issue_card(
                KEYS.chain_master, rng, length=UNITS, denomination=EUR, expires_at=NOW + LIFETIME
            )
        return szm_prbg.issue_card(
            KEYS.prbg_master, rng, units=UNITS, denomination=EUR, expires_at=NOW + LIFETIME
        )

    def row(self, state: Any, batch_id: bytes) -> SzmCardRow:
        return SzmCardRow(
            card_id=state.card_id,
            batch_id=batch_id,
            protocol=SzmProtocol.CHAIN if self.chain else SzmProtocol.PRBG,
            generator=None if self.chain else Generator.HMAC_CTR.value,
            currency="EUR",
            unit_micros=EUR.unit_micros,
            units=UNITS,
            spent=0,
            anchor=state.anchor if self.chain else None,
            expires_at=state.expires_at,
            status=CardStatus.ACTIVE,
            issued_at=NOW,
        )

    def next(self, card: Any, units: int) -> tuple[Any, Any]:
        """The card's next payment of ``units``, made before the card expired."""
        module = szm_chain if self.chain else szm_prbg
        new_card, payment, _ = module.next_payment(card, units, now=NOW)
        return new_card, payment

    def encode(self, payment: Any) -> bytes:
        return (szm_chain if self.chain else szm_prbg).encode_payment(payment)

    def with_index(self, payment: Any, index: int) -> Any:
        """The same proof claiming another index (past the card's end: over-spent)."""
        if self.chain:
            return szm_chain.Payment(card_id=payment.card_id, index=index, value=payment.value)
        return szm_prbg.Payment(card_id=payment.card_id, index=index, token=payment.token)

    def for_card(self, payment: Any, card_id: bytes) -> Any:
        if self.chain:
            return szm_chain.Payment(card_id=card_id, index=payment.index, value=payment.value)
        return szm_prbg.Payment(card_id=card_id, index=payment.index, token=payment.token)


class Twins:
    """Two cards at the reference verifier and in the paywall's store, paid alike."""

    def __init__(self, protocol: Protocol, store: Store) -> None:
        self.p = protocol
        self.store = store
        self.rng = DeterministicRandom(f"szm-differential-{next(_seeds)}")
        self.reference = protocol.reference()
        batch_id = self.rng(16)
        issued = [protocol.issue(self.rng) for _ in range(2)]
        self.cards = [card for _, card in issued]
        with store.transaction() as tx:
            tx.szm.insert_batch(
                SzmBatchRow(
                    batch_id=batch_id,
                    protocol=SzmProtocol.CHAIN if protocol.chain else SzmProtocol.PRBG,
                    count=2,
                    units=UNITS,
                    currency="EUR",
                    unit_micros=EUR.unit_micros,
                    expires_at=NOW + LIFETIME,
                    created_at=NOW,
                )
            )
            tx.szm.insert_cards(protocol.row(state, batch_id) for state, _ in issued)
        for state, _ in issued:
            self.reference.add(state)
        self.sent: list[Sent] = []

    async def run(self, plan: list[Step]) -> None:
        writer = StoreWriter(self.store)
        method = self.p.method(self.store, writer)
        try:
            for step in plan:
                made = self.make(step)
                if made is None:
                    continue
                sent, now = made
                paywall = await self.by_paywall(method, sent, now)
                reference = answer(functools.partial(self.by_reference, sent, now))
                assert paywall == reference, (step, paywall, reference)
        finally:
            await writer.aclose()
        for card in self.cards:
            state = self.reference.state(card.card_id)
            row = self.store.szm_card(card.card_id)
            assert state is not None
            assert row is not None
            assert row.spent == state.spent

    def make(self, step: Step) -> tuple[Sent, int] | None:
        """The payment a step sends, and when it arrives; None if the step has nothing to
        send (e.g. a replay before any payment)."""
        kind, which, units = step
        tag = self.rng(32)
        if kind in ("pay", "late"):
            card = self.cards[which]
            if card.spent + units > UNITS:
                return None  # the wallet refuses; "over" sends past the end instead
            self.cards[which], payment = self.p.next(card, units)
            sent = Sent(which, payment, tag, units)
            self.sent.append(sent)
            return sent, NOW + (LIFETIME if kind == "late" else 0)
        if not self.sent:
            return None
        last = self.sent[-1]
        earlier = self.sent[units % len(self.sent)]
        if kind == "retry":  # the last payment again, by its own request (answer lost)
            return last, NOW
        if kind == "replay":  # the last payment again, by another request
            return Sent(last.card, last.payment, tag, last.units), NOW
        if kind == "stale":  # an earlier payment by a new request
            return Sent(earlier.card, earlier.payment, tag, earlier.units), NOW
        if kind == "over":  # a proof claiming more than the card holds
            payment = self.p.with_index(last.payment, UNITS + units)
            return Sent(last.card, payment, tag, units), NOW
        if kind == "stranger":  # a card nobody issued
            return Sent(last.card, self.p.for_card(last.payment, self.rng(16)), tag, 1), NOW
        other = self.cards[1 - last.card].card_id  # "swap": one card's proof for another
        return Sent(1 - last.card, self.p.for_card(last.payment, other), tag, 1), NOW

    async def by_paywall(self, method: OfflineMethod[Any, Any], sent: Sent, now: int) -> Answer:
        context = PaymentContext(
            payload=SzmPayload(payment=self.p.encode(sent.payment)).to_json(),
            route=PricedRoute(scope="/a", price=Price(micros=sent.units * 1000, currency="EUR")),
            resource="/a",
            challenge=ChallengeId(
                raw=sent.request, expires=now + 60
            ),  # one per request: ids are single use
            now=now,
            request=sent.request,
            delivered_here=True,  # one paywall process, each answer out before the next
        )
        try:
            settlement = await method.settle(context)
        except FarthingError as error:
            return Answer(error=(type(error).__name__, int(error.code)))
        return Answer(units=settlement.receipt.units, retried=settlement.retried)

    def by_reference(self, sent: Sent, now: int) -> tuple[int, bool]:
        receipt, retried = self.reference.settle(
            sent.payment, units=sent.units, now=now, request=sent.request
        )
        return receipt.units, retried


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = open_store(str(Path(tmp_path_factory.mktemp("szm-diff")) / "v.sqlite"))
    yield store
    store.close()


@pytest.mark.parametrize("name", ["chain", "prbg"])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_szm_payments_are_judged_alike_on_sqlite(
    sqlite_store: Store, name: str, plan: list[Step]
) -> None:
    asyncio.run(Twins(Protocol(name), sqlite_store).run(plan))


@pytest.mark.postgres
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_chain_payments_are_judged_alike_on_postgresql(fresh_pg_dsn: str, plan: list[Step]) -> None:
    store = open_store(fresh_pg_dsn)
    try:
        asyncio.run(Twins(Protocol("chain"), store).run(plan))
    finally:
        store.close()


def test_a_retry_and_a_replay_are_told_apart_alike(sqlite_store: Store) -> None:
    """A fixed sequence, so the interesting answers are pinned whatever Hypothesis draws."""
    twins = Twins(Protocol("chain"), sqlite_store)
    asyncio.run(twins.run([("pay", 0, 3), ("retry", 0, 1), ("replay", 0, 1), ("pay", 0, 2)]))
    row = sqlite_store.szm_card(twins.cards[0].card_id)
    assert row is not None
    assert row.spent == 5
