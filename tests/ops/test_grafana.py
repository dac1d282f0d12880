"""The Grafana dashboard and the example alert rules in ops/ use only what the services
export: every metric name, and every label they select or group by, is in a scrape of the
demo's issuer and vendor after a few purchases.

(No real Grafana here: Debian has no grafana package and PyPI's ``grafana`` is an empty
placeholder; Debian's ``prometheus`` package has ``promtool``, used below when installed.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from farthing.demo import demo_world
from tests.ops.test_metrics import buy

pytestmark = pytest.mark.xdist_group("uvicorn")

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARD = OPS / "grafana-dashboard.json"
ALERTS = OPS / "alerts.yml"

_NAME = re.compile(r"\b(farthing_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported(texts: list[str]) -> dict[str, set[str]]:
    """Every exported name (families and their samples) with the labels seen on it."""
    names: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.setdefault(family.name, set())
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
                names[family.name].update(sample.labels)
    return names


def unknown_in(expr: str, names: dict[str, set[str]]) -> list[str]:
    problems = []
    used: set[str] = set()
    for name, selector in _NAME.findall(expr):
        if name not in names:
            problems.append(f"{name}: not exported")
            continue
        used |= names[name]
        for label in _MATCHER.findall(selector or ""):
            if label not in names[name]:
                problems.append(f"{name}: no label {label}")
    for group in _BY.findall(expr):
        for label in (part.strip() for part in group.split(",")):
            if label and label not in used:
                problems.append(f"by ({label}): no such label on {expr!r}")
    return problems


def test_the_example_files_name_only_exported_metrics(tmp_path: Path) -> None:
    with demo_world(tmp_path) as world:
        soon = int(time.time()) + 2 * 86_400
        batch = world.setup.operator.post(
            "/v1/szm/batches",
            json={"protocol": "szm:chain", "count": 3, "units": 10, "unit_micros": 1000,
                  "currency": "EUR", "expires_at": soon},
        )  # fmt: skip
        assert batch.status_code == 201
        for method in ("szm:chain", "szm:prbg", "hll:mac", "payword"):
            buy(world, method, ["articles/ocean.txt"])
        httpx.get(f"{world.vendor_url}/articles/reef.txt", headers={"authorization": "Payment x"})
        vendor = httpx.get(f"{world.admin_url}/metrics", timeout=30).text
        issuer = world.setup.operator.get("/metrics").text
    names = exported([vendor, issuer])
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) >= 15
    assert [p for expr in exprs for p in unknown_in(expr, names)] == []
    # The panels the issue asks for are there.
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"])
    for wanted in ("Revenue per minute", "Refusals by reason", "p99 verification", "Float"):
        assert wanted in titles
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"FarthingLedgerCheckFailing", "FarthingRefusalSpike", "FarthingStoreSlow"} <= alerts
    # The check can fail: a made-up name and a made-up label are caught.
    assert unknown_in("rate(farthing_no_such_total[5m])", names) != []
    assert unknown_in('farthing_payments_total{card="x"}', names) != []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
