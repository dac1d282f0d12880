"""Build the SZM protocol 1 (hash chain) vectors: vectors/szm_chain/{generate,verify,invalid}.json.

Run ``python vectors/make_szm_chain.py`` to rewrite the files. Everything is deterministic:
the master key and card ids come from :class:`farthing.testing.DeterministicRandom` with
fixed seeds, and times are fixed. Bytes are lowercase hex. The expected error of each
invalid vector is written here by hand (not captured from the code), so a change of
behaviour shows up as a test failure, not as a silently regenerated file.
"""

from __future__ import annotations

import json
from pathlib import Path

from farthing.core.cardcode import to_compact, to_text
from farthing.core.encoding import Writer
from farthing.core.money import Denomination
from farthing.core.schemes.szm_chain import (
    PAYMENT_DOMAIN,
    ChainCard,
    ChainCardState,
    KeyMode,
    Payment,
    card_payment_key,
    card_walker,
    chain_seed,
    encode_payment,
    issue_card,
    next_payment,
    to_card_code,
)
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "szm_chain"
NOW = 1_800_000_000
EXPIRES = NOW + 90 * 86_400
EUR = Denomination(currency="EUR", unit_micros=1000)
CENT = Denomination(currency="USD", unit_micros=10_000)
REALM = "news.example"
MASTER = DeterministicRandom("farthing/vectors/szm-chain/master")(32)


def issue(
    name: str, length: int, denomination: Denomination = EUR
) -> tuple[ChainCardState, ChainCard]:
    rng = DeterministicRandom(f"farthing/vectors/szm-chain/{name}")
    return issue_card(MASTER, rng, length=length, denomination=denomination, expires_at=EXPIRES)


def state_json(state: ChainCardState) -> Json:
    return {
        "card_id": state.card_id.hex(),
        "anchor": state.anchor.hex(),
        "spent": state.spent,
        "length": state.length,
        "currency": state.denomination.currency,
        "unit_micros": state.denomination.unit_micros,
        "expires_at": state.expires_at,
    }


def generate_vectors() -> list[Json]:
    plans = [
        ("single-units", 5, EUR, [1, 1, 1, 1, 1]),
        ("skip-ahead", 20, EUR, [3, 1, 7, 9]),
        ("one-unit-card", 1, CENT, [1]),
        ("whole-card-at-once", 12, EUR, [12]),
    ]
    return [_generate(name, length, den, plan) for name, length, den, plan in plans]


def _generate(name: str, length: int, denomination: Denomination, plan: list[int]) -> Json:
    state, card = issue(name, length, denomination)
    code = to_card_code(card, realm=REALM)
    walker = card_walker(card)
    payments: list[Json] = []
    for units in plan:
        card, payment, key = next_payment(card, units, now=NOW, walker=walker)
        literal = card_payment_key(card, payment.index, mode=KeyMode.NEXT_VALUE, walker=walker)
        payments.append(
            {
                "units": units,
                "index": payment.index,
                "value": payment.value.hex(),
                "payment": encode_payment(payment).hex(),
                "key_derived": key.hex(),
                "key_next_value": literal.hex(),
            }
        )
    return {
        "name": name,
        "master_key": MASTER.hex(),
        "card_id": state.card_id.hex(),
        "length": length,
        "currency": denomination.currency,
        "unit_micros": denomination.unit_micros,
        "expires_at": EXPIRES,
        "realm": REALM,
        "card_secret": code.secret.hex(),
        "chain_seed": chain_seed(code.secret, code.card_id).hex(),
        "anchor": state.anchor.hex(),
        "card_code_text": to_text(code),
        "card_code_compact": to_compact(code),
        "now": NOW,
        "payments": payments,
    }


def verify_vectors() -> list[Json]:
    """One accepted step each: state before, payment, price, state after."""
    vectors: list[Json] = []
    state, card = issue("verify", 30)
    walker = card_walker(card)
    for step, units in enumerate([1, 2, 1, 10, 16], start=1):
        card, payment, _ = next_payment(card, units, now=NOW, walker=walker)
        after = ChainCardState(
            card_id=state.card_id,
            anchor=payment.value,
            spent=payment.index,
            length=state.length,
            denomination=state.denomination,
            expires_at=state.expires_at,
        )
        vectors.append(_step(f"step-{step}-pays-{units}", state, payment, units, NOW, after))
        state = after
    return [*vectors, _over_payment()]


