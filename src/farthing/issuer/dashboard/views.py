"""What the dashboard's pages show, read from the store and the services (no HTML here).

Amounts are shown in currency units (micros / 10^6). Revenue over time, by method:
``hll_spend`` and ``hll_deposit`` (HLL payments, online and deposited), ``payword_redeem``
(PayWord redemptions credited to merchants) and ``szm_revenue`` (SZM card value
recognised as spent); money in: ``load`` (cash loaded to accounts) and ``szm_sale``
(prepaid cards sold).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from prometheus_client import CollectorRegistry

from farthing.core.encoding import b64url_encode
from farthing.issuer.service import IssuerServices
from farthing.observe.metrics import families
from farthing.store import CardStatus

__all__ = ["MONEY_IN", "REVENUE", "Overview", "Table", "overview", "tables"]

MICROS: Final = 1_000_000
REVENUE: Final = {
    "hll_spend": "hll:mac",
    "hll_deposit": "hll:mac",
    "payword_redeem": "payword",
    "szm_revenue": "szm",
}
MONEY_IN: Final = {"load": "loads", "szm_sale": "cards sold"}
_ISSUER_PAYMENT_ROUTES: Final = (
    "/v1/hll/verify",
    "/v1/hll/verify-batch",
    "/v1/hll/deposits",
    "/v1/payword/commitments",
    "/v1/payword/redemptions",
)


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # also the CSV file's name
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]


@dataclass(frozen=True, slots=True)
class Overview:
    starts: list[int]
    revenue: dict[str, list[float]]  # method -> per bucket, currency units
    money_in: dict[str, list[float]]
    totals: list[tuple[str, str, int, str]]  # kind, currency, transactions, amount
    revenue_total: str
    floats: list[tuple[str, str, str]]  # currency, kind, amount
    success: str  # e.g. "97.5% of 40"
    ledger_balanced: bool
    ledger_problems: int


def units(micros: int) -> str:
    return f"{micros / MICROS:,.6f}".rstrip("0").rstrip(".")


def when(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def overview(
    services: IssuerServices, registry: CollectorRegistry, *, now: int, span: int, buckets: int
) -> Overview:
    bucket = max(span // buckets, 1)
    first = (now - span) // bucket * bucket
    starts = [first + i * bucket for i in range(buckets + 1)]
    revenue = {m: [0.0] * len(starts) for m in sorted(set(REVENUE.values()))}
    money_in = {label: [0.0] * len(starts) for label in MONEY_IN.values()}
    with services.store.transaction(readonly=True) as tx:
        series = tx.ledger.posted_series(since=first, bucket=bucket)
        totals = tx.ledger.posted_totals()
    for kind, _currency, start, micros in series:
        index = min(max((start - first) // bucket, 0), len(starts) - 1)
        if kind in REVENUE:
            revenue[REVENUE[kind]][index] += micros / MICROS
        elif kind in MONEY_IN:
            money_in[MONEY_IN[kind]][index] += micros / MICROS
    check = services.reports.check()
    return Overview(
        starts=starts,
        revenue=revenue,
        money_in=money_in,
        totals=[(k, c, n, units(m)) for k, c, n, m in totals],
        revenue_total=units(sum(m for k, _c, _n, m in totals if k in REVENUE)),
        floats=[(c, k, units(m)) for c, k, m in services.reports.floats()],
        success=_success(registry),
        ledger_balanced=check.balanced,
        ledger_problems=len(check.problems),
    )


def _success(registry: CollectorRegistry) -> str:
    ok = total = 0.0
    for family in families(registry):  # summed over the workers
        if family.name != "farthing_http_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["route"] in _ISSUER_PAYMENT_ROUTES:
                total += sample.value
                ok += sample.value if sample.labels["status"].startswith("2") else 0
    return f"{100 * ok / total:.1f}% of {int(total)}" if total else "no requests yet"


def tables(
    services: IssuerServices, *, card: bytes | None, batch: bytes | None, limit: int
) -> dict[str, Table]:
    """Every table of the dashboard, each as its page shows it and its CSV holds it."""
    with services.store.transaction(readonly=True) as tx:
        cards = tx.szm.cards_page(card_id=card, batch_id=batch, limit=limit)
        batches = tx.szm.batches_list(limit=limit)
        deposits = tx.hll.deposit_batches(limit=limit)
        users = tx.payword.users_list(limit=limit)
        redemptions = tx.payword.redemptions_list(limit=limit)
        audit = tx.admin.audit_entries(limit)
    merchants = services.accounts.merchants()
    return {
        t.name: t
        for t in (
            Table(
                "cards",
                "SZM cards",
                ("card", "batch", "protocol", "units", "spent", "status", "expires"),
                [
                    (
                        b64url_encode(c.card_id),
                        b64url_encode(c.batch_id),
                        c.protocol.value,
                        c.units,
                        c.spent,
                        CardStatus(c.status).value,
                        when(c.expires_at),
                    )
                    for c in cards
                ],
            ),
            Table(
                "batches",
                "SZM batches",
                ("batch", "protocol", "cards", "units", "unit", "currency", "expires", "issued"),
                [
                    (
                        b64url_encode(b.batch_id),
                        b.protocol.value,
                        b.count,
                        b.units,
                        units(b.unit_micros),
                        b.currency,
                        when(b.expires_at),
                        when(b.created_at),
                    )
                    for b in batches
                ],
            ),
            Table(
                "merchants",
                "Merchants",
                ("merchant", "currency", "owed"),
                [(m.merchant_id, m.currency, units(m.owed_micros)) for m in merchants],
            ),
            Table(
                "deposits",
                "HLL deposits",
                ("batch", "merchant", "credited", "at"),
                [
                    (
                        b64url_encode(d.batch_id),
                        d.merchant_id,
                        units(_int(d.report.get("credited_micros"))),
                        when(d.at),
                    )
                    for d in deposits
                ],
            ),
            Table(
                "payword-users",
                "PayWord users",
                ("user", "currency", "credit limit (units)", "unit", "since"),
                [
                    (
                        u.user_id,
                        u.currency,
                        u.credit_limit_units,
                        units(u.unit_micros),
                        when(u.created_at),
                    )
                    for u in users
                ],
            ),
            Table(
                "redemptions",
                "PayWord redemptions",
                ("commitment", "vendor", "user", "index", "units credited", "at"),
                [
                    (
                        b64url_encode(r.commitment_id),
                        r.vendor_id,
                        r.user_id,
                        r.redeemed_index,
                        r.credited_units,
                        when(r.at),
                    )
                    for r in redemptions
                ],
            ),
            Table(
                "audit",
                "Audit log",
                ("id", "at", "actor", "action", "detail"),
                [(a.id, when(a.at), a.actor, a.action, _detail(a.detail)) for a in audit],
            ),
        )
    }


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _detail(detail: object) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"))


def csv_rows(table: Table) -> Iterable[Sequence[object]]:
    yield table.columns
    yield from table.rows
