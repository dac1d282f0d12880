"""Crash safety and concurrency of the wallet file, with real processes.

A child process opens the wallet and pays in a loop, printing each index as soon as
``pay()`` returns (the moment the payment could leave the machine). It is SIGKILLed at a
random moment. Whatever it printed must never be paid again: the next payment's index is
above every printed one, and no index repeats. Two children paying with one card at the
same time never get the same index either.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge
from farthing.testing import DeterministicRandom
from farthing.wallet.wallet import Wallet

PASSPHRASE = "crash test"
URL = "https://news.test/articles/a"
CARD_UNITS = 100_000

PAYER = """
import os, sys
import time
from farthing.core.errors import CardInFlight
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge
from farthing.wallet.testing import cheap_wallet_kdf, taken
from farthing.wallet.wallet import Wallet

path, count = sys.argv[1], int(sys.argv[2])
challenge = Challenge(
    id="cid", realm="news", method="szmchain", intent="charge",
    request=SzmRequest(amount=1000, currency="EUR", resource="/articles/*").to_json(),
    expires=4_000_000_000,
)
with cheap_wallet_kdf(), Wallet.open(path, os.environ["FARTHING_WALLET_PASSPHRASE"]) as wallet:
    print("ready", flush=True)
    for _ in range(count):
        while True:
            try:
                payment = wallet.pay("https://news.test/articles/a", [challenge])
                break
            except CardInFlight:  # the other payer's payment is in flight
                time.sleep(0.001)
        print(payment.index, flush=True)
        taken(wallet, payment)
"""


def challenge() -> Challenge:
    return Challenge(
        id="cid",
        realm="news",
        method="szmchain",
        intent="charge",
        request=SzmRequest(amount=1000, currency="EUR", resource="/articles/*").to_json(),
        expires=4_000_000_000,
    )


@pytest.fixture
def wallet_path(tmp_path: Path) -> Path:
    path = tmp_path / "wallet.sqlite"
    _, card = szm_chain.issue_card(
        b"M" * 32,
        DeterministicRandom("crash"),
        length=CARD_UNITS,
        denomination=Denomination(currency="EUR", unit_micros=1000),
        expires_at=2**40,
    )
    with Wallet.create(path, PASSPHRASE) as wallet:
        wallet.add_szm_card(szm_chain.to_card_code(card, realm="news"), site="https://news.test")
    return path


def start_payer(path: Path, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "FARTHING_WALLET_PASSPHRASE": PASSPHRASE}
    return subprocess.Popen(
        [sys.executable, "-c", PAYER, str(path), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        _, err = child.communicate(timeout=30)
        pytest.fail(f"payer did not start: {line!r} {err}")


def printed_indexes(output: str) -> list[int]:
    """Complete lines only: a kill may cut the last one short."""
    lines = output.split("\n")[:-1]
    return [int(line) for line in lines]


def kill_while_paying(path: Path, rng: random.Random) -> list[int]:
    child = start_payer(path, count=1_000_000)
    wait_ready(child)
    time.sleep(rng.uniform(0.0, 0.25))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return printed_indexes(out)


def assert_never_reused(path: Path, printed: list[int]) -> None:
    assert len(printed) == len(set(printed)), "an index was handed out twice"
    with Wallet.open(path, PASSPHRASE) as wallet:
        following = wallet.pay(URL, [challenge()]).index
        positions = [entry.position for entry in wallet.history(limit=10**6)]
    assert following is not None
    assert following > max(printed, default=0)
    assert len(positions) == len(set(positions))
    assert set(printed) <= set(positions)  # each printed payment was durable before it left


def run_kills(path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    printed: list[int] = []
    for _ in range(kills):
        printed += kill_while_paying(path, rng)
        assert_never_reused(path, printed)
        printed.append(max(printed, default=0) + 1)  # the check itself paid the next index
    assert printed, "the payer never got to pay; the test proved nothing"


def test_sigkill_never_reuses_an_index(wallet_path: Path) -> None:
    run_kills(wallet_path, kills=2, seed=1)


@pytest.mark.heavy
@pytest.mark.parametrize("seed", range(3))
def test_many_sigkills_never_reuse_an_index(wallet_path: Path, seed: int) -> None:
    run_kills(wallet_path, kills=15, seed=seed)


def concurrent_payers(path: Path, *, processes: int, each: int) -> list[int]:
    children = [start_payer(path, each) for _ in range(processes)]
    indexes: list[int] = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        indexes += printed_indexes(out.removeprefix("ready\n"))
    return indexes


def test_two_processes_share_one_card_without_collisions(wallet_path: Path) -> None:
    indexes = concurrent_payers(wallet_path, processes=2, each=40)
    assert len(indexes) == 80
    assert sorted(indexes) == list(range(1, 81))
    with Wallet.open(wallet_path, PASSPHRASE) as wallet:
        assert wallet.cards()[0].spent == 80


@pytest.mark.heavy
def test_four_processes_share_one_card_without_collisions(wallet_path: Path) -> None:
    indexes = concurrent_payers(wallet_path, processes=4, each=250)
    assert sorted(indexes) == list(range(1, 1001))