def _over_payment() -> Json:
    """Over-payment: the wallet reserved indexes 1-2 for a payment that never arrived, then
    pays a price of 1 unit with index 3. The issuer takes index - spent = 3 units, not the
    price: refusing would leave a gap no later payment could cross."""
    state, card = issue("over-payment", 10)
    walker = card_walker(card)
    card, _lost, _ = next_payment(card, 2, now=NOW, walker=walker)
    card, payment, _ = next_payment(card, 1, now=NOW, walker=walker)
    after = ChainCardState(
        card_id=state.card_id,
        anchor=payment.value,
        spent=payment.index,
        length=state.length,
        denomination=state.denomination,
        expires_at=state.expires_at,
    )
    return _step("over-payment-price-1-pays-3", state, payment, 1, NOW, after)


def _step(
    name: str,
    before: ChainCardState,
    payment: Payment,
    units: int,
    now: int,
    after: ChainCardState | None = None,
) -> Json:
    vector: Json = {
        "name": name,
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


def invalid_vectors() -> list[Json]:
    state, card = issue("invalid", 10)
    walker = card_walker(card)
    fresh = state
    _, first, _ = next_payment(card, 1, now=NOW, walker=walker)
    after_first = ChainCardState(
        card_id=state.card_id,
        anchor=first.value,
        spent=1,
        length=10,
        denomination=EUR,
        expires_at=EXPIRES,
    )
    other_state, _ = issue("invalid-other", 10)

    def pay(index: int, value: bytes) -> Payment:
        return Payment(card_id=state.card_id, index=index, value=value)

    def refused(vector: Json, error: str, code: str) -> Json:
        return {**vector, "error": error, "code": code}

    cases = [
        refused(_step("replay", after_first, first, 1, NOW), "InvalidPayment", "PAYMENT_INVALID"),
        refused(
            _step("forged-value", fresh, pay(1, bytes(32)), 1, NOW),
            "InvalidPayment",
            "PAYMENT_INVALID",
        ),
        refused(
            _step("value-from-wrong-index", fresh, pay(2, walker.value(1)), 2, NOW),
            "InvalidPayment",
            "PAYMENT_INVALID",
        ),
        refused(
            _step("another-cards-state", other_state, first, 1, NOW),
            "InvalidPayment",
            "PAYMENT_INVALID",
        ),
        refused(
            _step("index-zero", fresh, pay(0, state.anchor), 1, NOW),
            "InvalidPayment",
            "PAYMENT_INVALID",
        ),
        refused(_step("underpaying", fresh, first, 2, NOW), "InsufficientFunds", "AMOUNT_MISMATCH"),
        refused(
            _step("beyond-card", after_first, pay(11, bytes(32)), 10, NOW),
            "InsufficientFunds",
            "INSUFFICIENT_FUNDS",
        ),
        refused(_step("expired", fresh, first, 1, EXPIRES), "PaymentExpired", "CARD_EXPIRED"),
    ]
    return cases + _malformed(fresh, first)


def _malformed(state: ChainCardState, payment: Payment) -> list[Json]:
    raw = encode_payment(payment)
    short_value = Writer(PAYMENT_DOMAIN).bytes(payment.card_id).u64(1).bytes(payment.value[:31])
    wrong_domain = Writer("farthing/szm-chain/receipt").bytes(payment.card_id).u64(1)
    blobs = [
        ("truncated", raw[:-1], "TRUNCATED"),
        ("trailing-byte", raw + b"\x00", "OVERSIZED"),
        ("short-value", short_value.finish(), "BAD_FIELD"),
        ("wrong-domain", wrong_domain.bytes(payment.value).finish(), "WRONG_DOMAIN"),
        ("unknown-version", b"\x02" + raw[1:], "UNKNOWN_VERSION"),
    ]
    return [
        {
            "name": f"malformed-{name}",
            "state": state_json(state),
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
            "description": "SZM protocol 1: card secrets, chains, card codes, payments and "
            "per-payment keys (derived and next-value) from a master key.",
            "vectors": generate_vectors(),
        },
        "verify": {
            "description": "SZM protocol 1: payments the issuer accepts, with its state "
            "before and after.",
            "vectors": verify_vectors(),
        },
        "invalid": {
            "description": "SZM protocol 1: payments the issuer must refuse, with the error "
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
