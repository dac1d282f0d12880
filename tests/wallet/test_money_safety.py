"""Issue 11, sections 3 and 4: a reader never pays for nothing, and the wallet checks what it
should. Each test buys from a real farthing Paywall (over ``httpx.ASGITransport``) and counts
units at the wallet and at the vendor before and after.

Measured on the code before this change (the same scenarios with the old API, one process):
- a card the vendor does not know, two requests: wallet 50 -> 44 units, vendor took 0,
  0 delivered (the issue measured 50 -> 46 over two CLI runs); now 50 -> 50, and the
  second request does not offer the card;
- a store outage (500 without receipt): 50 -> 48, 0 delivered; now 50 -> 50, and the next
  payment reuses the index;
- a priced path that is missing, paid up front, then one 2-unit article: vendor ``spent``
  2 -> 2 -> 6 (the skipped index taken through the gap), wallet 44 left; now 2 -> 2 -> 4,
  wallet 46 left;
- an impostor with the vendor's realm at another site: 1 live token handed over, its
  unsealed ``text/html`` 200 recorded as paid; now no token leaves (WRONG_SITE), and an
  unsealed 200 from the card's own site is SEAL_BROKEN;
- an answer lost after the vendor committed: the next request paid again (wallet and vendor
  4 units for one article); now the same credential is resent and the vendor (idempotent
  retry) serves it again: 2 units at both ends;
- a proxy relabelling the sealed text/plain as text/html in the receipt: the reader got
  ``text/html``, recorded as paid; now SEAL_BROKEN.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core import cardcode
from farthing.core.errors import ErrorCode, InvalidPayment, LocalProtocolError
from farthing.core.money import Denomination
from farthing.core.schemes import hll, szm_chain
from farthing.http.issuer_client import IssuerClient
from farthing.http.payment_auth import Receipt
from farthing.paywall.methods.hll import HllMethod, HllMode
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.testing.hll import HllBank
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import HllCardFile
from farthing.wallet.store import Outcome
from farthing.wallet.wallet import Wallet
from tests.servers import free_port

MASTER = b"M" * 32
EUR = Denomination(currency="EUR", unit_micros=1000)
SITE = "https://news.test"
ARTICLES = {"a", "b", "c"}


async def article(request: Any) -> PlainTextResponse:
    slug = request.path_params["slug"]
    if slug not in ARTICLES:
        return PlainTextResponse("no such article", status_code=404)
    return PlainTextResponse("secret article " + slug)


class DownBook(MemoryCardBook):
    """The vendor's card store while its database is down: every write fails."""

    down = False

    async def advance(self, old: object, new: object, challenge: Any, now: int) -> Any:
        if self.down:
            raise RuntimeError("database is down")
        return await super().advance(old, new, challenge, now)


def vendor(
    clock: FixedClock,
    card: szm_chain.ChainCard,
    *,
    known: bool = True,
    offers: Callable[[str, str], bool] | None = None,
) -> tuple[Paywall, DownBook]:
    book = DownBook()
    if known:
        book.add(ISSUED[card.card_id])
    method = OfflineMethod(SzmScheme.chain(MASTER), book)  # type: ignore[misc]
    return article_shop(clock, method, offers=offers), book


def article_shop(
    clock: FixedClock, method: Any, *, offers: Callable[[str, str], bool] | None = None
) -> Paywall:
    """The paywall of these tests: realm "news", ``/articles/*`` at 0.002 EUR, paid with
    ``method``."""
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=2000, currency="EUR"))
    return Paywall(
        Starlette(routes=[Route("/articles/{slug}", article)]),
        realm="news",
        prices=prices,
        methods=[method],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
        offers=offers,
    )


ISSUED: dict[bytes, szm_chain.ChainCardState] = {}  # what the issuer keeps, by card id


def issue(clock: FixedClock, units: int = 50) -> szm_chain.ChainCard:
    state, card = szm_chain.issue_card(
        MASTER,
        DeterministicRandom(f"card-{units}"),
        length=units,
        denomination=EUR,
        expires_at=clock.now() + 86_400,
    )
    ISSUED[card.card_id] = state
    return card


def vendor_spent(book: MemoryCardBook, card: szm_chain.ChainCard) -> int:
    state = book.states.get(card.card_id)
    return 0 if state is None else int(state.spent)  # type: ignore[attr-defined]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def wallet_path(tmp_path: Path) -> Path:
    return tmp_path / "wallet.sqlite"


@pytest.fixture
def wallet(wallet_path: Path, clock: FixedClock) -> Iterator[Wallet]:
    with Wallet.create(wallet_path, "pw", clock=clock) as opened:
        yield opened


def add(wallet: Wallet, card: szm_chain.ChainCard, site: str = SITE) -> None:
    wallet.add_szm_code(cardcode.to_text(szm_chain.to_card_code(card, realm="news")), site=site)


