"""Issuer and vendor set up together from the CLI alone: a card the issuer issues is sold by
the vendor ``farthing vendor init`` wrote, with no hand editing; ``farthing vendor check``
says in words what is wrong with a config."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from farthing.cli import app
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("vendor-setup")

FARTHING = str(Path(sys.executable).parent / "farthing")


def farthing(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(app, list(args))


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = farthing(*args, env=env)
    assert result.exit_code == 0, (args, result.output)
    return result.output


@pytest.fixture
def issuer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``farthing issuer init`` in an empty folder (the defaults), realm "farthing"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FARTHING_ISSUER_DB", raising=False)
    monkeypatch.delenv("FARTHING_ISSUER_KEYS", raising=False)
    ok("issuer", "init", "--bbs-bits", "2048")
    (tmp_path / "goods").mkdir()
    (tmp_path / "goods" / "a.txt").write_text("the paid article", encoding="utf-8")
    return tmp_path


def test_a_card_the_issuer_issues_is_sold_by_the_vendor_init_wrote(issuer: Path) -> None:
    ok("issuer", "cards", "issue", "--count", "1", "--units", "10", "--qr-dir", "qr",
       "--out", "codes.txt")  # fmt: skip
    made = ok("vendor", "init", "goods", "--issuer-keys", "farthing-issuer.keys.json")
    assert "realm 'farthing'" in made
    config = issuer / "goods" / ".farthing" / "vendor.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "no problem found" in ok("vendor", "check", "goods")

    port = free_port()
    command = [FARTHING, "vendor", "serve", "goods", "--port", str(port)]
    with command_server(command, port, env={}, ready_path="/a.txt") as base:
        wallet = {"FARTHING_WALLET": str(issuer / "w.sqlite"),
                  "FARTHING_WALLET_PASSPHRASE": "a reader's passphrase"}  # fmt: skip
        ok("wallet", "init", env=wallet)
        qr = next((issuer / "qr").glob("*.png"))
        ok("wallet", "add-card", "szm", "--file", str(qr), "--site", base, env=wallet)
        ok("wallet", "get", base + "/a.txt", "-o", "a.txt", env=wallet)
    assert (issuer / "a.txt").read_text(encoding="utf-8") == "the paid article"


def test_vendor_init_refuses_a_database_that_is_not_the_issuers(issuer: Path) -> None:
    refused = farthing("vendor", "init", "goods", "--issuer-keys", "farthing-issuer.keys.json",
                       "--issuer-db", "nowhere.sqlite")  # fmt: skip
    assert refused.exit_code == 1
    assert "cannot use the issuer's database" in refused.output
    assert not (issuer / "goods" / ".farthing" / "vendor.toml").exists()


def check_problems(directory: str = "goods") -> str:
    result = farthing("vendor", "check", directory)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def test_vendor_check_says_what_is_wrong_in_words(issuer: Path) -> None:
    ok("vendor", "init", "goods", "--issuer-keys", "farthing-issuer.keys.json")
    config = issuer / "goods" / ".farthing" / "vendor.toml"
    starter = config.read_text(encoding="utf-8")
    assert "holds no SZM card that can pay" in check_problems()  # nothing issued yet

    ok("issuer", "cards", "issue", "--count", "1", "--units", "5", "--out", "codes.txt")
    assert "no problem found" in ok("vendor", "check", "goods")

    config.write_text(starter.replace('realm = "farthing"', 'realm = "farthing shop"'))
    assert "realm 'farthing shop' is not the issuer's ('farthing'" in check_problems()

    other = issuer / "other.sqlite"
    ok("issuer", "init", "--db", str(other))
    config.write_text(starter.replace(str(issuer / "farthing-issuer.sqlite"), str(other)))
    assert "holds no SZM card that can pay: is it the issuer's?" in check_problems()

    config.write_text(starter.replace(str(issuer / "farthing-issuer.sqlite"), "gone.sqlite"))
    assert "cannot be used: no store at this path" in check_problems()

    (issuer / "goods" / ".farthing" / "vendor.keys.json").unlink()
    config.write_text(starter)
    assert "no vendor key file" in check_problems()

    ok("vendor", "keys", "--issuer-keys", "farthing-issuer.keys.json",
       "--out", str(issuer / "goods" / ".farthing" / "vendor.keys.json"))  # fmt: skip
    unreachable = f"http://127.0.0.1:{free_port()}"
    (issuer / "m.key").write_text("00" * 32)
    payword = {
        "vendor_id": "shop", "broker_id": "farthing", "broker_public_key": "00" * 32,
        "unit_micros": 1000, "issuer_url": unreachable, "merchant_key_file": str(issuer / "m.key"),
    }  # fmt: skip
    lines = [f"{key} = {json.dumps(value)}" for key, value in payword.items()]
    config.write_text(starter + "\n[payword]\n" + "\n".join(lines) + "\n")
    assert f"the issuer at {unreachable} does not answer" in check_problems()


def test_the_vendor_config_takes_the_broker_and_bank_keys_as_the_issuer_publishes_them(
    issuer: Path,
) -> None:
    """base64url (GET /v1/payword/broker, `issuer hll-key`); hex still read; else words."""
    from farthing.core.encoding import b64url_encode
    from farthing.core.errors import LocalProtocolError
    from farthing.issuer.config import load_issuer_keys
    from farthing.paywall.config import load_vendor_config

    keys = load_issuer_keys(issuer / "farthing-issuer.keys.json")
    bank = ok("issuer", "hll-key").strip()
    (issuer / "m.key").write_text("00" * 32)
    config = issuer / "vendor.toml"

    def with_keys(broker: str, bank_key: str) -> Path:
        config.write_text(
            'realm = "farthing"\ndatabase = "farthing-issuer.sqlite"\n[prices]\n"/**" = "1 EUR"\n'
            '[payword]\nvendor_id = "shop"\nbroker_id = "farthing"\nunit_micros = 1000\n'
            f'broker_public_key = "{broker}"\n'
            '[hll]\nissuer_url = "http://127.0.0.1:1"\nmerchant_id = "shop"\n'
            f'merchant_key_file = "m.key"\nunit_micros = 1000\nbank_public_key = "{bank_key}"\n'
        )
        return config

    published = load_vendor_config(with_keys(b64url_encode(keys.broker_public_key), bank))
    assert published.settings.payword is not None
    assert published.settings.payword.broker_public == keys.broker_public_key
    assert published.settings.hll is not None
    assert b64url_encode(published.settings.hll.bank_public_key or b"") == bank
    old = load_vendor_config(with_keys(keys.broker_public_key.hex(), bank))
    assert old.settings.payword is not None
    assert old.settings.payword.broker_public == keys.broker_public_key
    with pytest.raises(LocalProtocolError, match=r"payword\.broker_public_key: write the key in"):
        load_vendor_config(with_keys("not a key!", bank))
