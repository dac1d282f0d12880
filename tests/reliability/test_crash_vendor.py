"""SIGKILL the vendor at random moments under paid load, again and again (heavy).

The vendor (2 uvicorn workers, SQLite or PostgreSQL, every method with hll:mac deferred,
its background deposit task every second) and the issuer (1 worker, same store) run as
process groups on loopback. Four client threads pay round robin with their own cards,
like wallets: an index or counter is never sent twice, and an answer that does not come
is "unknown". The vendor's whole process group is SIGKILLed ``FARTHING_CRASH_KILLS`` times
(default 20) at random moments, and started again each time.

Afterwards: no payment was refused (a fresh, valid payment is never turned away, also
not by a restarted worker with a cold cache); every payment answered 200 is recorded in
the store and no unit was accepted twice; every unit the store recorded is covered by a
receipt or by a payment whose answer was lost; every HLL purchase answered 200 is in the
vendor's log and, after deposits, settled at the bank exactly once; every PayWord
commitment is redeemed exactly up to its recorded ``spent``; depositing again credits
nothing; the ledger balances.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode
from tests.reliability.conftest import BACKENDS, store_target
from tests.reliability.load import (
    Payer,
    Sent,
    card_problems,
    deposit_until_done,
    run_while_killing,
)
from tests.reliability.procs import Server, issuer_server, vendor_server
from tests.reliability.world import (
    MERCHANT_ID,
    PRICE_UNITS,
    UNIT,
    HllHolder,
    World,
    build_world,
)

KILLS = int(os.environ.get("FARTHING_CRASH_KILLS", "20"))
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.xdist_group("reliability-servers"),
    pytest.mark.timeout(120 + 30 * KILLS),
]
CLIENTS = 4
METHODS = ("szm:chain", "szm:prbg", "payword", "hll:mac")


@pytest.fixture(params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[World, Server, Server]]:
    folder = tmp_path / "crash"
    folder.mkdir()
    target = store_target(request, request.param, folder)
    issuer = issuer_server(
        target, folder / "issuer.keys.json", workers=1, log_path=folder / "issuer.log"
    )
    world = build_world(
        folder, target, hll_mode="deferred", issuer_url=issuer.base, deposit_interval=1
    )
    vendor = vendor_server(world.config_path, workers=2, log_path=folder / "vendor.log")
    with issuer, vendor:
        yield world, issuer, vendor
    world.close()


def test_sigkilled_vendor_loses_nothing_and_accepts_nothing_twice(
    deployment: tuple[World, Server, Server], request: pytest.FixtureRequest
) -> None:
    world, issuer, vendor = deployment
    payers = [Payer(world, vendor.base, METHODS, seed=n) for n in range(CLIENTS)]
    for payer in payers:
        payer.equip(units=60_000)
    jobs = [functools.partial(_drive, payer) for payer in payers]
    errors = run_while_killing(vendor, jobs, KILLS)
    sent = [s for p in payers for s in p.sent]
    _report(request, sent, vendor.starts - 1)
    assert errors == []
    assert vendor.starts - 1 == KILLS
    assert [s for s in sent if s.outcome in ("refused", "corrupt")] == []
    assert sum(s.outcome == "paid" for s in sent) > 20 * KILLS
    for payer in payers:
        for method, holder in payer.holders.items():
            history = [s for s in payer.sent if s.key == holder.key]
            if method != "hll:mac":
                assert card_problems(history, world.spent(holder)) == [], method
    deposit_until_done(world, issuer.base)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    hll_units = sum(_check_hll(world, payer) for payer in payers)
    payword_units = sum(_check_payword(world, payer) for payer in payers)
    assert owed == (hll_units + payword_units) * UNIT, "a deposit was credited twice or lost"
    deposit_until_done(world, issuer.base)
    assert world.services.accounts.merchant(MERCHANT_ID).owed_micros == owed
    check = world.store.check_ledger()
    assert check.balanced, check.problems


def _drive(payer: Payer, stop: threading.Event) -> None:
    with httpx.Client(base_url=payer.base, timeout=10) as client:
        payer.run(client, stop)


def _check_hll(world: World, payer: Payer) -> int:
    """Every purchase answered 200 is in the vendor's log and settled once at the bank;
    the bank charged the card exactly what the vendor recorded. Returns those units."""
    holder = payer.holders["hll:mac"]
    assert isinstance(holder, HllHolder)
    history = [s for s in payer.sent if s.key == holder.key]
    answered = {s.index for s in history if s.outcome == "paid"}
    unknown = {s.index for s in history if s.outcome == "unknown"}
    with world.store.transaction(readonly=True) as tx:
        recorded = {
            s.index for s in history if tx.vendor.hll_payment(holder.card_id, s.index) is not None
        }
        settled = {s.index for s in history if tx.hll.spend(holder.card_id, s.index) is not None}
    assert answered <= recorded, sorted(answered - recorded)[:10]
    assert recorded <= answered | unknown
    assert settled == recorded
    charged = world.services.hll.card(holder.card_id).spent_units
    assert charged == PRICE_UNITS * len(recorded)
    return charged


def _check_payword(world: World, payer: Payer) -> int:
    """The broker redeemed the commitment exactly up to what the vendor recorded."""
    holder = payer.holders["payword"]
    spent = world.spent(holder)
    with world.store.transaction(readonly=True) as tx:
        redemption = tx.payword.redemption(b64url_decode(holder.key))
    assert redemption is not None
    assert (redemption.redeemed_index, redemption.credited_units) == (spent, spent)
    return spent


def _report(request: pytest.FixtureRequest, sent: list[Sent], kills: int) -> None:
    outcomes = {o: sum(s.outcome == o for s in sent) for o in ("paid", "unknown", "refused")}
    line = f"vendor crash: {kills} kills, {len(sent)} payments, {outcomes}"
    request.node.user_properties.append(("summary", line))
    print(line)  # the numbers docs/reliability.md reports (pytest -s)
