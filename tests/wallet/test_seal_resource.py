"""The seal binds the percent-decoded path without the query, under the derived key
(docs/protocols/common.md, "The seal" and "The key mode the vendor uses").

The vendor is the one ``farthing vendor serve`` runs (``create_vendor_app`` from a
vendor.toml, on a real store); the buyer is the farthing wallet over httpx. The sealed
bytes are taken off the wire before the wallet opens them, and opened again here with the
core, from the card alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.types import Message, Receive, Scope, Send

from farthing.core import cardcode
from farthing.core.encoding import Writer
from farthing.core.errors import InvalidPayment
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import Receipt
from farthing.paywall.middleware import Paywall
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet
from tests.reliability.world import REALM, World, build_world

SITE = "https://vendor.test"
NAME = "café.txt"
TEXT = "un café, s'il vous plaît\n"


class Tap:
    """ASGI wrapper keeping the last response's status, headers and body as sent."""

    def __init__(self, app: Paywall) -> None:
        self.app = app
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.headers = dict(message.get("headers", []))
                self.body = b""
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, tapped)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = build_world(tmp_path / "world", str(tmp_path / "farthing.sqlite"))
    (built.folder / "goods" / "articles" / NAME).write_text(TEXT, encoding="utf-8")
    yield built
    built.close()


@pytest.mark.anyio
async def test_the_seal_binds_the_decoded_path_without_query_under_the_derived_key(
    world: World, tmp_path: Path
) -> None:
    (holder,) = world.chain_cards(1, units=10)
    card = holder.card
    code = szm_chain.to_card_code(card, realm=REALM)
    tap = Tap(world.vendor_app())
    with Wallet.create(tmp_path / "wallet.sqlite", "pass phrase", clock=world.clock) as wallet:
        wallet.add_szm_code(cardcode.to_text(code), site=SITE)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=tap), base_url=SITE, auth=PaymentAuth(wallet)
        ) as client:
            response = await client.get("/articles/caf%C3%A9.txt?ref=rss")
    assert response.status_code == 200
    assert response.text == TEXT  # the wallet opened it
    receipt = Receipt.from_header(tap.headers[b"payment-receipt"].decode())
    content_type = receipt.extra["sealed"]["contentType"]  # type: ignore[index]
    assert world.spent(holder) == 2

    # K for index 2, computed from the card alone: HKDF-SHA256, 32 zero bytes of salt.
    info = Writer(szm_chain.KEY_DOMAIN).bytes(card.card_id).u64(2).finish()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=info).derive(card.secret)

    def opened(resource: str, with_key: bytes = key) -> bytes:
        return open_sealed(
            with_key, tap.body, method=szm_chain.METHOD, card_id=card.card_id, index=2,
            resource=resource, status=200, content_type=content_type,
        )  # fmt: skip

    assert opened("/articles/café.txt") == TEXT.encode()
    for other in ("/articles/caf%C3%A9.txt", "/articles/café.txt?ref=rss"):
        with pytest.raises(InvalidPayment):
            opened(other)
    next_value = szm_chain.card_payment_key(card, 2, mode=szm_chain.KeyMode.NEXT_VALUE)
    with pytest.raises(InvalidPayment):
        opened("/articles/café.txt", next_value)
