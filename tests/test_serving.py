"""farthing.serving: multi-worker servers keep TCP_NODELAY, `farthing vendor serve`
serves a folder with several workers, the file limit is raised and the connection cap fits
below it, and the serve flags reach the server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from farthing.cli import app
from farthing.issuer.config import generate_issuer_keys, write_key_file
from farthing.serving import RESERVED_FILES, fit_to_file_limit, listening_socket
from farthing.store import open_store
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("uvicorn")


def test_the_listening_socket_is_tcp_so_connections_get_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets that say IPPROTO_TCP; uvicorn's
    own multi-worker socket says 0, which leaves Nagle on (~40 ms per keep-alive request)."""
    sock = listening_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            port = sock.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            result = await asyncio.wait_for(seen, timeout=10)
            writer.close()
        return result

    assert asyncio.run(accepted_nodelay()) == 1


def test_vendor_serve_runs_two_workers_under_the_limits_given(tmp_path: Path) -> None:
    """Two workers keep one keep-alive connection fast, and ``--header-timeout`` reaches
    them: a head that never ends is closed after it, a head sent in pieces within it is
    answered."""
    folder = tmp_path / "shop"
    (folder / "articles").mkdir(parents=True)
    (folder / "articles" / "a.txt").write_text("article a")
    keys = tmp_path / "issuer.keys.json"
    write_key_file(keys, generate_issuer_keys(os.urandom, broker_id="b", bbs_bits=2048))
    issuer_db = tmp_path / "issuer.sqlite"
    open_store(str(issuer_db)).close()  # as `farthing issuer init` leaves it
    init = [
        "vendor",
        "init",
        str(folder),
        "--issuer-keys",
        str(keys),
        "--issuer-db",
        str(issuer_db),
    ]
    made = CliRunner().invoke(app, init)
    assert made.exit_code == 0, made.output
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve", str(folder),
        "--port", str(port), "--workers", "2", "--header-timeout", "1",
    ]  # fmt: skip
    with (
        command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        priced = [client.get("/articles/a.txt") for _ in range(3)]  # one keep-alive connection
        missing = client.get("/articles/none.txt")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = slow.recv(1024)  # b"": closed by the server, nothing sent
            waited = time.monotonic() - started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as patient:
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                patient.sendall(piece)
                time.sleep(0.2)
            answer = patient.recv(1024)
    assert [r.status_code for r in priced] == [402, 402, 402]
    assert missing.status_code == 404
    assert closed == b""
    assert 0.9 < waited < 5
    assert answer.startswith(b"HTTP/1.1 200 ")


@given(files=st.integers(min_value=256, max_value=1 << 21), requested=st.none() | st.integers(1))
def test_connections_and_accept_batches_fit_below_the_file_limit(
    files: int, requested: int | None
) -> None:
    """asyncio accepts up to ``backlog`` connections at one wake-up before the protocol can
    close any: with four such batches, every connection holding a second handle, and the
    reserve, the process never runs out of file handles (accept() never fails EMFILE)."""
    capacity = fit_to_file_limit(files, requested)
    assert 2 * capacity.max_connections + 4 * capacity.backlog + RESERVED_FILES <= files
    assert capacity.max_connections >= 1
    assert capacity.lowered == (requested is not None and requested > capacity.max_connections)


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    """A child whose soft limit is 256 under a hard one of 512 gets 512 (what the worker
    processes then inherit)."""
    code = (
        "import resource; from farthing.serving import raise_file_limit; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512)); "
        "print(raise_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["512", "512"]


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when (monotonic)."""
    sock.settimeout(seconds)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()


def _server_pid(port: str) -> int:
    """The process serving ``tests.serving_app:app`` on ``port``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tests.serving_app:app" in argv and port.encode() in argv:
                return int(entry.name)
    raise LookupError("no server process")


@pytest.mark.parametrize("http", ["default", "h11"])
def test_both_protocols_keep_the_guard(http: str, tmp_path: Path) -> None:
    """The default server (httptools on uvloop) and ``--http h11`` alike: a head that
    never ends and a body that never ends are closed after their timeouts, a head over
    16 KiB is answered 400 and closed (llhttp alone has no limit), honest requests pass."""
    port = free_port()
    command = [
        sys.executable, "-m", "farthing.serving", "tests.serving_app:app", "--port", str(port),
        "--header-timeout", "1", "--body-timeout", "1",
        *([] if http == "default" else ["--http", http]),
    ]  # fmt: skip
    with (
        command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base,
        socket.create_connection(("127.0.0.1", port), timeout=10) as slow_head,
        socket.create_connection(("127.0.0.1", port), timeout=10) as slow_body,
        socket.create_connection(("127.0.0.1", port), timeout=10) as big_head,
    ):
        sent = time.monotonic()
        slow_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        slow_body.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12345")
        big_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
        big_answer, _ = _closed_within(big_head, 5)
        head_answer, head_closed = _closed_within(slow_head, 5)
        body_answer, body_closed = _closed_within(slow_body, 5)
        honest = httpx.post(base + "/echo", content=b"x" * 50_000, timeout=10)
        maps = Path(f"/proc/{_server_pid(str(port))}/maps").read_text()
    assert big_answer.startswith(b"HTTP/1.1 400 ")
    assert head_answer == b""
    assert 0.5 < head_closed - sent < 4
    assert body_answer == b"" or body_answer.startswith(b"HTTP/1.1 ")
    assert 0.5 < body_closed - sent < 4
    assert (honest.status_code, honest.text) == (200, "50000")
    expected = ("httptools", "uvloop") if http == "default" else ()
    assert all(f"/{name}/" in maps for name in expected)
    assert http == "default" or "/uvloop/" not in maps
