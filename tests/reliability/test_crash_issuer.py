"""SIGKILL the issuer at random moments under load, again and again (heavy).

The issuer (1 uvicorn worker) and a vendor (hll:mac online: every purchase is verified and
settled by the issuer before delivery; payword, redeemed by the vendor's background task
every second) share one store. While the issuer is killed ``FARTHING_CRASH_KILLS`` times
(default 20) and restarted:

- two clients buy with HLL cards (online) and PayWord at the vendor;
- a merchant deposits batches of deferred HLL purchases, re-sending a batch whose answer
  was lost until one comes (the issuer is idempotent by batch id);
- an operator cashes in to a customer with unique references, re-sending on a lost answer.

Afterwards: every HLL purchase the vendor delivered is settled at the bank, once, and the
bank charged each card exactly its settled purchases; every deposited item is credited
exactly once; every cash-in counted once; every PayWord commitment redeemed exactly up to
the vendor's ``spent``; the merchant is owed exactly the sum; the ledger balances.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.schemes import hll
from tests.reliability.conftest import BACKENDS, store_target
from tests.reliability.load import Payer, Sent, deposit_until_done, run_while_killing
from tests.reliability.procs import Server, issuer_server, vendor_server
from tests.reliability.world import (
    ACTOR,
    MERCHANT_ID,
    PRICE_UNITS,
    UNIT,
    HllHolder,
    World,
    build_world,
    hll_offer,
)

KILLS = int(os.environ.get("FARTHING_CRASH_KILLS", "20"))
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.xdist_group("reliability-servers"),
    pytest.mark.timeout(120 + 30 * KILLS),
]
BATCH_ITEMS = 10


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
        folder, target, hll_mode="online", issuer_url=issuer.base, deposit_interval=1
    )
    vendor = vendor_server(world.config_path, workers=1, log_path=folder / "vendor.log")
    with issuer, vendor:
        yield world, issuer, vendor
    world.close()


@dataclass
class Merchant:
    """Deposits batches of deferred purchases, re-sending one until it is answered."""

    world: World
    base: str
    card: HllHolder
    counter: int = 0
    credited: dict[str, int] = field(default_factory=dict)
    items: int = 0
    resent: int = 0

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not stop.is_set():
                self._deposit(client, self._batch(), stop)

    def _batch(self) -> dict[str, str]:
        world, items = self.world, []
        for _ in range(BATCH_ITEMS):
            self.counter += 1
            offer = hll_offer(b64url_encode(world.rng(40)), world.clock.now() + 300, good="/x")
            purchase = hll.decode_payment(self.card.pay(offer, self.counter))
            items.append(hll.DepositItem(offer=offer, purchase=purchase))
        batch = hll.DepositBatch(
            batch_id=world.rng(16), merchant_id=MERCHANT_ID, items=tuple(items)
        )
        return {
            "batch": b64url_encode(hll.encode_batch(batch)),
            "tag": b64url_encode(hll.batch_tag(world.merchant_key, batch)),
        }

    def _deposit(self, client: httpx.Client, body: dict[str, str], stop: threading.Event) -> None:
        for attempt in range(1000):
            try:
                response = client.post("/v1/hll/deposits", json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code < 500:
                assert response.status_code == 200, response.text
                answer = response.json()
                assert len(answer["accepted"]) == BATCH_ITEMS, answer
                self.credited[answer["batch_id"]] = answer["credited_micros"]
                self.items += BATCH_ITEMS
                self.resent += attempt
                return
            time.sleep(0.2)
        pytest.fail("a deposit was never answered")


@dataclass
class Operator:
    """Cashes in with unique references, re-sending a reference until it is answered."""

    base: str
    token: str
    loaded: int = 0
    resent: int = 0

    def run(self, stop: threading.Event) -> None:
        headers = {"authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base, timeout=10, headers=headers) as client:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"amount_micros": 1000 + n, "reference": f"cash-{n}"}
                self._load(client, body)
                time.sleep(0.05)

    def _load(self, client: httpx.Client, body: dict[str, object]) -> None:
        for attempt in range(1000):
            try:
                response = client.post("/v1/customers/bob/loads", json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code < 500:
                assert response.status_code == 201, response.text
                self.loaded += int(str(body["amount_micros"]))
                self.resent += attempt
                return
            time.sleep(0.2)
        pytest.fail("a cash-in was never answered")


def test_sigkilled_issuer_settles_everything_exactly_once(
    deployment: tuple[World, Server, Server],
) -> None:
    world, issuer, vendor = deployment
    world.services.accounts.create_customer(ACTOR, "bob", "EUR")
    payers = [Payer(world, vendor.base, ("hll:mac", "payword"), seed=n) for n in range(2)]
    for payer in payers:
        payer.equip(units=60_000)
    merchant = Merchant(world, issuer.base, world.hll_cards(1, units=10**6)[0])
    operator = Operator(issuer.base, world.operator_token)
    jobs = [*(functools.partial(_pay, p) for p in payers), merchant.run, operator.run]
    errors = run_while_killing(issuer, jobs, KILLS, join_timeout=120)
    sent = [s for p in payers for s in p.sent]
    print(  # the numbers docs/reliability.md reports (pytest -s)
        f"issuer crash: {issuer.starts - 1} kills; {len(sent)} vendor payments "
        f"{_outcomes(sent)}; {len(merchant.credited)} deposits of {BATCH_ITEMS} "
        f"({merchant.resent} re-sent); cash-ins re-sent {operator.resent}"
    )
    assert errors == []
    assert issuer.starts - 1 == KILLS
    assert [s for s in sent if s.outcome in ("refused", "corrupt")] == []
    online = sum(_check_online(world, payer) for payer in payers)
    assert sum(merchant.credited.values()) == merchant.items * PRICE_UNITS * UNIT
    assert (
        world.services.hll.card(merchant.card.card_id).spent_units == merchant.items * PRICE_UNITS
    )
    assert world.services.accounts.customer("bob").available_micros == operator.loaded
    deposit_until_done(world, issuer.base)
    redeemed = sum(_check_payword(world, payer) for payer in payers)
    owed = world.services.accounts.merchant(MERCHANT_ID).owed_micros
    assert owed == (online + merchant.items * PRICE_UNITS + redeemed) * UNIT
    check = world.store.check_ledger()
    assert check.balanced, check.problems


def _pay(payer: Payer, stop: threading.Event) -> None:
    with httpx.Client(base_url=payer.base, timeout=15) as client:
        payer.run(client, stop)


def _outcomes(sent: list[Sent]) -> dict[str, int]:
    return {o: sum(s.outcome == o for s in sent) for o in ("paid", "unknown", "refused")}


def _check_online(world: World, payer: Payer) -> int:
    """Delivered implies settled; settled implies delivered or answer lost; the card was
    charged exactly what was settled. Returns the settled units."""
    holder = payer.holders["hll:mac"]
    assert isinstance(holder, HllHolder)
    history = [s for s in payer.sent if s.key == holder.key]
    delivered = {s.index for s in history if s.outcome == "paid"}
    unknown = {s.index for s in history if s.outcome == "unknown"}
    with world.store.transaction(readonly=True) as tx:
        settled = {s.index for s in history if tx.hll.spend(holder.card_id, s.index) is not None}
    assert delivered <= settled, sorted(delivered - settled)[:10]
    assert settled <= delivered | unknown
    charged = world.services.hll.card(holder.card_id).spent_units
    assert charged == PRICE_UNITS * len(settled)
    return charged


def _check_payword(world: World, payer: Payer) -> int:
    holder = payer.holders["payword"]
    spent = world.spent(holder)
    with world.store.transaction(readonly=True) as tx:
        redemption = tx.payword.redemption(b64url_decode(holder.key))
    credited = 0 if redemption is None else redemption.credited_units
    assert credited == spent
    return spent
