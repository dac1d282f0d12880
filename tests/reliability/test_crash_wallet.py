"""SIGKILL a wallet in the middle of paying a real vendor, again and again (heavy).

A child process holds the wallet file (one szm:chain card) and buys articles from a
vendor on loopback in a loop, printing every delivered article's receipt. It is SIGKILLed
``FARTHING_WALLET_KILLS`` times (default 20) at random moments and started again.

After every kill, with W the card's index in the wallet file, V the card's ``spent`` at
the vendor and S the units of all receipts the children printed: the vendor never saw an
index the wallet had not written first (V <= W); at most the one payment in flight was
written but not accepted (W - V <= one price); the units gone from the card with no
article delivered for them (W - S) grow by at most one price per kill, the payment in
flight (a unit written ahead but never sent is paid over by the next payment, so it comes
back as part of a later receipt); no index was ever paid twice; and every request of the
next child succeeds (nothing reused).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farthing.core.schemes import szm_chain
from farthing.wallet.wallet import Wallet
from tests.reliability.procs import ROOT, Server, vendor_server
from tests.reliability.world import PRICE_UNITS, REALM, ChainHolder, World, build_world

KILLS = int(os.environ.get("FARTHING_WALLET_KILLS", "20"))
pytestmark = [
    pytest.mark.heavy,
    pytest.mark.xdist_group("reliability-servers"),
    pytest.mark.timeout(120 + 30 * KILLS),
]
PASSPHRASE = "wallet crash test"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[World, Server, Path, ChainHolder]]:
    world = build_world(tmp_path / "world", str(tmp_path / "farthing.sqlite"))
    card = world.chain_cards(1, units=50_000)[0]
    wallet_path = tmp_path / "wallet.sqlite"
    vendor = vendor_server(world.config_path, workers=2, log_path=tmp_path / "vendor.log")
    with Wallet.create(wallet_path, PASSPHRASE) as wallet:
        wallet.add_szm_card(szm_chain.to_card_code(card.card, realm=REALM), site=vendor.base)
    with vendor:
        yield world, vendor, wallet_path, card
    world.close()


def run_child(wallet: Path, base: str, rng: random.Random) -> list[dict[str, object]]:
    """Start a paying child, let it pay for a random while, SIGKILL it; its complete lines."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.wallet_child", str(wallet), base],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FARTHING_WALLET_PASSPHRASE": PASSPHRASE},
    )
    assert child.stdout is not None
    ready = child.stdout.readline()
    if ready.strip() != "ready":
        child.kill()
        pytest.fail(f"the wallet child did not start: {ready!r} {child.communicate()[1]}")
    time.sleep(rng.uniform(0.1, 1.5))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return [json.loads(line) for line in out.split("\n")[:-1] if line]


def wallet_index(path: Path) -> int:
    with Wallet.open(path, PASSPHRASE) as wallet:
        return wallet.cards()[0].spent


def test_a_killed_wallet_neither_reuses_nor_loses_more_than_the_payment_in_flight(
    deployment: tuple[World, Server, Path, ChainHolder],
) -> None:
    world, vendor, wallet, card = deployment
    rng = random.Random(KILLS)
    indexes: list[int] = []
    receipted = 0
    unaccounted = 0  # units gone from the card with no article delivered for them
    steps = []
    for _ in range(KILLS):
        lines = run_child(wallet, vendor.base, rng)
        assert all(line["status"] == 200 and line["ok"] for line in lines), lines
        indexes += [int(str(line["index"])) for line in lines]
        receipted += sum(int(str(line["units"])) for line in lines)
        w, v = wallet_index(wallet), world.spent(card)
        assert v <= w, "the vendor saw an index the wallet had not written"
        assert w - v <= PRICE_UNITS, "more than the payment in flight was written ahead"
        steps.append(w - receipted - unaccounted)
        unaccounted = w - receipted
        assert steps[-1] <= PRICE_UNITS, "a kill lost more than the payment in flight"
    assert indexes == sorted(set(indexes)), "an index was paid twice"
    assert len(indexes) > 2 * KILLS
    print(  # the numbers docs/reliability.md reports (pytest -s)
        f"wallet crash: {KILLS} kills, {len(indexes)} articles, {unaccounted} units gone "
        f"undelivered in all, at most {max(steps)} per kill"
    )
