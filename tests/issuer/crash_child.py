"""Child process of the crash test: runs one HLL deposit and stops inside its transaction.

``python -m tests.issuer.crash_child STORE KEYS BATCH_FILE MARKER`` deposits the batch
(its bytes, then the 32-byte tag, in BATCH_FILE). After the first spend is recorded, still
inside the transaction, it creates MARKER and sleeps, waiting for the test to SIGKILL it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from farthing.core.clock import SystemClock
from farthing.issuer import IssuerConfig, build_services, load_issuer_keys
from farthing.store import open_store

_TAG_LEN = 32


def main(target: str, keys: str, batch_file: str, marker: str) -> None:
    def stop_here(recorded: int) -> None:
        Path(marker).write_text(str(recorded))
        time.sleep(120)  # the test kills us long before this returns

    config = IssuerConfig(keys=load_issuer_keys(keys))
    store = open_store(target, create=False)
    services = build_services(
        config, store, clock=SystemClock(), rng=os.urandom, on_spend_recorded=stop_here
    )
    payload = Path(batch_file).read_bytes()
    services.hll.deposit(payload[:-_TAG_LEN], payload[-_TAG_LEN:])
    raise SystemExit("the deposit finished: the test should have killed this process")


if __name__ == "__main__":
    main(*sys.argv[1:5])
