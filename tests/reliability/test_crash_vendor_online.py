"""SIGKILL the vendor at random moments while it verifies HLL purchases online (heavy).

The vendor (1 uvicorn worker, hll:mac online) and the issuer (1 worker) share one store on
loopback. The vendor takes each purchase's challenge id, then its bank client sends the
purchases asked for together in one call: a kill can fall before the take, between the
take and the bank's answer, or after the bank settled and before the vendor answered.
Four client threads buy with their own cards; the vendor is SIGKILLed
``FARTHING_CRASH_KILLS`` times (default 20) and started again each time. Afterwards every
request whose answer was lost is sent again, as a wallet does.

Then: no purchase was refused; every resend is served (200, as a retry: no new charge);
every delivered purchase is settled at the bank once and every settled one was
delivered; each card was charged exactly its settled purchases; the merchant is owed
exactly their sum; the ledger balances.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import BACKENDS, store_target
from tests.reliability.load import Payer, Sent, run_while_killing
from tests.reliability.procs import Server, issuer_server, vendor_server
from tests.reliability.world import MERCHANT_ID, PRICE_UNITS, UNIT, HllHolder, World, build_world

KILLS = int(os.environ.get("FARTHING_CRASH_KILLS", "20"))
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.xdist_group("reliability-servers"),
    pytest.mark.timeout(120 + 30 * KILLS),
]
CLIENTS = 4


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
    world = build_world(folder, target, hll_mode="online", issuer_url=issuer.base)
    vendor = vendor_server(world.config_path, workers=1, log_path=folder / "vendor.log")
    with issuer, vendor:
        yield world, issuer, vendor
    world.close()


def test_sigkilled_online_vendor_settles_each_purchase_once_and_serves_its_resend(
    deployment: tuple[World, Server, Server],
) -> None:
    world, _issuer, vendor = deployment
    payers = [Payer(world, vendor.base, ("hll:mac",), seed=n) for n in range(CLIENTS)]
    for payer in payers:
        payer.equip(units=60_000)
    jobs = [functools.partial(_pay, payer) for payer in payers]
    errors = run_while_killing(vendor, jobs, KILLS)
    sent = [s for p in payers for s in p.sent]
    unknown = [s for s in sent if s.outcome == "unknown"]
    resent = _resend(vendor.base, unknown)
    print(  # pytest -s
        f"online vendor crash: {vendor.starts - 1} kills; {len(sent)} purchases, "
        f"{len(unknown)} answers lost, resent: {resent}"
    )
    assert errors == []
    assert vendor.starts - 1 == KILLS
    assert [s for s in sent if s.outcome in ("refused", "corrupt")] == []
    assert sum(s.outcome == "paid" for s in sent) > 10 * KILLS
    assert set(resent) <= {200}, resent
    settled = sum(_check(world, payer) for payer in payers)
    assert world.services.accounts.merchant(MERCHANT_ID).owed_micros == settled * UNIT
    check = world.store.check_ledger()
    assert check.balanced, check.problems


def _pay(payer: Payer, stop: threading.Event) -> None:
    with httpx.Client(base_url=payer.base, timeout=10) as client:
        payer.run(client, stop)


def _resend(base: str, lost: list[Sent]) -> dict[int, int]:
    """Each request whose answer was lost, sent again as it was: status -> count."""
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=base, timeout=15) as client:
        for record in lost:
            status = client.get(record.path, headers={"authorization": record.header}).status_code
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                record.outcome = "paid"
    return statuses


def _check(world: World, payer: Payer) -> int:
    """Delivered (at first or on resend) is exactly settled; the card charged exactly the
    settled purchases. Returns the settled units."""
    holder = payer.holders["hll:mac"]
    assert isinstance(holder, HllHolder)
    history = [s for s in payer.sent if s.key == holder.key]
    delivered = {s.index for s in history if s.outcome == "paid"}
    with world.store.transaction(readonly=True) as tx:
        settled = {s.index for s in history if tx.hll.spend(holder.card_id, s.index) is not None}
    assert delivered == settled, (sorted(delivered - settled)[:10], sorted(settled - delivered))
    charged = world.services.hll.card(holder.card_id).spent_units
    assert charged == PRICE_UNITS * len(settled)
    return charged
