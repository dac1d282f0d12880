"""Build the HLL test vectors: vectors/hll/{generate,verify,invalid}.json.

Run ``python vectors/make_hll.py`` to rewrite the files. Everything is deterministic: keys,
card ids and challenges come from :class:`farthing.testing.DeterministicRandom` with fixed
seeds, and times are fixed. Bytes are lowercase hex. The expected error of every invalid
vector is written here by hand, not captured from the code, so a change of behaviour
shows up as a failing test rather than as a silently regenerated file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from farthing.core.encoding import Writer
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key, hmac_sha256
from farthing.core.schemes.hll import (
    DOMAIN_PAYMENT,
    CardState,
    DepositBatch,
    DepositItem,
    DepositReport,
    Offer,
    Purchase,
    SoftwareCardKey,
    authorize_purchase,
    batch_tag,
    card_certificate_body,
    complete_purchase,
    derive_card_key,
    encode_batch,
    encode_card_certificate,
    encode_offer,
    encode_payment,
    encode_report,
    issue_card_certificate,
    make_offer,
    purchase_message,
)
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "hll"
NOW = 1_800_000_000
TTL = 300
EUR = Denomination(currency="EUR", unit_micros=1000)
USD = Denomination(currency="USD", unit_micros=1000)
MERCHANT = "news.example"
OTHER_MERCHANT = "shop.example"

_keys = DeterministicRandom("farthing/vectors/hll/keys")
MASTER_KEY = _keys(32)
CARD_ID = _keys(16)
OTHER_CARD_ID = _keys(16)
MERCHANT_KEY = _keys(32)
OTHER_MERCHANT_KEY = _keys(32)
CARD_KEY = derive_card_key(MASTER_KEY, CARD_ID)
CERT_KEY = _keys(32)  # the bank's card-certification key (Ed25519 seed)
OTHER_CERT_KEY = _keys(32)
CERT_EXPIRES = NOW + 86_400
OTHER_CARD_KEY = derive_card_key(MASTER_KEY, OTHER_CARD_ID)
LOADED = 100


def offer(
    good: str = "/articles/1",
    amount: int = 3,
    *,
    seed: str = "offer",
    merchant_id: str = MERCHANT,
    denomination: Denomination = EUR,
    challenge_len: int = 16,
) -> Offer:
    rng = DeterministicRandom(f"farthing/vectors/hll/challenge/{seed}")
    return make_offer(
        merchant_id=merchant_id,
        good=good,
        amount=amount,
        denomination=denomination,
        rng=rng,
        now=NOW,
        ttl=TTL,
        challenge=rng(challenge_len),
    )


def mac_purchase(the_offer: Offer, counter: int, *, key: bytes = CARD_KEY) -> Purchase:
    """A payment MACed straight with the key: what a card (or a key thief) would send."""
    sigma = hmac_sha256(key, purchase_message(CARD_ID, the_offer, counter))
    return Purchase(card_id=CARD_ID, counter=counter, sigma=sigma)


def offer_fields(o: Offer) -> Json:
    return {
        "merchant_id": o.merchant_id,
        "good": o.good,
        "amount": o.amount,
        "currency": o.denomination.currency,
        "unit_micros": o.denomination.unit_micros,
        "challenge": o.challenge.hex(),
        "expires_at": o.expires_at,
    }


# --- generate -----------------------------------------------------------------------------


def card_key_vectors() -> list[Json]:
    rng = DeterministicRandom("farthing/vectors/hll/derive")
    out: list[Json] = []
    for index in range(3):
        master, card_id = rng(32), rng(16)
        out.append(
            {
                "name": f"card_key_{index}",
                "kind": "card_key",
                "master_key": master.hex(),
                "card_id": card_id.hex(),
                "card_key": derive_card_key(master, card_id).hex(),
            }
        )
    return out


def purchase_vector(name: str, the_offer: Offer, counter: int) -> Json:
    payment = mac_purchase(the_offer, counter)
    return {
        "name": name,
        "kind": "purchase",
        "card_key": CARD_KEY.hex(),
        "card_id": CARD_ID.hex(),
        "counter": counter,
        "offer": offer_fields(the_offer),
        "offer_encoded": encode_offer(the_offer).hex(),
        "message": purchase_message(CARD_ID, the_offer, counter).hex(),
        "sigma": payment.sigma.hex(),
        "payment": encode_payment(payment).hex(),
    }


def batch_vector(name: str, merchant_key: bytes, batch: DepositBatch) -> Json:
    return {
        "name": name,
        "kind": "batch",
        "merchant_key": merchant_key.hex(),
        "batch_id": batch.batch_id.hex(),
        "merchant_id": batch.merchant_id,
        "items": [
            {"offer": encode_offer(i.offer).hex(), "payment": encode_payment(i.purchase).hex()}
            for i in batch.items
        ],
        "batch_encoded": encode_batch(batch).hex(),
        "tag": batch_tag(merchant_key, batch).hex(),
    }


def two_item_batch(batch_seed: str = "batch-1") -> DepositBatch:
    first, second = offer(seed="b1"), offer("/articles/2", 5, seed="b2")
    items = (
        DepositItem(offer=first, purchase=mac_purchase(first, 1)),
        DepositItem(offer=second, purchase=mac_purchase(second, 2)),
    )
    batch_id = DeterministicRandom(f"farthing/vectors/hll/{batch_seed}")(16)
    return DepositBatch(batch_id=batch_id, merchant_id=MERCHANT, items=items)


def report_vector() -> Json:
    report = DepositReport(
        batch_id=two_item_batch().batch_id,
        accepted=((CARD_ID, 1, 3),),
        duplicates=((CARD_ID, 2),),
        invalid=((OTHER_CARD_ID, 7),),
        credited=3,
    )
    return {
        "name": "deposit_report",
        "kind": "report",
        "batch_id": report.batch_id.hex(),
        "accepted": [[c.hex(), n, a] for c, n, a in report.accepted],
        "duplicates": [[c.hex(), n] for c, n in report.duplicates],
        "invalid": [[c.hex(), n] for c, n in report.invalid],
        "credited": report.credited,
        "report_encoded": encode_report(report).hex(),
    }


def certificate_vector(name: str, card_id: bytes, denomination: Denomination) -> Json:
    cert = issue_card_certificate(
        CERT_KEY, card_id=card_id, denomination=denomination, expires_at=CERT_EXPIRES
    )
    return {
        "name": name,
        "kind": "card_certificate",
        "signing_key": CERT_KEY.hex(),
        "public_key": ed25519_public_key(CERT_KEY).hex(),
        "card_id": card_id.hex(),
        "currency": denomination.currency,
        "unit_micros": denomination.unit_micros,
        "expires_at": CERT_EXPIRES,
        "body": card_certificate_body(card_id, denomination, CERT_EXPIRES).hex(),
        "signature": cert.signature.hex(),
        "certificate": encode_card_certificate(cert).hex(),
    }


def generate() -> Json:
    empty = DepositBatch(
        batch_id=DeterministicRandom("farthing/vectors/hll/batch-0")(16),
        merchant_id=MERCHANT,
        items=(),
    )
    vectors = [
        *card_key_vectors(),
        purchase_vector("purchase_first", offer(), 1),
        purchase_vector("purchase_unicode_good", offer("/café/naïve €", 7, seed="u"), 2),
        purchase_vector("purchase_long_challenge", offer(seed="long", challenge_len=64), 2**40),
        batch_vector("batch_empty", MERCHANT_KEY, empty),
        batch_vector("batch_two_items", MERCHANT_KEY, two_item_batch()),
        report_vector(),
        certificate_vector("card_certificate_eur", CARD_ID, EUR),
        certificate_vector("card_certificate_usd", OTHER_CARD_ID, USD),
    ]
    return {
        "description": "HLL: card key derivation, purchase MAC inputs and MACs, encoded "
        "payments, deposit batch tags, deposit reports and card certificates.",
        "vectors": vectors,
    }


# --- verify -------------------------------------------------------------------------------


def verify() -> Json:
    """One card paying four offers in order; each vector's 'after' is the next 'before'."""
    state = CardState(card_id=CARD_ID, denomination=EUR, balance=LOADED)
    spent = 0
    vectors: list[Json] = []
    purchases = [("/articles/1", 3), ("/articles/2", 1), ("/video/3", 40), ("/articles/4", 56)]
    for index, (good, amount) in enumerate(purchases, start=1):
        the_offer = offer(good, amount, seed=f"verify-{index}")
        new_state, message = authorize_purchase(state, the_offer, NOW)
        payment = complete_purchase(
            CARD_ID, new_state.counter, the_offer.challenge, SoftwareCardKey(CARD_KEY), message
        )
        vectors.append(
            {
                "name": f"purchase_{index}",
                "card_id": CARD_ID.hex(),
                "card_key": CARD_KEY.hex(),
                "currency": "EUR",
                "unit_micros": 1000,
                "loaded": LOADED,
                "now": NOW,
                "offer": encode_offer(the_offer).hex(),
                "card_before": {"balance": state.balance, "counter": state.counter},
                "card_after": {"balance": new_state.balance, "counter": new_state.counter},
                "payment": encode_payment(payment).hex(),
                "bank_spent_before": spent,
                "bank_spent_after": spent + amount,
                "verified": {"merchant_id": MERCHANT, "good": good, "amount": amount},
            }
        )
        state, spent = new_state, spent + amount
    return {
        "description": "HLL: a card's purchases in order, with the card's state and the "
        "bank's spent total before and after each; the last one empties the card.",
        "vectors": vectors,
    }


