"""Hostile load against real servers, started as ``farthing vendor serve`` and ``farthing
issuer serve`` start them (farthing.serving), on loopback, over raw sockets.

- Slow headers: hundreds of connections that never finish their request headers, with the
  server's file handles lowered (RLIMIT_NOFILE) so that the attack reaches the limit. They
  must be closed after the header timeout, honest requests sent meanwhile must be answered,
  and the server's log must stay small (no traceback per refused accept()).
- Slow bodies: many deposit-size request bodies held open one byte short. The issuer's
  memory (VmRSS of its worker) must stay bounded, the bodies over the budget must be refused
  at once (503), honest requests must be answered, and the held ones closed after the body
  timeout.

The numbers each test measured are printed (``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.procs import Server, issuer_server, rss_kib, vendor_server
from tests.reliability.world import World, build_world

pytestmark = [pytest.mark.xdist_group("reliability-servers"), pytest.mark.timeout(120)]

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
GUARD_ARGS = ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)]
DEPOSITS = "/v1/hll/deposits"
DEPOSIT_LIMIT = 2 * 1024 * 1024  # the issuer's largest body (a deposit batch)
MiB = 1024 * 1024


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path / "world", str(tmp_path / "farthing.sqlite"))
    yield world
    world.close()


@dataclass(frozen=True)
class Target:
    """A server to attack and the honest requests that must keep working: (method, path,
    the statuses that count as answered)."""

    server: Server
    log: Path
    honest: tuple[tuple[str, str, frozenset[int]], ...]


def _vendor(world: World, tmp_path: Path, *, nofile: int | None, args: list[str]) -> Target:
    log = tmp_path / "vendor.log"
    server = vendor_server(world.config_path, workers=1, log_path=log, args=args, nofile=nofile)
    honest = (
        ("GET", "/healthz", frozenset({200})),
        ("GET", "/articles/a.txt", frozenset({402})),  # priced, no payment: a challenge
    )
    return Target(server, log, honest)


def _issuer(
    world: World,
    tmp_path: Path,
    *,
    nofile: int | None,
    args: list[str],
    env: dict[str, str] | None = None,
) -> Target:
    log = tmp_path / "issuer.log"
    server = issuer_server(
        world.target, world.key_file, workers=1, log_path=log, args=args, nofile=nofile, env=env
    )
    honest = (
        ("GET", "/v1/payword/broker", frozenset({200})),
        ("POST", DEPOSITS, frozenset({400, 401, 403, 422})),  # small body, no merchant tag
    )
    return Target(server, log, honest)


TARGETS: dict[str, Callable[..., Target]] = {"vendor": _vendor, "issuer": _issuer}


# --- attackers and honest clients ---------------------------------------------------------


def open_slow_headers(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` connections that send half a request head and stop; (sockets, failures)."""
    held: list[socket.socket] = []
    failed = 0
    for n in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.25)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-%d: " % n)
        except OSError:
            failed += 1
            continue
        held.append(sock)
    return held, failed


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), whatever it sent."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@dataclass
class Honest:
    """Honest requests, each on a new connection, sent in a loop until stopped."""

    base: str
    requests: tuple[tuple[str, str, frozenset[int]], ...]
    answered: int = 0
    failed: int = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            for method, path, expected in self.requests:
                body = b"{}" if method == "POST" else None
                try:
                    response = httpx.request(method, self.base + path, content=body, timeout=3.0)
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if response.status_code in expected:
                    self.answered += 1
                else:
                    self.failed += 1
            stop.wait(0.05)


@contextlib.contextmanager
def honest_traffic(target: Target) -> Iterator[Honest]:
    honest = Honest(target.server.base, target.honest)
    stop = threading.Event()
    thread = threading.Thread(target=honest.run, args=(stop,))
    thread.start()
    try:
        yield honest
    finally:
        stop.set()
        thread.join(timeout=30)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# --- slow headers -------------------------------------------------------------------------


def slow_headers(target: Target, *, attackers: int, hold: float) -> dict[str, Any]:
    server = target.server
    with server:
        log_before = target.log.stat().st_size
        pid = server.worker_pids()[0]
        rss_before = rss_kib(pid)
        with honest_traffic(target) as honest:
            held, failed = open_slow_headers(server.port, attackers)
            rss_attacked = rss_kib(pid)
            try:
                time.sleep(hold)
                closed = sum(closed_by_server(sock) for sock in held)
            finally:
                close_all(held)
        log_growth = target.log.stat().st_size - log_before
    result = {
        "attackers": attackers,
        "connect_failed": failed,
        "closed_by_server": closed,
        "still_open": len(held) - closed,
        "honest_answered": honest.answered,
        "honest_failed": honest.failed,
        "log_growth_bytes": log_growth,
        "rss_growth_mib": round((rss_attacked - rss_before) / 1024, 1),
    }
    print(f"\nslow headers on {server.base}: {result}")
    return result


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_slow_headers_are_closed_and_honest_requests_pass(
    kind: str, world: World, tmp_path: Path
) -> None:
    """300 half-sent request heads against a server with 256 file handles."""
    target = TARGETS[kind](world, tmp_path, nofile=256, args=GUARD_ARGS)
    result = slow_headers(target, attackers=300, hold=HEADER_TIMEOUT + 2.5)
    assert result["still_open"] == 0
    assert result["honest_failed"] == 0
    assert result["honest_answered"] >= 10
    assert result["log_growth_bytes"] < 20_000


