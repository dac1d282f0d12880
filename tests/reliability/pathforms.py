"""Path forms that name a priced file without being its canonical path, and the means to
send them exactly as written: straight into the ASGI app with the scope a server would
build, or over a raw socket (clients normalise paths; a raw socket does not).

Each form below names ``/articles/a.txt`` (a file of the world's goods) to some layer of
the vendor: the price table, the goods server's ``os.path.join``, or Starlette's
normalising ``StaticFiles``. With ``"/articles/*"`` priced, every one of them must be
refused: 404, no article, no challenge, nothing charged.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message

from farthing.core.encoding import b64url_decode
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from tests.reliability.world import UNIT, Holder, World, authorization

ARTICLE = "/articles/a.txt"
METHODS = ["szm:chain", "szm:prbg", "payword", "hll:mac"]

# Forms of /articles/a.txt that a price table keyed on the raw path does not price as one.
BYPASS_FORMS = [
    "//articles/a.txt",
    "///articles/a.txt",
    "/articles//a.txt",
    "/articles/%2Fa.txt",
    "/articles/%2fa.txt",
    "/articles%2Fa.txt",
    "/./articles/a.txt",
    "/articles/./a.txt",
    "/articles/%2e/a.txt",
    "/articles/../articles/a.txt",
    "/articles/%2e%2e/articles/a.txt",
    "/articles/.%2E/articles/a.txt",
    "/x/..%2F..%2Farticles/a.txt",
    "/articles\\a.txt",
    "/articles%5Ca.txt",
    "/articles/%5ca.txt",
    "/articles/a.txt%2F",
]
# Forms that a price table does price, but that name the file at a price it was not
# offered at, or that only the trailing slash tells apart.
TRAILING = "/articles/a.txt/"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    pairs: list[tuple[str, str]]  # (lower-case name, value), in order, repeats kept
    body: bytes

    def get_list(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def __contains__(self, name: str) -> bool:
        return bool(self.get_list(name))


def variants(name: str, count: int) -> Iterator[str]:
    """``count`` distinct non-canonical paths of ``/articles/<name>`` (extra slashes)."""
    for i in range(count):
        slashes = "/" * (i // 2 + 2)
        yield f"/articles{slashes}{name}" if i % 2 else f"{slashes}articles/{name}"


def decoded(raw: str) -> str:
    """``scope["path"]`` as uvicorn makes it from a request target."""
    return urllib.parse.unquote(raw) if "%" in raw else raw


async def asgi_request(
    app: ASGIApp,
    method: str,
    raw: str,
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    """One request into ``app`` with the scope uvicorn builds for target ``raw``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": decoded(raw),
        "raw_path": raw.encode("latin-1"),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"vendor.test")]
        + [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }
    sent: list[Message] = []
    asked = False

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # the client stays until the answer is complete
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    pairs = [(k.decode().lower(), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return Answer(start["status"], pairs, body)


def raw_request(
    base: str,
    method: str,
    raw: str,
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    """One HTTP/1.1 request with target ``raw`` byte for byte, over a fresh connection."""
    parts = urllib.parse.urlsplit(base)
    lines = [f"{method} {raw} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(wire)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = []
    for line in header_lines:
        name, _, value = line.partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    if ("transfer-encoding", "chunked") in pairs:
        body = _dechunk(body)
    return Answer(int(status_line.split()[1]), pairs, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def pay(
    world: World, method: str, cid: str, expires: int, good: str, *, units: int
) -> tuple[Holder, str]:
    """A fresh card (or commitment) of ``method`` and a valid credential paying ``units``
    under challenge ``cid`` (an HLL card MACs ``good`` as the path)."""
    now = world.clock.now()
    if method == "szm:chain":
        chain = world.chain_cards(1)[0]
        return chain, authorization(cid, method, chain.at(units, now, units)[0])
    if method == "szm:prbg":
        prbg = world.prbg_cards(1)[0]
        return prbg, authorization(cid, method, prbg.at(units, now, units)[0])
    if method == "payword":
        words = world.commitments(1)[0]
        return words, authorization(
            cid, method, words.at(units, now, units), commitment=words.encoded
        )
    card = world.hll_cards(1)[0]
    offer = hll.Offer(
        merchant_id="shop",
        good=good,
        amount=units,
        denomination=Denomination(currency="EUR", unit_micros=UNIT),
        challenge=b64url_decode(cid.id),
        expires_at=expires,
    )
    return card, authorization(cid, method, card.pay(offer, 1))
