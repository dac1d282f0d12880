"""Races against a real vendor: 2 uvicorn workers on one store, SQLite and PostgreSQL.

Several processes, each with several threads, send at the same instant (a shared start
time, connections opened beforehand):

- many copies of one payment, each for another URL of the priced route;
- overlapping indexes of one card (2, 4, ..., 12, each twice), so that a later index and an
  earlier one race for the same units.

What must hold, for ``szm:chain``, ``szm:prbg`` and ``payword``: at most one acceptance per
payment and exactly one for the copied one (identical copies for the same URL are retries,
served with the same receipt and charged nothing); no unit accepted twice (receipts' unit ranges
never overlap); the units summed from the receipts equal the card's (commitment's) ``spent``
in the store; every accepted body opens (SZM) or reads (PayWord) as the article asked for;
no answer but 200 and 402; the ledger balances; for PayWord, depositing the commitments at
the broker credits exactly what the store says was spent, once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_decode
from farthing.core.errors import FarthingError
from farthing.core.sealing import open_sealed
from farthing.http.issuer_client import IssuerClient
from farthing.http.payment_auth import Receipt
from farthing.paywall.deposits import Depositor
from farthing.store import Store, open_store
from tests.reliability.conftest import BACKENDS, store_target
from tests.reliability.load import Sent, card_problems
from tests.reliability.procs import ROOT, Server, issuer_server, vendor_server
from tests.reliability.world import (
    ARTICLES,
    MERCHANT_ID,
    UNIT,
    ChainHolder,
    Paid,
    PaywordHolder,
    PrbgHolder,
    World,
    authorization,
    build_world,
    challenge_ids,
    overlapping,
    paid_from_receipt,
    sealed_type,
    units_by_key,
)

pytestmark = pytest.mark.xdist_group("reliability-servers")

PROCESSES = 3
THREADS = 6
SAME_COPIES = 18
OVERLAP_INDEXES = range(2, 14, 2)
OVERLAP_COPIES = 2
CARDS = 4
PATHS = [f"/articles/{name}" for name in ARTICLES]
METHODS = ("szm:chain", "szm:prbg", "payword")

Holder = ChainHolder | PrbgHolder | PaywordHolder


@dataclass(frozen=True)
class Job:
    job: int
    method: str
    path: str
    authorization: str
    key: str
    index: int
    sealing_key: bytes | None


@pytest.fixture(params=BACKENDS)
def vendor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[World, Server]]:
    folder = tmp_path / "races"
    folder.mkdir()
    target = store_target(request, request.param, folder)
    # The broker admits each PayWord commitment before the vendor accepts paywords under it.
    issuer = issuer_server(
        target, folder / "issuer.keys.json", workers=1, log_path=folder / "issuer.log"
    )
    world = build_world(folder, target, issuer_url=issuer.base)
    server = vendor_server(world.config_path, workers=2, log_path=folder / "vendor.log")
    with issuer, server:
        yield world, server
    world.close()


def holders(world: World, method: str) -> list[Holder]:
    if method == "szm:chain":
        return list(world.chain_cards(CARDS))
    if method == "szm:prbg":
        return list(world.prbg_cards(CARDS))
    return list(world.commitments(CARDS))


def make_job(n: int, holder: Holder, index: int, cid: str, method: str, now: int) -> Job:
    path = PATHS[n % len(PATHS)]
    if isinstance(holder, PaywordHolder):
        payment = holder.at(index, now)
        header = authorization(cid, method, payment, commitment=holder.encoded)
        return Job(n, method, path, header, holder.key, index, None)
    payment, key = holder.at(index, now)
    return Job(n, method, path, authorization(cid, method, payment), holder.key, index, key)


def plan(
    world: World, method: str, fresh: Callable[[], Any], now: int, first: int
) -> tuple[list[Job], list[Holder]]:
    """Jobs numbered from ``first``: the copied payment, then the overlapping indexes. Each
    payment has its own challenge (``fresh()``; an id pays once), its copies share it."""
    cards = holders(world, method)
    wanted = [(cards[0], 2)] * SAME_COPIES
    for card in cards[1:]:
        wanted += [(card, i) for i in OVERLAP_INDEXES for _ in range(OVERLAP_COPIES)]
    cids: dict[tuple[str, int], Any] = {}
    jobs = []
    for n, (h, i) in enumerate(wanted):
        cid = cids.get((h.key, i))
        if cid is None:
            cid = cids[(h.key, i)] = fresh()
        jobs.append(make_job(first + n, h, i, cid, method, now))
    return jobs, cards


def blast(
    base: str, jobs: list[Job], folder: Path, *, threads: int = THREADS
) -> list[dict[str, Any]]:
    """Send every job at once from PROCESSES processes of ``threads`` threads each."""
    start_at = time.time() + 1.2  # the blasters need about 0.3 s to start
    children = []
    for p in range(PROCESSES):
        share = [
            {"job": j.job, "path": j.path, "authorization": j.authorization}
            for j in jobs[p::PROCESSES]
        ]
        job = {"base": base, "start_at": start_at, "threads": threads, "requests": share}
        path = folder / f"blast-{p}.json"
        path.write_text(json.dumps(job))
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.blaster", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        children.append(child)
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode(errors="replace")
        results += [json.loads(line) for line in out.decode().splitlines() if line]
    assert len(results) == len(jobs)
    return results


def stored_spent(world: World, holder: Holder) -> int:
    return world.spent(holder)


def check_bodies(method: str, jobs: dict[int, Job], accepted: list[dict[str, Any]]) -> None:
    for result in accepted:
        job = jobs[result["job"]]
        body = b64url_decode(result["body"])
        if job.sealing_key is not None:
            paid = paid_from_receipt(result["receipt"])
            body = open_sealed(
                job.sealing_key,
                body,
                method=method,
                card_id=b64url_decode(job.key),
                index=paid.index,
                resource=job.path,
                status=200,
                content_type=sealed_type(result["receipt"]),
            )
        assert body.decode() == ARTICLES[job.path.rsplit("/", 1)[1]]


def deposit_twice(world: World) -> tuple[int, int]:
    """Stage and flush the vendor's PayWord claims twice; the merchant's owed after each."""

    async def flush() -> None:
        transport = httpx.ASGITransport(app=world.issuer_app())
        client = IssuerClient(
            "http://issuer.test",
            merchant_id=MERCHANT_ID,
            merchant_key=world.merchant_key,
            transport=transport,
        )
        depositor = Depositor(
            world.store, client, clock=SystemClock(), rng=os.urandom,
            merchant_id=MERCHANT_ID, merchant_key=world.merchant_key,
        )  # fmt: skip
        async with client:
            depositor.stage()
            report = await depositor.flush()
        assert report.failed == 0

    owed = []
    for _ in range(2):
        asyncio.run(flush())
        owed.append(world.services.accounts.merchant(MERCHANT_ID).owed_micros)
    return owed[0], owed[1]


def test_one_acceptance_per_unit(vendor: tuple[World, Server]) -> None:
    world, server = vendor
    unpaid = httpx.get(server.base + PATHS[0], timeout=10)
    assert unpaid.status_code == 402
    offered = challenge_ids(unpaid.headers.get_list("www-authenticate"))
    jobs: list[Job] = []
    cards: dict[str, list[Holder]] = {}
    for method in METHODS:
        _, expires = offered[method]

        def fresh(method: str = method) -> Any:
            unpaid = httpx.get(server.base + PATHS[0], timeout=10)
            return challenge_ids(unpaid.headers.get_list("www-authenticate"))[method][0]

        more, cards[method] = plan(world, method, fresh, expires - 300, first=len(jobs))
        jobs += more
    random.Random(1).shuffle(jobs)

    results = blast(server.base, jobs, world.folder)

    statuses = [r["status"] for r in results]
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    by_job = {job.job: job for job in jobs}
    for method in METHODS:
        accepted = [r for r in results if r["status"] == 200 and by_job[r["job"]].method == method]
        check_accepted(world, method, cards[method], by_job, accepted)
    assert world.store.check_ledger().balanced
    first, second = deposit_twice(world)
    spent = sum(stored_spent(world, card) for card in cards["payword"])
    assert first == second == spent * UNIT
    world.services.szm.recognise_revenue("test:reliability", "EUR")
    assert world.store.check_ledger().balanced


def same_payment(one: str, other: str) -> bool:
    """Two receipts for the same payment (a retry's timestamp is its own answer's)."""
    a, b = Receipt.from_header(one), Receipt.from_header(other)
    return (a.method, a.reference, a.extra) == (b.method, b.reference, b.extra)


def check_accepted(
    world: World,
    method: str,
    cards: list[Holder],
    by_job: dict[int, Job],
    accepted: list[dict[str, Any]],
) -> None:
    payments = [(by_job[r["job"]].key, by_job[r["job"]].index) for r in accepted]
    # An identical copy (same credential, same path) of an accepted payment is a retry: served
    # again with the same receipt (but its own timestamp), charged nothing (docs/http.md). A
    # copy for another path is never served. So each payment is served for one path only.
    served = {
        (by_job[r["job"]].key, by_job[r["job"]].index, by_job[r["job"]].path) for r in accepted
    }
    assert len(served) == len(set(payments)), f"{method}: one payment was accepted twice"
    receipts = {
        (key, index): r["receipt"] for (key, index), r in zip(payments, accepted, strict=True)
    }
    assert all(
        same_payment(r["receipt"], receipts[p]) for p, r in zip(payments, accepted, strict=True)
    ), method
    assert (cards[0].key, 2) in payments, f"{method}: the copied payment was not accepted"
    paid = [paid_from_receipt(r["receipt"]) for r in accepted]
    assert [(p.key, p.index) for p in paid] == payments
    paid = [paid_from_receipt(receipt) for receipt in receipts.values()]  # once per payment
    assert overlapping(paid) == [], method
    totals = units_by_key(paid)
    for card in cards:
        assert totals.get(card.key, 0) == stored_spent(world, card), (method, card.key)
    check_bodies(method, by_job, accepted)


def test_the_ledger_checks_can_fail() -> None:
    """The checks the race and crash tests rely on must be able to fail."""
    assert overlapping([Paid("c", 4, 4), Paid("c", 6, 4)]) != []
    assert overlapping([Paid("c", 4, 4), Paid("c", 6, 2), Paid("d", 6, 2)]) == []

    def sent(index: int, outcome: str, units: int = 2) -> Sent:
        paid = Paid("c", index, units) if outcome == "paid" else None
        return Sent(method="szm:chain", key="c", index=index, outcome=outcome, paid=paid)

    assert card_problems([sent(2, "paid"), sent(4, "unknown")], 4) == []  # answer lost
    assert card_problems([sent(2, "paid"), sent(4, "unknown"), sent(6, "paid")], 6) == []
    assert card_problems([sent(2, "paid"), sent(4, "unknown"), sent(6, "paid", 4)], 6) == []
    assert card_problems([sent(2, "paid"), sent(4, "paid")], 2) != []  # 4 not recorded
    assert card_problems([sent(2, "paid"), sent(6, "paid")], 6) != []  # 3..4 unexplained
    assert card_problems([sent(2, "paid"), sent(4, "paid", 4)], 4) != []  # unit 1..2 twice


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_deposit_stagers_racing_all_succeed(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """Every worker of a serving vendor runs the background deposit task, and an operator
    may run ``farthing vendor deposit`` beside them: stagers racing on the same PayWord
    claims must each finish (the claim staged once), not fail on the other's insert."""
    world = build_world(tmp_path, store_target(request, backend, tmp_path))
    commitments = world.commitments(10)
    transport = httpx.ASGITransport(app=world.vendor_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as http:
        for round_ in range(1, 4):
            for holder in commitments:
                unpaid = await http.get(PATHS[0])  # an id pays once: one per payment
                cid = challenge_ids(unpaid.headers.get_list("www-authenticate"))["payword"][0]
                payment = holder.at(2 * round_, world.clock.now())
                header = authorization(cid, "payword", payment, commitment=holder.encoded)
                assert (await http.get(PATHS[0], headers={"authorization": header})).is_success
            errors = await asyncio.to_thread(stage_at_once, world, stagers=4)
            assert errors == [], f"round {round_}: {errors[0]}"
    with world.store.transaction(readonly=True) as tx:
        staged = tx.vendor.outbox_due(2**62, 1000)
    assert len(staged) == 3 * len(commitments)
    world.close()


_STAGE_DEADLINE = 30.0  # seconds; staging 10 claims takes well under one


def stage_at_once(world: World, *, stagers: int) -> list[str]:
    """Run ``stagers`` Depositors' ``stage()`` at one instant; return what went wrong.

    Everything but the staging itself is built here, in one thread: FastAPI's app
    construction swaps the process-wide warning filters (``warnings.catch_warnings`` is
    not thread-safe), so building issuer apps in parallel races on them. Every wait has a
    deadline, so a stager that dies reports instead of leaving the others at the barrier.
    """
    stores = [open_store(world.target, create=False) for _ in range(stagers)]
    depositors = [_depositor(world, store) for store in stores]
    barrier = threading.Barrier(stagers, timeout=_STAGE_DEADLINE)
    errors: list[str] = []

    def stage(depositor: Depositor) -> None:
        try:
            barrier.wait()
            depositor.stage()
        except FarthingError as error:
            errors.append(f"{type(error).__name__}: {error.message}")
        except BaseException as error:  # reported to the test, not lost in a thread
            barrier.abort()
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=stage, args=(d,), daemon=True) for d in depositors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * _STAGE_DEADLINE)
    errors.extend("a stager did not finish" for thread in threads if thread.is_alive())
    for store in stores:
        store.close()
    return errors


def _depositor(world: World, store: Store) -> Depositor:
    return Depositor(
        store, world.bank(), clock=world.clock, rng=os.urandom,
        merchant_id=MERCHANT_ID, merchant_key=world.merchant_key,
    )  # fmt: skip
