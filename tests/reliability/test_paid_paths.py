"""Paid requests at the edge of what a path can be, in process on a real store.

The request path is bound into every sealed body (and is the good of an HLL offer) as
canonical text: NFC, no control characters. A path that is not (a file name in NFD, as
macOS writes them) cannot be sealed, so it must be refused *before* the payment is
recorded: otherwise the card is charged and the seal then fails, leaving the buyer with a
500 and no article. A percent-encoded control character is not a canonical path at all
(farthing.http.paths): a 404, paid or not.

A priced path with no file behind it is not for sale: the vendor answers 404 without
asking for payment, and a payment sent anyway (a wallet paying up front) is not taken.
"""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

from farthing.core.errors import ErrorCode
from farthing.core.sealing import open_sealed
from tests.reliability.problems import assert_problem
from tests.reliability.world import Holder, World, authorization, challenge_ids, hll_offer

pytestmark = pytest.mark.anyio


def client(world: World) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=world.vendor_app())
    return httpx.AsyncClient(transport=transport, base_url="http://vendor.test")


@pytest.mark.parametrize("path", ["/articles/e%CC%81.txt"])
async def test_a_path_that_cannot_be_sealed_is_refused_before_any_charge(
    sqlite_world: World, path: str
) -> None:
    name = urllib.parse.unquote(path.rsplit("/", 1)[1])  # a file is there to be sold
    (sqlite_world.folder / "goods" / "articles" / name).write_text("a file of that name")
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


@pytest.mark.parametrize("path", ["/articles/%01.txt", "/articles/a%7F", "/articles/%C2%85"])
async def test_a_path_with_a_control_character_is_not_for_sale(
    sqlite_world: World, path: str
) -> None:
    """Not canonical (farthing.http.paths): 404 before any price, paid or not."""
    name = urllib.parse.unquote(path.rsplit("/", 1)[1])
    (sqlite_world.folder / "goods" / "articles" / name).write_text("a file of that name")
    card = sqlite_world.chain_cards(1)[0]
    async with client(sqlite_world) as c:
        unpaid = await c.get(path)
        offer = await c.get("/articles/a.txt")
        cid, _ = challenge_ids(offer.headers.get_list("www-authenticate"))["szm:chain"]
        payment, _ = card.at(2, sqlite_world.clock.now())
        paid = await c.get(
            path, headers={"authorization": authorization(cid, "szm:chain", payment)}
        )
    for answer in (unpaid, paid):
        assert assert_problem(answer, families={404}) == ErrorCode.NOT_FOUND
        assert "www-authenticate" not in answer.headers
        assert b"a file of that name" not in answer.content
    row = sqlite_world.store.szm_card(card.card.card_id)
    assert row is not None
    assert row.spent == 0


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


@pytest.mark.parametrize("method", ["szm:chain", "szm:prbg", "payword", "hll:mac"])
async def test_a_missing_file_is_not_sold(sqlite_world: World, method: str) -> None:
    missing = "/articles/no-such-article.txt"
    async with client(sqlite_world) as c:
        unpaid = await c.get(missing)
        assert unpaid.status_code == 404
        assert "www-authenticate" not in unpaid.headers
        offer = await c.get("/articles/a.txt")  # a challenge for the route, as wallets hold
        cid, expires = challenge_ids(offer.headers.get_list("www-authenticate"))[method]
        holder, header = pay_for(sqlite_world, method, cid, expires, missing)
        paid = await c.get(missing, headers={"authorization": header})
    assert paid.status_code == 404
    assert "payment-receipt" not in paid.headers
    assert sqlite_world.spent(holder) == 0, "a card was charged for a missing file"


def pay_for(world: World, method: str, cid: str, expires: int, path: str) -> tuple[Holder, str]:
    """A fresh card (or commitment) of ``method`` and a valid payment of it for ``path``."""
    now = world.clock.now()
    if method == "szm:chain":
        chain = world.chain_cards(1)[0]
        return chain, authorization(cid, method, chain.at(2, now)[0])
    if method == "szm:prbg":
        prbg = world.prbg_cards(1)[0]
        return prbg, authorization(cid, method, prbg.at(2, now)[0])
    if method == "payword":
        words = world.commitments(1)[0]
        return words, authorization(cid, method, words.at(2, now), commitment=words.encoded)
    card = world.hll_cards(1)[0]
    return card, authorization(cid, method, card.pay(hll_offer(cid, expires, good=path), 1))
