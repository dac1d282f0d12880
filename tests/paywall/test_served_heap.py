"""The served vendor's factory leaves the heap it built to the garbage collector's
permanent generation: a worker's later full passes scan only what it made since (before, a
full pass scanned the ~105,000 objects of the imports and the app: ~55 ms of CPU on the
loop, 2-4 times per minute at half load, bench/tail.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.paywall.test_uvicorn_workers import write_config

# Run in a fresh interpreter, as a uvicorn worker does: a garbage cycle made before the
# factory must be collected by it, not frozen with the rest (a frozen cycle is never freed).
_WORKER = """
import gc, json, weakref
class Node: pass
cycle = Node(); cycle.me = cycle
dead = weakref.ref(cycle); del cycle
from farthing.paywall.serve import app_from_env
before = gc.get_freeze_count()
app = app_from_env()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "tracked": len(gc.get_objects()), "cycle_freed": dead() is None}))
"""


def test_the_served_factory_freezes_the_heap_it_built(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {**os.environ, "FARTHING_VENDOR_CONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    heap = json.loads(done.stdout.splitlines()[-1])
    assert heap["before"] == 0
    # The imports and the app: tens of thousands of objects, now out of the collector's way;
    # what it still tracks is what was made after the freeze.
    assert heap["frozen"] > 20_000
    assert heap["tracked"] < heap["frozen"] // 10
    assert heap["cycle_freed"] is True
