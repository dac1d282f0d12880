"""Build the SZM protocol 2 (PRBG) vectors: vectors/szm_prbg/{generate,verify,invalid}.json.

Run ``python vectors/make_szm_prbg.py`` to rewrite the files. Everything is deterministic:
the master key, card ids and the 2048-bit Blum modulus come from
:class:`farthing.testing.DeterministicRandom` with fixed seeds, and times are fixed. Bytes
are lowercase hex; big integers (p, q, n) are big-endian hex. The expected error of each
invalid vector is written here by hand, not captured from the code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from farthing.core.cardcode import Generator, to_compact, to_text
from farthing.core.encoding import Writer
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey, generate_blum_modulus
from farthing.core.schemes.szm_prbg import (
    PAYMENT_DOMAIN,
    Payment,
    PrbgCard,
    PrbgCardState,
    encode_payment,
    issue_card,
    next_payment,
    stream_block,
    to_card_code,
)
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "szm_prbg"
NOW = 1_800_000_000
EXPIRES = NOW + 90 * 86_400
EUR = Denomination(currency="EUR", unit_micros=1000)
REALM = "news.example"
MASTER = DeterministicRandom("farthing/vectors/szm-prbg/master")(32)
BBS_KEY = generate_blum_modulus(2048, DeterministicRandom("farthing/vectors/szm-prbg/bbs-2048"))


def big(value: int) -> str:
    return value.to_bytes((value.bit_length() + 7) // 8, "big").hex()


def bbs_json(generator: Generator) -> Json | None:
    if generator is not Generator.BBS:
        return None
    return {"n": big(BBS_KEY.n), "p": big(BBS_KEY.p), "q": big(BBS_KEY.q)}


def issue(name: str, units: int, generator: Generator) -> tuple[PrbgCardState, PrbgCard]:
    rng = DeterministicRandom(f"farthing/vectors/szm-prbg/{name}")
    return issue_card(
        MASTER,
        rng,
        units=units,
        denomination=EUR,
        expires_at=EXPIRES,
        generator=generator,
        bbs=BBS_KEY.public,
    )


def state_json(state: PrbgCardState) -> Json:
    return {
        "card_id": state.card_id.hex(),
        "spent": state.spent,
        "units": state.units,
        "generator": state.generator.value,
        "currency": state.denomination.currency,
        "unit_micros": state.denomination.unit_micros,
        "expires_at": state.expires_at,
    }


def generate_vectors() -> list[Json]:
    plans = [
        ("hmac-single-units", Generator.HMAC_CTR, 4, [1, 1, 1, 1]),
        ("hmac-skip-ahead", Generator.HMAC_CTR, 50, [2, 5, 40]),
        ("bbs-single-units", Generator.BBS, 4, [1, 1, 1, 1]),
        ("bbs-skip-ahead", Generator.BBS, 20, [3, 1, 16]),
    ]
    return [_generate(name, generator, units, plan) for name, generator, units, plan in plans]


def _generate(name: str, generator: Generator, total: int, plan: list[int]) -> Json:
    state, card = issue(name, total, generator)
    code = to_card_code(card, realm=REALM)
    bbs_key = BBS_KEY if generator is Generator.BBS else None
    blocks = [stream_block(generator, card.secret, j, bbs_key=bbs_key).hex() for j in range(4)]
    payments: list[Json] = []
    for units in plan:
        card, payment, key = next_payment(card, units, now=NOW)
        payments.append(
            {
                "units": units,
                "index": payment.index,
                "token": payment.token.hex(),
                "key": key.hex(),
                "payment": encode_payment(payment).hex(),
            }
        )
    return {
        "name": name,
        "master_key": MASTER.hex(),
        "generator": generator.value,
        "bbs": bbs_json(generator),
        "card_id": state.card_id.hex(),
        "units": total,
        "currency": EUR.currency,
        "unit_micros": EUR.unit_micros,
        "expires_at": EXPIRES,
        "realm": REALM,
        "card_secret": card.secret.hex(),
        "first_blocks": blocks,
        "card_code_text": to_text(code),
        "card_code_compact": to_compact(code),
        "now": NOW,
        "payments": payments,
    }


def verify_vectors() -> list[Json]:
    """One accepted step each: state before, payment, price, state after."""
    vectors: list[Json] = []
    for generator in (Generator.HMAC_CTR, Generator.BBS):
        state, card = issue(f"verify-{generator.value}", 30, generator)
        for step, units in enumerate([1, 2, 10, 17], start=1):
            card, payment, _ = next_payment(card, units, now=NOW)
            after = replace(state, spent=payment.index)
            name = f"{generator.value}-step-{step}-pays-{units}"
            vectors.append(_step(name, state, payment, units, NOW, after))
            state = after
    return [*vectors, _over_payment()]


def _over_payment() -> Json:
    """Over-payment: indexes 1-2 went to a payment that never arrived; the next payment, for
    a price of 1 unit, names index 3 and the issuer takes index - spent = 3 units."""
    state, card = issue("over-payment", 10, Generator.HMAC_CTR)
    card, _lost, _ = next_payment(card, 2, now=NOW)
    card, payment, _ = next_payment(card, 1, now=NOW)
    after = replace(state, spent=payment.index)
    return _step("hmac-ctr-over-payment-price-1-pays-3", state, payment, 1, NOW, after)


def _step(
    name: str,
    before: PrbgCardState,
    payment: Payment,
    units: int,
    now: int,
    after: PrbgCardState | None = None,
) -> Json:
    vector: Json = {
        "name": name,
        "master_key": MASTER.hex(),
        "bbs": bbs_json(before.generator),
        "state": state_json(before),
        "payment": encode_payment(payment).hex(),
        "units": units,
        "now": now,
    }
    if after is not None:
        vector["state_after"] = state_json(after)
        # The units taken are index - spent, which exceeds the price after a lost payment.
        vector["accepted"] = {"index": payment.index, "units": payment.index - before.spent}
    return vector


def _refused(vector: Json, error: str, code: str) -> Json:
    return {**vector, "error": error, "code": code}


def invalid_vectors() -> list[Json]:
    cases: list[Json] = []
    for generator in (Generator.HMAC_CTR, Generator.BBS):
        cases += _invalid_for(generator)
    return cases + _malformed()


def _invalid_for(generator: Generator) -> list[Json]:
    g = generator.value
    fresh, card = issue(f"invalid-{g}", 10, generator)
    _, first, _ = next_payment(card, 1, now=NOW)
    after_first = replace(fresh, spent=1)
    other, _ = issue(f"invalid-other-{g}", 10, generator)
    flipped = replace(fresh, generator=_other(generator))
    key_as_token = Payment(card_id=fresh.card_id, index=1, token=_key_block_1(card))
    beyond = Payment(card_id=fresh.card_id, index=11, token=bytes(32))
    invalid, funds, mismatch = "PAYMENT_INVALID", "INSUFFICIENT_FUNDS", "AMOUNT_MISMATCH"
    return [
        _refused(_step(f"{g}-replay", after_first, first, 1, NOW), "InvalidPayment", invalid),
        _refused(_step(f"{g}-underpaying", fresh, first, 2, NOW), "InsufficientFunds", mismatch),
        _refused(
            _step(f"{g}-forged-token", fresh, replace(first, token=bytes(32)), 1, NOW),
            "InvalidPayment",
            invalid,
        ),
        _refused(
            _step(f"{g}-key-as-token", fresh, key_as_token, 1, NOW), "InvalidPayment", invalid
        ),
        _refused(
            _step(f"{g}-another-cards-state", other, first, 1, NOW), "InvalidPayment", invalid
        ),
        _refused(_step(f"{g}-other-generator", flipped, first, 1, NOW), "InvalidPayment", invalid),
        _refused(
            _step(f"{g}-beyond-card", after_first, beyond, 10, NOW), "InsufficientFunds", funds
        ),
        _refused(_step(f"{g}-expired", fresh, first, 1, EXPIRES), "PaymentExpired", "CARD_EXPIRED"),
    ]


def _other(generator: Generator) -> Generator:
    return Generator.BBS if generator is Generator.HMAC_CTR else Generator.HMAC_CTR


def _key_block_1(card: PrbgCard) -> bytes:
    bbs_key: BbsKey | None = BBS_KEY if card.generator is Generator.BBS else None
    return stream_block(card.generator, card.secret, 1, bbs_key=bbs_key)


def _malformed() -> list[Json]:
    fresh, card = issue("malformed", 10, Generator.HMAC_CTR)
    _, payment, _ = next_payment(card, 1, now=NOW)
    raw = encode_payment(payment)
    short = Writer(PAYMENT_DOMAIN).bytes(payment.card_id).u64(1).bytes(payment.token[:31])
    wrong_domain = Writer("farthing/szm-prbg/receipt").bytes(payment.card_id).u64(1)
    blobs = [
        ("truncated", raw[:-1], "TRUNCATED"),
        ("trailing-byte", raw + b"\x00", "OVERSIZED"),
        ("short-token", short.finish(), "BAD_FIELD"),
        ("wrong-domain", wrong_domain.bytes(payment.token).finish(), "WRONG_DOMAIN"),
        ("unknown-version", b"\x02" + raw[1:], "UNKNOWN_VERSION"),
    ]
    return [
        {
            "name": f"malformed-{name}",
            "master_key": MASTER.hex(),
            "bbs": None,
            "state": state_json(fresh),
            "payment": blob.hex(),
            "units": 1,
            "now": NOW,
            "error": "MalformedMessage",
            "code": code,
        }
        for name, blob, code in blobs
    ]


def build() -> dict[str, dict[str, object]]:
    return {
        "generate": {
            "description": "SZM protocol 2: card secrets, the first stream blocks, card codes, "
            "payments (tokens) and keys, for the hmac-ctr and bbs generators.",
            "vectors": generate_vectors(),
        },
        "verify": {
            "description": "SZM protocol 2: payments the issuer accepts, with its state "
            "before and after.",
            "vectors": verify_vectors(),
        },
        "invalid": {
            "description": "SZM protocol 2: payments the issuer must refuse, with the error "
            "class and ErrorCode name.",
            "vectors": invalid_vectors(),
        },
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for kind, document in build().items():
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        (OUT / f"{kind}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
