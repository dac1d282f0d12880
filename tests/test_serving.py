"""farthing.serving: multi-worker servers keep TCP_NODELAY, and `farthing vendor serve`
serves a folder with several workers."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.issuer.config import generate_issuer_keys, write_key_file
from farthing.serving import listening_socket
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


def test_vendor_serve_runs_two_workers(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    (folder / "articles").mkdir(parents=True)
    (folder / "articles" / "a.txt").write_text("article a")
    keys = tmp_path / "issuer.keys.json"
    write_key_file(keys, generate_issuer_keys(os.urandom, broker_id="b", bbs_bits=2048))
    made = CliRunner().invoke(app, ["vendor", "init", str(folder), "--issuer-keys", str(keys)])
    assert made.exit_code == 0, made.output
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve", str(folder),
        "--port", str(port), "--workers", "2",
    ]  # fmt: skip
    with (
        command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        priced = [client.get("/articles/a.txt") for _ in range(3)]  # one keep-alive connection
        missing = client.get("/articles/none.txt")
    assert [r.status_code for r in priced] == [402, 402, 402]
    assert missing.status_code == 404
