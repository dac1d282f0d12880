"""What one node holds, as in docs/scaling.md, at a tenth of the scale (``-m heavy``)."""

from __future__ import annotations

import pytest

from farthing.store import SzmProtocol
from tests.issuer import measure_scale

pytestmark = pytest.mark.heavy


def test_szm_cards_stay_small() -> None:
    chain = measure_scale._measure(
        "chain", 10_000, measure_scale._issue(SzmProtocol.CHAIN, 10_000, 100)
    )
    prbg = measure_scale._measure(
        "prbg", 10_000, measure_scale._issue(SzmProtocol.PRBG, 10_000, 100)
    )
    assert chain.bytes_per_row < 250  # the card and its short-code lookup row (docs/scaling.md)
    assert prbg.bytes_per_row < chain.bytes_per_row  # no anchor column


def test_hll_spend_rows_stay_small() -> None:
    deposit = measure_scale._measure("d", 5_000, measure_scale._hll_spends(5_000, online=False))
    online = measure_scale._measure("o", 1_000, measure_scale._hll_spends(1_000, online=True))
    assert deposit.bytes_per_row < 250
    assert online.bytes_per_row < 400
