"""SQLite: the loop commits its hot batches without the fsync; a thread fsyncs the WAL file
and only then are the batch's requests answered (store/_walsync.py, store/writer.py).

The fsync is real (``os.fsync`` on the store's ``-wal`` file) behind a gate
(:class:`farthing.testing.GatedFsync`), so a test can hold it and look at what the loop
does meanwhile: it must keep serving (other requests, other payments' commits), and no
payment may be answered before an fsync that began after its commit has returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.clock import Clock, SystemClock
from farthing.core.errors import Conflict, Unavailable
from farthing.core.schemes import szm_chain
from farthing.paywall.books import ChainBook
from farthing.paywall.methods.offline import DELIVERY_LEASE, OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import HotTx, Store, _engine, _walsync, open_store
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom, FixedClock, GatedFsync
from tests.paywall.helpers import KEYS, issue_chain_cards
from tests.paywall.test_szm_methods import auth, challenge_id
from tests.store.helpers import spend_job

pytestmark = pytest.mark.anyio
EXPIRES = 4_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sqlite_store(tmp_path: Path, sqlite_template: Path) -> Store:
    path = tmp_path / "store.sqlite"
    path.write_bytes(sqlite_template.read_bytes())
    store = open_store(str(path), create=False)
    yield store  # type: ignore[misc]
    store.close()


def _pay(card_id: bytes, old: int, challenge: bytes) -> Callable[[HotTx], str]:
    return spend_job(card_id, old, challenge, EXPIRES)


async def _until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate`` holds (bounded: 10 s)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


async def test_payments_wait_for_their_fsync_while_the_loop_goes_on(sqlite_store: Store) -> None:
    """A payment committed while the fsync is held is not answered; meanwhile another
    payment commits on the loop (visible to another connection), and is answered only
    after an fsync that began after *its* commit, not the one already running."""
    store = sqlite_store
    first, second = issue_chain_cards(store, 2)
    gate = GatedFsync()
    writer = StoreWriter(store, fsync=gate)
    witness = open_store(str(store.wal_file().path)[: -len("-wal")], create=False)
    try:
        gate.hold()
        paying = asyncio.ensure_future(writer.run_hot(_pay(first.card_id, 0, b"\x01" * 32)))
        await asyncio.to_thread(gate.started.wait, 10)
        assert witness.challenge_used(b"\x01" * 32)  # committed on the loop...
        assert not paying.done()  # ...not answered: its fsync has not returned
        gate.started.clear()

        # The loop is free: another payment commits now, while the first one's fsync runs.
        other = asyncio.ensure_future(writer.run_hot(_pay(second.card_id, 0, b"\x02" * 32)))
        await _until(lambda: witness.challenge_used(b"\x02" * 32))
        assert writer._thread is None  # committed by the loop itself, not handed to a thread
        assert not paying.done()
        assert not other.done()

        gate.release_one()  # the first fsync returns; the next one (for the second) waits
        assert await paying == "won"
        await _until(lambda: gate.begun == 2)
        await asyncio.sleep(0.05)
        assert not other.done()  # committed during the first fsync: not covered by it
        gate.release()
        assert await other == "won"
        assert gate.returned == 2
    finally:
        gate.release()
        await writer.aclose()
        witness.close()


async def test_a_failing_fsync_fails_its_payments_and_the_store_recovers(
    sqlite_store: Store,
) -> None:
    store = sqlite_store
    cards = issue_chain_cards(store, 3)
    gate = GatedFsync()
    writer = StoreWriter(store, fsync=gate)
    try:
        gate.fail_next()
        with pytest.raises(Unavailable) as failed:
            await writer.run_hot(_pay(cards[0].card_id, 0, b"\x03" * 32))
        assert isinstance(failed.value.__cause__, OSError)  # the fsync's own error, kept
        # The next payments are served as usual once the fsync works again.
        outcomes = await asyncio.gather(
            *(writer.run_hot(_pay(c.card_id, 0, bytes([9, n]) * 16)) for n, c in enumerate(cards))
        )
        assert outcomes == ["lost", "won", "won"]  # card 0 moved: its failed write committed
    finally:
        await writer.aclose()


async def test_the_fsync_follows_a_wal_file_that_was_replaced(sqlite_store: Store) -> None:
    """The -wal file is deleted when the last connection closes and made anew later: a kept
    descriptor would fsync the deleted file; the WAL file reopens the new one."""
    wal = sqlite_store.wal_file()
    issue_chain_cards(sqlite_store, 1)
    wal.sync()
    before = os.stat(wal.path).st_ino
    kept = wal._fd  # the descriptor it keeps open: its inode cannot be given to another file
    database = str(wal.path)[: -len("-wal")]
    sqlite_store.close()  # the last connection: checkpointed and the -wal deleted
    assert not wal.path.exists()
    assert kept is not None
    holder = open_store(database, create=False)
    try:
        issue_chain_cards(holder, 1, seed="again")
        calls: list[int] = []
        wal._fsync = calls.append  # see which descriptor it syncs
        wal.sync()
        assert len(calls) == 1
        synced = os.fstat(calls[0])
        assert (synced.st_ino, synced.st_nlink) == (os.stat(wal.path).st_ino, 1)
        assert synced.st_ino != before  # the old inode is held by the old descriptor
    finally:
        wal.close()
        holder.close()


def _paywall(store: Store, writer: StoreWriter, clock: Clock | None = None) -> Paywall:
    async def article(request: object) -> PlainTextResponse:
        return PlainTextResponse("article")

    prices = PriceTable()
    prices.add("/articles/*", Price(micros=1000, currency="EUR"))
    app = Starlette(routes=[Route("/articles/{slug}", article), Route("/free/{slug}", article)])
    book = ChainBook(store, writer)
    return Paywall(
        app,
        realm="news",
        prices=prices,
        methods=[OfflineMethod(SzmScheme.chain(KEYS.chain_master), book)],  # type: ignore[arg-type]
        challenge_secret=b"s" * 32,
        clock=clock or SystemClock(),
        rng=DeterministicRandom("walsync"),
    )


async def test_a_free_request_is_served_while_a_payment_waits_for_its_fsync(
    sqlite_store: Store,
) -> None:
    store = sqlite_store
    card = issue_chain_cards(store, 1)[0]
    gate = GatedFsync()
    writer = StoreWriter(store, fsync=gate)
    paywall = _paywall(store, writer)
    transport = httpx.ASGITransport(app=paywall)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
            cid = await challenge_id(client)
            card, payment, _key = szm_chain.next_payment(card, 1, now=int(time.time()))
            gate.hold()
            paid = asyncio.ensure_future(client.get("/articles/a", headers=auth(cid, payment)))
            await asyncio.to_thread(gate.started.wait, 10)
            free = await asyncio.wait_for(client.get("/free/a"), timeout=10)
            assert free.status_code == 200  # served while the payment waits for the disk
            assert not paid.done()
            gate.release()
            response = await paid
            assert response.status_code == 200
            assert gate.returned >= 1
    finally:
        gate.release()
        await writer.aclose()


async def test_a_payment_whose_fsync_fails_is_not_served_and_its_resend_is(
    sqlite_store: Store,
) -> None:
    """Through the paywall: the failing fsync's payment is answered 503 (never 200); the
    same request sent again is served once a later fsync succeeded, without a second
    charge (its write had committed)."""
    store = sqlite_store
    card = issue_chain_cards(store, 1)[0]
    gate = GatedFsync()
    writer = StoreWriter(store, fsync=gate)
    clock = FixedClock(int(time.time()))
    transport = httpx.ASGITransport(app=_paywall(store, writer, clock))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
            cid = await challenge_id(client)
            card, payment, _key = szm_chain.next_payment(card, 1, now=clock.now())
            gate.fail_next()
            failed = await client.get("/articles/a", headers=auth(cid, payment))
            assert failed.status_code == 503
            assert b"article" not in failed.content
            assert failed.headers["retry-after"] == "1"
            begun = gate.begun
            clock.advance(DELIVERY_LEASE + 1)  # before that a resend is told "in progress"
            resent = await client.get("/articles/a", headers=auth(cid, payment))
            assert resent.status_code == 200, resent.text
            assert gate.begun > begun  # served only after a new fsync succeeded
    finally:
        await writer.aclose()
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 1  # charged once


def _digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


async def test_the_loops_commits_leave_the_checkpoint_to_its_thread(sqlite_store: Store) -> None:
    """SQLite checkpoints on the connection whose commit fills the WAL past 1,000 pages,
    inside that commit: on the loop, two syncs and the copying (bench/tail.py: 2-4 ms each,
    ~5 a second at half load). The loop's commits must never do it: with the checkpoint
    thread idle, the database file stays as it was however large the WAL grows."""
    store = sqlite_store
    cards = issue_chain_cards(store, 40, units=50)
    writer = StoreWriter(store, checkpoint_every=3600)  # the thread never runs here
    wal = store.wal_file()
    database = Path(str(wal.path)[: -len("-wal")])
    before = _digest(database)
    try:
        paid = 0
        while os.stat(wal.path).st_size < 1_200 * 4_096 and paid < 40 * 50:
            card, old = cards[paid % 40], paid // 40
            challenge = paid.to_bytes(4, "big") * 8
            assert await writer.run_hot(_pay(card.card_id, old, challenge)) == "won"
            paid += 1
        assert writer._thread is None  # every batch committed on the loop
        assert _digest(database) == before  # nothing checkpointed into the database file
        assert os.stat(wal.path).st_size >= 1_200 * 4_096  # past SQLite's 1,000 pages
    finally:
        await writer.aclose()
        wal.close()


async def test_the_checkpoint_thread_copies_the_payments_into_the_database_file(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """Nudged by the fsyncs, the checkpoint thread copies what the loop committed into the
    database file: a copy of that file alone (no WAL) holds the payments."""
    store = sqlite_store
    cards = issue_chain_cards(store, 40)
    paid, later = cards[:3], iter(cards[3:])
    writer = StoreWriter(store, checkpoint_every=0)
    database = Path(str(store.wal_file().path)[: -len("-wal")])
    attempts = iter(range(1_000_000))
    challenges = [bytes([7, n]) * 16 for n in range(len(paid))]

    def copied() -> bool:
        # A new file each time: opening a copy leaves its own -wal and -shm behind,
        # which a later copy of the database file must not be read with.
        alone = tmp_path / f"alone-{next(attempts)}.sqlite"
        alone.write_bytes(database.read_bytes())
        try:
            copy = open_store(str(alone), create=False)
        except Exception:  # copied while the checkpoint wrote it: try again
            return False
        try:
            return all(copy.challenge_used(c) for c in challenges)
        finally:
            copy.close()

    try:
        for card, challenge in zip(paid, challenges, strict=True):
            assert await writer.run_hot(_pay(card.card_id, 0, challenge)) == "won"
        # A commit that met a running checkpoint went to the writer thread (no fsync of
        # ours, so no nudge): the loop's next payments nudge the checkpoint again.
        for n, card in enumerate(later):
            if copied():
                break
            assert await writer.run_hot(_pay(card.card_id, 0, bytes([8, n]) * 16)) == "won"
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the payments never reached the database file")
    finally:
        await writer.aclose()


async def test_the_checkpoint_thread_waits_seconds_between_checkpoints(
    sqlite_store: Store,
) -> None:
    """Each checkpoint slows the payments that meet it (bench/tail.py, FULL checkpoints:
    10-40 ms each; every 0.5 s, the slowest 1% of payments overlapped one in 25-96% of
    cases, while 1.8-2.3% of all payments did; PASSIVE passes every 2 s: 54-76% of the
    slowest 1%). At most one every ``CHECKPOINT_EVERY`` seconds (5): a second and a half
    of payments on the loop, every one fsynced (each fsync nudges the thread), makes
    none."""
    store = sqlite_store
    cards = issue_chain_cards(store, 40, units=50)
    writer = StoreWriter(store)
    assert writer._wal is not None
    checkpointer = writer._wal._checkpointer
    assert checkpointer is not None
    started, paid = time.monotonic(), 0
    try:
        while time.monotonic() - started < 1.5:
            card, old = cards[paid % 40], paid // 40
            challenge = paid.to_bytes(4, "big") * 8
            assert await writer.run_hot(_pay(card.card_id, old, challenge)) == "won"
            paid += 1
            await asyncio.sleep(0.002)
        assert checkpointer.done == 0
        assert writer._thread is None  # so no commit met one and went to the writer thread
    finally:
        await writer.aclose()


def _pinned_reader(database: Path) -> sqlite3.Connection:
    """A connection reading the store's snapshot of now until it is closed (a long report,
    a deposit run): a checkpoint cannot copy the frames committed after it."""
    reader = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM szm_cards").fetchall()
    return reader


def test_a_checkpoint_beside_an_old_reader_leaves_the_loops_commits_alone(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FULL checkpoint holds new writers off while it waits for the writer of the moment
    and for readers of older snapshots, and while it copies: the loop's commit found the
    store busy and went to the writer thread, which waited (bench/tail.py: 17-70 ms every
    5 s, 22-32% of the slowest 1% of payments met one). The checkpoint thread now copies in
    PASSIVE passes, which never hold a writer off: with a reader pinned on an old snapshot
    and the checkpoint free to wait for it as long as it likes, the loop's connection
    commits every payment at once."""
    monkeypatch.setattr(_walsync, "CHECKPOINT_WAIT_MS", 10_000)
    store = sqlite_store
    cards = issue_chain_cards(store, 24)
    wal = store.wal_file(checkpoint_every=0)
    reader = _pinned_reader(Path(str(wal.path)[: -len("-wal")]))
    checkpointer = wal._checkpointer
    assert checkpointer is not None
    refused = 0
    try:
        for n, card in enumerate(cards[:4]):  # committed after the reader's snapshot
            with store.hot_batch() as hot:
                assert _pay(card.card_id, 0, bytes([5, n]) * 16)(hot) == "won"
        wal.sync()  # nudges the checkpoint thread
        for n, card in enumerate(cards[4:]):
            try:
                with store.hot_batch_unsynced() as hot:
                    assert _pay(card.card_id, 0, bytes([6, n]) * 16)(hot) == "won"
            except Conflict:
                refused += 1
            time.sleep(0.02)
    finally:
        reader.close()
        wal.close()  # joins the checkpoint thread
    assert refused == 0  # 20 of 20 refused (busy) before
    assert checkpointer.done == 1


