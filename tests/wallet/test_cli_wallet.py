"""``farthing wallet`` through Typer's CliRunner: what a person types and reads."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner, Result

from farthing.cli import app
from farthing.cli import wallet as wallet_cli
from farthing.core import cardcode
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge, format_challenge
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet

MASTER = b"M" * 32
EUR = Denomination(currency="EUR", unit_micros=1000)
PASSPHRASE = "a long wallet passphrase"

SITE = "https://news.test"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"FARTHING_WALLET_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"})


@pytest.fixture
def wallet_path(tmp_path: Path) -> Path:
    """A wallet made with a cheap KDF cost (tests run inside `cheap_wallet_kdf`), for speed."""
    path = tmp_path / "wallet.sqlite"
    Wallet.create(path, PASSPHRASE).close()
    return path


def run(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, ["wallet", *args], env=env)


def issued_card(length: int = 20) -> tuple[szm_chain.ChainCardState, szm_chain.ChainCard]:
    # Far-off expiry: the CLI runs on the real clock.
    return szm_chain.issue_card(
        MASTER,
        DeterministicRandom("card"),
        length=length,
        denomination=EUR,
        expires_at=4_000_000_000,
    )


def code_of(card: szm_chain.ChainCard) -> str:
    return cardcode.to_text(szm_chain.to_card_code(card, realm="news"))


# --- init, cards, passphrases -------------------------------------------------------------


def test_init_then_add_a_printed_card_and_list_it(runner: CliRunner, wallet_path: Path) -> None:
    _, card = issued_card()
    added = run(
        runner, "add-card", "szm", code_of(card), "--site", SITE, "--wallet", str(wallet_path)
    )
    assert added.exit_code == 0, added.output
    assert "Added" in added.output
    assert "20 units of 0.001 EUR" in added.output
    listed = run(runner, "cards", "--wallet", str(wallet_path))
    assert listed.exit_code == 0, listed.output
    assert "szm:chain" in listed.output
    assert "20/20" in listed.output
    assert "0.02 EUR" in listed.output
    assert "news" in listed.output


def test_card_from_a_file_and_the_wallet_from_the_environment(
    runner: CliRunner, wallet_path: Path, tmp_path: Path
) -> None:
    _, card = issued_card()
    qr_text = tmp_path / "card.txt"
    qr_text.write_text(cardcode.to_compact(szm_chain.to_card_code(card, realm="news")) + "\n")
    env = {"FARTHING_WALLET": str(wallet_path)}
    assert (
        run(runner, "add-card", "szm", "--file", str(qr_text), "--site", SITE, env=env).exit_code
        == 0
    )
    again = run(runner, "add-card", "szm", code_of(card), "--site", SITE, env=env)
    assert again.exit_code == 1
    assert "already in the wallet" in again.output
    balance = run(runner, "balance", env=env)
    assert "0.02 EUR" in balance.output


def test_wrong_passphrase_says_so_and_what_to_do(runner: CliRunner, wallet_path: Path) -> None:
    result = run(
        runner, "cards", "--wallet", str(wallet_path), env={"FARTHING_WALLET_PASSPHRASE": "nope"}
    )
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert "farthing wallet init" in result.output


def test_a_wallet_busy_in_another_process_is_explained(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: SQLAlchemy's OperationalError escaped as a traceback; now one line and a hint,
    chosen by the error's code (WALLET_BUSY), not by its text."""
    import farthing.wallet.store as wallet_store

    monkeypatch.setattr(wallet_store, "_BUSY_TIMEOUT_S", 0)
    monkeypatch.setattr(
        wallet_store, "_PRAGMAS", (*wallet_store._PRAGMAS[:-1], "PRAGMA busy_timeout=0")
    )
    other = sqlite3.connect(wallet_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another farthing writing this wallet
    try:
        result = run(runner, "cards", "--wallet", str(wallet_path))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # typer.Exit: no traceback
    assert "the wallet file is busy or unwritable" in result.output
    assert "another farthing is using this wallet" in result.output


def test_passphrase_file_is_read(runner: CliRunner, wallet_path: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text(PASSPHRASE + "\n")
    result = run(
        runner,
        "cards",
        "--wallet",
        str(wallet_path),
        "--passphrase-file",
        str(secret),
        env={"FARTHING_WALLET_PASSPHRASE": "ignored when a file is given"},
    )
    assert result.exit_code == 0, result.output
    assert "No cards yet" in result.output


def test_init_creates_a_wallet_the_passphrase_opens(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "new" / "wallet.sqlite"
    created = run(runner, "init", "--wallet", str(path))
    assert created.exit_code == 0, created.output
    assert "Created wallet" in created.output
    Wallet.open(path, PASSPHRASE).close()


def test_init_refuses_an_existing_wallet_and_open_needs_one(
    runner: CliRunner, wallet_path: Path, tmp_path: Path
) -> None:
    again = run(runner, "init", "--wallet", str(wallet_path))
    assert again.exit_code == 1
    assert "already exists" in again.output
    missing = run(runner, "cards", "--wallet", str(tmp_path / "none.sqlite"))
    assert missing.exit_code == 1
    assert "no wallet at" in missing.output
    assert "farthing wallet init" in missing.output


def test_bad_card_code_is_explained(runner: CliRunner, wallet_path: Path) -> None:
    _, card = issued_card()
    typo = code_of(card)[:-3] + "AAA"
    result = run(runner, "add-card", "szm", typo, "--wallet", str(wallet_path), "--site", SITE)
    assert result.exit_code == 1
    assert "checksum" in result.output


# --- buying --------------------------------------------------------------------------------


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("secret article " + request.path_params["slug"])


def paywall(book: MemoryCardBook | None = None) -> tuple[Paywall, szm_chain.ChainCard]:
    book = book if book is not None else MemoryCardBook()
    state, card = issued_card()
    book.add(state)
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=2000, currency="EUR"))
    vendor = Paywall(
        Starlette(routes=[Route("/articles/{slug}", article)]),
        realm="news",
        prices=prices,
        methods=[OfflineMethod(SzmScheme.chain(MASTER), book)],  # type: ignore[misc]
        challenge_secret=b"s" * 32,
        clock=FixedClock(3_000_000_000),
        rng=DeterministicRandom("v"),
    )
    return vendor, card


def client_factory(app_or_handler: Paywall | Callable[[httpx.Request], httpx.Response]) -> Any:
    def make(auth: httpx.Auth, timeout: float) -> httpx.Client:
        if isinstance(app_or_handler, Paywall):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Starlette prefers the httpx2 fork
                from starlette.testclient import TestClient
            client: httpx.Client = TestClient(app_or_handler, base_url="https://news.test")
            client.auth = auth
            return client
        return httpx.Client(transport=httpx.MockTransport(app_or_handler), auth=auth)

    return make


def test_get_buys_opens_and_records(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vendor, card = paywall()
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(vendor))
    where = ["--wallet", str(wallet_path)]
    assert run(runner, "add-card", "szm", code_of(card), "--site", SITE, *where).exit_code == 0
    bought = run(runner, "get", "https://news.test/articles/a", *where)
    assert bought.exit_code == 0, bought.output
    assert "secret article a" in bought.output
    several = run(
        runner,
        "get",
        "https://news.test/articles/b",
        "https://news.test/articles/c",
        "-o",
        str(tmp_path / "out"),
        *where,
    )
    assert several.exit_code == 0, several.output
    assert (tmp_path / "out" / "002-c").read_text() == "secret article c"
    history = run(runner, "history", *where)
    assert history.output.count("paid") == 3
    assert "https://news.test/articles/a" in history.output
    assert "0.002 EUR" in history.output
    assert "14/20" in run(runner, "cards", *where).output


def four_oh_two(request: httpx.Request) -> httpx.Response:
    offered = Challenge(
        id="cid",
        realm="news",
        method="szmchain",
        intent="charge",
        request=SzmRequest(amount=2000, currency="EUR", resource="/articles/*").to_json(),
        expires=4_000_000_000,
    )
    return httpx.Response(402, headers={"www-authenticate": format_challenge(offered)})


def test_price_above_policy_is_refused_before_paying(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, card = issued_card()
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(four_oh_two))
    where = ["--wallet", str(wallet_path)]
    run(runner, "add-card", "szm", code_of(card), "--site", SITE, *where)
    result = run(runner, "get", "https://news.test/articles/a", "--max-price", "0.001", *where)
    assert result.exit_code == 1
    assert "the price 0.002 EUR is above the per-request limit of 0.001 EUR" in result.output
    assert "--max-price" in result.output
    with Wallet.open(wallet_path, PASSPHRASE) as opened:
        assert opened.cards()[0].spent == 0
        assert opened.history() == []


def test_saved_policy_refuses_too(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, card = issued_card()
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(four_oh_two))
    where = ["--wallet", str(wallet_path)]
    run(runner, "add-card", "szm", code_of(card), "--site", SITE, *where)
    shown = run(runner, "policy", "--per-day", "0.001", *where)
    assert shown.exit_code == 0, shown.output
    assert "0.001 EUR" in shown.output
    result = run(runner, "get", "https://news.test/articles/a", *where)
    assert result.exit_code == 1
    assert "daily limit" in result.output


def test_exhausted_card_is_explained(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, card = issued_card(length=1)
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(four_oh_two))
    where = ["--wallet", str(wallet_path)]
    run(runner, "add-card", "szm", code_of(card), "--site", SITE, *where)
    result = run(runner, "get", "https://news.test/articles/a", *where)
    assert result.exit_code == 1
    assert "too few units left" in result.output
    assert "add-card" in result.output


def test_unreachable_vendor_names_the_host(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(wallet_cli, "make_client", client_factory(refuse))
    result = run(runner, "get", "https://news.test/articles/a", "--wallet", str(wallet_path))
    assert result.exit_code == 1
    assert "cannot reach news.test" in result.output


def test_outputs_are_checked_before_paying(
    runner: CliRunner, wallet_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Measured before: `-o /nonexistent/dir/x` paid 2 units and crashed with a
    # FileNotFoundError traceback (history "paid"), and two URLs without -o paid 4 units and
    # threw both bodies away (wallet 20 -> 14, vendor spent 0 -> 6). Now 20 -> 18 and 0 -> 2
    # for the one article saved.
    book = MemoryCardBook()
    vendor, card = paywall(book)
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(vendor))
    where = ["--wallet", str(wallet_path)]
    assert run(runner, "add-card", "szm", code_of(card), "--site", SITE, *where).exit_code == 0
    nowhere = run(runner, "get", f"{SITE}/articles/a", "-o", str(tmp_path / "no" / "x"), *where)
    into_a_folder = run(runner, "get", f"{SITE}/articles/a", "-o", str(tmp_path), *where)
    thrown_away = run(runner, "get", f"{SITE}/articles/a", f"{SITE}/articles/b", *where)
    (tmp_path / "a-file").write_text("not a folder")
    not_a_folder = run(
        runner, "get", f"{SITE}/articles/a", f"{SITE}/articles/b", "-o", str(tmp_path / "a-file"),
        *where,
    )  # fmt: skip
    for result in (nowhere, into_a_folder, thrown_away, not_a_folder):
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        assert "nothing was paid" in result.output or "is a folder" in result.output
    assert "no -o" in thrown_away.output
    assert "20/20" in run(runner, "cards", *where).output
    assert book.states[card.card_id].spent == 0  # type: ignore[attr-defined]
    assert "Nothing bought yet" in run(runner, "history", *where).output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "wallet.sqlite"]
    saved = run(runner, "get", f"{SITE}/articles/a", "-o", str(tmp_path / "a.txt"), *where)
    assert saved.exit_code == 0, saved.output
    assert (tmp_path / "a.txt").read_text() == "secret article a"
    assert "18/20" in run(runner, "cards", *where).output
    assert book.states[card.card_id].spent == 2  # type: ignore[attr-defined]


@pytest.mark.real_kdf
def test_a_weak_wallet_is_refused_then_upgraded(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "weak.sqlite"
    with cheap_wallet_kdf():
        Wallet.create(path, PASSPHRASE).close()
    refused = run(runner, "cards", "--wallet", str(path))
    assert refused.exit_code == 1
    assert "farthing wallet upgrade" in refused.output
    assert "Traceback" not in refused.output
    upgraded = run(runner, "upgrade", "--wallet", str(path))
    assert upgraded.exit_code == 0, upgraded.output
    assert "Upgraded" in upgraded.output
    listed = run(runner, "cards", "--wallet", str(path))
    assert listed.exit_code == 0, listed.output
    again = run(runner, "upgrade", "--wallet", str(path))
    assert "already" in again.output


def test_a_pin_on_the_command_line_is_refused(runner: CliRunner, wallet_path: Path) -> None:
    result = run(
        runner, "add-card", "hll", "--card-file", str(wallet_path),
        "--pkcs11-module", "/nonexistent.so", "--token-label", "t",
        "--pin", "1234", "--wallet", str(wallet_path),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert "--pin" in result.output
