"""PostgreSQL: the loop starts its next batch while the previous one's COMMIT is in flight.

A batch's COMMIT is held open on the server by a gate: a deferred constraint trigger (it
fires at COMMIT) on the rows of chosen cards, which waits for an advisory lock the test
holds, then lets the COMMIT go on or fails it. While one batch is held there:
- a batch of other cards commits and is answered (two batches in flight on one loop);
- a batch paying the same card waits for the held one and is judged after it (in order);
- the held batch's requests are not answered before its COMMIT;
- if that COMMIT fails, each of its requests is answered Unavailable (503) and none of its
  writes is taken, while the batch in flight beside it commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from farthing.core.errors import Unavailable
from farthing.store import HotTx, SpendOutcome, Spent, Store, open_store, upgrade_to_head
from farthing.store.writer import StoreWriter
from tests.paywall.helpers import issue_chain_cards
from tests.store.helpers import spend_job

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

EXPIRES = 4_000_000_000
GATE_LOCK = 4242
PATIENCE = 10.0

# The trigger waits for the advisory lock GATE_LOCK (4242).
_GATE = """
CREATE TABLE test_gate (card_id bytea PRIMARY KEY, fail boolean NOT NULL);
CREATE FUNCTION test_gate_wait() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fails boolean;
BEGIN
    SELECT fail INTO fails FROM test_gate WHERE card_id = NEW.card_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_lock(4242);
    PERFORM pg_advisory_unlock(4242);
    IF fails THEN
        RAISE EXCEPTION 'the gate fails this commit';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_gate AFTER UPDATE ON szm_cards
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_gate_wait();
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gated_dsn(fresh_pg_dsn: str) -> str:
    upgrade_to_head(fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute(_GATE)  # type: ignore[arg-type]  # a fixed test script, no parameters
    return fresh_pg_dsn


@pytest.fixture
def store(gated_dsn: str) -> Iterator[Store]:
    store = open_store(gated_dsn, create=False)
    yield store
    store.close()


class Gate:
    """The test's side of the gate: hold the advisory lock, see a COMMIT waiting on it."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._dsn = dsn

    def add(self, card_id: bytes, *, fail: bool) -> None:
        self._conn.execute("INSERT INTO test_gate VALUES (%s, %s)", (card_id, fail))

    def hold(self) -> None:
        self._conn.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))

    def release(self) -> None:
        self._conn.execute("SELECT pg_advisory_unlock(%s)", (GATE_LOCK,))

    def waiting(self) -> int:
        """How many COMMITs wait at the gate."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def gate(gated_dsn: str) -> Iterator[Gate]:
    gate = Gate(gated_dsn)
    yield gate
    gate.close()


def _pay(card_id: bytes, old: int, challenge: bytes) -> Callable[[HotTx], str]:
    return spend_job(card_id, old, challenge, EXPIRES)


async def _held_at_gate(gate: Gate) -> None:
    """Return once one COMMIT waits at the gate (polled on a thread)."""

    def one_waits() -> None:
        deadline = time.monotonic() + PATIENCE
        while gate.waiting() != 1:
            assert time.monotonic() < deadline, "no COMMIT reached the gate"
            time.sleep(0.01)

    await asyncio.to_thread(one_waits)


def _spent(store: Store, card_id: bytes) -> int:
    row = store.szm_card(card_id)
    assert row is not None
    return row.spent


def _start(writer: StoreWriter, *jobs: Callable[[HotTx], str]) -> asyncio.Future[list[Any]]:
    """One batch: jobs queued in one pass of the loop share it."""
    return asyncio.gather(*(writer.run_hot(job) for job in jobs), return_exceptions=True)


async def test_a_batch_commits_while_the_one_before_waits_for_its_commit(
    store: Store, gate: Gate
) -> None:
    held, card, other = issue_chain_cards(store, 3, seed="overlap")
    gate.add(held.card_id, fail=False)
    writer = StoreWriter(store, awaited_from=1)
    gate.hold()
    try:
        first = _start(
            writer, _pay(held.card_id, 0, b"\x01" * 32), _pay(card.card_id, 0, b"\x02" * 32)
        )
        await _held_at_gate(gate)
        second = _start(writer, _pay(other.card_id, 0, b"\x03" * 32))
        assert await asyncio.wait_for(second, PATIENCE) == ["won"]
        # The second batch is durable; the first is not answered, nor visible, before its COMMIT.
        assert _spent(store, other.card_id) == 1
        assert not first.done()
        assert _spent(store, card.card_id) == 0
        gate.release()
        assert await asyncio.wait_for(first, PATIENCE) == ["won", "won"]
    finally:
        gate.release()
        await writer.aclose()
    assert [_spent(store, c.card_id) for c in (held, card, other)] == [1, 1, 1]


def _spend_found(card_id: bytes, old: int, challenge: bytes) -> Callable[[HotTx], Spent[Any]]:
    """A payment's write as the paywall makes it, returning the whole :class:`Spent`."""

    def spend(hot: HotTx) -> Spent[Any]:
        used = (challenge, EXPIRES, EXPIRES - 300)
        return hot.szm.spend(card_id, old, old + 1, bytes([old + 1]) * 32, None, used)

    return spend


async def test_a_card_paid_in_two_batches_in_flight_is_judged_in_order(
    store: Store, gate: Gate
) -> None:
    """The second payment compares against the card's committed state (as the paywall's
    cache holds it while the first is in flight): it waits for the first batch's COMMIT and
    loses to it, with no stale row; judged first, it would have won and the first lost."""
    held, card = issue_chain_cards(store, 2, seed="ordered")
    gate.add(held.card_id, fail=False)
    writer = StoreWriter(store, awaited_from=1)
    gate.hold()
    try:
        first = _start(
            writer, _pay(held.card_id, 0, b"\x11" * 32), _pay(card.card_id, 0, b"\x12" * 32)
        )
        await _held_at_gate(gate)
        second = asyncio.ensure_future(writer.run_hot(_spend_found(card.card_id, 0, b"\x13" * 32)))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting for the first batch's row lock
        gate.release()
        assert await asyncio.wait_for(first, PATIENCE) == ["won", "won"]
        lost = await asyncio.wait_for(second, PATIENCE)
    finally:
        gate.release()
        await writer.aclose()
    assert lost.outcome == SpendOutcome.LOST
    assert lost.stored is None or lost.stored.spent == 1
    assert _spent(store, card.card_id) == 1
    assert not store.challenge_used(b"\x13" * 32)


async def test_a_commit_that_fails_beside_a_batch_in_flight_answers_503_and_takes_nothing(
    store: Store, gate: Gate
) -> None:
    failing, card, other = issue_chain_cards(store, 3, seed="fails")
    gate.add(failing.card_id, fail=True)
    writer = StoreWriter(store, awaited_from=1)
    gate.hold()
    try:
        first = _start(
            writer, _pay(failing.card_id, 0, b"\x21" * 32), _pay(card.card_id, 0, b"\x22" * 32)
        )
        await _held_at_gate(gate)
        second = _start(writer, _pay(other.card_id, 0, b"\x23" * 32))
        assert await asyncio.wait_for(second, PATIENCE) == ["won"]
        gate.release()
        answers = await asyncio.wait_for(first, PATIENCE)
        assert [type(answer) for answer in answers] == [Unavailable, Unavailable]
        assert all(answer.retry_after > 0 for answer in answers)
        # Nothing of the failed batch was taken: the cards stand still, the ids are free.
        assert [_spent(store, c.card_id) for c in (failing, card)] == [0, 0]
        assert not store.challenge_used(b"\x21" * 32)
        assert not store.challenge_used(b"\x22" * 32)
        # The resend of the payment that was not failing is taken, once.
        assert await writer.run_hot(_pay(card.card_id, 0, b"\x22" * 32)) == "won"
    finally:
        gate.release()
        await writer.aclose()
    assert _spent(store, card.card_id) == 1
    assert _spent(store, other.card_id) == 1