@pytest.mark.heavy
@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_two_thousand_slow_headers_with_default_limits(
    kind: str, world: World, tmp_path: Path
) -> None:
    """The attack of the review: 2,000 slow heads, 1,024 file handles, default settings."""
    target = TARGETS[kind](world, tmp_path, nofile=1024, args=[])
    result = slow_headers(target, attackers=2000, hold=10 + 3)
    assert result["still_open"] == 0
    assert result["honest_failed"] == 0
    assert result["log_growth_bytes"] < 50_000


def test_the_header_timeout_holds_on_kept_alive_and_trickling_connections(
    world: World, tmp_path: Path
) -> None:
    """uvicorn's keep-alive timer stops at the first byte of the next request; and a head
    that trickles in a byte at a time is never idle. Both are closed after the header
    timeout all the same."""
    target = _vendor(world, tmp_path, nofile=None, args=GUARD_ARGS)
    with target.server as server:
        kept = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the next head, unfinished
        trickling = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        with contextlib.suppress(OSError):
            for byte in head:
                if time.monotonic() - started > HEADER_TIMEOUT + 2.5:
                    break
                trickling.sendall(bytes([byte]))
                time.sleep(0.25)
        trickled_for = time.monotonic() - started
        closed = [closed_by_server(kept), closed_by_server(trickling)]
        close_all([kept, trickling])
    print(f"\nkept-alive and trickling heads closed: {closed}, trickled for {trickled_for:.1f} s")
    assert closed == [True, True]


# --- slow bodies --------------------------------------------------------------------------


def deposit_head(length: int) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (DEPOSITS.encode(), length)
    )


def answered_at_once(
    socks: list[socket.socket], wait: float
) -> tuple[dict[socket.socket, bytes], float]:
    """The sockets answered within ``wait`` seconds, with the answer's first bytes, and
    the seconds until the last of those answers came."""
    answers: dict[socket.socket, bytes] = {}
    started = time.monotonic()
    last = 0.0
    while (left := started + wait - time.monotonic()) > 0:
        pending = [s for s in socks if s not in answers]
        readable, _, _ = select.select(pending, [], [], left) if pending else ([], [], [])
        if not readable:
            break
        last = time.monotonic() - started
        for sock in readable:
            try:
                answers[sock] = sock.recv(4096)
            except OSError:
                answers[sock] = b""
    return answers, last


def slow_bodies(target: Target, *, bodies: int, sample_for: float, hold: float) -> dict[str, Any]:
    """``bodies`` deposits of 2 MiB minus a byte: heads first, then every body but its last
    byte to the connections not already answered; the worker's RSS sampled meanwhile."""
    length = DEPOSIT_LIMIT - 1
    server = target.server
    with server:
        pid = server.worker_pids()[0]
        rss_before = rss_kib(pid)
        with honest_traffic(target) as honest:
            socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(bodies)]
            try:
                for sock in socks:
                    sock.sendall(deposit_head(length))
                early, early_seconds = answered_at_once(socks, wait=1.0)
                held = [s for s in socks if s not in early]
                chunk = b"[" + b" " * (length - 2)
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.sendall(chunk)
                rss_peak = rss_before
                deadline = time.monotonic() + sample_for
                while time.monotonic() < deadline:
                    rss_peak = max(rss_peak, rss_kib(pid))
                    time.sleep(0.1)
                time.sleep(max(0.0, hold - sample_for))
                closed = sum(closed_by_server(sock) for sock in held)
            finally:
                close_all(socks)
    statuses = sorted({answer[9:12].decode(errors="replace") for answer in early.values()})
    result = {
        "bodies": bodies,
        "refused_at_once": len(early),
        "refused_statuses": ",".join(statuses),
        "refused_within_s": round(early_seconds, 3),
        "held": len(held),
        "held_closed_by_server": closed,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_growth_mib": round((rss_peak - rss_before) / 1024, 1),
        "honest_answered": honest.answered,
        "honest_failed": honest.failed,
    }
    print(f"\nslow bodies on {server.base}: {result}")
    return result


def test_slow_bodies_stay_within_the_budget_and_honest_requests_pass(
    world: World, tmp_path: Path
) -> None:
    """48 deposit-size bodies held open against an issuer with a 16 MiB body budget."""
    target = _issuer(
        world, tmp_path, nofile=None, args=GUARD_ARGS,
        env={"FARTHING_ISSUER_BODY_BUDGET": str(16 * MiB)},
    )  # fmt: skip
    result = slow_bodies(target, bodies=48, sample_for=2.0, hold=BODY_TIMEOUT + 2.0)
    assert result["refused_at_once"] >= 48 - 16 // 2
    assert result["refused_statuses"] == "503"
    assert result["held_closed_by_server"] == result["held"]
    assert result["rss_growth_mib"] < 40
    assert result["honest_failed"] == 0
    assert result["honest_answered"] >= 10


@pytest.mark.heavy
def test_four_hundred_slow_bodies_with_default_limits(world: World, tmp_path: Path) -> None:
    """The attack of the review: 400 deposits of 2 MiB minus a byte, default settings."""
    target = _issuer(world, tmp_path, nofile=None, args=[])
    result = slow_bodies(target, bodies=400, sample_for=3.0, hold=30 + 3.0)
    assert result["held_closed_by_server"] == result["held"]
    assert result["rss_growth_mib"] < 100
    assert result["honest_failed"] == 0
