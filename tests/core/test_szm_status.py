"""Card status only for the card's holder: the proof of the card secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farthing.core.cardcode import Generator
from farthing.core.errors import AccessDenied, NotFound
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.core.schemes.szm_status import (
    MAX_SKEW,
    StatusRequest,
    status_proof,
    status_request,
    verify_status_request,
)

SECRET = bytes(range(32))
CARD = bytes(range(100, 116))
NOW = 1_800_000_000


def test_the_holder_is_answered_within_the_window() -> None:
    for at in (NOW - MAX_SKEW, NOW, NOW + MAX_SKEW):
        verify_status_request(status_request(SECRET, CARD, now=at), SECRET, now=NOW)


@given(st.integers(0, 2**63 - 1).filter(lambda at: abs(at - NOW) > MAX_SKEW))
def test_a_stale_or_future_request_is_refused(at: int) -> None:
    with pytest.raises(AccessDenied):
        verify_status_request(status_request(SECRET, CARD, now=at), SECRET, now=NOW)


def test_without_the_secret_nothing_is_told_not_even_whether_the_card_exists() -> None:
    forged = status_request(bytes(32), CARD, now=NOW)
    other_card = StatusRequest(card_id=bytes(16), at=NOW, proof=status_proof(SECRET, CARD, NOW))
    other_time = StatusRequest(card_id=CARD, at=NOW, proof=status_proof(SECRET, CARD, NOW - 1))
    short_id = StatusRequest(card_id=CARD[:8], at=NOW, proof=bytes(32))
    messages = set()
    for request, secret in (
        (forged, SECRET), (other_card, SECRET), (other_time, SECRET), (short_id, SECRET),
        (status_request(SECRET, CARD, now=NOW), None),  # a card the issuer does not know
    ):  # fmt: skip
        with pytest.raises(NotFound) as refused:
            verify_status_request(request, secret, now=NOW)
        messages.add(refused.value.message)
    assert messages == {"no such card"}


def test_the_proof_is_no_payment_token_or_key() -> None:
    # Domain separation: the proof differs from every other value S yields.
    proof = status_proof(SECRET, CARD, 1)
    chain_seed = szm_chain.chain_seed(SECRET, CARD)
    prbg_blocks = {szm_prbg.stream_block(Generator.HMAC_CTR, SECRET, j) for j in range(4)}
    assert proof != chain_seed
    assert proof not in prbg_blocks
