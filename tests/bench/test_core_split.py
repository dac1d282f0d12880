"""bench.e2e's :class:`CoreSplit`: which core a process's CPU time was spent on (how the
goal report tells PostgreSQL's share of the server's core from its share of wrk's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bench.e2e import CoreSplit

# Spins until it has used this much CPU, however busy the machine is.
_SPIN = "import time\nwhile time.process_time() < 0.3:\n    pass\n"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell apart")
def test_the_cpu_of_a_process_pinned_to_one_core_is_put_on_that_core() -> None:
    core = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", _SPIN])
    with CoreSplit([spinner.pid], every=0.005) as split:
        spinner.wait(timeout=60)
    total = sum(split.seconds.values())
    assert total >= 0.2  # the samples saw most of its 0.3 s (the last look may miss a tick)
    assert split.seconds.get(core, 0.0) == total
