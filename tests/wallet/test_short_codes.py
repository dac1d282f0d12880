"""A card a person can type, end to end through the CLI: the issuer issues and prints short
codes (``farthing issuer cards issue``), a reader types one (``farthing wallet add-card szm
CODE --issuer URL``), the wallet asks the running issuer for the card and pays the running
vendor with it. A typo is told in words before anything is sent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import png
import pytest
from typer.testing import CliRunner, Result

from farthing.cli import app
from farthing.core import shortcode
from farthing.core.encoding import b64url_encode
from farthing.demo import GOODS, DemoWorld, demo_world

pytestmark = pytest.mark.xdist_group("demo")

PASSPHRASE = "a wallet for typed cards"
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


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    env = {
        "FARTHING_WALLET": str(tmp_path / "wallet.sqlite"),
        "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "200",
    }
    made = CliRunner(env=env)
    assert made.invoke(app, ["wallet", "init"]).exit_code == 0
    return made


def issue_printed_codes(world: DemoWorld, tmp_path: Path, *args: str) -> list[str]:
    """``farthing issuer cards issue`` on the running issuer's database: the printed codes."""
    workdir = world.wallet_path.parent
    out = tmp_path / "codes.txt"
    issued = CliRunner().invoke(app, [
        "issuer", "cards", "issue", "--count", "2", "--units", "20", "--unit-micros", "1000",
        "--db", str(workdir / "farthing.sqlite"), "--keys", str(workdir / "issuer.keys.json"),
        "--out", str(out), *args,
    ])  # fmt: skip
    assert issued.exit_code == 0, issued.output
    return out.read_text(encoding="utf-8").splitlines()


def add(runner: CliRunner, world: DemoWorld, code: str, *more: str) -> Result:
    return runner.invoke(app, [
        "wallet", "add-card", "szm", code, "--issuer", world.issuer_url,
        "--site", world.vendor_url, *more,
    ])  # fmt: skip


