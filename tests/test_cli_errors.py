"""Every error a newcomer meets, driven through the real CLI: words, never a traceback, never
an internal code name, and a non-zero exit status (issue 14)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from typer.testing import CliRunner, Result

import farthing.cli.wallet as wallet_cli
from farthing.cli import app
from farthing.core import cardcode
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import parse_challenges
from farthing.paywall.methods.offline import OfflineMethod
from farthing.paywall.methods.szm import SzmScheme
from farthing.paywall.middleware import Paywall
from farthing.paywall.pricing import Price, PriceTable
from farthing.testing import DeterministicRandom, FixedClock, MemoryCardBook
from farthing.wallet.wallet import Wallet
from tests.wallet.test_cli_wallet import MASTER, SITE, article, client_factory, issued_card

PASSPHRASE = "an error-case wallet passphrase"
# An ErrorCode's name in brackets, e.g. "(MISUSE)", "(NO_CARD_FITS)".
CODE_NAME = re.compile(r"\([A-Z][A-Z0-9_]{3,}\)")


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    env = {
        "FARTHING_WALLET": str(tmp_path / "wallet.sqlite"),
        "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "200",
    }
    return CliRunner(env=env)


def refused(runner: CliRunner, *args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
    """Run ``farthing ARGS``: it must fail with ``code`` and words only."""
    result: Result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output
    assert not CODE_NAME.search(result.output), result.output
    return " ".join(result.output.split())  # Rich wraps; compare words


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def wallet(tmp_path: Path) -> Path:
    path = tmp_path / "wallet.sqlite"
    Wallet.create(path, PASSPHRASE).close()
    return path


def vendor(realm: str = "news", currency: str = "EUR") -> tuple[Paywall, str]:
    """A paywall selling /articles/* for 0.002, and a code of an 'other' issuer's card if
    ``realm`` differs from the card's."""
    book = MemoryCardBook()
    state, card = issued_card()
    book.add(state)
    prices = PriceTable()
    prices.add("/articles/*", Price(micros=2000, currency=currency))
    paywall = Paywall(
        Starlette(routes=[Route("/articles/{slug}", article)]),
        realm=realm,
        prices=prices,
        methods=[OfflineMethod(SzmScheme.chain(MASTER), book)],  # type: ignore[misc]
        challenge_secret=b"s" * 32,
        clock=FixedClock(3_000_000_000),
        rng=DeterministicRandom("v"),
    )
    return paywall, cardcode.to_text(szm_chain.to_card_code(card, realm="news"))


def with_card(runner: CliRunner, code: str) -> None:
    added = runner.invoke(app, ["wallet", "add-card", "szm", code, "--site", SITE])
    assert added.exit_code == 0, added.output


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://news.test/articles/a", "'ftp://news.test/articles/a' is not a web address"),
        ("news.test/articles/a", "'news.test/articles/a' is not a web address"),
        ("https://", "'https://' is not a web address"),
    ],
)
@pytest.mark.parametrize("command", ["get", "quote"])
def test_a_bad_url_or_scheme(
    runner: CliRunner, wallet: Path, command: str, url: str, words: str
) -> None:
    said = refused(runner, "wallet", command, url)
    assert words in said
    assert "starts with https://" in said


def test_an_unreachable_database(runner: CliRunner, tmp_path: Path) -> None:
    keys = tmp_path / "issuer.keys.json"
    made = runner.invoke(app, ["issuer", "init", "--keys", str(keys), "--db", str(tmp_path / "i")])
    assert made.exit_code == 0, made.output
    dsn = f"postgresql://farthing:hunter2@127.0.0.1:{free_port()}/farthing"
    for command in (["report"], ["customers", "list"], ["init"]):
        said = refused(runner, "issuer", *command, "--db", dsn, "--keys", str(keys))
        assert "cannot open the database" in said
        assert "hunter2" not in said
    missing = refused(runner, "issuer", "report", "--db", str(tmp_path / "none.sqlite"))
    assert "run farthing issuer init" in missing or "farthing issuer init" in missing


def test_an_unreachable_issuer(runner: CliRunner, wallet: Path) -> None:
    _, card = issued_card()
    with_card(runner, cardcode.to_text(szm_chain.to_card_code(card, realm="news")))
    label = _only_label(runner)
    said = refused(
        runner, "wallet", "card-status", label, "--issuer", f"http://127.0.0.1:{free_port()}"
    )
    assert "cannot reach" in said or "could not be reached" in said


def _only_label(runner: CliRunner) -> str:
    listed = runner.invoke(app, ["wallet", "cards"]).output
    row = next(line for line in listed.splitlines() if "szm:chain" in line)
    return row.split("│")[1].strip()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x00garbage" * 64, "is not a farthing wallet"),
        (None, "is not a farthing wallet"),  # another program's SQLite database
    ],
)
def test_a_corrupted_or_foreign_wallet_file(
    runner: CliRunner, tmp_path: Path, content: bytes | None, words: str
) -> None:
    path = tmp_path / "wallet.sqlite"
    if content is None:
        import sqlite3

        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
    else:
        path.write_bytes(content)
    said = refused(runner, "wallet", "cards")
    assert words in said
    assert "--wallet" in said  # what to do: point at the right file (or restore a backup)


def test_a_wrong_passphrase(runner: CliRunner, wallet: Path) -> None:
    said = refused(runner, "wallet", "cards", env={"FARTHING_WALLET_PASSPHRASE": "not it"})
    assert "wrong passphrase" in said
    assert "farthing wallet init" in said


def test_a_card_from_another_issuer(
    runner: CliRunner, wallet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paywall, code = vendor(realm="elsewhere")
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(paywall))
    with_card(runner, code)
    said = refused(runner, "wallet", "get", "https://news.test/articles/a")
    assert "from the issuer 'news'" in said
    assert "this vendor takes cards of 'elsewhere'" in said


def test_a_price_above_the_policy(
    runner: CliRunner, wallet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paywall, code = vendor()
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(paywall))
    with_card(runner, code)
    said = refused(runner, "wallet", "get", "https://news.test/articles/a", "--max-price", "0.001")
    assert "the price 0.002 EUR is above the per-request limit of 0.001 EUR" in said
    assert "--max-price" in said


def test_a_wrong_currency(runner: CliRunner, wallet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paywall, code = vendor(currency="USD")
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(paywall))
    with_card(runner, code)
    said = refused(runner, "wallet", "get", "https://news.test/articles/a")
    assert "this vendor asks for USD; your szm:chain cards hold EUR" in said
    bad = refused(runner, "wallet", "policy", "--currency", "EURO", "--per-request", "1")
    assert "a currency is three letters" in bad


def test_a_card_another_farthing_is_paying_with(
    runner: CliRunner, wallet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paywall, code = vendor()
    monkeypatch.setattr(wallet_cli, "make_client", client_factory(paywall))
    with_card(runner, code)
    url = "https://news.test/articles/a"
    offered = client_factory(paywall)(None, 5).get(url)
    challenges = parse_challenges(offered.headers.get_list("www-authenticate"))
    with Wallet.open(wallet, PASSPHRASE) as other:
        other.pay(url, challenges)  # its answer never comes while the CLI runs
        said = refused(runner, "wallet", "get", url, "--timeout", "0.2")
    assert "another farthing is paying with this card" in said
    assert "--card" in said


@pytest.mark.parametrize(
    "args",
    [
        ("wallet", "history", "--limit", "0"),
        ("wallet", "get", "https://news.test/a", "--timeout", "0"),
        ("issuer", "cards", "issue", "--units", "5", "--count", "0"),
        ("issuer", "serve", "--workers", "0"),
    ],
)
def test_flags_out_of_range(runner: CliRunner, args: tuple[str, ...]) -> None:
    said = refused(runner, *args, code=2)
    assert f"Invalid value for '{args[-2]}'" in said
    assert "greater than or equal to 1" in said or "greater than or equal to 0.1" in said
