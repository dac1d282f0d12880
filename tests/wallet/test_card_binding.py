"""Issue 11, section 4: every card is bound to the sites the reader chose and to its issuer.

Each test buys from a real farthing Paywall (over ``httpx.ASGITransport``), counts what left
the wallet at the transport (``Authorization`` headers) and what reached the vendor and the
bank, and the units on the card before and after.

Measured on the code before this change (the same scenarios with the old API):
- an HLL card added without ``--site`` (the CLI's and the demo's default), asked by
  ``https://evil.test`` running a vendor of its bank: 1 Authorization left, the bank
  verified it and credited evil's merchant 2 units, the card 50 -> 48; now WRONG_SITE, 0
  left, the bank saw 0 purchases, the card stays at 50;
- a PayWord account added without ``--site``, asked by ``https://evil.test``: 1
  Authorization left carrying a signed commitment to evil's vendor id (stored by the
  vendor, 3 units paid); now WRONG_SITE, 0 left, the vendor stored 0 commitments;
- an HLL challenge from a vendor of another bank: 1 Authorization (a MAC for that merchant)
  left, refused only by the bank; now WRONG_ISSUER, 0 left, 0 bank calls;
- a PayWord challenge of another broker: nothing left before either (NOT_FOUND "holds no
  card this vendor takes"); now WRONG_ISSUER, saying which broker the card belongs to;
- plain http off loopback: INSECURE_TRANSPORT before and now, for every kind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner, Result

from farthing.cli import app as cli_app
from farthing.core import cardcode
from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, LocalProtocolError
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, szm_chain
from farthing.paywall.methods.hll import HllMethod, HllMode
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.payword import PaywordScheme
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.testing.hll import HllBank
from farthing.testing.payword import PaywordBroker
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import HllCardFile
from farthing.wallet.wallet import Wallet

EUR = Denomination(currency="EUR", unit_micros=1000)
SITE = "https://news.test"
SHOP = "https://shop.test"
EVIL = "https://evil.test"
BANK_MASTER, OTHER_BANK_MASTER = b"K" * 32, b"O" * 32
BANK_KEY = hll.card_certification_public_key(BANK_MASTER)
OTHER_BANK_KEY = hll.card_certification_public_key(OTHER_BANK_MASTER)
BROKER_KEY, USER_KEY = b"B" * 32, b"U" * 32
SZM_MASTER = b"M" * 32
PASSPHRASE = "a long wallet passphrase"


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("article " + request.path_params["slug"])


def paywall(method: Any, clock: FixedClock, micros: int = 2000) -> Paywall:
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=micros, currency="EUR"))
    return Paywall(
        Starlette(routes=[Route("/articles/{slug}", article)]),
        realm="news",
        prices=prices,
        methods=[method],
        challenge_secret=b"s" * 32,
        clock=clock,
        rng=DeterministicRandom("v"),
    )


class Counting(httpx.AsyncBaseTransport):
    """Between wallet and vendor: counts the payments that left the wallet."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.payments = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "authorization" in request.headers:
            self.payments += 1
        return await self.inner.handle_async_request(request)


async def get(wallet: Wallet, transport: Counting, url: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, auth=PaymentAuth(wallet)) as http:
        return await http.get(url)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def wallet(tmp_path: Path, clock: FixedClock) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "pw", clock=clock) as opened:
        yield opened


# --- HLL -----------------------------------------------------------------------------------


class CountingBank:
    """The core's reference bank behind the vendor's bank-client port, counting calls."""

    def __init__(self, clock: FixedClock) -> None:
        self.bank = HllBank(
            denomination=EUR, certification_key=hll.card_certification_key(BANK_MASTER)
        )
        self.bank.register_merchant("shop", b"m" * 32)
        self.clock = clock
        self.calls = 0

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        self.calls += 1
        self.bank.verify_online(
            hll.decode_offer(offer), hll.decode_payment(payment), self.clock.now()
        )
        return False


def hll_card(
    bank: CountingBank, *, bank_key: bytes | None = BANK_KEY, seed: str = "hll"
) -> HllCardFile:
    card_id = hll.new_card_id(DeterministicRandom(seed))
    key = hll.derive_card_key(BANK_MASTER, card_id)
    bank.bank.register_card(card_id, key, 50)
    return HllCardFile(
        card_id=card_id,
        balance=50,
        denomination=EUR,
        card_key=key,
        certificate=bank.bank.certify(card_id, 4_000_000_000),
        bank_key=bank_key,
    )