# --- invalid ------------------------------------------------------------------------------

MERCHANTS: list[Json] = [
    {"merchant_id": MERCHANT, "merchant_key": MERCHANT_KEY.hex()},
    {"merchant_id": OTHER_MERCHANT, "merchant_key": OTHER_MERCHANT_KEY.hex()},
]
CARDS: list[Json] = [{"card_id": CARD_ID.hex(), "card_key": CARD_KEY.hex(), "loaded": LOADED}]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def payment_case(
    name: str,
    sent_offer: Offer,
    payment: bytes,
    error: str,
    code: str,
    *,
    prior: tuple[tuple[Offer, Purchase], ...] = (),
    now: int = NOW,
    bank_only: bool = False,
    cards: list[Json] = CARDS,
    merchants: list[Json] = MERCHANTS,
) -> Json:
    return {
        "name": name,
        "kind": "payment",
        "cards": cards,
        "merchants": merchants,
        "currency": "EUR",
        "unit_micros": 1000,
        "prior": [
            {"offer": encode_offer(o).hex(), "payment": encode_payment(p).hex()} for o, p in prior
        ],
        "offer": encode_offer(sent_offer).hex(),
        "payment": payment.hex(),
        "now": now,
        "bank_only": bank_only,
        "error": error,
        "code": code,
    }


