"""Real servers on loopback for end-to-end tests: uvicorn in a subprocess, on a free port.

Servers bind 127.0.0.1 only, are waited for until they answer, and are always stopped
(terminate, then kill) when the context exits, even if the test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx


def die_with_parent() -> None:
    """``preexec_fn``: the server gets SIGTERM when the test process dies, even by kill -9,
    so no server outlives its test (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_server(
    factory: str,
    *,
    env: Mapping[str, str],
    workers: int = 1,
    log_path: Path | None = None,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
) -> Iterator[str]:
    """Run ``factory`` under uvicorn as ``farthing ... serve`` does (farthing.serving);
    yield its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "farthing.serving", factory, "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--no-access-log",
        "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    with command_server(
        command, port, env=env, log_path=log_path, ready_path=ready_path, timeout=timeout
    ) as base:
        yield base


@contextlib.contextmanager
def command_server(
    command: list[str],
    port: int,
    *,
    env: Mapping[str, str],
    log_path: Path | None = None,
    ready_path: str = "/healthz",
    timeout: float = 30.0,
) -> Iterator[str]:
    """Run a server command that listens on 127.0.0.1:``port``; yield its base URL."""
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, base + ready_path, timeout)
        yield base
    finally:
        _stop(process)
        if log_path is not None:
            log.close()  # type: ignore[union-attr]


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(timeout=10)


@contextlib.contextmanager
def app_server(app: Any, *, timeout: float = 30.0, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app built in this process (so a test can give it its clock and
    randomness) under uvicorn on 127.0.0.1, in a thread, with the protocol ``farthing ...
    serve`` runs (farthing.guard's h11); yield its base URL. Stopped when the context exits.
    ``port``: that one (e.g. one a client was told of while nothing listened there)."""
    import uvicorn

    from farthing.guard import ConnectionLimits, GuardedConfig

    port = port or free_port()
    limits = ConnectionLimits(header_timeout=10.0, body_timeout=10.0, max_connections=100)
    config = GuardedConfig(
        app, limits=limits, host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