def hll_vendor(
    bank: CountingBank, clock: FixedClock, bank_key: bytes | None = BANK_KEY
) -> Counting:
    method = HllMethod(
        merchant_id="shop",
        unit_micros=1000,
        mode=HllMode.ONLINE,
        bank=bank,
        bank_public_key=bank_key,
    )
    return Counting(paywall(method, clock))


def hll_units(wallet: Wallet) -> int:
    return wallet.cards()[0].units_left


@pytest.mark.anyio
async def test_an_hll_card_pays_only_the_origins_in_its_set(
    wallet: Wallet, clock: FixedClock
) -> None:
    bank = CountingBank(clock)
    wallet.add_hll_card(hll_card(bank), site=[SITE, SHOP])  # a bank card: several merchants
    vendor = hll_vendor(bank, clock)
    with pytest.raises(LocalProtocolError) as caught:
        await get(wallet, vendor, f"{EVIL}/articles/a")
    assert caught.value.code is ErrorCode.WRONG_SITE
    assert (vendor.payments, bank.calls, hll_units(wallet)) == (0, 0, 50)  # was (1, 1, 48)
    assert (await get(wallet, vendor, f"{SITE}/articles/a")).text == "article a"
    assert (await get(wallet, vendor, f"{SHOP}/articles/b")).text == "article b"
    assert (vendor.payments, bank.calls, hll_units(wallet)) == (2, 2, 46)
    assert bank.bank.credited("shop") == 4


@pytest.mark.anyio
async def test_an_hll_challenge_of_another_bank_is_refused_before_anything_leaves(
    wallet: Wallet, clock: FixedClock
) -> None:
    bank = CountingBank(clock)
    wallet.add_hll_card(hll_card(bank), site=SITE)
    foreign = hll_vendor(bank, clock, bank_key=OTHER_BANK_KEY)  # same site, another bank
    with pytest.raises(LocalProtocolError) as caught:
        await get(wallet, foreign, f"{SITE}/articles/a")
    assert caught.value.code is ErrorCode.WRONG_ISSUER
    assert "bank" in caught.value.message
    assert (foreign.payments, bank.calls, hll_units(wallet)) == (0, 0, 50)  # was (1, 1, 50)
    own = hll_vendor(bank, clock)
    assert (await get(wallet, own, f"{SITE}/articles/a")).text == "article a"
    assert (own.payments, bank.calls, hll_units(wallet)) == (1, 1, 48)


def test_the_hll_challenge_names_its_bank(clock: FixedClock) -> None:
    method = HllMethod(
        merchant_id="shop", unit_micros=1000, mode=HllMode.ONLINE, bank=CountingBank(clock),
        bank_public_key=BANK_KEY,
    )  # fmt: skip
    route = paywall(method, clock).prices.match("/articles/a")
    assert route is not None
    assert method.request(route)["methodDetails"]["bank"] == b64url_encode(BANK_KEY)


def test_an_hll_card_needs_its_bank_and_a_certificate_that_bank_signed(
    wallet: Wallet, clock: FixedClock
) -> None:
    bank = CountingBank(clock)
    with pytest.raises(LocalProtocolError) as unnamed:
        wallet.add_hll_card(hll_card(bank, bank_key=None), site=SITE)
    assert unnamed.value.code is ErrorCode.MISUSE
    with pytest.raises(FarthingError) as forged:
        wallet.add_hll_card(hll_card(bank, bank_key=OTHER_BANK_KEY, seed="two"), site=SITE)
    assert forged.value.code is ErrorCode.SIGNATURE_INVALID
    assert wallet.cards() == []


# --- PayWord -------------------------------------------------------------------------------


def payword_vendor(clock: FixedClock, broker_id: str = "broker") -> tuple[Counting, MemoryCardBook]:
    book = MemoryCardBook(key_attr="commitment_id")
    scheme = PaywordScheme(
        vendor_id="shop",
        broker_id=broker_id,
        broker_public=ed25519_public_key(BROKER_KEY),
        unit_micros=1000,
    )
    return Counting(paywall(OfflineMethod(scheme, book), clock, micros=3000)), book  # type: ignore[arg-type]


def add_payword(wallet: Wallet, clock: FixedClock, site: str | list[str] = SITE) -> None:
    broker = PaywordBroker(broker_id="broker", private_key=BROKER_KEY)
    certificate = broker.issue(
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=50,
        denomination=EUR,
        now=clock.now(),
        ttl=7 * 86_400,
    )
    wallet.add_payword(certificate, USER_KEY, site=site)


