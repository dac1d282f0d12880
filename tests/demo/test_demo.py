"""The main job: `farthing demo` runs end to end and its report is what ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from farthing.cli import app
from farthing.demo import run_demo

pytestmark = pytest.mark.xdist_group("demo")


def test_demo_buys_with_every_method_and_every_check_holds(tmp_path: Path) -> None:
    report = run_demo(tmp_path)
    assert report.ok, [c for c in report.checks if not c.ok]
    methods = [p.method for p in report.purchases]
    assert methods == ["szm:chain", "szm:chain", "szm:prbg", "szm:prbg/bbs", "hll:mac", "payword"]
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
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "all checks held" in result.output
    assert "a payment replayed for another good is refused" in result.output
    assert "the same request again is a free, sealed retry" in result.output