def mac_cases() -> list[Json]:
    """Payments whose bytes are well formed but whose MAC must not verify."""
    base = offer()
    good = encode_payment(mac_purchase(base, 1))
    bad = "InvalidPayment", "PAYMENT_INVALID"
    changed = {
        "offer_amount_changed": replace(base, amount=4),
        "offer_good_changed": replace(base, good="/articles/2"),
        "offer_merchant_changed": replace(base, merchant_id=OTHER_MERCHANT),
        "offer_challenge_changed": replace(base, challenge=bytes(16)),
        "offer_expiry_changed": replace(base, expires_at=base.expires_at + 1),
        "offer_unit_changed": replace(
            base, denomination=Denomination(currency="EUR", unit_micros=1)
        ),
    }
    cases = [payment_case(name, o, good, *bad) for name, o in changed.items()]
    cases += [
        payment_case("sigma_bit_flipped", base, flip_bit(good, len(good) * 8 - 1), *bad),
        payment_case(
            "counter_changed", base, encode_payment(replace(mac_purchase(base, 1), counter=2)), *bad
        ),
        payment_case("counter_zero", base, encode_payment(mac_purchase(base, 0)), *bad),
        payment_case(
            "wrong_card_key", base, encode_payment(mac_purchase(base, 1, key=OTHER_CARD_KEY)), *bad
        ),
        payment_case(
            "unknown_card",
            base,
            encode_payment(replace(mac_purchase(base, 1), card_id=OTHER_CARD_ID)),
            *bad,
        ),
    ]
    return cases


