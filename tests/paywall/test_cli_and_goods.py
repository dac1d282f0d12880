"""`farthing vendor init|serve` set-up errors, and the goods server never serving secrets."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.core.clock import SystemClock
from farthing.core.errors import LocalProtocolError
from farthing.core.money import Denomination
from farthing.issuer import IssuerConfig, build_services
from farthing.issuer.config import generate_issuer_keys, write_key_file
from farthing.issuer.szm_service import BatchSpec
from farthing.keyfiles import load_vendor_keys
from farthing.paywall.config import load_vendor_config
from farthing.paywall.goods import GoodsApp
from farthing.store import SzmProtocol, open_store
from farthing.testing import DeterministicRandom
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet
from tests.servers import uvicorn_server

runner = CliRunner()


@pytest.mark.anyio
async def test_goods_refuse_hidden_paths(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("article")
    (tmp_path / ".farthing").mkdir()
    (tmp_path / ".farthing" / "challenge.key").write_text("00" * 32)
    transport = httpx.ASGITransport(app=GoodsApp(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        assert (await client.get("/a.txt")).text == "article"
        assert (await client.get("/.farthing/challenge.key")).status_code == 404
        assert (await client.get("/x/../.farthing/challenge.key")).status_code == 404


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_serve_without_config_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["vendor", "serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "farthing vendor init" in result.output


def issuer_database(folder: Path) -> str:
    """An issuer's (empty) database, as `farthing issuer init` leaves it."""
    path = folder / "issuer.sqlite"
    open_store(str(path)).close()
    return str(path)


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys, generate_issuer_keys(DeterministicRandom("k"), broker_id="b"))
    db = ["--issuer-db", issuer_database(tmp_path)]
    result = runner.invoke(app, ["vendor", "init", str(tmp_path), "--issuer-keys", str(keys), *db])
    assert result.exit_code == 0, result.output
    config = tmp_path / ".farthing" / "vendor.toml"
    assert 'keys = "vendor.keys.json"' in config.read_text()
    again = runner.invoke(app, ["vendor", "init", str(tmp_path), "--issuer-keys", str(keys), *db])
    assert again.exit_code == 1
    assert "exists already" in again.output
    missing = runner.invoke(
        app, ["vendor", "init", str(tmp_path / "x"), "--issuer-keys", str(keys), *db]
    )
    assert missing.exit_code == 1


def test_the_vendor_key_file_holds_only_szm_keys_and_the_vendor_sells_szm(
    tmp_path: Path,
) -> None:
    issuer_file = tmp_path / "issuer.keys.json"
    issuer_keys = generate_issuer_keys(DeterministicRandom("issuer"), broker_id="b", realm="r")
    write_key_file(issuer_file, issuer_keys)
    shop = tmp_path / "shop"
    (shop / "articles").mkdir(parents=True)
    (shop / "articles" / "a.txt").write_text("the paid article")
    made = runner.invoke(app, [
        "vendor", "init", str(shop), "--issuer-keys", str(issuer_file),
        "--issuer-db", issuer_database(tmp_path),
    ])  # fmt: skip
    assert made.exit_code == 0, made.output

    key_file = shop / ".farthing" / "vendor.keys.json"
    config_path = shop / ".farthing" / "vendor.toml"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    held = key_file.read_text() + config_path.read_text()
    for secret in (
        issuer_keys.hll_master,  # K_B
        issuer_keys.payword_broker_key,
        issuer_keys.merchant_key_wrap,
    ):
        assert secret.hex() not in held
    assert str(issuer_file) not in held  # the config does not point at the issuer's file
    assert set(json.loads(key_file.read_text())) == {
        "version", "kind", "realm", "szm_chain_master", "szm_prbg_master", "bbs",
    }  # fmt: skip
    with pytest.raises(LocalProtocolError, match="not a vendor key file"):
        load_vendor_keys(issuer_file)

    config = load_vendor_config(config_path)
    assert config.settings.szm is not None
    assert config.settings.szm.chain_master == issuer_keys.szm_chain_master
    # The issuer issues a card into the database the vendor shares; the vendor sells to it.
    store = open_store(config.database)
    services = build_services(
        IssuerConfig(keys=issuer_keys), store, clock=SystemClock(), rng=os.urandom
    )
    spec = BatchSpec(
        protocol=SzmProtocol.CHAIN, count=1, units=10, expires_at=int(time.time()) + 3600,
        denomination=Denomination(currency="EUR", unit_micros=1000),
    )  # fmt: skip
    batch = services.szm.issue_batch("test", spec)
    code = services.szm.export("test", batch.batch_id, offset=0, limit=1).cards[0].text
    store.close()
    with (
        uvicorn_server(
            "farthing.paywall.serve:app_from_env",
            env={"FARTHING_VENDOR_CONFIG": str(config_path)},
            log_path=tmp_path / "vendor.log",
        ) as base,
        Wallet.create(tmp_path / "wallet.sqlite", "pw") as wallet,
        httpx.Client(base_url=base, auth=PaymentAuth(wallet), timeout=10) as client,
    ):
        wallet.add_szm_code(code, site=base)
        bought = client.get("/articles/a.txt")
    assert bought.status_code == 200
    assert bought.text == "the paid article"


