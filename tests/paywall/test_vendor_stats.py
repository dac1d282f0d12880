"""`farthing vendor stats`: sales by method and path, from a vendor served as in production
(`farthing vendor init`, the app uvicorn workers import) and paid by a real wallet."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from farthing.cli import app
from farthing.core.clock import SystemClock
from farthing.core.money import Denomination
from farthing.issuer import IssuerConfig, build_services
from farthing.issuer.config import generate_issuer_keys, write_key_file
from farthing.issuer.szm_service import BatchSpec
from farthing.paywall.config import load_vendor_config
from farthing.store import SzmProtocol, open_store
from farthing.testing import DeterministicRandom
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet
from tests.servers import uvicorn_server

runner = CliRunner(env={"COLUMNS": "120"})


def rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]


def test_stats_show_each_sale_by_method_and_path(tmp_path: Path) -> None:
    issuer_file = tmp_path / "issuer.keys.json"
    keys = generate_issuer_keys(DeterministicRandom("issuer"), broker_id="b", realm="r")
    write_key_file(issuer_file, keys)
    shop = tmp_path / "shop"
    (shop / "articles").mkdir(parents=True)
    for name in ("a", "b"):
        (shop / "articles" / f"{name}.txt").write_text(f"article {name}")
    issuer_db = tmp_path / "issuer.sqlite"
    open_store(str(issuer_db)).close()  # the issuer's database, where its cards are
    made = runner.invoke(
        app,
        [
            "vendor",
            "init",
            str(shop),
            "--issuer-keys",
            str(issuer_file),
            "--issuer-db",
            str(issuer_db),
        ],
    )
    assert made.exit_code == 0, made.output
    assert "No sales yet" in runner.invoke(app, ["vendor", "stats", str(shop)]).output

    config_path = shop / ".farthing" / "vendor.toml"
    store = open_store(load_vendor_config(config_path).database)
    services = build_services(IssuerConfig(keys=keys), store, clock=SystemClock(), rng=os.urandom)
    spec = BatchSpec(
        protocol=SzmProtocol.CHAIN, count=1, units=20, expires_at=int(time.time()) + 3600,
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
        bought = [client.get(path) for path in ("/articles/a.txt", "/articles/b.txt")]
        bought.append(client.get("/articles/a.txt"))
        missing = client.get("/articles/none.txt")  # not for sale: no sale
    assert [r.status_code for r in bought] == [200, 200, 200]
    assert missing.status_code == 404

    shown = runner.invoke(app, ["vendor", "stats", str(shop)])
    assert shown.exit_code == 0, shown.output
    assert rows(shown.output) == [
        ["szm:chain", "/articles/a.txt", "2", "2", "EUR 0.002"],
        ["szm:chain", "/articles/b.txt", "1", "1", "EUR 0.001"],
        ["szm:chain", "all paths", "3", "", "EUR 0.003"],
    ]