def malformed_cases() -> list[Json]:
    base = offer()
    good = encode_payment(mac_purchase(base, 1))
    other_domain = Writer("farthing/szm-chain/payment").bytes(CARD_ID).u64(1).bytes(bytes(32))
    short_sigma = Writer(DOMAIN_PAYMENT).bytes(CARD_ID).u64(1).bytes(bytes(31))
    return [
        payment_case("truncated", base, good[:-1], "MalformedMessage", "TRUNCATED"),
        payment_case("trailing_byte", base, good + b"\x00", "MalformedMessage", "NON_CANONICAL"),
        payment_case(
            "wrong_domain", base, other_domain.finish(), "MalformedMessage", "WRONG_DOMAIN"
        ),
        payment_case(
            "unknown_version", base, b"\x02" + good[1:], "MalformedMessage", "UNKNOWN_VERSION"
        ),
        payment_case(
            "short_sigma_field", base, short_sigma.finish(), "MalformedMessage", "BAD_FIELD"
        ),
        payment_case("empty", base, b"", "MalformedMessage", "TRUNCATED"),
    ]


def bank_cases() -> list[Json]:
    """Refusals that need the bank's state: time, duplicates, loaded value, registry."""
    first = offer(seed="first")
    second = offer(seed="second")
    paid = mac_purchase(first, 1)
    big = offer(amount=LOADED - 2, seed="big")
    usd = offer(seed="usd", denomination=USD)
    stranger = offer(seed="stranger", merchant_id="unknown.example")
    return [
        payment_case(
            "expired_offer",
            first,
            encode_payment(paid),
            "PaymentExpired",
            "CHALLENGE_EXPIRED",
            now=first.expires_at,
        ),
        payment_case(  # a cloned card: the counter spent already, on another offer
            "duplicate_counter",
            second,
            encode_payment(mac_purchase(second, 1)),
            "Conflict",
            "DUPLICATE_SPEND",
            prior=((first, paid),),
            bank_only=True,
        ),
        payment_case(
            "replayed_to_new_offer",
            second,
            encode_payment(paid),
            "InvalidPayment",
            "PAYMENT_INVALID",
            prior=((first, paid),),
        ),
        payment_case(
            "over_loaded_value",
            big,
            encode_payment(mac_purchase(big, 2)),
            "InsufficientFunds",
            "INSUFFICIENT_FUNDS",
            prior=((first, paid),),
            bank_only=True,
        ),
        payment_case(
            "other_denomination",
            usd,
            encode_payment(mac_purchase(usd, 1)),
            "InvalidPayment",
            "PAYMENT_INVALID",
            bank_only=True,
        ),
        payment_case(
            "unknown_merchant",
            stranger,
            encode_payment(mac_purchase(stranger, 1)),
            "NotFound",
            "NOT_FOUND",
            bank_only=True,
        ),
    ]


def deposit_case(
    name: str,
    batch: bytes,
    tag: bytes,
    error: str,
    code: str,
    *,
    prior: tuple[tuple[DepositBatch, bytes], ...] = (),
    merchants: list[Json] = MERCHANTS,
) -> Json:
    return {
        "name": name,
        "kind": "deposit",
        "cards": CARDS,
        "merchants": merchants,
        "currency": "EUR",
        "unit_micros": 1000,
        "prior": [{"batch": encode_batch(b).hex(), "tag": t.hex()} for b, t in prior],
        "batch": batch.hex(),
        "tag": tag.hex(),
        "now": NOW,
        "error": error,
        "code": code,
    }