def test_bad_config_is_reported_with_its_key(tmp_path: Path) -> None:
    (tmp_path / ".farthing").mkdir()
    (tmp_path / ".farthing" / "vendor.toml").write_text(
        'realm = "x"\ndatabase = "v.sqlite"\n[prices]\n"/a" = "cheap"\n'
        '[szm]\nchain_master = "00"\nprbg_master = "00"\n'
    )
    result = runner.invoke(app, ["vendor", "serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "szm.chain_master" in result.output  # checked before the prices
    (tmp_path / ".farthing" / "vendor.toml").write_text(
        'realm = "x"\ndatabase = "v.sqlite"\n[prices]\n"/a" = "cheap"\n'
        f'[szm]\nchain_master = "{"00" * 32}"\nprbg_master = "{"00" * 32}"\n'
    )
    result = runner.invoke(app, ["vendor", "serve", str(tmp_path)])
    assert result.exit_code == 1
    assert "prices./a" in result.output


@pytest.mark.anyio
async def test_goods_served_from_memory_follow_file_changes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "big.bin").write_bytes(b"x" * (300 * 1024))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("not for sale")
    (tmp_path / "link.txt").symlink_to(outside)
    transport = httpx.ASGITransport(app=GoodsApp(tmp_path, fresh=0))
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        first = await client.get("/a.txt")
        (tmp_path / "a.txt").write_text("second, longer")
        second = await client.get("/a.txt")
        big = await client.get("/big.bin")
        missing = await client.get("/nope.txt")
        escaped = await client.get("/link.txt")
    assert (first.text, second.text) == ("first", "second, longer")
    assert first.headers["content-type"] == "text/plain; charset=utf-8"
    assert len(big.content) == 300 * 1024
    assert missing.status_code == 404
    assert escaped.status_code == 404
    assert "not for sale" not in escaped.text


def test_goods_offer_only_what_they_serve(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("article")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("article b")
    (tmp_path / ".farthing").mkdir()
    (tmp_path / ".farthing" / "challenge.key").write_text("00" * 32)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("not for sale")
    (tmp_path / "link.txt").symlink_to(outside)
    (tmp_path / "inner-link.txt").symlink_to(tmp_path / "a.txt")
    goods = GoodsApp(tmp_path, fresh=0)
    assert goods.offers("GET", "/a.txt")
    assert goods.offers("HEAD", "/sub/b.txt")
    assert goods.offers("GET", "/inner-link.txt")
    assert not goods.offers("POST", "/a.txt")
    for path in ("/nope.txt", "/sub", "/", "/link.txt", "/.farthing/challenge.key",
                 "/sub/../.farthing/challenge.key", "/../etc/passwd", "/a.txt\x00"):  # fmt: skip
        assert not goods.offers("GET", path), path
    (tmp_path / "sub" / "b.txt").unlink()  # what was offered and is gone, or now a link out
    (tmp_path / "a.txt").unlink()
    (tmp_path / "a.txt").symlink_to(outside)
    assert not goods.offers("GET", "/sub/b.txt")
    assert not goods.offers("GET", "/a.txt")


@pytest.mark.anyio
async def test_the_served_folder_asks_no_payment_for_a_missing_file(tmp_path: Path) -> None:
    from farthing.paywall.config import load_vendor_config
    from farthing.paywall.serve import app_from_config
    from tests.paywall.test_uvicorn_workers import write_config

    paywall = app_from_config(load_vendor_config(write_config(tmp_path)))
    transport = httpx.ASGITransport(app=paywall)
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        found = await client.get("/articles/a.txt")
        missing = await client.get("/articles/missing.txt")
    assert found.status_code == 402
    assert missing.status_code == 404
    assert "www-authenticate" not in missing.headers


@pytest.mark.anyio
async def test_a_small_file_is_looked_at_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("first")
    clock = [100.0]
    monkeypatch.setattr("farthing.paywall.goods.time.monotonic", lambda: clock[0])
    goods = GoodsApp(tmp_path)
    transport = httpx.ASGITransport(app=goods)
    async with httpx.AsyncClient(transport=transport, base_url="http://v") as client:
        assert (await client.get("/a.txt")).text == "first"
        (tmp_path / "a.txt").unlink()
        clock[0] += 0.5  # within the second: still sold, and served from memory
        assert goods.offers("GET", "/a.txt")
        assert (await client.get("/a.txt")).text == "first"
        clock[0] += 0.6  # past it: looked at again, gone
        assert not goods.offers("GET", "/a.txt")
        assert (await client.get("/a.txt")).status_code == 404


def test_a_payword_only_vendor_deposits_with_its_own_issuer_settings(tmp_path: Path) -> None:
    from farthing.paywall.config import load_vendor_config
    from farthing.paywall.serve import deposits_missing

    (tmp_path / "merchant.key").write_text("ab" * 32)
    base = (
        'realm = "x"\ndatabase = "v.sqlite"\n[prices]\n"/a" = "1000 EUR"\n'
        f'[payword]\nvendor_id = "shop"\nbroker_id = "b"\nbroker_public_key = "{"00" * 32}"\n'
        "unit_micros = 1000\n"
    )
    (tmp_path / "vendor.toml").write_text(base)
    without = load_vendor_config(tmp_path / "vendor.toml")
    assert without.deposits is None
    assert deposits_missing(without)
    (tmp_path / "vendor.toml").write_text(
        base + 'issuer_url = "http://127.0.0.1:9"\nmerchant_key_file = "merchant.key"\n'
    )
    configured = load_vendor_config(tmp_path / "vendor.toml")
    assert configured.deposits is not None
    assert (configured.deposits.merchant_id, configured.deposits.merchant_key) == (
        "shop",
        bytes.fromhex("ab" * 32),
    )
    assert not deposits_missing(configured)


def test_hll_vendor_bank_key_required_deferred_optional_online(tmp_path: Path) -> None:
    from farthing.core.errors import LocalProtocolError
    from farthing.paywall.config import load_vendor_config

    (tmp_path / "merchant.key").write_text("ab" * 32)
    base = (
        'realm = "x"\ndatabase = "v.sqlite"\n[prices]\n"/a" = "1000 EUR"\n'
        '[hll]\nissuer_url = "http://127.0.0.1:9"\nmerchant_id = "shop"\n'
        'merchant_key_file = "merchant.key"\nunit_micros = 1000\nmode = "deferred"\n'
    )
    complete = {
        "risk_limit": "risk_limit = 50\n",
        "merchant_cap": "merchant_cap = 5000\n",
        "bank_public_key": f'bank_public_key = "{"11" * 32}"\n',
    }
    for missing in complete:
        lines = "".join(text for key, text in complete.items() if key != missing)
        (tmp_path / "vendor.toml").write_text(base + lines)
        with pytest.raises(LocalProtocolError, match=f"hll.{missing}"):
            load_vendor_config(tmp_path / "vendor.toml")
    (tmp_path / "vendor.toml").write_text(base + "".join(complete.values()))
    hll = load_vendor_config(tmp_path / "vendor.toml").settings.hll
    assert hll is not None
    assert (hll.risk_limit, hll.merchant_cap, hll.bank_public_key) == (50, 5000, b"\x11" * 32)
    # Online: the bank's key is optional; when given, the challenges name the bank.
    online = base.replace('"deferred"', '"online"')
    (tmp_path / "vendor.toml").write_text(online)
    plain = load_vendor_config(tmp_path / "vendor.toml").settings.hll
    assert plain is not None
    assert plain.bank_public_key is None
    (tmp_path / "vendor.toml").write_text(online + complete["bank_public_key"])
    named = load_vendor_config(tmp_path / "vendor.toml").settings.hll
    assert named is not None
    assert named.bank_public_key == b"\x11" * 32
