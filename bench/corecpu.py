"""CPU time spent on the server's core, the server's own and the kernel workers' beside it.

A process's CPU time (``/proc/<pid>/stat``) leaves out work the kernel does for it on a
worker thread: a Linux AIO fsync (``IOCB_CMD_FSYNC``) runs on a kworker of the submitting
CPU, where a blocking ``fsync`` ran in the process's own thread. So a change that moves
work there looks cheaper by the process's figure alone. :func:`core_cpu` reads, around a
run, the time on CPU (``/proc/.../schedstat``, nanoseconds) of the server's threads and of
the kworkers bound to the server's CPU (``kworker/N:...``; one started during the run
counts whole).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["CoreCpu", "core_cpu"]


@dataclass(slots=True)
class CoreCpu:
    """CPU seconds over a run, filled when it ends."""

    server: float = 0.0
    kworkers: float = 0.0

    def us_per_request(self, requests: float) -> tuple[float, float]:
        """(server, kworkers) microseconds of CPU per request, over ``requests``."""
        if not requests:
            return 0.0, 0.0
        return self.server / requests * 1e6, self.kworkers / requests * 1e6


def _on_cpu_ns(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # the thread ended meanwhile
        return 0


def _server_ns(pid: int) -> int:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    return sum(_on_cpu_ns(f"/proc/{pid}/task/{tid}/schedstat") for tid in tids)


def _kworkers_ns(cpu: int) -> dict[str, int]:
    prefix = f"kworker/{cpu}:"
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(prefix):
            found[pid] = _on_cpu_ns(f"/proc/{pid}/schedstat")
    return found


@contextmanager
def core_cpu(pid: int, cpu: int) -> Iterator[CoreCpu]:
    """Measure the server ``pid``'s threads and CPU ``cpu``'s kworkers while the body runs."""
    measured = CoreCpu()
    workers, server = _kworkers_ns(cpu), _server_ns(pid)
    try:
        yield measured
    finally:
        later = _kworkers_ns(cpu)
        spent = sum(ns - workers.get(worker, 0) for worker, ns in later.items())
        measured.server = (_server_ns(pid) - server) / 1e9
        measured.kworkers = spent / 1e9