def deposit_cases() -> list[Json]:
    batch = two_item_batch()
    raw, tag = encode_batch(batch), batch_tag(MERCHANT_KEY, batch)
    reused = replace(batch, items=batch.items[:1])
    bad = "InvalidPayment", "DEPOSIT_INVALID"
    return [
        deposit_case("batch_tag_bit_flipped", raw, flip_bit(tag, 0), *bad),
        deposit_case(
            "batch_tag_other_merchant_key", raw, batch_tag(OTHER_MERCHANT_KEY, batch), *bad
        ),
        deposit_case("batch_unknown_merchant", raw, tag, *bad, merchants=MERCHANTS[1:]),
        deposit_case(
            "batch_id_reused",
            encode_batch(reused),
            batch_tag(MERCHANT_KEY, reused),
            "Conflict",
            "CONFLICT",
            prior=((batch, tag),),
        ),
        deposit_case(
            "batch_trailing_byte", raw + b"\x00", tag, "MalformedMessage", "NON_CANONICAL"
        ),
    ]


def certificate_case(
    name: str, certificate: bytes, decision: str, error: str = "", code: str = "", **at: int
) -> Json:
    """A purchase by CARD_ID in EUR presenting ``certificate`` to a deferred-mode merchant:
    the merchant's decision ('online', or 'refused' with the error), and the certificate
    check's own error."""
    return {
        "name": name,
        "kind": "certificate",
        "public_key": ed25519_public_key(CERT_KEY).hex(),
        "card_id": CARD_ID.hex(),
        "currency": "EUR",
        "unit_micros": 1000,
        "certificate": certificate.hex(),
        "now": at.get("now", NOW),
        "decision": decision,
        "error": error,
        "code": code,
    }


def certificate_cases() -> list[Json]:
    def cert(key: bytes = CERT_KEY, **changes: object) -> bytes:
        fields: dict[str, object] = {
            "card_id": CARD_ID,
            "denomination": EUR,
            "expires_at": CERT_EXPIRES,
        }
        fields.update(changes)
        return encode_card_certificate(issue_card_certificate(key, **fields))  # type: ignore[arg-type]

    good = cert()
    return [
        certificate_case(
            "certificate_forged", cert(OTHER_CERT_KEY), "online", "InvalidPayment",
            "SIGNATURE_INVALID",
        ),
        certificate_case(
            "certificate_signature_bit_flipped", flip_bit(good, len(good) * 8 - 1), "online",
            "InvalidPayment", "SIGNATURE_INVALID",
        ),
        certificate_case(
            "certificate_other_card", cert(card_id=OTHER_CARD_ID), "online", "InvalidPayment",
            "PAYMENT_INVALID",
        ),
        certificate_case(
            "certificate_other_denomination", cert(denomination=USD), "online",
            "InvalidPayment", "PAYMENT_INVALID",
        ),
        certificate_case(
            "certificate_expired", good, "online", "PaymentExpired", "CERTIFICATE_EXPIRED",
            now=CERT_EXPIRES,
        ),
        certificate_case(
            "certificate_trailing_byte", good + b"\x00", "refused", "MalformedMessage",
            "NON_CANONICAL",
        ),
        certificate_case(
            "certificate_truncated", good[:-1], "refused", "MalformedMessage", "TRUNCATED"
        ),
    ]  # fmt: skip


def invalid() -> Json:
    return {
        "description": "HLL: payments and deposits the bank must refuse, with the expected "
        "error class and ErrorCode name. 'prior' payments or batches are accepted first; "
        "'bank_only' cases pass the pure MAC check and fail only on the bank's state. "
        "'certificate' cases: what a deferred-mode merchant decides for a payment presenting "
        "that card certificate ('online': ask the bank; 'refused': the error) and the "
        "error the certificate check itself raises.",
        "vectors": [
            *mac_cases(),
            *malformed_cases(),
            *bank_cases(),
            *deposit_cases(),
            *certificate_cases(),
        ],
    }


def build() -> dict[str, Json]:
    return {"generate": generate(), "verify": verify(), "invalid": invalid()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, document in build().items():
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (OUT / f"{kind}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
