"""Paid requests at the edge of what a path can be, in process on a real store.

The request path is bound into every sealed body (and is the good of an HLL offer) as
canonical text: NFC, no control characters. A path that is not (a file name in NFD, as
macOS writes them; a percent-encoded control character) cannot be sealed, so it must be
refused *before* the payment is recorded: otherwise the card is charged and the seal
then fails, leaving the buyer with a 500 and no article.
"""

from __future__ import annotations

import httpx
import pytest

from farthing.core.errors import ErrorCode
from farthing.core.sealing import open_sealed
from tests.reliability.problems import assert_problem
from tests.reliability.world import World, authorization, challenge_ids

pytestmark = pytest.mark.anyio


def client(world: World) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=world.vendor_app())
    return httpx.AsyncClient(transport=transport, base_url="http://vendor.test")


@pytest.mark.parametrize(
    "path", ["/articles/e%CC%81.txt", "/articles/%01.txt", "/articles/a%7F", "/articles/%C2%85"]
)
async def test_a_path_that_cannot_be_sealed_is_refused_before_any_charge(
    sqlite_world: World, path: str
) -> None:
    (sqlite_world.folder / "goods" / "articles" / "e\u0301.txt").write_text("an NFD name")
    card = sqlite_world.chain_cards(1)[0]
    async with client(sqlite_world) as c:
        unpaid = await c.get(path)
        assert unpaid.status_code == 402
        cid, _ = challenge_ids(unpaid.headers.get_list("www-authenticate"))["szm:chain"]
        payment, _ = card.at(2, sqlite_world.clock.now())
        paid = await c.get(
            path, headers={"authorization": authorization(cid, "szm:chain", payment)}
        )
    assert assert_problem(paid, families={400}) == ErrorCode.BAD_FIELD
    row = sqlite_world.store.szm_card(card.card.card_id)
    assert row is not None
    assert row.spent == 0, "the card was charged for a body that could not be sealed"


async def test_an_nfc_unicode_path_is_sold_and_sealed(sqlite_world: World) -> None:
    (sqlite_world.folder / "goods" / "articles" / "\u00e9.txt").write_text("an NFC name")
    card = sqlite_world.chain_cards(1)[0]
    async with client(sqlite_world) as c:
        unpaid = await c.get("/articles/%C3%A9.txt")
        cid, _ = challenge_ids(unpaid.headers.get_list("www-authenticate"))["szm:chain"]
        payment, key = card.at(2, sqlite_world.clock.now())
        paid = await c.get(
            "/articles/%C3%A9.txt",
            headers={"authorization": authorization(cid, "szm:chain", payment)},
        )
    assert paid.status_code == 200
    body = open_sealed(
        key, paid.content, method="szm:chain", card_id=card.card.card_id, index=2,
        resource="/articles/\u00e9.txt",
    )  # fmt: skip
    assert body == b"an NFC name"
