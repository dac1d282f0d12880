"""A deposit killed (SIGKILL) inside its transaction leaves the books balanced and the
deposit retryable: sending it again credits every payment exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from farthing.core.schemes import hll
from farthing.issuer import write_key_file
from tests.issuer.helpers import BOTH_BACKENDS, Harness, balanced, buy, deposit_batch, open_shop

pytestmark = BOTH_BACKENDS

_ROOT = Path(__file__).resolve().parents[2]
_WAIT_S = 60.0


def _run_child_until_inside(harness: Harness, tmp_path: Path, payload: bytes) -> None:
    keys, batch_file, marker = tmp_path / "keys.json", tmp_path / "batch", tmp_path / "inside"
    write_key_file(keys, harness.config.keys)
    batch_file.write_bytes(payload)
    log = tmp_path / "child.log"
    with log.open("wb") as output:
        child = subprocess.Popen(
        [sys.executable, "-m", "tests.issuer.crash_child", harness.target, str(keys),
         str(batch_file), str(marker)],
            cwd=_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + _WAIT_S
        while not marker.exists():
            assert child.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the child never reached the transaction"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # mid-transaction: spends written, not committed
    finally:
        child.wait(timeout=_WAIT_S)
    assert child.returncode == -signal.SIGKILL


def test_killed_deposit_rolls_back_and_retries_exactly_once(
    harness: Harness, tmp_path: Path
) -> None:
    shop = open_shop(harness)
    items = [buy(harness, shop, 2), buy(harness, shop, 3), buy(harness, shop, 4)]
    batch, tag = deposit_batch(harness, shop, items)

    _run_child_until_inside(harness, tmp_path, hll.encode_batch(batch) + tag)

    assert balanced(harness)
    with harness.store.transaction(readonly=True) as tx:
        assert tx.hll.spend(shop.card_id, 1) is None  # the recorded spend was rolled back
        card = tx.hll.card(shop.card_id)
    assert card is not None
    assert card.spent_units == 0
    assert harness.services.accounts.merchant("m1").owed_micros == 0

    first = harness.services.hll.deposit(hll.encode_batch(batch), tag)
    again = harness.services.hll.deposit(hll.encode_batch(batch), tag)
    assert (first.replayed, again.replayed) == (False, True)
    assert first.report == again.report
    assert first.report.credited == 9
    assert harness.services.accounts.merchant("m1").owed_micros == 9000
    assert balanced(harness)
