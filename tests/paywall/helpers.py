"""Shared set-up for vendor tests: a store with SZM cards, settings, content."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from farthing.core.cardcode import Generator
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.paywall.app import SzmKeys, VendorSettings
from farthing.paywall.pricing import Price, PriceTable
from farthing.store import CardStatus, Store, SzmBatchRow, SzmCardRow, SzmProtocol
from farthing.testing import DeterministicRandom

NOW = 1_800_000_000
EUR = Denomination(currency="EUR", unit_micros=1000)
EXPIRES = NOW + 10 * 365 * 86_400  # also valid for servers on the real clock
KEYS = SzmKeys(chain_master=b"C" * 32, prbg_master=b"P" * 32)
SETTINGS = VendorSettings(realm="news", challenge_secret=b"s" * 32, szm=KEYS)


async def article(request: Any) -> PlainTextResponse:
    return PlainTextResponse("secret article " + request.path_params["slug"])


def content() -> Starlette:
    return Starlette(routes=[Route("/articles/{slug}", article)])


def prices() -> PriceTable:
    table = PriceTable()
    table.add("/articles/*", Price(micros=2000, currency="EUR"))
    return table


def _batch(store: Store, batch_id: bytes, protocol: SzmProtocol, count: int, units: int) -> None:
    with store.transaction() as tx:
        tx.szm.insert_batch(
            SzmBatchRow(
                batch_id=batch_id,
                protocol=protocol,
                count=count,
                units=units,
                currency="EUR",
                unit_micros=EUR.unit_micros,
                expires_at=EXPIRES,
                created_at=NOW,
            )
        )


def issue_chain_cards(
    store: Store, count: int, units: int = 50, seed: str = "chain"
) -> list[szm_chain.ChainCard]:
    rng = DeterministicRandom(seed)
    batch_id = rng(16)
    _batch(store, batch_id, SzmProtocol.CHAIN, count, units)
    cards, rows = [], []
    for _ in range(count):
        state, card = szm_chain.issue_card(
            KEYS.chain_master, rng, length=units, denomination=EUR, expires_at=EXPIRES
        )
        cards.append(card)
        rows.append(
            SzmCardRow(
                card_id=state.card_id,
                batch_id=batch_id,
                protocol=SzmProtocol.CHAIN,
                generator=None,
                currency="EUR",
                unit_micros=EUR.unit_micros,
                units=units,
                spent=0,
                anchor=state.anchor,
                expires_at=state.expires_at,
                status=CardStatus.ACTIVE,
                issued_at=NOW,
            )
        )
    with store.transaction() as tx:
        tx.szm.insert_cards(rows)
    return cards


def issue_prbg_cards(
    store: Store, count: int, units: int = 50, seed: str = "prbg"
) -> list[szm_prbg.PrbgCard]:
    rng = DeterministicRandom(seed)
    batch_id = rng(16)
    _batch(store, batch_id, SzmProtocol.PRBG, count, units)
    cards, rows = [], []
    for _ in range(count):
        state, card = szm_prbg.issue_card(
            KEYS.prbg_master, rng, units=units, denomination=EUR, expires_at=EXPIRES
        )
        cards.append(card)
        rows.append(
            SzmCardRow(
                card_id=state.card_id,
                batch_id=batch_id,
                protocol=SzmProtocol.PRBG,
                generator=Generator.HMAC_CTR.value,
                currency="EUR",
                unit_micros=EUR.unit_micros,
                units=units,
                spent=0,
                anchor=None,
                expires_at=state.expires_at,
                status=CardStatus.ACTIVE,
                issued_at=NOW,
            )
        )
    with store.transaction() as tx:
        tx.szm.insert_cards(rows)
    return cards
