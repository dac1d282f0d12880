"""The demo's steps. Each step is a small function; :func:`run_demo` strings them together."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from farthing.core.clock import SystemClock
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, LocalProtocolError
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword
from farthing.demo._servers import BackgroundServer
from farthing.demo.report import CardLine, DemoReport, Message, Purchase
from farthing.http.issuer_client import IssuerClient
from farthing.http.payment_auth import Receipt
from farthing.issuer.app import create_issuer_app
from farthing.issuer.auth import new_operator_token, token_hash
from farthing.issuer.config import (
    IssuerConfig,
    IssuerKeys,
    RateLimits,
    generate_issuer_keys,
    write_key_file,
)
from farthing.paywall.app import (
    HllSettings,
    PaywordSettings,
    SzmKeys,
    VendorSettings,
    build_vendor,
)
from farthing.paywall.deposits import Depositor, FlushReport
from farthing.paywall.goods import GoodsApp
from farthing.paywall.methods.hll import HllMode
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import Store, open_store
from farthing.testing import SoftwareWrappingKey
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import HllCardFile, Pkcs11Location
from farthing.wallet.pkcs11_card import (
    SoftHsmToken,
    init_softhsm_token,
    install_wrapped_card_key,
    new_wrapping_key,
)
from farthing.wallet.wallet import Wallet

__all__ = ["DemoWorld", "IssuedCards", "IssuedHllCard", "demo_world", "run_demo"]

EUR = "EUR"
UNIT = 1000  # micro-EUR per card unit: 0.1 cent
PASSPHRASE = "demo passphrase"  # noqa: S105 - a throwaway wallet in a temp folder
GOODS = {
    "articles/ocean.txt": "The ocean covers 71% of the Earth's surface.\n",
    "articles/forest.txt": "A single oak can host over 2,300 species.\n",
    "articles/desert.txt": "The Atacama is the driest non-polar desert.\n",
    "articles/river.txt": "The Amazon carries a fifth of the world's river water.\n",
    "articles/glacier.txt": "Glaciers store about 69% of the world's fresh water.\n",
    "articles/tundra.txt": "Tundra soils hold vast amounts of frozen carbon.\n",
    "articles/reef.txt": "Coral reefs cover under 1% of the ocean floor.\n",
    "articles/steppe.txt": "The Eurasian steppe stretches some 8,000 km.\n",
    "data/prices.csv": "item,price\ntea,2.10\nbread,3.40\n",
    "data/rates.csv": "currency,rate\nUSD,1.08\nGBP,0.85\n",
}
ARTICLE_PRICE = Price(micros=2000, currency=EUR)
DATA_PRICE = Price(micros=5000, currency=EUR)
METHODS = ("szm:chain", "szm:prbg", "szm:prbg/bbs", "hll:mac", "payword")

Step = Callable[[str], None]
_WRAP_LABEL = "hll-card-wrap"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedHllCard:
    """The HLL card as the bank personalised it, and where its key K_C was put."""

    card_json: str = field(repr=False)  # the card file once the token holds K_C (no key)
    token: Pkcs11Location | None  # the SoftHSM2 token holding K_C; None without SoftHSM2
    pin: str = field(repr=False)  # the token's user PIN ("" without a token)
    device: str  # what holds K_C, in words, for the report


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCards:
    """Every card the issuer handed out, in the form a customer receives it, so another
    wallet (the CLI's, in tests) can load the same cards."""

    szm_codes: dict[str, str]  # wallet label (szm:chain, szm:prbg, szm:prbg/bbs) -> printed code
    hll: IssuedHllCard
    payword_certificate: bytes  # the broker's encoded certificate for alice's key
    payword_key: bytes = field(repr=False)  # alice's Ed25519 private key


@dataclass(slots=True)
class Setup:
    store: Store
    operator: httpx.Client
    issuer_url: str
    keys: IssuerKeys
    merchant_key: bytes
    cards: IssuedCards
    wallet_path: Path
    bbs_wallet_path: Path  # a second reader, holding the Blum-Blum-Shub card
    goods: Path


@dataclass(frozen=True, slots=True)
class DemoWorld:
    """The running issuer and vendor, and the demo wallets (every card already loaded)."""

    setup: Setup
    vendor_url: str
    admin_url: str  # the vendor's admin listener (/metrics, /healthz, /readyz)
    passphrase: str = PASSPHRASE

    @property
    def issuer_url(self) -> str:
        return self.setup.issuer_url

    @property
    def cards(self) -> IssuedCards:
        return self.setup.cards

    @property
    def wallet_path(self) -> Path:
        """The wallet holding the szm:chain, szm:prbg (HMAC-CTR), hll:mac and payword cards."""
        return self.setup.wallet_path

    @property
    def bbs_wallet_path(self) -> Path:
        """The wallet holding the szm:prbg card with the Blum-Blum-Shub generator."""
        return self.setup.bbs_wallet_path


@contextmanager
def demo_world(workdir: Path, *, step: Step = lambda _: None) -> Iterator[DemoWorld]:
    """Set up the issuer and its cards, start the vendor, and stop both when the block ends.

    What :func:`run_demo` buys in; tests use it to drive their own clients (or the CLI)."""
    with ExitStack() as stack:
        setup = _set_up_issuer(workdir, stack, step)
        vendor_url, admin_url = stack.enter_context(_vendor(setup, step))
        _load_szm_cards(setup, vendor_url, step)
        yield DemoWorld(setup, vendor_url, admin_url)


def run_demo(workdir: Path, *, step: Step = lambda _: None) -> DemoReport:
    """Run everything in ``workdir`` (SQLite files, goods, wallet, token); report what held."""
    started = time.perf_counter()
    report = DemoReport(workdir=str(workdir))
    with demo_world(workdir, step=step) as world:
        setup, vendor_url = world.setup, world.vendor_url
        report.card_device = setup.cards.hll.device
        owed_before, alice_before = _owed(setup.operator), _available(setup.operator)
        before = _card_values(setup.wallet_path) | _card_values(setup.bbs_wallet_path)
        _buy_with_every_method(setup, vendor_url, report, step)
        _try_double_spend(setup, vendor_url, report, step)
        _clear_deposits(setup, report, step)
        report.verify_ms = _verify_times(world.admin_url)
        after = _card_values(setup.wallet_path) | _card_values(setup.bbs_wallet_path)
        _compare_cards(before, after, report)
        report.accounts["shop: owed by the issuer"] = (owed_before, _owed(setup.operator))
        report.accounts["alice: account (billed for PayWord)"] = (
            alice_before,
            _available(setup.operator),
        )
        _check_ledger(setup.operator, report, step)
    report.seconds = time.perf_counter() - started
    return report


# --- the issuer and its cards ---------------------------------------------------------------


def _set_up_issuer(workdir: Path, stack: ExitStack, step: Step) -> Setup:
    step("issuer: keys, database, operator token")
    keys = generate_issuer_keys(os.urandom, broker_id="demo-broker", realm="farthing demo")
    write_key_file(workdir / "issuer.keys.json", keys)
    store = open_store(str(workdir / "farthing.sqlite"))
    token = new_operator_token(os.urandom)
    with store.transaction() as tx:
        tx.admin.add_operator_token("demo-operator", token_hash(token))
    config = IssuerConfig(keys=keys, rate_limits=RateLimits(enabled=False))
    app = create_issuer_app(config, store, clock=SystemClock(), rng=os.urandom)
    issuer_url = stack.enter_context(BackgroundServer(app, name="issuer"))
    operator = stack.enter_context(
        httpx.Client(base_url=issuer_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    )
    wallet_path, bbs_wallet_path = workdir / "wallet.sqlite", workdir / "wallet-bbs.sqlite"
    with (
        Wallet.create(wallet_path, PASSPHRASE) as wallet,
        Wallet.create(bbs_wallet_path, PASSPHRASE),
    ):
        codes = _issue_szm_cards(operator, step)
        merchant_key = _register_merchant(operator, step)
        hll_card = _personalise_hll_card(operator, wallet, workdir, step)
        certificate, user_key = _register_payword_user(operator, wallet, step)
    cards = IssuedCards(
        szm_codes=codes, hll=hll_card, payword_certificate=certificate, payword_key=user_key
    )
    goods = _write_goods(workdir / "goods")
    return Setup(
        store=store, operator=operator, issuer_url=issuer_url, keys=keys,
        merchant_key=merchant_key, cards=cards, wallet_path=wallet_path,
        bbs_wallet_path=bbs_wallet_path, goods=goods,
    )  # fmt: skip


def _api(response: httpx.Response) -> dict[str, object]:
    if response.status_code >= 400:
        raise LocalProtocolError(
            f"issuer API {response.request.url.path} answered {response.status_code}",
            code=ErrorCode.INTERNAL,
        )
    body: dict[str, object] = response.json()
    return body


def _issue_szm_cards(operator: httpx.Client, step: Step) -> dict[str, str]:
    """One card of each SZM kind; their printed codes by wallet label."""
    printed: dict[str, str] = {}
    expires = int(time.time()) + 30 * 86_400
    for protocol, generator in (
        ("szm:chain", None),
        ("szm:prbg", "hmac-ctr"),
        ("szm:prbg", "bbs"),
    ):
        step(f"issuer: an anonymous {protocol} card" + (f" ({generator})" if generator else ""))
        body: dict[str, object] = {
            "protocol": protocol, "count": 1, "units": 100, "unit_micros": UNIT,
            "currency": EUR, "expires_at": expires,
        }  # fmt: skip
        if generator is not None:
            body["generator"] = generator
        batch = _api(operator.post("/v1/szm/batches", json=body))
        codes = _api(operator.get(f"/v1/szm/batches/{batch['batch_id']}/codes"))
        cards = codes["cards"]
        assert isinstance(cards, list)
        label = protocol if generator != "bbs" else "szm:prbg/bbs"
        printed[label] = str(cards[0]["code"])
    return printed


def _load_szm_cards(setup: Setup, vendor_url: str, step: Step) -> None:
    """The SZM cards go into the wallets bound to the vendor that sells them (its URL); the
    bank card and the PayWord account, added before the vendor ran, are bound to it now."""
    step("wallet: load the SZM cards, each bound to the vendor's site; bind the others")
    with (
        Wallet.open(setup.wallet_path, PASSPHRASE) as wallet,
        Wallet.open(setup.bbs_wallet_path, PASSPHRASE) as bbs_wallet,
    ):
        for label, code in setup.cards.szm_codes.items():
            holder = bbs_wallet if label.endswith("/bbs") else wallet
            holder.add_szm_code(code, site=vendor_url, label=label)
        for label in ("hll:mac", "payword"):
            wallet.bind(label, vendor_url)


def _register_merchant(operator: httpx.Client, step: Step) -> bytes:
    step("issuer: a customer with money, and the merchant 'shop'")
    _api(operator.post("/v1/customers", json={"customer_id": "alice", "currency": EUR}))
    _api(
        operator.post(
            "/v1/customers/alice/loads", json={"amount_micros": 1_000_000, "reference": "cash-1"}
        )
    )
    merchant = _api(operator.post("/v1/merchants", json={"merchant_id": "shop", "currency": EUR}))
    return b64url_decode(str(merchant["key"]))


def _personalise_hll_card(
    operator: httpx.Client, wallet: Wallet, workdir: Path, step: Step
) -> IssuedHllCard:
    """The wallet's token makes a key pair, the bank wraps K_C to it, the token unwraps it.
    Without SoftHSM2 an in-memory stand-in (farthing.testing) plays the token."""
    step("issuer: personalise an HLL smart card for alice (K_C wrapped for her token)")
    token = _softhsm_token(workdir)
    software = SoftwareWrappingKey() if token is None else None
    if token is not None:
        public = new_wrapping_key(token.module_path, token.label, token.user_pin, _WRAP_LABEL)
    else:
        assert software is not None
        public = software.public_key()
    body = {"customer_id": "alice", "units": 200, "token_public_key": b64url_encode(public)}
    created = operator.post("/v1/hll/cards", json=body)
    _api(created)
    card = HllCardFile.from_json(created.text)
    assert card.wrapped_key is not None
    kept = HllCardFile(
        card_id=card.card_id,
        balance=card.balance,
        denomination=card.denomination,
        certificate=card.certificate,
        bank_key=card.bank_key,
    )
    if token is None:
        assert software is not None
        key = software.unwrap(card.wrapped_key)
        # No site yet (it pays nobody): the vendor's URL is known once it runs.
        wallet.add_hll_card(replace(kept, card_key=key), site=(), label="hll:mac")
        device = "software card (no SoftHSM2 here)"
        return IssuedHllCard(card_json=kept.to_json(), token=None, pin="", device=device)
    install_wrapped_card_key(
        token.module_path, token.label, token.user_pin, "hll-card", card.wrapped_key,
        transport_key_label=_WRAP_LABEL,
    )  # fmt: skip
    location = Pkcs11Location(
        module_path=token.module_path, token_label=token.label, key_label="hll-card"
    )
    wallet.add_hll_card(kept, token=location, pin=token.user_pin, site=(), label="hll:mac")
    device = "SoftHSM2 token over PKCS#11 (key unwrapped inside, not extractable)"
    return IssuedHllCard(
        card_json=kept.to_json(), token=location, pin=token.user_pin, device=device
    )


def _softhsm_token(workdir: Path) -> SoftHsmToken | None:
    """A fresh SoftHSM2 token if this machine has SoftHSM2."""
    try:
        return init_softhsm_token(workdir / "softhsm", label="demo-card")
    except (FarthingError, OSError):
        return None


def _register_payword_user(
    operator: httpx.Client, wallet: Wallet, step: Step
) -> tuple[bytes, bytes]:
    """A broker certificate for a fresh key of alice's, added to the wallet: (certificate,
    private key)."""
    step("broker: a PayWord certificate for alice")
    private = os.urandom(32)
    body = {
        "user_id": "alice-pw", "customer_id": "alice",
        "public_key": b64url_encode(ed25519_public_key(private)),
        "credit_limit_units": 500, "unit_micros": UNIT,
    }  # fmt: skip
    user = _api(operator.post("/v1/payword/users", json=body))
    encoded = b64url_decode(str(user["certificate"]))
    wallet.add_payword(payword.decode_certificate(encoded), private, site=(), label="payword")
    return encoded, private


def _write_goods(folder: Path) -> Path:
    for name, text in GOODS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


# --- the vendor ---------------------------------------------------------------------------


@contextmanager
def _vendor(setup: Setup, step: Step) -> Iterator[tuple[str, str]]:
    step("vendor: a paywall in front of the articles, on the issuer's store")
    keys = setup.keys
    settings = VendorSettings(
        realm="farthing demo",
        challenge_secret=os.urandom(32),
        szm=SzmKeys(
            chain_master=keys.szm_chain_master, prbg_master=keys.szm_prbg_master, bbs=keys.bbs
        ),
        hll=HllSettings(
            merchant_id="shop", merchant_key=setup.merchant_key, unit_micros=UNIT,
            mode=HllMode.ONLINE,
            bank_public_key=hll.card_certification_public_key(keys.hll_master),
        ),
        payword=PaywordSettings(
            vendor_id="shop", broker_id="demo-broker",
            broker_public=keys.broker_public_key,
            unit_micros=UNIT,
        ),
    )  # fmt: skip
    prices = PriceTable()
    prices.add("/articles/*", ARTICLE_PRICE)
    prices.add("/data/*", DATA_PRICE)
    bank = IssuerClient(setup.issuer_url, merchant_id="shop", merchant_key=setup.merchant_key)
    goods = GoodsApp(setup.goods)
    vendor = build_vendor(
        settings,
        content=goods,
        prices=prices,
        store=setup.store,
        bank=bank,
        broker=bank,  # admits PayWord commitments where they are redeemed
        closers=[bank.aclose],
        offers=goods.offers,
    )
    with (
        BackgroundServer(vendor.app, name="vendor") as url,
        BackgroundServer(vendor.admin, name="vendor-admin") as admin,
    ):
        yield url, admin


# --- buying --------------------------------------------------------------------------------


def _buy_with_every_method(setup: Setup, vendor: str, report: DemoReport, step: Step) -> None:
    articles = iter(sorted(name for name in GOODS if name.startswith("articles/")))
    for method in METHODS:
        preference = (method.split("/")[0],)
        path = setup.bbs_wallet_path if method.endswith("/bbs") else setup.wallet_path
        with Wallet.open(path, PASSPHRASE, preference=preference) as wallet:
            first, second = next(articles), next(articles) if method == "szm:chain" else None
            step(f"wallet: buy /{first} with {method}")
            _buy(wallet, vendor, first, method, report)
            if second is not None:
                step(f"wallet: buy /{second} with {method}, paying up front (no 402)")
                _buy(wallet, vendor, second, method, report)


def _buy(wallet: Wallet, vendor: str, name: str, method: str, report: DemoReport) -> None:
    statuses: list[int] = []
    messages: list[Message] = []

    def sent(request: httpx.Request) -> None:
        start = f"{request.method} {request.url.raw_path.decode('ascii')} HTTP/1.1"
        messages.append(Message(start=start, headers=tuple(request.headers.multi_items())))

    def log(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        start = f"HTTP/1.1 {response.status_code} {response.reason_phrase}"
        messages.append(Message(start=start, headers=tuple(response.headers.multi_items())))

    hooks: dict[str, list[Callable[..., object]]] = {"request": [sent], "response": [log]}
    started = time.perf_counter()
    with httpx.Client(auth=PaymentAuth(wallet), event_hooks=hooks, timeout=30) as c:
        response = c.get(f"{vendor}/{name}")
    if not report.exchange and statuses[:1] == [402]:
        report.exchange.extend(messages)
    seconds = time.perf_counter() - started
    sealed = _sealed(response)
    ok = response.status_code == 200 and response.text == GOODS[name]
    entry = wallet.history(limit=1)[0]
    report.purchases.append(
        Purchase(
            method=method, path="/" + name, price_micros=ARTICLE_PRICE.micros,
            charged_micros=entry.charged_micros, up_front=statuses[:1] == [200], sealed=sealed,
            ok=ok, seconds=seconds,
        )
    )  # fmt: skip
    report.check(f"bought /{name} with {method}", ok, f"HTTP {response.status_code}")
    if method.startswith("szm"):
        report.check(f"{method} body sealed, opened by the wallet", sealed and ok, "AES-256-GCM")


def _sealed(response: httpx.Response) -> bool:
    """Whether the vendor's receipt says it sealed the body (the wallet opened it)."""
    header = response.headers.get("payment-receipt")
    receipt = Receipt.from_header(header) if header else None
    return receipt is not None and "sealed" in receipt.extra


def _try_double_spend(setup: Setup, vendor: str, report: DemoReport, step: Step) -> None:
    step("attacker: replay a payment that was already accepted")
    captured: list[str] = []

    def keep(request: httpx.Request) -> None:
        if "authorization" in request.headers:
            captured.append(request.headers["authorization"])

    with (
        Wallet.open(setup.wallet_path, PASSPHRASE, preference=("szm:chain",)) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), event_hooks={"request": [keep]}, timeout=30) as c,
    ):
        started = time.perf_counter()
        paid = c.get(f"{vendor}/data/prices.csv")
        seconds = time.perf_counter() - started
        entry = wallet.history(limit=1)[0]
    report.purchases.append(
        Purchase(
            method="szm:chain", path="/data/prices.csv", price_micros=DATA_PRICE.micros,
            charged_micros=entry.charged_micros, up_front=len(captured) == 1,
            sealed=_sealed(paid),
            ok=paid.status_code == 200, seconds=seconds,
        )
    )  # fmt: skip
    stolen = {"Authorization": captured[-1]}
    other = httpx.get(f"{vendor}/data/rates.csv", headers=stolen, timeout=30)
    report.check(
        "a payment replayed for another good is refused",
        paid.status_code == 200
        and other.status_code == 402
        and GOODS["data/rates.csv"].encode() not in other.content,
        f"replay for /data/rates.csv got HTTP {other.status_code}",
    )
    # The same request again is a retry after a lost answer (docs/http.md): served again,
    # sealed under a key only the card holder has, and charged nothing (the card totals
    # below, and tests/demo, check that).
    again = httpx.get(f"{vendor}/data/prices.csv", headers=stolen, timeout=30)
    sealed = again.headers.get("content-type", "").startswith("application/vnd.farthing.sealed")
    report.check(
        "the same request again is a free, sealed retry",
        again.status_code == 200
        and sealed
        and GOODS["data/prices.csv"].encode() not in again.content,
        f"HTTP {again.status_code}, body sealed: {sealed}",
    )


# --- clearing and checking ----------------------------------------------------------------


def _clear_deposits(setup: Setup, report: DemoReport, step: Step) -> None:
    step("vendor: deposit PayWord redemptions with the broker")
    client = IssuerClient(setup.issuer_url, merchant_id="shop", merchant_key=setup.merchant_key)
    depositor = Depositor(
        setup.store, client, clock=SystemClock(), rng=os.urandom, merchant_id="shop",
        merchant_key=setup.merchant_key,
    )  # fmt: skip
    staged = depositor.stage()
    flushed = asyncio.run(_flush_and_close(depositor, client))
    again = depositor.stage()
    ok = staged >= 1 and flushed.sent == staged and flushed.failed == 0 and again == 0
    report.check("deposits cleared once", ok, f"{flushed.sent} of {staged} sent, {again} left")
    step("issuer: recognise SZM revenue")
    _api(setup.operator.post("/v1/szm/revenue", json={"currency": EUR}))


async def _flush_and_close(depositor: Depositor, client: IssuerClient) -> FlushReport:
    async with client:
        return await depositor.flush()


def _check_ledger(operator: httpx.Client, report: DemoReport, step: Step) -> None:
    step("issuer: check the double-entry ledger")
    check = _api(operator.get("/v1/ledger/check"))
    problems = check.get("problems") or []
    report.check("ledger balanced", bool(check.get("balanced")), f"{len(problems)} problems")  # type: ignore[arg-type]


def _owed(operator: httpx.Client) -> int:
    return int(str(_api(operator.get("/v1/merchants/shop"))["owed_micros"]))


def _available(operator: httpx.Client) -> int:
    return int(str(_api(operator.get("/v1/customers/alice"))["available_micros"]))


def _card_values(wallet_path: Path) -> dict[str, tuple[str, str, int]]:
    with Wallet.open(wallet_path, PASSPHRASE) as wallet:
        return {
            card.label: (card.method, card.currency, card.units_left * card.unit_micros)
            for card in wallet.cards()
            if card.method != "payword"  # credit, not stored value: see the broker's bill
        }


def _compare_cards(
    before: dict[str, tuple[str, str, int]],
    after: dict[str, tuple[str, str, int]],
    report: DemoReport,
) -> None:
    for label, (method, currency, value) in before.items():
        report.cards.append(
            CardLine(label=label, method=method, currency=currency, before_micros=value,
                     after_micros=after[label][2])
        )  # fmt: skip


_METRIC = re.compile(
    r'^farthing_verify_seconds_(sum|count)\{method="([^"]+)"\} ([0-9.e+-]+)$', re.M
)


def _verify_times(admin: str) -> dict[str, float]:
    """Mean time the vendor spent verifying and recording a payment, per method (ms)."""
    text = httpx.get(f"{admin}/metrics", timeout=30).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for kind, method, value in _METRIC.findall(text):
        (sums if kind == "sum" else counts)[method] = float(value)
    return {m: 1000 * sums[m] / counts[m] for m in sums if counts.get(m)}
