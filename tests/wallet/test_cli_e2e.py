"""The wallet CLI end to end: a fresh wallet loads every kind of card and pays a running vendor.

An issuer and a vendor run on loopback (the demo's set-up, :func:`demo_world`); the cards are
what the issuer handed out (printed SZM codes, the HLL card file with its key in a SoftHSM2
token, a PayWord certificate and key). Everything else goes through ``farthing wallet``
exactly as a person types it: init, add-card, get --method, history.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from farthing.cli import app
from farthing.core.encoding import b64url_encode
from farthing.demo import GOODS, DemoWorld, demo_world

pytestmark = pytest.mark.xdist_group("demo")

PASSPHRASE = "a fresh cli wallet passphrase"
_SOFTHSM_CONF = "SOFTHSM2_CONF"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    # The demo points SOFTHSM2_CONF at its own token directory; put back what was there.
    before = os.environ.get(_SOFTHSM_CONF)
    try:
        with demo_world(tmp_path_factory.mktemp("world")) as running:
            yield running
    finally:
        if before is None:
            os.environ.pop(_SOFTHSM_CONF, None)
        else:
            os.environ[_SOFTHSM_CONF] = before


@dataclass(frozen=True)
class Cli:
    """``farthing wallet ...`` on one wallet file, failing the test on a non-zero exit."""

    runner: CliRunner
    folder: Path

    def __call__(self, *args: str) -> Result:
        result = self.runner.invoke(app, ["wallet", *args])
        assert result.exit_code == 0, (args, result.output)
        return result

    def file(self, name: str, text: str) -> str:
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {
        "FARTHING_WALLET": str(tmp_path / "wallet.sqlite"),
        "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "200",
    }
    made = Cli(CliRunner(env=env), tmp_path)
    assert "Created wallet" in made("init").output
    return made


def add_payword(cli: Cli, world: DemoWorld) -> None:
    certificate = cli.file("certificate.b64", b64url_encode(world.cards.payword_certificate))
    user_key = cli.file("user.key", b64url_encode(world.cards.payword_key))
    added = cli("add-card", "payword", "--certificate", certificate, "--user-key", user_key)
    assert "(payword)" in added.output


def buy_with_each(cli: Cli, world: DemoWorld, methods: list[str]) -> list[tuple[str, str]]:
    """``get --method M -o FILE`` once per method, each for another article; what was bought."""
    articles = sorted(name for name in GOODS if name.startswith("articles/"))
    bought = []
    for method, article in zip(methods, articles, strict=False):
        url = f"{world.vendor_url}/{article}"
        target = cli.folder / article.replace("/", "-")
        got = cli("get", url, "-o", str(target), "--method", method)
        assert "Saved" in got.output
        assert target.read_text(encoding="utf-8") == GOODS[article], method  # opened if sealed
        bought.append((url, method))
    return bought


def assert_history_shows(cli: Cli, bought: list[tuple[str, str]]) -> None:
    """Each purchase is a row of the history table: URL, method, and the outcome ``paid``."""
    lines = [line for line in cli("history").output.splitlines() if "http://" in line]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    # Columns: When, URL, Method, Card, Units, Paid, Outcome (newest first).
    assert sorted((row[1], row[2], row[6]) for row in rows) == sorted(
        (url, method, "paid") for url, method in bought
    ), rows


def test_a_fresh_wallet_loads_an_szm_code_an_hll_token_and_payword_and_pays_with_each(
    cli: Cli, world: DemoWorld
) -> None:
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util not on PATH); run `make sysdeps`")
    hll = world.cards.hll
    assert hll.token is not None, hll.device  # SoftHSM2 is here, so the demo used a token
    added = cli("add-card", "szm", world.cards.szm_codes["szm:chain"], "--label", "printed")
    assert "(szm:chain)" in added.output
    added = cli.runner.invoke(app, [
        "wallet", "add-card", "hll",
        "--card-file", cli.file("hll-card.json", hll.card_json),
        "--pkcs11-module", hll.token.module_path,
        "--token-label", hll.token.token_label,
        "--key-label", hll.token.key_label,
        "--label", "smart card",
    ], env={"FARTHING_CARD_PIN": hll.pin})  # fmt: skip
    assert added.exit_code == 0, added.output
    assert f"PKCS#11 token {hll.token.token_label!r}" in added.output
    add_payword(cli, world)
    listed = cli("cards").output
    assert all(method in listed for method in ("szm:chain", "hll:mac", "payword"))

    bought = buy_with_each(cli, world, ["szm:chain", "hll:mac", "payword", "payword"])
    assert_history_shows(cli, bought)


def test_a_fresh_wallet_without_a_token_pays_with_an_szm_prbg_code_and_payword(
    cli: Cli, world: DemoWorld
) -> None:
    added = cli("add-card", "szm", world.cards.szm_codes["szm:prbg"], "--label", "printed")
    assert "(szm:prbg)" in added.output
    add_payword(cli, world)

    bought = buy_with_each(cli, world, ["szm:prbg", "payword"])
    assert_history_shows(cli, bought)
    assert "98/100" in cli("cards").output  # an article costs 2 units of 0.001 EUR


def test_get_refuses_an_unknown_method_before_paying(cli: Cli, world: DemoWorld) -> None:
    result = cli.runner.invoke(
        app, ["wallet", "get", f"{world.vendor_url}/articles/ocean.txt", "--method", "cash"]
    )
    assert result.exit_code == 1
    assert "unknown payment method 'cash'" in result.output
    assert "Nothing bought yet." in cli("history").output


def test_the_card_holder_asks_the_issuer_what_is_left_on_a_card(cli: Cli, world: DemoWorld) -> None:
    cli("add-card", "szm", world.cards.szm_codes["szm:chain"], "--label", "printed")
    asked = cli("card-status", "printed", "--issuer", world.issuer_url)
    assert "units left at the issuer (active)" in asked.output
    unknown = cli.runner.invoke(
        app, ["wallet", "card-status", "nope", "--issuer", world.issuer_url]
    )
    assert unknown.exit_code == 1
    assert "no SZM card labelled 'nope'" in unknown.output
