"""Measure what one issuer node holds: bytes per SZM card, HLL spend, account; issue rate.

Not a test (``test_scale.py`` runs a small version under ``-m heavy``): run it by hand and
copy the numbers into docs/scaling.md::

    .venv/bin/python -m tests.issuer.measure_scale [--cards 100000] [--spends 100000]

Each quantity is measured on its own fresh SQLite file with the store's real settings, by
the growth of the database file (after a WAL checkpoint) divided by the number of rows
made, through the issuer's own service code (cards, spends) so that indexes, ledger
postings and audit entries count as in production.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farthing.core.cardcode import Generator
from farthing.core.money import Denomination
from farthing.core.schemes import hll
from farthing.issuer import IssuerConfig, IssuerServices, build_services, generate_issuer_keys
from farthing.issuer.szm_service import BatchSpec
from farthing.store import SzmProtocol, open_store
from farthing.testing import DeterministicRandom, FixedClock

NOW = 1_800_000_000
EUR = Denomination(currency="EUR", unit_micros=1000)


@dataclass(frozen=True)
class Measure:
    what: str
    rows: int
    bytes_per_row: float
    seconds: float

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else float("inf")
        return (
            f"{self.what:<44} {self.rows:>8} rows  {self.bytes_per_row:>7.1f} B/row  "
            f"{rate:>9.0f} rows/s"
        )


def _file_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _measure(what: str, rows: int, work: Callable[[IssuerServices], None]) -> Measure:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "issuer.sqlite"
        rng = DeterministicRandom(what)
        keys = generate_issuer_keys(rng, broker_id="bank.test", bbs_bits=2048)
        store = open_store(str(path), clock=FixedClock(NOW))
        try:
            services = build_services(
                IssuerConfig(keys=keys), store, clock=FixedClock(NOW), rng=os.urandom
            )
            _prepare(services)
            before = _file_size(path)
            started = time.perf_counter()
            work(services)
            seconds = time.perf_counter() - started
        finally:
            store.close()
        return Measure(what, rows, (_file_size(path) - before) / rows, seconds)


def _prepare(services: IssuerServices) -> None:
    services.accounts.create_customer("m", "c", "EUR")
    services.accounts.load("m", "c", 10**15, "cash")
    services.accounts.create_merchant("m", "m1", "EUR")


def _issue(
    protocol: SzmProtocol, count: int, units: int, generator: Generator | None = None
) -> Callable[[IssuerServices], None]:
    def work(services: IssuerServices) -> None:
        spec = BatchSpec(
            protocol=protocol,
            count=count,
            units=units,
            denomination=EUR,
            expires_at=NOW + 86_400,
            generator=generator,
        )
        services.szm.issue_batch("m", spec)

    return work


def _hll_spends(count: int, *, online: bool) -> Callable[[IssuerServices], None]:
    """``count`` spends of one card: online (each with its ledger posting) or by deposit."""

    def work(services: IssuerServices) -> None:
        made = services.hll.personalise("m", "c", units=10 * count, unit_micros=1000)
        card = hll.SoftwareCard(
            key=hll.SoftwareCardKey(made.card_key),
            state=hll.CardState(card_id=made.card_id, denomination=EUR, balance=10 * count),
            pin="0",
        )
        card.verify_pin("0")
        rng = DeterministicRandom("offers")
        merchant = services.merchants.get("m1")
        assert merchant is not None
        items = []
        for _ in range(count):
            offer = hll.make_offer(
                merchant_id="m1", good="/a", amount=1, denomination=EUR, rng=rng, now=NOW, ttl=300
            )
            items.append(hll.DepositItem(offer=offer, purchase=card.purchase(offer, NOW)))
        if online:
            _verify_all(services, merchant.key, items)
        else:
            _deposit_all(services, merchant.key, items, rng)

    return work


def _verify_all(services: IssuerServices, key: bytes, items: list[hll.DepositItem]) -> None:
    from farthing.http.issuer_wire import verify_request_tag

    for item in items:
        offer, payment = hll.encode_offer(item.offer), hll.encode_payment(item.purchase)
        tag = verify_request_tag(key, "m1", offer, payment)
        services.hll.verify_online("m1", offer, payment, tag)


def _deposit_all(
    services: IssuerServices, key: bytes, items: list[hll.DepositItem], rng: DeterministicRandom
) -> None:
    for start in range(0, len(items), hll.MAX_BATCH_ITEMS):
        chunk = tuple(items[start : start + hll.MAX_BATCH_ITEMS])
        batch = hll.DepositBatch(batch_id=rng(16), merchant_id="m1", items=chunk)
        services.hll.deposit(hll.encode_batch(batch), hll.batch_tag(key, batch))


def _customers(count: int) -> Callable[[IssuerServices], None]:
    def work(services: IssuerServices) -> None:
        for i in range(count):
            services.accounts.create_customer("m", f"customer-{i:08d}", "EUR")

    return work


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--spends", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--units", type=int, default=100)
    args = parser.parse_args()
    cards, spends, online = args.cards, args.spends, args.spends // 5
    plan = [
        (
            f"SZM chain cards ({args.units} units)",
            cards,
            _issue(SzmProtocol.CHAIN, cards, args.units),
        ),
        ("SZM prbg cards (hmac-ctr)", cards, _issue(SzmProtocol.PRBG, cards, args.units)),
        ("HLL spends by deposit (1000 per batch)", spends, _hll_spends(spends, online=False)),
        ("HLL spends online (spend + ledger txn)", online, _hll_spends(online, online=True)),
        ("customer accounts (with audit entry)", args.accounts, _customers(args.accounts)),
    ]
    for what, rows, work in plan:
        print(_measure(what, rows, work).line(), flush=True)


if __name__ == "__main__":
    main()