@pytest.mark.anyio
async def test_a_payword_account_pays_only_the_origins_in_its_set(
    wallet: Wallet, clock: FixedClock
) -> None:
    add_payword(wallet, clock)
    vendor, book = payword_vendor(clock)
    with pytest.raises(LocalProtocolError) as caught:
        await get(wallet, vendor, f"{EVIL}/articles/a")
    assert caught.value.code is ErrorCode.WRONG_SITE
    assert (vendor.payments, len(book.states)) == (0, 0)  # was (1, 1): a commitment to evil
    assert (await get(wallet, vendor, f"{SITE}/articles/a")).text == "article a"
    assert (vendor.payments, len(book.states)) == (1, 1)
    assert wallet.history()[0].units == 3


@pytest.mark.anyio
async def test_a_payword_challenge_of_another_broker_is_refused_before_anything_leaves(
    wallet: Wallet, clock: FixedClock
) -> None:
    add_payword(wallet, clock)
    vendor, book = payword_vendor(clock, broker_id="other-broker")
    with pytest.raises(LocalProtocolError) as caught:
        await get(wallet, vendor, f"{SITE}/articles/a")
    assert caught.value.code is ErrorCode.WRONG_ISSUER  # was NOT_FOUND
    assert "broker" in caught.value.message
    assert (vendor.payments, len(book.states), wallet.history()) == (0, 0, [])


# --- plain http, every kind ------------------------------------------------------------------


def szm_vendor(clock: FixedClock) -> tuple[Counting, szm_chain.ChainCard]:
    state, card = szm_chain.issue_card(
        SZM_MASTER, DeterministicRandom("szm"), length=50, denomination=EUR,
        expires_at=clock.now() + 86_400,
    )  # fmt: skip
    book = MemoryCardBook()
    book.add(state)
    method = OfflineMethod(SzmScheme.chain(SZM_MASTER), book)  # type: ignore[misc]
    return Counting(paywall(method, clock)), card


def vendor_of_kind(kind: str, wallet: Wallet, clock: FixedClock, site: str) -> Counting:
    """A vendor selling to ``kind`` and a card of that kind in the wallet, bound to ``site``."""
    if kind == "szm":
        vendor, card = szm_vendor(clock)
        code = cardcode.to_text(szm_chain.to_card_code(card, realm="news"))
        wallet.add_szm_code(code, site=site)
        return vendor
    if kind == "hll":
        bank = CountingBank(clock)
        wallet.add_hll_card(hll_card(bank), site=site)
        return hll_vendor(bank, clock)
    add_payword(wallet, clock, site=site)
    return payword_vendor(clock)[0]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["szm", "hll", "payword"])
@pytest.mark.parametrize(
    ("base", "pays"),
    [("http://news.test", False), ("http://127.0.0.1:8000", True), ("http://[::1]:8000", True)],
)
async def test_plain_http_is_paid_only_on_loopback_for_every_kind(
    wallet: Wallet, clock: FixedClock, kind: str, base: str, pays: bool
) -> None:
    vendor = vendor_of_kind(kind, wallet, clock, site=base)
    if pays:
        assert (await get(wallet, vendor, f"{base}/articles/a")).text == "article a"
    else:
        with pytest.raises(LocalProtocolError) as caught:
            await get(wallet, vendor, f"{base}/articles/a")
        assert caught.value.code is ErrorCode.INSECURE_TRANSPORT
    assert vendor.payments == (1 if pays else 0)
    assert len(wallet.history()) == (1 if pays else 0)


# --- wallet files from before site sets --------------------------------------------------------


