"""PayWord's first payment under a new commitment, on a real store: the commitment is
stored by the payment's own hot batch (one commit, no transaction of its own on the
writer thread, no read back), and concurrent first payments each settle once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from farthing.core.schemes import payword
from farthing.http.payment_auth import Receipt, parse_challenges
from farthing.paywall.books import PaywordBook
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.payword import PaywordScheme
from farthing.paywall.middleware import Paywall
from farthing.store import Store, open_store
from farthing.store.writer import StoreWriter
from farthing.testing import DeterministicRandom, FixedClock
from tests.paywall.test_payword_method import BROKER_KEY, article, auth, make_spender

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _World:
    def __init__(self, path: Path) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from farthing.core.primitives import ed25519_public_key
        from farthing.paywall.pricing import Price, PriceTable

        self.clock = FixedClock()
        self.store: Store = open_store(str(path))
        self.commits: list[int] = []
        self.writer = StoreWriter(self.store, observe=lambda jobs, _s: self.commits.append(jobs))
        prices = PriceTable()
        prices.add("/articles/*", Price(micros=3000, currency="EUR"))
        scheme = PaywordScheme(
            vendor_id="shop",
            broker_id="broker",
            broker_public=ed25519_public_key(BROKER_KEY),
            unit_micros=1000,
        )
        book = PaywordBook(self.store, self.writer)
        self.paywall = Paywall(
            Starlette(routes=[Route("/articles/{slug}", article)]),
            realm="news",
            prices=prices,
            methods=[OfflineMethod(scheme, book)],  # type: ignore[arg-type]
            challenge_secret=b"s" * 32,
            clock=self.clock,
            rng=DeterministicRandom("v"),
        )

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.paywall)
        return httpx.AsyncClient(transport=transport, base_url="http://v")

    async def close(self) -> None:
        await self.writer.aclose()
        self.store.close()


async def _challenges(c: httpx.AsyncClient, count: int) -> list[object]:
    out = []
    for _ in range(count):
        response = await c.get("/articles/a")
        out.append(parse_challenges(response.headers.get_list("www-authenticate"))[0])
    return out


async def test_the_first_payment_stores_its_commitment_in_its_own_hot_batch(
    tmp_path: Path,
) -> None:
    world = _World(tmp_path / "v.sqlite")
    spender = make_spender(world.clock)
    encoded = payword.encode_commitment(spender.commitment)
    try:
        async with world.client() as c:
            (cid,) = await _challenges(c, 1)
            first = spender.reserve(3, now=world.clock.now()).payment
            ok = await c.get("/articles/a", headers=auth(cid, first, encoded))  # type: ignore[arg-type]
        assert ok.status_code == 200
        assert world.commits == [1]  # one commit: the commitment and its first payment
        assert world.writer._thread is None  # no transaction of its own on the thread
    finally:
        await world.close()
    row = world.store.payword_commitment(spender.commitment_id)
    assert row is not None
    assert (row.spent, row.commitment) == (3, encoded)


async def test_a_refused_first_payment_leaves_no_commitment(tmp_path: Path) -> None:
    """A first payment that does not verify (too few units) stores nothing: the commitment
    comes again with the wallet's next payment. (Before, it was stored on its own first.)"""
    world = _World(tmp_path / "v.sqlite")
    spender = make_spender(world.clock)
    encoded = payword.encode_commitment(spender.commitment)
    try:
        async with world.client() as c:
            (cid,) = await _challenges(c, 1)
            short = spender.reserve(1, now=world.clock.now()).payment  # the price is 3
            refused = await c.get("/articles/a", headers=auth(cid, short, encoded))  # type: ignore[arg-type]
        assert refused.status_code == 402
        assert world.commits == []
    finally:
        await world.close()
    assert world.store.payword_commitment(spender.commitment_id) is None


async def test_concurrent_first_payments_of_one_commitment_settle_once_each(
    tmp_path: Path,
) -> None:
    """Payments carrying the commitment, sent at once before it is stored: one stores it
    and wins; a loser is judged again against the stored commitment (as against a stale
    cached state), once. Every payword is accepted at most once, and the commitment's
    spent is exactly the units of the accepted ones. The same payword sent twice at once
    (two challenges) before the commitment is stored is accepted once."""
    world = _World(tmp_path / "v.sqlite")
    spender = make_spender(world.clock)
    encoded = payword.encode_commitment(spender.commitment)
    try:
        async with world.client() as c:
            cids = await _challenges(c, 6)
            payments = [spender.reserve(3, now=world.clock.now()).payment for _ in range(4)]
            answers = await asyncio.gather(
                *(
                    c.get("/articles/a", headers=auth(cid, p, encoded))  # type: ignore[arg-type]
                    for cid, p in zip(cids, payments, strict=False)
                )
            )
            other = make_spender(world.clock, seed="other")
            again = other.reserve(3, now=world.clock.now()).payment
            copies = await asyncio.gather(
                *(
                    c.get(
                        "/articles/a",
                        headers=auth(cid, again, payword.encode_commitment(other.commitment)),
                    )  # type: ignore[arg-type]
                    for cid in cids[4:]
                )
            )
    finally:
        await world.close()
    accepted = [
        Receipt.from_header(a.headers["payment-receipt"]) for a in answers if a.status_code == 200
    ]
    assert accepted  # the first at least
    assert {a.status_code for a in answers} <= {200, 402}
    indexes = [r.extra["index"] for r in accepted]
    assert len(set(indexes)) == len(indexes)
    row = world.store.payword_commitment(spender.commitment_id)
    assert row is not None
    assert row.spent == max(indexes) == sum(r.extra["units"] for r in accepted)
    assert sorted(a.status_code for a in copies) == [200, 402]
    copied = world.store.payword_commitment(other.commitment_id)
    assert copied is not None
    assert copied.spent == 3