@pytest.mark.parametrize("protocol", ["szm:chain", "szm:prbg"])
def test_a_printed_code_is_typed_and_pays(
    runner: CliRunner, world: DemoWorld, tmp_path: Path, protocol: str
) -> None:
    codes = issue_printed_codes(world, tmp_path, "--protocol", protocol)
    assert all(len(code) <= 32 for code in codes), codes
    typed = codes[0].lower().replace("-", " ")  # as a person might type it
    added = add(runner, world, typed, "--label", "typed")
    assert added.exit_code == 0, added.output
    assert f"({protocol}): 20 units" in added.output

    target = tmp_path / "ocean.txt"
    got = runner.invoke(app, ["wallet", "get", f"{world.vendor_url}/articles/ocean.txt",
                              "-o", str(target)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert target.read_text(encoding="utf-8") == GOODS["articles/ocean.txt"]
    assert "18/20" in runner.invoke(app, ["wallet", "cards"]).output


def test_a_code_typed_into_a_second_wallet_starts_where_the_card_stands(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    """The same printed card typed into another wallet (a new phone, say) after it paid:
    the wallet takes the units the issuer says are spent, so its next payment is not a
    replay the vendor refuses."""
    code = issue_printed_codes(world, tmp_path)[0]
    assert add(runner, world, code, "--label", "first").exit_code == 0
    first = runner.invoke(app, ["wallet", "get", f"{world.vendor_url}/articles/ocean.txt"])
    assert first.exit_code == 0, first.output

    other = CliRunner(env={**runner.env, "FARTHING_WALLET": str(tmp_path / "other.sqlite")})
    assert other.invoke(app, ["wallet", "init"]).exit_code == 0
    added = add(other, world, code, "--label", "again")
    assert added.exit_code == 0, added.output
    assert "18/20" in other.invoke(app, ["wallet", "cards"]).output
    target = tmp_path / "forest.txt"
    got = other.invoke(app, ["wallet", "get", f"{world.vendor_url}/articles/forest.txt",
                             "-o", str(target)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert target.read_text(encoding="utf-8") == GOODS["articles/forest.txt"]
    assert "16/20" in other.invoke(app, ["wallet", "cards"]).output


def test_a_code_with_one_typo_is_told_so_in_words(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    code = issue_printed_codes(world, tmp_path)[0]
    position = 7  # a symbol in the second group
    wrong = "7" if code[position] != "7" else "8"
    typo = code[:position] + wrong + code[position + 1 :]
    assert len(typo) <= 32
    refused = add(runner, world, typo)
    assert refused.exit_code != 0
    assert "the card code has a typo" in refused.output
    assert "type the code again exactly as printed" in refused.output
    assert "Traceback" not in refused.output
    assert "CARD_CODE_TYPO" not in refused.output
    assert "No cards yet" in runner.invoke(app, ["wallet", "cards"]).output


def test_a_valid_code_the_issuer_never_issued_is_refused_in_words(
    runner: CliRunner, world: DemoWorld
) -> None:
    never = shortcode.format_code(shortcode.ShortSecret("Z" * 23))
    refused = add(runner, world, never)
    assert refused.exit_code != 0
    assert "the issuer knows no card with this code" in refused.output
    assert "Traceback" not in refused.output


def test_a_typed_code_needs_the_issuer(runner: CliRunner, world: DemoWorld, tmp_path: Path) -> None:
    code = issue_printed_codes(world, tmp_path)[0]
    refused = runner.invoke(app, ["wallet", "add-card", "szm", code, "--site", world.vendor_url])
    assert refused.exit_code != 0
    assert "give --issuer URL" in refused.output


def test_the_issuer_answers_a_lookup_only_for_a_code_it_issued(
    world: DemoWorld, tmp_path: Path
) -> None:
    code = issue_printed_codes(world, tmp_path)[0]
    lookup = shortcode.lookup_id(shortcode.parse_code(code))
    with httpx.Client(base_url=world.issuer_url) as client:
        found = client.post("/v1/szm/cards/lookup", json={"lookup": b64url_encode(lookup)})
        assert found.status_code == 200, found.text
        assert found.json()["units"] == 20
        assert "secret" not in found.text
        other = bytes(16)
        missing = client.post("/v1/szm/cards/lookup", json={"lookup": b64url_encode(other)})
        assert missing.status_code == 404
        for body in ({"lookup": "!!"}, {"lookup": "A" * 40}, {}, {"lookup": 5}):
            assert client.post("/v1/szm/cards/lookup", json=body).status_code in (400, 404, 422)


def test_a_cards_qr_image_written_by_the_issuer_is_read_back_and_pays(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    qr_dir = tmp_path / "qr"
    issue_printed_codes(world, tmp_path, "--protocol", "szm:prbg", "--qr-dir", str(qr_dir))
    images = sorted(qr_dir.glob("*.png"))
    assert len(images) == 2
    added = runner.invoke(app, [
        "wallet", "add-card", "szm", "--file", str(images[0]), "--site", world.vendor_url,
    ])  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "(szm:prbg): 20 units" in added.output
    target = tmp_path / "ocean.txt"
    got = runner.invoke(app, ["wallet", "get", f"{world.vendor_url}/articles/ocean.txt",
                              "-o", str(target)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert target.read_text(encoding="utf-8") == GOODS["articles/ocean.txt"]


def test_an_image_without_a_qr_code_is_refused_in_words(
    runner: CliRunner, world: DemoWorld, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    with blank.open("wb") as handle:
        png.Writer(40, 40, greyscale=True).write(handle, [[255] * 40] * 40)
    refused = runner.invoke(app, [
        "wallet", "add-card", "szm", "--file", str(blank), "--site", world.vendor_url,
    ])  # fmt: skip
    assert refused.exit_code != 0
    assert "holds no readable QR code" in refused.output
    assert "Traceback" not in refused.output