@pytest.mark.anyio
async def test_a_bank_card_from_before_site_sets_pays_nobody_until_bound(
    tmp_path: Path, wallet: Wallet, clock: FixedClock
) -> None:
    bank = CountingBank(clock)
    wallet.add_hll_card(hll_card(bank), site=SITE)
    with sqlite3.connect(tmp_path / "wallet.sqlite") as db:  # as an older wallet wrote it
        db.execute("UPDATE cards SET params = json_remove(params, '$.sites', '$.bank')")
    db.close()
    vendor = hll_vendor(bank, clock, bank_key=None)
    with pytest.raises(LocalProtocolError) as caught:
        await get(wallet, vendor, f"{SITE}/articles/a")
    assert caught.value.code is ErrorCode.WRONG_SITE
    assert "farthing wallet bind" in caught.value.message
    assert vendor.payments == 0
    label = wallet.cards()[0].label
    wallet.bind(label, SITE)
    assert (await get(wallet, vendor, f"{SITE}/articles/a")).text == "article a"
    assert (vendor.payments, hll_units(wallet)) == (1, 48)
    # A vendor naming its bank: the old card names none, so it pays only once named.
    named = hll_vendor(bank, clock)
    clock.advance(301)  # the unnamed vendor's challenges, remembered for paying up front, expire
    with pytest.raises(LocalProtocolError) as unnamed:
        await get(wallet, named, f"{SITE}/articles/b")
    assert unnamed.value.code is ErrorCode.WRONG_ISSUER
    assert "--bank-key" in unnamed.value.message
    with pytest.raises(FarthingError) as forged:
        wallet.name_bank(label, OTHER_BANK_KEY)  # not the bank that signed its certificate
    assert forged.value.code is ErrorCode.SIGNATURE_INVALID
    wallet.name_bank(label, BANK_KEY)
    assert (await get(wallet, named, f"{SITE}/articles/b")).text == "article b"
    assert (named.payments, bank.calls, hll_units(wallet)) == (1, 2, 46)


# --- the CLI -----------------------------------------------------------------------------------


def cli(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli_app, ["wallet", *args])


def test_sites_are_given_at_add_card_and_bound_and_unbound_through_the_cli(
    tmp_path: Path, clock: FixedClock
) -> None:
    path = tmp_path / "cli.sqlite"
    Wallet.create(path, PASSPHRASE).close()
    runner = CliRunner(env={"FARTHING_WALLET_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"})
    where = ("--wallet", str(path))
    _, card = szm_chain.issue_card(
        SZM_MASTER, DeterministicRandom("cli"), length=20, denomination=EUR,
        expires_at=4_000_000_000,
    )  # fmt: skip
    code = cardcode.to_text(szm_chain.to_card_code(card, realm="news"))
    added = cli(
        runner, "add-card", "szm", code, "--site", SITE, "--site", f"{SHOP},{EVIL}/x",
        "--label", "c", *where,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert sites_of(path) == {SITE, SHOP, EVIL}
    unbound = cli(runner, "unbind", "c", "--site", EVIL, *where)
    assert unbound.exit_code == 0, unbound.output
    assert sites_of(path) == {SITE, SHOP}
    assert cli(runner, "unbind", "c", "--site", f"{SITE},{SHOP}", *where).exit_code == 0
    assert sites_of(path) == set()
    listed = cli(runner, "cards", *where)
    assert "pays no site" in listed.output
    assert "farthing wallet bind" in listed.output
    bound = cli(runner, "bind", "c", "--site", "https://other.test/", *where)
    assert bound.exit_code == 0, bound.output
    assert sites_of(path) == {"https://other.test"}
    nothing = cli(runner, "bind", "c", *where)
    assert (nothing.exit_code, "--site" in nothing.output) == (1, True)
    not_hll = cli(runner, "bind", "c", "--bank-key", BANK_KEY.hex(), *where)
    assert (not_hll.exit_code, "only an HLL card" in not_hll.output) == (1, True)
    assert "64 hex digits" in cli(runner, "bind", "c", "--bank-key", "zz", *where).output
    missing = cli(runner, "unbind", "nope", "--site", SITE, *where)
    assert missing.exit_code == 1
    assert "Traceback" not in missing.output


def test_every_kind_of_card_needs_a_site_on_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "cli.sqlite"
    Wallet.create(path, PASSPHRASE).close()
    runner = CliRunner(env={"FARTHING_WALLET_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"})
    (tmp_path / "cert").write_text("x")
    for args in (
        ("add-card", "szm", "FTH1-AAAA"),
        ("add-card", "payword", "--certificate", str(tmp_path / "cert"), "--user-key", "k"),
        ("add-card", "hll", "--card-file", "f", "--pkcs11-module", "m", "--token-label", "t"),
    ):
        result = cli(runner, *args, "--wallet", str(path))
        assert result.exit_code != 0
        assert "--site" in result.output
    assert sites_of(path) is None


def sites_of(path: Path) -> set[str] | None:
    with Wallet.open(path, PASSPHRASE) as opened:
        held = opened.cards()
    return set(held[0].sites) if held else None
