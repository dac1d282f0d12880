"""The chain scheme keeps each card's secret: the keys it seals with are still the core's
``issuer_payment_key`` for every card, index and key mode."""

from __future__ import annotations

import pytest

from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.paywall.methods.szm import SzmScheme
from farthing.testing import DeterministicRandom

MASTER = b"M" * 32
EUR = Denomination(currency="EUR", unit_micros=1000)


@pytest.mark.parametrize("mode", list(szm_chain.KeyMode))
def test_the_kept_card_secret_gives_the_cores_keys(mode: szm_chain.KeyMode) -> None:
    scheme = SzmScheme.chain(MASTER, key_mode=mode)
    rng = DeterministicRandom("cards")
    states = [
        szm_chain.issue_card(MASTER, rng, length=5, denomination=EUR, expires_at=2_000_000_000)[0]
        for _ in range(3)
    ]
    for _ in range(2):  # the second pass finds every secret kept
        for state in states:
            for index in range(1, 6):
                expected = szm_chain.issuer_payment_key(MASTER, state, index, mode=mode)
                assert scheme._key(state, index) == expected
