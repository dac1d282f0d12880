"""The wallet commands a reader expects (issue 14), against a running issuer and vendor.

The demo's issuer and vendor run on loopback (:func:`demo_world`); everything goes through
``farthing wallet`` as typed: what ``get`` says it paid, ``--card``, ``quote`` (no unit
spent, checked at the issuer), ``cards rename/remove``, ``passphrase change``, and a backup
restored into a new wallet that then pays.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from farthing.cli import app
from farthing.demo import DemoWorld, demo_world
from farthing.wallet.cards import parse_szm_code

pytestmark = pytest.mark.xdist_group("demo")

PASSPHRASE = "a first hour wallet passphrase"
_SOFTHSM_CONF = "SOFTHSM2_CONF"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    before = os.environ.get(_SOFTHSM_CONF)
    try:
        with demo_world(tmp_path_factory.mktemp("world")) as running:
            yield running
    finally:
        if before is None:
            os.environ.pop(_SOFTHSM_CONF, None)
        else:
            os.environ[_SOFTHSM_CONF] = before


def wallet(runner: CliRunner, *args: str, code: int = 0) -> Result:
    result = runner.invoke(app, ["wallet", *args])
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    env = {
        "FARTHING_WALLET": str(tmp_path / "wallet.sqlite"),
        "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "200",
    }
    return CliRunner(env=env)


def spent_at_issuer(world: DemoWorld, code: str) -> int:
    row = world.setup.store.szm_card(parse_szm_code(code).card_id)
    assert row is not None
    return row.spent


def test_a_new_wallet_says_its_limits_and_policy_can_remove_one(runner: CliRunner) -> None:
    made = wallet(runner, "init").output
    assert "0.10 per request, 1.00 per site a day, 5.00 a day" in made
    shown = wallet(runner, "policy", "--per-day", "none").output
    others = next(line for line in shown.splitlines() if "others" in line)
    assert "0.10" in others
    eur = next(line for line in shown.splitlines() if "EUR" in line)
    assert "no limit" in eur  # the daily limit removed for EUR
    assert "0.10" in eur  # the others kept
    assert "1.00" in eur


def test_get_says_what_it_paid_quote_pays_nothing_and_card_chooses(
    runner: CliRunner, world: DemoWorld
) -> None:
    chain, prbg = world.cards.szm_codes["szm:chain"], world.cards.szm_codes["szm:prbg"]
    wallet(runner, "init")
    wallet(runner, "add-card", "szm", chain, "--label", "chain", "--site", world.vendor_url)
    wallet(runner, "add-card", "szm", prbg, "--label", "prbg", "--site", world.vendor_url)
    url = f"{world.vendor_url}/articles/river.txt"
    before = spent_at_issuer(world, prbg)

    quoted = wallet(runner, "quote", url, "--card", "prbg").output
    assert "costs 0.002 EUR: szm:prbg, card prbg (2 units). Nothing was paid." in quoted
    assert spent_at_issuer(world, prbg) == before  # the vendor recorded nothing
    assert "prbg" not in wallet(runner, "history").output

    got = wallet(runner, "get", url, "--card", "prbg")
    assert "Paid 0.002 EUR with szm:prbg, card prbg, 0.098 EUR left" in got.output
    assert spent_at_issuer(world, prbg) == before + 2
    unknown = wallet(runner, "get", url, "--card", "nope", code=1)
    assert "no card labelled 'nope'" in unknown.output

    renamed = wallet(runner, "cards", "rename", "chain", "printed").output
    assert "chain is now printed" in renamed
    removed = wallet(runner, "cards", "remove", "printed", "--yes").output
    assert "Removed printed" in removed
    listed = wallet(runner, "cards").output
    assert "printed" not in listed
    assert "prbg" in listed


def test_a_backup_restored_into_a_new_wallet_pays(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    code = world.cards.szm_codes["szm:prbg/bbs"]
    wallet(runner, "init")
    wallet(runner, "add-card", "szm", code, "--label", "reading.card", "--site", world.vendor_url)
    backup = tmp_path / "wallet.backup"
    wallet(runner, "export", str(backup))
    assert PASSPHRASE.encode() not in backup.read_bytes()
    assert b"reading.card" not in backup.read_bytes()  # labels are encrypted too (not base64)
    assert backup.stat().st_mode & 0o077 == 0

    restored = tmp_path / "restored.sqlite"
    wallet(runner, "import", str(backup), "--wallet", str(restored))
    got = wallet(runner, "get", f"{world.vendor_url}/articles/reef.txt", "--wallet", str(restored))
    assert "Coral reefs" in got.output
    assert "card reading.card" in got.output

    again = wallet(runner, "import", str(backup), "--wallet", str(restored), code=1)
    assert "a wallet already exists" in again.output
    wrong = runner.invoke(
        app,
        ["wallet", "import", str(backup), "--wallet", str(tmp_path / "w2.sqlite")],
        env={"FARTHING_WALLET_PASSPHRASE": "not it"},
    )
    assert wrong.exit_code == 1
    assert "wrong passphrase" in wrong.output
    assert not (tmp_path / "w2.sqlite").exists()


def test_passphrase_change(runner: CliRunner, tmp_path: Path) -> None:
    wallet(runner, "init")
    new = tmp_path / "new.pass"
    new.write_text("a brand new passphrase\n")
    wallet(runner, "passphrase", "change", "--new-passphrase-file", str(new))
    old = wallet(runner, "cards", code=1)
    assert "wrong passphrase" in old.output
    assert "No cards yet" in wallet(runner, "cards", "--passphrase-file", str(new)).output


def test_a_backup_restored_after_the_card_paid_pays_on(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    """The restored wallet's card is behind the card (it paid since the backup): the vendor
    says where the card is (PAYMENT_STALE) and the wallet pays on from there. Before: the
    restored wallet's `get` failed ("the vendor answered 402 (payment did not verify)"), and
    every later one with "this vendor refused ...", 100 units shown for 98."""
    code = world.cards.szm_codes["szm:chain"]
    wallet(runner, "init")
    wallet(runner, "add-card", "szm", code, "--label", "laptop", "--site", world.vendor_url)
    backup = tmp_path / "before-buying.backup"
    wallet(runner, "export", str(backup))
    url = f"{world.vendor_url}/articles/river.txt"
    before = spent_at_issuer(world, code)
    wallet(runner, "get", url)
    restored = str(tmp_path / "restored.sqlite")
    wallet(runner, "import", str(backup), "--wallet", restored)
    for _ in range(2):
        got = wallet(runner, "get", url, "--wallet", restored)
        assert "Paid 0.002 EUR with szm:chain, card laptop" in got.output
    assert spent_at_issuer(world, code) == before + 6  # 2 by the laptop, 2 + 2 restored
    history = wallet(runner, "history", "--wallet", restored).output
    assert "spent-elsewhere" in history
    cards = wallet(runner, "cards", "--wallet", restored).output
    assert "94/100" in cards  # units left: the card's, not the backup's 100
