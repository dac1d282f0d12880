"""One rule for rebuilding an issued SZM card from its stored row, and for its status: the
issuer (exports, short-code lookups, card status) and a vendor that is the card's issuer
(the browser wallet's card check) both call :mod:`farthing.core.schemes.szm_issued`, and
both answer a lookup in the one JSON form of :mod:`farthing.http.issuer_wire`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from farthing.core import shortcode
from farthing.core.cardcode import Generator
from farthing.core.errors import MalformedMessage
from farthing.core.prbg import generate_blum_modulus
from farthing.core.schemes import szm_chain, szm_issued, szm_prbg
from farthing.http.issuer_wire import card_lookup_json, parse_card_lookup
from farthing.store import CardStatus, SzmCardRow, SzmProtocol
from farthing.testing import DeterministicRandom
from tests.paywall.helpers import EUR, EXPIRES, KEYS, NOW

REALM = "news"


def row(
    protocol: SzmProtocol, card_id: bytes, generator: str | None, **changes: object
) -> SzmCardRow:
    stored = SzmCardRow(
        card_id=card_id, batch_id=b"b" * 16, protocol=protocol, generator=generator,
        currency="EUR", unit_micros=EUR.unit_micros, units=30, spent=0, anchor=None,
        expires_at=EXPIRES, status=CardStatus.ACTIVE, issued_at=NOW,
    )  # fmt: skip
    return replace(stored, **changes)  # type: ignore[arg-type]


def test_a_chain_row_rebuilds_the_code_the_card_was_printed_with() -> None:
    _, card = szm_chain.issue_card(
        KEYS.chain_master, DeterministicRandom("c"), length=30, denomination=EUR, expires_at=EXPIRES
    )
    printed = szm_chain.to_card_code(card, realm=REALM)
    stored = row(SzmProtocol.CHAIN, card.card_id, None)
    rebuilt = szm_issued.card_code(stored, master=KEYS.chain_master, realm=REALM, bbs_modulus=b"")
    assert rebuilt == printed


@pytest.mark.parametrize("generator", [Generator.HMAC_CTR, Generator.BBS])
def test_a_prbg_row_rebuilds_its_code_with_the_modulus_only_for_bbs(generator: Generator) -> None:
    rng = DeterministicRandom(f"p-{generator}")
    bbs = (
        generate_blum_modulus(2048, DeterministicRandom("bbs"))
        if generator is Generator.BBS
        else None
    )
    _, card = szm_prbg.issue_card(
        KEYS.prbg_master, rng, units=30, denomination=EUR, expires_at=EXPIRES,
        generator=generator, bbs=bbs.public if bbs is not None else None,
    )  # fmt: skip
    printed = szm_prbg.to_card_code(card, realm=REALM)
    modulus = bbs.public.n_bytes if bbs is not None else b"n" * 64
    stored = row(SzmProtocol.PRBG, card.card_id, generator.value)
    rebuilt = szm_issued.card_code(
        stored, master=KEYS.prbg_master, realm=REALM, bbs_modulus=modulus
    )
    assert rebuilt == printed
    assert (rebuilt.modulus != b"") is (generator is Generator.BBS)


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "active"),
        ({"spent": 29}, "active"),
        ({"spent": 30}, "exhausted"),
        ({"expires_at": NOW}, "expired"),
        ({"expires_at": NOW, "spent": 30}, "expired"),
        ({"status": CardStatus.BLOCKED, "expires_at": NOW, "spent": 30}, "blocked"),
    ],
)
def test_the_status_is_block_then_expiry_then_what_is_left(
    changes: dict[str, object], status: str
) -> None:
    stored = row(SzmProtocol.CHAIN, b"c" * 16, None, **changes)
    assert szm_issued.card_status(stored, now=NOW) == status


def test_the_lookup_answer_reads_back_and_opens_with_the_printed_short_code() -> None:
    _, card = szm_chain.issue_card(
        KEYS.chain_master, DeterministicRandom("l"), length=30, denomination=EUR, expires_at=EXPIRES
    )
    stored = row(SzmProtocol.CHAIN, card.card_id, None, spent=4)
    code = szm_issued.card_code(stored, master=KEYS.chain_master, realm=REALM, bbs_modulus=b"")
    short = shortcode.short_secret(KEYS.chain_master, card.card_id)
    document = card_lookup_json(
        code, tag=shortcode.answer_tag(short, code), spent=4, status="active"
    )
    assert "secret" not in document
    answer = parse_card_lookup(document)
    assert (answer.spent, answer.status) == (4, "active")
    assert shortcode.card_from_answer(short, answer.terms, answer.tag) == code
    for broken in ({**document, "units": "30"}, {k: v for k, v in document.items() if k != "tag"}):
        with pytest.raises(MalformedMessage):
            parse_card_lookup(broken)
