"""A real ``farthing vendor serve`` shop for the browser tests, and the reader's moves."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page

from farthing.core import cardcode
from farthing.core.schemes import szm_chain
from farthing.store import Store, open_store
from tests.paywall.helpers import KEYS, issue_chain_cards
from tests.servers import command_server, free_port

ARTICLES = {name: f"secret article {name}" for name in ("a", "b", "c", "d", "e", "f")}
PRICE_UNITS = 2  # "2000 EUR" at the test cards' 1000 micro-units
PREMIUM_UNITS = 100  # "100000 EUR": 10 cents, above the default 5 cents per article


@dataclass
class Shop:
    base: str
    store: Store
    card: szm_chain.ChainCard
    code: str
    folder: Path

    def vendor_spent(self) -> int:
        row = self.store.szm_card(self.card.card_id)
        assert row is not None
        return row.spent


def write_shop(folder: Path, database: str) -> Path:
    articles = folder / "goods" / "articles"
    articles.mkdir(parents=True)
    for name, text in ARTICLES.items():
        (articles / f"{name}.txt").write_text(text)
    premium = folder / "goods" / "premium"
    premium.mkdir()
    (premium / "long.txt").write_text("secret premium article")
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        f'database = "{database}"\n'
        'content_dir = "goods"\n'
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n'
        '"/premium/*" = "100000 EUR"\n'
        "[szm]\n"
        f'chain_master = "{KEYS.chain_master.hex()}"\n'
        f'prbg_master = "{KEYS.prbg_master.hex()}"\n'
    )
    return config


@contextlib.contextmanager
def running_shop(folder: Path, units: int = 300) -> Iterator[Shop]:
    database = str(folder / "vendor.sqlite")
    store = open_store(database)
    card = issue_chain_cards(store, 1, units=units)[0]
    code = cardcode.to_text(szm_chain.to_card_code(card, realm="news"))
    config = write_shop(folder, database)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(folder / "goods"), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    try:
        with command_server(command, port, env={}, log_path=folder / "serve.log") as base:
            yield Shop(base=base, store=store, card=card, code=code, folder=folder)
    finally:
        store.close()


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