def units_left(wallet: Wallet) -> int:
    return wallet.cards()[0].units_left


def client(
    app: Any, wallet: Wallet, base: str = SITE, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport or httpx.ASGITransport(app=app),
        base_url=base,
        auth=PaymentAuth(wallet),
    )


# --- section 3: a reader never pays for nothing ------------------------------------------------


@pytest.mark.anyio
async def test_a_card_the_vendor_refuses_keeps_its_units_and_is_not_tried_again(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, book = vendor(clock, card, known=False)  # the vendor never heard of this card
    async with client(paywall, wallet) as http:
        refused = await http.get("/articles/a")
        with pytest.raises(LocalProtocolError) as second:  # no card left for this realm
            await http.get("/articles/a")
    assert refused.status_code == 402
    assert second.value.code is ErrorCode.NOT_FOUND
    assert "refused" in second.value.message
    assert units_left(wallet) == 50  # was 44 after two requests
    assert vendor_spent(book, card) == 0
    assert [(h.outcome, h.status) for h in wallet.history()] == [(Outcome.RELEASED, 402)]


@pytest.mark.anyio
async def test_a_server_error_without_receipt_gives_the_units_back_and_the_index_is_reused(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, book = vendor(clock, card)
    book.down = True
    async with client(paywall, wallet) as http:
        failed = await http.get("/articles/a")
        assert failed.status_code == 500
        assert "payment-receipt" not in failed.headers
        assert units_left(wallet) == 50  # was 48: two units burnt for a 500
        book.down = False
        bought = await http.get("/articles/a")
    assert bought.text == "secret article a"
    assert units_left(wallet) == 48
    assert vendor_spent(book, card) == 2  # delivered one 2-unit article, took 2 units
    assert [(h.outcome, h.position) for h in wallet.history()] == [
        (Outcome.PAID, 2),  # the index of the payment the vendor did not take, reused
        (Outcome.RELEASED, 2),
    ]


@pytest.mark.anyio
async def test_an_up_front_payment_for_a_missing_path_costs_nothing(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, book = vendor(
        clock, card, offers=lambda _method, path: path.rsplit("/", 1)[1] in ARTICLES
    )
    async with client(paywall, wallet) as http:
        assert (await http.get("/articles/a")).status_code == 200
        assert (vendor_spent(book, card), units_left(wallet)) == (2, 48)
        missing = await http.get("/articles/gone")  # paid up front: the scope is remembered
        assert missing.status_code == 404
        assert (vendor_spent(book, card), units_left(wallet)) == (2, 48)
        assert (await http.get("/articles/b")).text == "secret article b"
    # One more 2-unit article: 2 more units at both ends (the vendor took 4 before: the gap).
    assert (vendor_spent(book, card), units_left(wallet)) == (4, 46)
    assert [(h.outcome, h.status, h.position) for h in wallet.history()] == [
        (Outcome.PAID, None, 4),
        (Outcome.RELEASED, 404, 4),
        (Outcome.PAID, None, 2),
    ]


class DropAfterCommit(httpx.AsyncBaseTransport):
    """Forwards to the vendor, then loses the answer to the first paid request (a reset
    after the vendor committed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.dropped = 0
        self.authorizations: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "authorization" in request.headers:
            self.authorizations.append(request.headers["authorization"])
            if self.dropped == 0:
                self.dropped += 1
                await response.aread()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


@pytest.mark.anyio
async def test_a_lost_answer_is_resent_as_it_was_and_blocks_the_card_meanwhile(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, book = vendor(clock, card)
    proxy = DropAfterCommit(httpx.ASGITransport(app=paywall))
    async with client(paywall, wallet, transport=proxy) as http:
        with pytest.raises(httpx.ReadError):
            await http.get("/articles/a")
        assert vendor_spent(book, card) == 2  # the vendor committed
        assert [h.outcome for h in wallet.history()] == [Outcome.PENDING]
        # The card pays nothing new while the lost payment is unresolved.
        with pytest.raises(LocalProtocolError):
            wallet.pay(f"{SITE}/articles/b", wallet_challenges(paywall))
        await http.get("/articles/a")  # the next request for the URL resends it first
    assert proxy.authorizations[1] == proxy.authorizations[0]  # byte for byte, no new money
    # The vendor recognises the same paid request and serves it again without a new charge.
    assert [(h.outcome, h.position) for h in wallet.history()] == [(Outcome.PAID, 2)]
    assert (units_left(wallet), vendor_spent(book, card)) == (48, 2)


def wallet_challenges(paywall: Paywall) -> list[Any]:
    route = paywall.prices.match("/articles/b")
    assert route is not None
    return paywall.challenges(route)


# --- section 4: the wallet checks what it should -----------------------------------------------


class UnsealedImpostor:
    """Copied a real vendor's realm (and its 402) and answers every payment with its own
    unsealed page."""

    def __init__(self, real: Paywall) -> None:
        self.real = httpx.ASGITransport(app=real)
        self.tokens: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if "authorization" not in request.headers:
            return await self.real.handle_async_request(request)
        self.tokens.append(request.headers["authorization"])
        receipt = Receipt(method="szm:chain", timestamp=0, reference="x", extra={"units": 2})
        return httpx.Response(
            200,
            headers={"payment-receipt": receipt.to_header(), "content-type": "text/html"},
            content=b"<script>forged</script>",
        )


@pytest.mark.anyio
async def test_an_impostor_at_another_site_gets_no_token(wallet: Wallet, clock: FixedClock) -> None:
    card = issue(clock)
    add(wallet, card)
    impostor = UnsealedImpostor(vendor(clock, card)[0])
    async with client(None, wallet, "https://evil.test", httpx.MockTransport(impostor)) as http:
        with pytest.raises(LocalProtocolError) as caught:
            await http.get("/articles/a")
    assert caught.value.code is ErrorCode.WRONG_SITE
    assert impostor.tokens == []  # no token left the wallet
    assert units_left(wallet) == 50


@pytest.mark.anyio
async def test_an_unsealed_200_is_seal_broken_not_paid(wallet: Wallet, clock: FixedClock) -> None:
    card = issue(clock)
    add(wallet, card)
    impostor = UnsealedImpostor(vendor(clock, card)[0])
    async with client(None, wallet, SITE, httpx.MockTransport(impostor)) as http:
        with pytest.raises(InvalidPayment) as caught:
            await http.get("/articles/a")
    assert caught.value.code is ErrorCode.SEAL_BROKEN
    assert [h.outcome for h in wallet.history()] == [Outcome.SEAL_BROKEN]


class Relabel(httpx.AsyncBaseTransport):
    """On the way: says the sealed body was text/html (in the receipt), or turns a status."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, status: int | None = None) -> None:
        self.inner = inner
        self.status = status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        header = response.headers.get("payment-receipt")
        if header is None:
            return response
        receipt = Receipt.from_header(header)
        sealed = {"alg": "aes-256-gcm", "contentType": "text/html; charset=utf-8"}
        changed = Receipt(
            method=receipt.method,
            timestamp=receipt.timestamp,
            reference=receipt.reference,
            extra={**receipt.extra, "sealed": sealed} if self.status is None else receipt.extra,
        )
        headers = {**response.headers, "payment-receipt": changed.to_header()}
        return httpx.Response(
            self.status or response.status_code, headers=headers, content=await response.aread()
        )


@pytest.mark.anyio
@pytest.mark.parametrize("status", [None, 203])
async def test_the_seal_covers_the_content_type_and_the_status(
    wallet: Wallet, clock: FixedClock, status: int | None
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, _book = vendor(clock, card)
    proxy = Relabel(httpx.ASGITransport(app=paywall), status=status)
    async with client(paywall, wallet, transport=proxy) as http:
        with pytest.raises(InvalidPayment) as caught:
            await http.get("/articles/a")
    assert caught.value.code is ErrorCode.SEAL_BROKEN


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("base", "pays"),
    [
        ("http://news.test", False),
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://127.5.6.7", True),
    ],
)
async def test_plain_http_is_paid_only_on_loopback(
    wallet: Wallet, clock: FixedClock, base: str, pays: bool
) -> None:
    card = issue(clock)
    add(wallet, card, site=base)
    paywall, book = vendor(clock, card)
    async with client(paywall, wallet, base) as http:
        if pays:
            assert (await http.get("/articles/a")).text == "secret article a"
        else:
            with pytest.raises(LocalProtocolError) as caught:
                await http.get("/articles/a")
            assert caught.value.code is ErrorCode.INSECURE_TRANSPORT
    assert vendor_spent(book, card) == (2 if pays else 0)
    assert units_left(wallet) == (48 if pays else 50)


# --- an issuer outage (HLL online: the vendor cannot reach the bank) ---------------------------


class LocalBank:
    """The core's in-memory HLL bank behind the vendor's bank-client port."""

    def __init__(self, clock: FixedClock) -> None:
        self.bank = HllBank(denomination=EUR)
        self.clock = clock

    async def verify_online(self, offer: bytes, payment: bytes) -> None:
        self.bank.verify_online(
            hll.decode_offer(offer), hll.decode_payment(payment), self.clock.now()
        )


def hll_vendor(clock: FixedClock, bank: Any) -> Paywall:
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=2000, currency="EUR"))
    return Paywall(
        Starlette(routes=[Route("/articles/{slug}", article)]),
        realm="news",
        prices=prices,
        methods=[HllMethod(merchant_id="shop", unit_micros=1000, mode=HllMode.ONLINE, bank=bank)],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )


@pytest.mark.anyio
async def test_an_issuer_outage_gives_the_units_back_and_the_counter_is_reused(
    wallet: Wallet, clock: FixedClock
) -> None:
    bank = LocalBank(clock)
    card_id, key = b"h" * 16, b"k" * 32
    bank.bank.register_card(card_id, key, 50)
    bank.bank.register_merchant("shop", b"m" * 32)
    wallet.add_hll_card(
        HllCardFile(
            card_id=card_id, balance=50, denomination=EUR, card_key=key, bank_key=b"b" * 32
        ),
        site=SITE,
    )
    # The real bank client, pointed at a loopback port where no issuer listens.
    down = IssuerClient(
        f"http://127.0.0.1:{free_port()}", merchant_id="shop", merchant_key=b"m" * 32
    )
    try:
        async with client(hll_vendor(clock, down), wallet) as http:
            outage = await http.get("/articles/a")
    finally:
        await down.aclose()
    assert outage.status_code >= 500
    assert "payment-receipt" not in outage.headers
    assert (wallet.cards()[0].units_left, wallet.cards()[0].spent) == (50, 0)  # was 48, 1
    async with client(hll_vendor(clock, bank), wallet) as http:
        bought = await http.get("/articles/a")
    assert bought.text == "secret article a"
    assert (wallet.cards()[0].units_left, wallet.cards()[0].spent) == (48, 1)
    assert bank.bank.credited("shop") == 2  # one 2-unit article delivered, 2 units taken
    assert [(h.outcome, h.position) for h in wallet.history()] == [
        (Outcome.PAID, 1),
        (Outcome.RELEASED, 1),
    ]


# --- answers with a receipt but no good ----------------------------------------------------------


def paid_receipt() -> Receipt:
    return Receipt(method="szmchain", timestamp=0, reference="r", extra={"units": 2})


def test_a_5xx_with_a_receipt_is_kept_and_resent_for_its_url(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, _book = vendor(clock, card)
    url = f"{SITE}/articles/a"
    sent = wallet.pay(url, wallet_challenges(paywall))
    wallet.refused(sent, 500, receipt=paid_receipt())
    assert wallet.pay_up_front(f"{SITE}/articles/b") is None  # only for its own URL
    with pytest.raises(LocalProtocolError) as blocked:
        wallet.pay(f"{SITE}/articles/b", wallet_challenges(paywall))
    assert blocked.value.code is ErrorCode.CONFLICT
    again = wallet.pay_up_front(url)
    assert again is not None
    assert again.authorization == sent.authorization
    clock.advance(301)  # past the challenge's expiry: it cannot be resent any more
    wallet.refused(again, 502, receipt=paid_receipt())
    assert wallet.pay_up_front(url) is None
    assert wallet.pay(url, wallet_challenges(paywall)).index == 4  # its index is not reused
    assert [h.outcome for h in wallet.history()] == [Outcome.PENDING, Outcome.LOST]


def test_a_4xx_with_a_receipt_is_spent_and_blocks_nothing(
    wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    paywall, _book = vendor(clock, card)
    sent = wallet.pay(f"{SITE}/articles/gone", wallet_challenges(paywall))
    wallet.refused(sent, 404, receipt=paid_receipt())
    assert wallet.pay(f"{SITE}/articles/b", wallet_challenges(paywall)).index == 4
    assert [(h.outcome, h.status) for h in wallet.history()][1] == (Outcome.REFUSED, 404)


def test_a_card_from_before_sites_pays_nobody_until_bound(
    wallet_path: Path, wallet: Wallet, clock: FixedClock
) -> None:
    card = issue(clock)
    add(wallet, card)
    with sqlite3.connect(wallet_path) as db:  # as a wallet file written before sites were
        db.execute("""UPDATE cards SET params = '{"generator": "sha256-chain"}'""")
    db.close()
    paywall, book = vendor(clock, card)
    label = wallet.cards()[0].label
    assert "pays no site" in wallet.cards()[0].where
    with pytest.raises(LocalProtocolError) as caught:
        wallet.pay(f"{SITE}/articles/a", wallet_challenges(paywall))
    assert caught.value.code is ErrorCode.WRONG_SITE
    assert "no site" in caught.value.message
    assert wallet.bind(label, SITE + "/any/path").where.endswith(f"pays only {SITE}")
    with pytest.raises(LocalProtocolError) as wrong:  # a site set of one: no other site
        wallet.pay("https://evil.test/articles/a", wallet_challenges(paywall))
    assert wrong.value.code is ErrorCode.WRONG_SITE
    assert wallet.pay(f"{SITE}/articles/a", wallet_challenges(paywall)).index == 2
    assert vendor_spent(book, card) == 0
