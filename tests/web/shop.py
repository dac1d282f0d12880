"""A real ``farthing vendor serve`` shop for the browser tests, and the reader's moves."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, Protocol
from farthing.core.schemes import szm_chain
from farthing.store import Store, open_store
from tests.servers import command_server, free_port

FARTHING = str(Path(sys.executable).parent / "farthing")

ARTICLES = {name: f"secret article {name}" for name in ("a", "b", "c", "d", "e", "f")}
PRICE_UNITS = 2  # "2000 EUR" at the test cards' 1000 micro-units
PREMIUM_UNITS = 100  # "100000 EUR": 10 cents, above the default 5 cents per article


@dataclass
class Shop:
    base: str
    store: Store
    card_id: bytes
    code: str  # the short code printed on the card
    folder: Path

    def vendor_spent(self) -> int:
        row = self.store.szm_card(self.card_id)
        assert row is not None
        return row.spent


def farthing(folder: Path, *args: str) -> str:
    """The real CLI in ``folder``, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARTHING_")}
    done = subprocess.run(
        [FARTHING, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def set_up_shop(folder: Path, units: int) -> tuple[Path, str]:
    """An issuer, one card, and the vendor ``vendor init`` writes for it, with the test's
    prices; returns the goods folder and the card's printed short code."""
    farthing(folder, "issuer", "init", "--bbs-bits", "2048")
    farthing(folder, "issuer", "cards", "issue", "--count", "1", "--units", str(units),
             "--unit-micros", "1000", "--currency", "EUR", "--out", "codes.txt")  # fmt: skip
    goods = folder / "goods"
    for name, text in ARTICLES.items():
        (goods / "articles").mkdir(parents=True, exist_ok=True)
        (goods / "articles" / f"{name}.txt").write_text(text)
    (goods / "premium").mkdir()
    (goods / "premium" / "long.txt").write_text("secret premium article")
    farthing(folder, "vendor", "init", "goods", "--issuer-keys", "farthing-issuer.keys.json")
    config = goods / ".farthing" / "vendor.toml"
    text = config.read_text()
    assert '"/**" = "1000 EUR"' in text
    config.write_text(
        text.replace(
            '"/**" = "1000 EUR"', '"/articles/*" = "2000 EUR"\n"/premium/*" = "100000 EUR"'
        )
    )
    return goods, (folder / "codes.txt").read_text().split()[0]


@contextlib.contextmanager
def running_shop(folder: Path, units: int = 300) -> Iterator[Shop]:
    goods, code = set_up_shop(folder, units)
    store = open_store(str(folder / "farthing-issuer.sqlite"))
    with store.transaction(readonly=True) as tx:
        row = tx.szm.card_by_lookup(shortcode.lookup_id(shortcode.parse_code(code)))
    assert row is not None
    port = free_port()
    command = [FARTHING, "vendor", "serve", str(goods), "--port", str(port)]
    try:
        with command_server(command, port, env={}, log_path=folder / "serve.log") as base:
            yield Shop(base=base, store=store, card_id=row.card_id, code=code, folder=folder)
    finally:
        store.close()


def chain_card(shop: Shop) -> szm_chain.ChainCard:
    """The card as another wallet holding the printed code has it (fresh: nothing spent)."""
    row = shop.store.szm_card(shop.card_id)
    assert row is not None
    short = shortcode.parse_code(shop.code)
    secret = shortcode.card_secret(short, szm_chain.DERIVATION_DOMAIN, shop.card_id)
    code = CardCode(
        protocol=Protocol.CHAIN, card_id=shop.card_id, secret=secret, units=row.units,
        currency=row.currency, unit_micros=row.unit_micros, expires_at=row.expires_at,
        generator=Generator.SHA256_CHAIN, realm="farthing",
    )  # fmt: skip
    return szm_chain.card_from_code(code)


def enter_card(page: Page, shop: Shop, path: str = "/articles/a.txt") -> None:
    """What a reader does once: open a paid article, type the code, keep the budget."""
    page.goto(shop.base + path)
    page.fill("#card-code", shop.code)
    page.click("#card-form button")
    page.wait_for_selector("#budget:not([hidden])")
    with page.expect_navigation():
        page.click("#budget-form button")


def article_text(page: Page) -> str:
    return page.inner_text("body").strip()


def wallet_card(page: Page) -> dict[str, object]:
    """The card as the page's wallet holds it in IndexedDB."""
    card: dict[str, object] = page.evaluate(
        "async () => (await import('/_farthing/store.js')).getCard()"
    )
    return card


def wallet_payments(page: Page) -> list[dict[str, object]]:
    payments: list[dict[str, object]] = page.evaluate(
        "async () => (await import('/_farthing/store.js')).listPayments()"
    )
    return payments
