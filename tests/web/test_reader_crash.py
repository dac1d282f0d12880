"""Killing the browser in the middle of a payment loses at most the payment in flight.

The reader's Chromium is a process of its own (so the test can SIGKILL it, as a crash or a
pulled plug would) on a profile folder that outlives it, driven over the DevTools protocol.
It reaches the real ``farthing vendor serve`` through a loopback proxy that can hold back one
paid request: either it passes the request on and swallows the answer (the vendor took the
payment, the browser never heard), or it never passes it on (the vendor took nothing). The
browser is killed while the payment is held; a new Chromium on the same profile buys on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright

from tests.browser import CHROMIUM_FLAGS, chromium_path
from tests.servers import die_with_parent, free_port
from tests.web.shop import (
    ARTICLES,
    PRICE_UNITS,
    Shop,
    article_text,
    enter_card,
    running_shop,
    wallet_card,
    wallet_payments,
)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


class HoldingProxy:
    """HTTP/1.1 over loopback, one upstream connection per request; holds paid requests
    while ``hold`` is set: ``forward`` says whether the vendor still gets them."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.hold = False
        self.forward = True
        self.held = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client:
            buffered = b""
            while True:
                request, buffered = _read_request(client, buffered)
                if request is None:
                    return
                paid = b"\r\nauthorization: payment " in request.lower()
                if paid and self.hold:
                    if self.forward:
                        self._exchange(request)  # the vendor answers; the browser never hears
                    self.held.set()
                    time.sleep(60)  # until the browser dies and the connection with it
                    return
                client.sendall(self._exchange(request))

    def _exchange(self, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        lines = [
            line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
        ]
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(b"\r\n".join([*lines, b"connection: close"]) + b"\r\n\r\n" + body)
            chunks = []
            while chunk := upstream.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(client: socket.socket, buffered: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buffered:
        chunk = client.recv(65536)
        if not chunk:
            return None, b""
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = client.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@contextlib.contextmanager
def own_chromium(playwright: Playwright, profile: Path) -> Iterator[tuple[Browser, int]]:
    """A Chromium process of the test's own on ``profile``; yields it and its process id."""
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make sysdeps` installs it)")
    port = free_port()
    process = subprocess.Popen(
        [path, *CHROMIUM_FLAGS, "--headless", f"--remote-debugging-port={port}",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        browser = _connect(playwright, port, process)
        yield browser, process.pid
        with contextlib.suppress(Exception):
            browser.close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)


def _connect(playwright: Playwright, port: int, process: subprocess.Popen[bytes]) -> Browser:
    deadline = time.monotonic() + 30
    while True:
        try:
            return playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def kill(pid: int) -> None:
    """As a crash would: SIGKILL to the whole browser (its process group), no goodbye."""
    os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("vendor_got_it", [True, False], ids=["vendor-took-it", "never-arrived"])
def test_killing_the_browser_mid_payment_loses_at_most_that_payment(
    playwright_session: Playwright, tmp_path: Path, vendor_got_it: bool
) -> None:
    with running_shop(tmp_path) as shop:
        proxy = HoldingProxy(shop.base)
        try:
            run_crash(playwright_session, tmp_path / "profile", shop, proxy, vendor_got_it)
        finally:
            proxy.close()


def run_crash(
    playwright: Playwright, profile: Path, shop: Shop, proxy: HoldingProxy, vendor_got_it: bool
) -> None:
    site = replace(shop, base=proxy.base)
    with own_chromium(playwright, profile) as (browser, pid):
        page = browser.contexts[0].new_page()
        enter_card(page, site, "/articles/a.txt")
        assert article_text(page) == ARTICLES["a"]
        assert shop.vendor_spent() == PRICE_UNITS

        proxy.hold, proxy.forward = True, vendor_got_it
        page.evaluate("location.href = '/articles/b.txt'")
        assert proxy.held.wait(30)
        wait_for(lambda: shop.vendor_spent() == (2 if vendor_got_it else 1) * PRICE_UNITS)
        kill(pid)
    proxy.hold = False

    with own_chromium(playwright, profile) as (browser, _):
        page = browser.contexts[0].new_page()
        page.goto(site.base + "/articles/c.txt")
        assert article_text(page) == ARTICLES["c"]
        page.goto(site.base + "/articles/b.txt")  # the lost one: bought again
        assert article_text(page) == ARTICLES["b"]
        payments = {p["index"]: p["state"] for p in wallet_payments(page)}
        card = wallet_card(page)

    # Indexes 2 (a), 4 (b, in flight when the browser died), 6 (c), 8 (b again): none reused.
    assert payments == {2: "paid", 4: "reserved", 6: "paid", 8: "paid"}
    assert card["spent"] == shop.vendor_spent() == 8
    # Lost: exactly the units of the payment in flight, whether or not the vendor got it.
    bought = 3 * PRICE_UNITS
    assert shop.vendor_spent() - bought == PRICE_UNITS
