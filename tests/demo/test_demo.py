"""The main job: `farthing demo` runs end to end and its report is what ran."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.cli.demo import _ROUTINE, _exchange
from farthing.demo import run_demo
from farthing.http.methods import SCHEME_OF
from farthing.http.payment_auth import parse_challenges

pytestmark = pytest.mark.xdist_group("demo")


def test_demo_buys_with_every_method_and_every_check_holds(tmp_path: Path) -> None:
    report = run_demo(tmp_path)
    assert report.ok, [c for c in report.checks if not c.ok]
    methods = [p.method for p in report.purchases]
    assert methods == [
        "szm:chain", "szm:chain", "szm:prbg", "szm:prbg/bbs", "hll:mac", "payword", "szm:chain"
    ]  # fmt: skip
    assert report.purchases[1].up_front  # the second SZM purchase skipped the 402
    assert all(p.sealed for p in report.purchases if p.method.startswith("szm"))
    assert not any(p.sealed for p in report.purchases if not p.method.startswith("szm"))
    spent = {c.label: c.before_micros - c.after_micros for c in report.cards}
    assert spent == {"szm:chain": 9000, "szm:prbg": 2000, "szm:prbg/bbs": 2000, "hll:mac": 2000}
    owed_before, owed_after = report.accounts["shop: owed by the issuer"]
    assert owed_after - owed_before == 4000  # hll:mac online + payword redeemed
    assert set(report.verify_ms) == {"szmchain", "szmprbg", "hll", "payword"}  # method ids
    assert (tmp_path / "farthing.sqlite").exists()


def test_demo_command_prints_the_summary_and_exits_zero(tmp_path: Path) -> None:
    result = CliRunner(env={"COLUMNS": "100"}).invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "all checks held" in result.output
    assert "a payment replayed for another good is refused" in result.output
    assert "the same request again is a free, sealed retry" in result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 100, [line for line in lines if len(line) > 100]
    # Every purchase the wallets made (their own history) is a row of the purchases table.
    paid = []
    for name in ("wallet.sqlite", "wallet-bbs.sqlite"):
        with sqlite3.connect(tmp_path / name) as conn:
            paid += [
                url for (url,) in conn.execute("SELECT url FROM history WHERE outcome = 'paid'")
            ]
    table = result.output.split("Every purchase")[1].split("Cards and accounts")[0]
    assert sorted(_paths(table)) == sorted(httpx.URL(url).path for url in paid)


def _paths(table: str) -> list[str]:
    return [cell.strip() for line in table.splitlines() if line.startswith("│")
            for cell in line.split("│")[2:3]]  # fmt: skip


def test_the_demo_shows_the_first_purchase_as_it_crossed_the_wire(tmp_path: Path) -> None:
    report = run_demo(tmp_path)
    asked, challenge, paid, answer = report.exchange
    assert asked.start == paid.start == "GET /articles/desert.txt HTTP/1.1"
    assert challenge.start == "HTTP/1.1 402 Payment Required"
    assert answer.start == "HTTP/1.1 200 OK"
    offered = parse_challenges([v for n, v in challenge.headers if n == "www-authenticate"])
    assert {SCHEME_OF[c.method] for c in offered} >= {"szm:chain", "hll:mac", "payword"}
    credential = dict(paid.headers)["authorization"]
    shown = _exchange(report)
    assert len(shown) == 1 + 4 + sum(
        n.lower() not in _ROUTINE for m in report.exchange for n, _ in m.headers
    )
    assert all(len(line) <= 100 for line in shown)
    assert f"> authorization: {credential}"[:99] in "\n".join(shown)  # the real one, cut
    assert "< HTTP/1.1 402 Payment Required" in shown


def test_make_demo_needs_no_root_and_no_system_packages() -> None:
    """Before: `demo` depended on `sysdeps` (apt-get as root); the demo runs on SQLite."""
    root = Path(__file__).resolve().parents[2]
    planned = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "demo"],  # as if the venv were stale too
        cwd=root, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "farthing demo" in planned
    for needs_root in ("sysdeps", "apt-get", "sudo", "scripts/sysdeps.sh"):
        assert needs_root not in planned
