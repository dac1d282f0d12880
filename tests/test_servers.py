"""The test servers never outlive the test process, even when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("uvicorn")


def test_server_dies_with_a_killed_test_process(tmp_path: Path) -> None:
    from tests.paywall.test_uvicorn_workers import write_config

    config = write_config(tmp_path)
    pid_file = tmp_path / "server.pid"
    program = (
        "import sys, time, os\n"
        "from tests.servers import uvicorn_server\n"
        "import tests.servers as servers\n"
        "real = servers.subprocess.Popen\n"
        "def spy(*a, **k):\n"
        "    p = real(*a, **k)\n"
        f"    open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "    return p\n"
        "servers.subprocess.Popen = spy\n"
        "with uvicorn_server('farthing.paywall.serve:app_from_env',"
        f" env={{'FARTHING_VENDOR_CONFIG': {str(config)!r}}}):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"ready"
    server_pid = int(pid_file.read_text())
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(server_pid, signal.SIGKILL)
    pytest.fail("the server outlived its killed test process")
