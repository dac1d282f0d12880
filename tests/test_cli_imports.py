"""`import farthing.cli` (what every `farthing` command, and each worker process of
`farthing vendor serve`, loads first) leaves the demo and the issuer's app unloaded: they
cost ~0.6 s of CPU per process (1.7 s before, 1.1 s after, measured here)."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_does_not_load_the_demo_nor_the_issuer_app() -> None:
    code = (
        "import sys, farthing.cli; "
        "print([m for m in ('farthing.demo', 'farthing.issuer.app') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
