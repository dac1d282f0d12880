"""Servers the reliability tests can kill: uvicorn process groups on a fixed loopback port.

Unlike ``tests.servers.uvicorn_server`` (start once, always stop), a :class:`Server` can be
SIGKILLed as a whole process group (master and workers, like a power cut of the host's
processes) and started again on the same port. Its workers' RSS can be read from /proc.
The context manager always stops it, even when the test fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from tests.servers import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """``with Server(factory, env=..., workers=2) as server: server.base ...``"""

    def __init__(
        self,
        factory: str,
        *,
        env: Mapping[str, str],
        workers: int = 1,
        log_path: Path | None = None,
        ready_path: str = "/healthz",
        args: Sequence[str] = (),
        nofile: int | None = None,
    ) -> None:
        self._factory = factory
        self._args = list(args)
        self._nofile = nofile
        self._env = {**os.environ, **env}
        self._workers = workers
        self._log_path = log_path
        self._ready_path = ready_path
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable, "-m", "farthing.serving", self._factory, "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", str(self._workers), "--no-access-log",
            "--timeout-graceful-shutdown", "2", *self._args,
        ]  # fmt: skip
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                command,
                env=self._env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=ROOT,
                preexec_fn=functools.partial(_prepare_child, self._nofile),
            )
        finally:
            if self._log_path:
                log.close()  # type: ignore[union-attr]
        self.starts += 1
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited with {self._process.returncode}: {self.log()}")
            if self._answers() and len(self.worker_pids()) >= self._workers:
                return
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log()}")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.base + self._ready_path, timeout=2.0).status_code < 500
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown handler, no flush, no goodbye."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self._reap_group(process.pid)

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group(process.pid)
        self._process = None

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Workers orphaned by a dead master still hold the port: kill what is left and
        wait until no live process of the group remains (zombies do not count)."""
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The serving processes: the master's children, or the master with one worker."""
        if self._process is None:
            return []
        if self._workers == 1:
            return [self._process.pid]
        return [pid for pid in children(self._process.pid) if b"spawn_main" in cmdline(pid)]

    def log(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return self._log_path.read_text(errors="replace")[-3000:]

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _prepare_child(nofile: int | None) -> None:
    """``preexec_fn``: die with the test process, and with ``nofile``, hold at most that
    many file handles (soft and hard limit), so a file-handle attack reaches it quickly."""
    die_with_parent()
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def cmdline(pid: int) -> bytes:
    """The command line of a process (empty if it is gone); uvicorn's workers are
    ``spawn_main`` children, its resource tracker is not."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def vendor_server(
    config: Path,
    *,
    workers: int,
    log_path: Path,
    args: Sequence[str] = (),
    nofile: int | None = None,
) -> Server:
    return Server(
        "farthing.paywall.serve:app_from_env",
        env={"FARTHING_VENDOR_CONFIG": str(config)},
        workers=workers,
        log_path=log_path,
        args=args,
        nofile=nofile,
    )


def issuer_server(
    target: str,
    key_file: Path,
    *,
    workers: int,
    log_path: Path,
    args: Sequence[str] = (),
    nofile: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Server:
    return Server(
        "farthing.issuer.app:app_from_env",
        env={
            "FARTHING_ISSUER_DB": target,
            "FARTHING_ISSUER_KEYS": str(key_file),
            "FARTHING_ISSUER_RATE_LIMIT": "off",
            **(env or {}),
        },
        workers=workers,
        log_path=log_path,
        ready_path="/v1/payword/broker",
        args=args,
        nofile=nofile,
    )