def test_the_wal_file_is_cut_back_once_the_wal_starts_again(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite writes a restarted WAL over its old frames and never shortens the file: it
    kept the size of the most frames it ever held (~90 MB after 5 s at 2,500 payments a
    second; more after a long reader held the checkpoints back). Every connection now sets
    ``journal_size_limit`` (``WAL_SIZE_LIMIT``, lowered here so the test writes little):
    the first commit after a checkpoint let the WAL start again cuts the file back."""
    limit = 8 * 2**20
    monkeypatch.setattr(_engine, "WAL_SIZE_LIMIT", limit)  # for connections opened from now
    store = sqlite_store
    cards = issue_chain_cards(store, 2)
    wal = store.wal_file(checkpoint_every=0)
    checkpointer = wal._checkpointer
    assert checkpointer is not None
    # A burst of commits with no checkpoint: the WAL file grows past the limit.
    bulk = sqlite3.connect(Path(str(wal.path)[: -len("-wal")]), isolation_level=None)
    bulk.execute("PRAGMA wal_autocheckpoint=0")
    bulk.execute("CREATE TABLE burst (b BLOB)")
    for _ in range(limit // 2**20 + 8):
        bulk.execute("INSERT INTO burst VALUES (randomblob(1048576))")
    bulk.execute("DROP TABLE burst")
    bulk.close()
    assert os.stat(wal.path).st_size > limit + 4 * 2**20
    try:
        wal.sync()  # nudges the checkpoint thread
        for _ in range(1_000):
            if checkpointer.done:
                break
            time.sleep(0.01)
        assert checkpointer.done == 1
        with store.hot_batch_unsynced() as hot:  # the loop's next commit restarts the WAL
            assert _pay(cards[0].card_id, 0, b"\x0b" * 32)(hot) == "won"
        assert os.stat(wal.path).st_size <= limit  # it kept its 33 MB before
    finally:
        wal.close()


def _no_connection() -> sqlite3.Connection:
    raise AssertionError("the checkpoint thread was started")


def test_a_wal_past_its_bound_that_passes_cannot_copy_gets_a_restart(sqlite_store: Store) -> None:
    """PASSIVE passes cannot copy frames a reader of an older snapshot still needs: a WAL
    they leave past ``restart_pages`` frames gets a RESTART checkpoint (writers held off
    while it waits, at most ``CHECKPOINT_WAIT_MS``); one within its bound does not."""
    store = sqlite_store
    cards = issue_chain_cards(store, 8)
    database = Path(str(store.wal_file().path)[: -len("-wal")])
    reader = _pinned_reader(database)
    try:
        for n, card in enumerate(cards):  # committed after the reader's snapshot
            with store.hot_batch() as hot:
                assert _pay(card.card_id, 0, bytes([12, n]) * 16)(hot) == "won"
        for bound, restarts in ((1_000_000, 0), (1, 1)):
            connection = sqlite3.connect(database, isolation_level=None)
            connection.execute("PRAGMA busy_timeout=20")
            # Never started: the test runs its checkpoint on its own connection.
            checkpointer = _walsync.Checkpointer(_no_connection, restart_pages=bound)
            checkpointer._checkpoint(connection)
            connection.close()
            assert (checkpointer.done, checkpointer.restarts) == (1, restarts)
    finally:
        reader.close()


def test_a_checkpoint_whose_passes_commits_outrun_ends_with_a_restart(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At peak a commit lands during every PASSIVE pass (commits every 1-2 ms, a pass
    2-4 ms): the passes never find the WAL still, no writer can start it again, and it
    grew from checkpoint to checkpoint (64,000 frames, ~260 MB, in one bench.tail run).
    With no reader holding frames back, a RESTART then copies the few frames left and lets
    the next commit start the WAL again. One pass stands in for passes that commits
    always outran."""
    monkeypatch.setattr(_walsync, "CATCH_UP_PASSES", 1)
    store = sqlite_store
    cards = issue_chain_cards(store, 4)
    database = Path(str(store.wal_file().path)[: -len("-wal")])
    for n, card in enumerate(cards):
        with store.hot_batch() as hot:
            assert _pay(card.card_id, 0, bytes([13, n]) * 16)(hot) == "won"
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=20")
        checkpointer = _walsync.Checkpointer(_no_connection)  # its checkpoint run here
        checkpointer._checkpoint(connection)
        assert (checkpointer.done, checkpointer.restarts) == (1, 1)  # (1, 0) before
    finally:
        connection.close()
