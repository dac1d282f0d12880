"""``Idempotency-Key`` for paid requests with a body (draft-httpauth-payment-02,
"Idempotency and Side Effects": SHOULD).

A paid POST (PUT, PATCH, ...) that carries ``Idempotency-Key`` claims the key in the store
before its payment is looked at. The answer it got is kept with the key; the same request
sent again (same key, same credential byte for byte, same body) gets that answer again
without the payment being settled or the app called again. The key used with another
credential or body is refused (422); the key's request still running is refused (409).

- The key is scoped: its record is keyed by SHA-256 of (HTTP method, canonical path, key).
- What the key was used for: SHA-256 of (the credential as sent, the body's digest).
- Durable: ``vendor_idempotency`` (migration 0007), so a restarted vendor answers the same.
- Bounded: answers over ``MAX_KEPT_BODY`` bytes are not kept (the key is freed: a resend then
  finds the credential's challenge id used, ``402 invalid-challenge``: not run again, nothing
  taken); a key over ``MAX_KEY_LEN`` characters is refused (400). Records live ``KEY_TTL``
  seconds; an expired one frees its key when next looked up.
- A payment that is refused frees the key (nothing ran under it).

Only requests that carry the header pay its store round trips; a paid GET never does.
"""

from __future__ import annotations

import json
from typing import Final

from starlette.types import Message, Send

from farthing.core.primitives import sha256
from farthing.store import IdempotencyRow, Store, Tx
from farthing.store.writer import StoreWriter

__all__ = ["KEY_TTL", "MAX_KEPT_BODY", "MAX_KEY_LEN", "IdempotencyKeys", "Recorder"]

MAX_KEPT_BODY: Final = 64 * 1024
MAX_KEY_LEN: Final = 255
KEY_TTL: Final = 24 * 3600


def key_digest(http_method: str, path: str, key: str) -> bytes:
    return sha256(
        b"\0".join(part.encode("utf-8", "surrogatepass") for part in (http_method, path, key))
    )


def request_digest(authorization: str, body_digest: str) -> bytes:
    return sha256(authorization.encode("latin-1", "replace") + b"\0" + body_digest.encode())


class IdempotencyKeys:
    """The vendor's record of keys, through the store writer (one transaction each)."""

    def __init__(self, store: Store, writer: StoreWriter) -> None:
        self._store = store
        self._writer = writer

    async def claim(self, key: bytes, request: bytes, now: int) -> IdempotencyRow | None:
        """None: the key is ours now (running); else the record that holds it."""

        def work(tx: Tx) -> IdempotencyRow | None:
            row = tx.vendor.idempotency_get(key, now)
            if row is None and tx.vendor.idempotency_begin(key, request, now, now + KEY_TTL):
                return None
            return row if row is not None else tx.vendor.idempotency_get(key, now)

        return await self._writer.run(work)

    async def finish(self, key: bytes, recorder: Recorder) -> None:
        headers = json.dumps(
            [[k.decode("latin-1"), v.decode("latin-1")] for k, v in recorder.headers]
        )
        body = b"".join(recorder.body)
        await self._writer.run(
            lambda tx: tx.vendor.idempotency_finish(key, recorder.status, headers.encode(), body)
        )

    async def drop(self, key: bytes) -> None:
        await self._writer.run(lambda tx: tx.vendor.idempotency_drop(key))


class Recorder:
    """Wraps ``send``: passes every message on and keeps the answer, up to MAX_KEPT_BODY."""

    __slots__ = ("_send", "body", "complete", "headers", "size", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size <= MAX_KEPT_BODY:
                self.body.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        await self._send(message)

    @property
    def keepable(self) -> bool:
        return self.complete and self.status > 0 and self.size <= MAX_KEPT_BODY


def replay(row: IdempotencyRow) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The kept answer: status, headers, body."""
    assert row.status is not None
    pairs = json.loads((row.headers or b"[]").decode())
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    return row.status, headers, row.body or b""
