"""Build the PayWord test vectors: vectors/payword/{generate,verify,invalid}.json.

Run ``python vectors/make_payword.py`` to rewrite the files. Everything is deterministic:
keys, seeds and nonces come from :class:`farthing.testing.DeterministicRandom` with fixed
seeds and times are fixed. Bytes are lowercase hex. The expected error of each invalid
vector is written here by hand (not captured from the code), so a change of behaviour
shows up as a test failure, not as a silently regenerated file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from farthing.core.hashchain import chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key, ed25519_sign
from farthing.core.schemes.payword import (
    CHAIN_TAG,
    Certificate,
    Commitment,
    Payment,
    Redemption,
    certificate_body,
    commit,
    commitment_body,
    commitment_id,
    encode_certificate,
    encode_commitment,
    encode_payment,
    encode_redemption,
    issue_certificate,
)
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "payword"
NOW = 1_800_000_000
DAY = 86_400
EUR = Denomination(currency="EUR", unit_micros=1000)
CENT = Denomination(currency="EUR", unit_micros=10_000)
LENGTH = 20
NONCE_SEED = "farthing/vectors/payword/nonce"

_keys = DeterministicRandom("farthing/vectors/payword/keys")
BROKER_PRIVATE = _keys(32)
USER_PRIVATE = _keys(32)
MALLORY_PRIVATE = _keys(32)
SEED = _keys(32)
BROKER_PUBLIC = ed25519_public_key(BROKER_PRIVATE)


def certificate(*, signer: bytes = BROKER_PRIVATE, expires_at: int = NOW + 30 * DAY) -> Certificate:
    return issue_certificate(
        signer,
        broker_id="broker.example",
        user_id="alice",
        user_public_key=ed25519_public_key(USER_PRIVATE),
        credit_limit=100_000,
        denomination=EUR,
        expires_at=expires_at,
    )


def commitment(cert: Certificate | None = None, *, vendor_id: str = "news.example") -> Commitment:
    return commit(
        USER_PRIVATE,
        cert or certificate(),
        vendor_id=vendor_id,
        seed=SEED,
        length=LENGTH,
        now=NOW,
        ttl=DAY,
        rng=DeterministicRandom(NONCE_SEED),
        denomination=CENT,
    )


def signed(unsigned: Commitment, signer: bytes = USER_PRIVATE) -> Commitment:
    """``unsigned`` (e.g. a commitment with some fields replaced) signed again by ``signer``."""
    return replace(unsigned, signature=ed25519_sign(signer, commitment_body(unsigned)))


def w(index: int, length: int = LENGTH) -> bytes:
    return chain_walk(CHAIN_TAG, SEED, length - index)


def payment(base: Commitment, index: int, value: bytes | None = None) -> str:
    pay = Payment(commitment_id=commitment_id(base), index=index, value=value or w(index))
    return encode_payment(pay).hex()


def state(base: Commitment, spent: int) -> Json:
    return {
        "commitment_id": commitment_id(base).hex(),
        "last_value": w(spent).hex(),
        "spent": spent,
        "length": base.length,
        "currency": base.denomination.currency,
        "unit_micros": base.denomination.unit_micros,
        "expires_at": base.expires_at,
    }


def redemption(base: Commitment, index: int, value: bytes | None = None) -> str:
    claim = Redemption(commitment=base, index=index, value=value or w(index))
    return encode_redemption(claim).hex()


# --- generate ----------------------------------------------------------------------------


def generate_vectors() -> list[Json]:
    cert = certificate()
    base = commitment(cert)
    return [
        _certificate_vector("certificate", cert),
        _certificate_vector(
            "certificate-utf8-names",
            issue_certificate(
                BROKER_PRIVATE,
                broker_id="brøker",
                user_id="zoë",
                user_public_key=ed25519_public_key(USER_PRIVATE),
                credit_limit=1,
                denomination=Denomination(currency="GBP", unit_micros=1),
                expires_at=NOW,
            ),
        ),
        {
            "name": "commitment",
            "kind": "commitment",
            "user_private": USER_PRIVATE.hex(),
            "certificate": encode_certificate(cert).hex(),
            "vendor_id": base.vendor_id,
            "seed": SEED.hex(),
            "length": LENGTH,
            "now": NOW,
            "ttl": DAY,
            "currency": CENT.currency,
            "unit_micros": CENT.unit_micros,
            "nonce_rng_seed": NONCE_SEED,
            "anchor": base.anchor.hex(),
            "nonce": base.nonce.hex(),
            "expires_at": base.expires_at,
            "body": commitment_body(base).hex(),
            "commitment_id": commitment_id(base).hex(),
            "encoded": encode_commitment(base).hex(),
        },
        {
            "name": "chain",
            "kind": "chain",
            "tag": CHAIN_TAG.hex(),
            "seed": SEED.hex(),
            "length": 8,
            "values": [w(i, 8).hex() for i in range(9)],
        },
        *(_payment_vector(base, index) for index in (1, 2, LENGTH)),
        {
            "name": "redemption",
            "kind": "redemption",
            "commitment": encode_commitment(base).hex(),
            "index": 7,
            "value": w(7).hex(),
            "encoded": redemption(base, 7),
        },
    ]


def _certificate_vector(name: str, cert: Certificate) -> Json:
    return {
        "name": name,
        "kind": "certificate",
        "broker_private": BROKER_PRIVATE.hex(),
        "broker_public": BROKER_PUBLIC.hex(),
        "broker_id": cert.broker_id,
        "user_id": cert.user_id,
        "user_public_key": cert.user_public_key.hex(),
        "credit_limit": cert.credit_limit,
        "currency": cert.denomination.currency,
        "unit_micros": cert.denomination.unit_micros,
        "expires_at": cert.expires_at,
        "body": certificate_body(cert).hex(),
        "signature": cert.signature.hex(),
        "encoded": encode_certificate(cert).hex(),
    }


def _payment_vector(base: Commitment, index: int) -> Json:
    return {
        "name": f"payment-{index}",
        "kind": "payment",
        "commitment_id": commitment_id(base).hex(),
        "index": index,
        "value": w(index).hex(),
        "encoded": payment(base, index),
    }


# --- verify ------------------------------------------------------------------------------


def verify_vectors() -> list[Json]:
    base = commitment()
    last = base.expires_at - 1
    return [
        _commitment_case("commitment-accepted", base, now=NOW),
        _commitment_case("commitment-last-second", base, now=last),
        _pay_case("first-payword", base, spent=0, index=1, units=1),
        _pay_case("next-payword", base, spent=1, index=2, units=1),
        _pay_case("skip-ahead-5", base, spent=2, index=7, units=5),
        _pay_case("last-payword", base, spent=LENGTH - 1, index=LENGTH, units=1),
        _pay_case("last-second", base, spent=7, index=8, units=1, now=last),
        # Paywords 3-4 went to a payment that never arrived: a price of 1 takes 3 units.
        _pay_case("over-payment-price-1-pays-3", base, spent=2, index=5, units=1),
        _redeem_case("first-redemption", base, before=None, index=7),
        _redeem_case("incremental-redemption", base, before=7, index=12),
        _redeem_case("repeated-redemption-credits-nothing", base, before=12, index=12),
        _redeem_case("lower-index-credits-nothing", base, before=12, index=7),
        _redeem_case("whole-chain", base, before=None, index=LENGTH),
        _redeem_case("after-expiry-within-window", base, before=None, index=3, now=last + DAY),
    ]


def _commitment_case(name: str, base: Commitment, *, now: int, **extra: object) -> Json:
    return {
        "name": name,
        "kind": "commitment",
        "broker_public": BROKER_PUBLIC.hex(),
        "vendor_id": "news.example",
        "commitment": encode_commitment(base).hex(),
        "now": now,
        "state": state(base, 0),
        **extra,
    }


def _pay_case(
    name: str, base: Commitment, *, spent: int, index: int, units: int, now: int = NOW + 60
) -> Json:
    return {
        "name": name,
        "kind": "payment",
        "state_before": state(base, spent),
        "payment": payment(base, index),
        "units": units,
        "now": now,
        "state_after": state(base, index),
        "paid_units": index - spent,  # the units taken: index - spent, not the price
    }


def _redeem_case(
    name: str, base: Commitment, *, before: int | None, index: int, now: int = NOW + DAY
) -> Json:
    after = max(index, before or 0)
    return {
        "name": name,
        "kind": "redemption",
        "broker_public": BROKER_PUBLIC.hex(),
        "vendor_id": "news.example",
        "state_before": None if before is None else _redeemed(base, before),
        "redemption": redemption(base, index),
        "now": now,
        "credited_units": after - (before or 0),
        "state_after": _redeemed(base, after),
    }


def _redeemed(base: Commitment, index: int) -> Json:
    return {
        "commitment_id": commitment_id(base).hex(),
        "redeemed_index": index,
        "redeemed_value": w(index).hex(),
    }


# --- invalid -----------------------------------------------------------------------------


def invalid_vectors() -> list[Json]:
    return [
        *_invalid_certificates(),
        *_invalid_commitments(),
        *_invalid_payments(),
        *_invalid_redemptions(),
    ]


def _refused(vector: Json, error: str, code: str) -> Json:
    return {**vector, "error": error, "code": code}


def _invalid_certificates() -> list[Json]:
    cert = certificate()
    tampered = encode_certificate(replace(cert, credit_limit=cert.credit_limit + 1))
    short_key = encode_certificate(replace(cert, user_public_key=cert.user_public_key[:31]))
    cases = [
        ("forged-broker", encode_certificate(certificate(signer=MALLORY_PRIVATE)), NOW),
        ("tampered-credit-limit", tampered, NOW),
        ("expired-certificate", encode_certificate(cert), cert.expires_at),
        ("short-user-key", short_key, NOW),
    ]
    errors = [
        ("InvalidPayment", "SIGNATURE_INVALID"),
        ("InvalidPayment", "SIGNATURE_INVALID"),
        ("PaymentExpired", "CERTIFICATE_EXPIRED"),
        ("MalformedMessage", "BAD_FIELD"),
    ]
    return [
        _refused(
            {
                "name": name,
                "kind": "certificate",
                "broker_public": BROKER_PUBLIC.hex(),
                "certificate": data.hex(),
                "now": now,
            },
            *error,
        )
        for (name, data, now), error in zip(cases, errors, strict=True)
    ]


def _invalid_commitments() -> list[Json]:
    base = commitment()
    short = certificate(expires_at=NOW + 3600)
    usd = Denomination(currency="USD", unit_micros=10_000)
    later = base.certificate.expires_at + 1
    cases: list[tuple[str, Commitment, str, int, str, str]] = [
        ("forged-commitment-signature", signed(base, MALLORY_PRIVATE), "news.example", NOW,
         "InvalidPayment", "SIGNATURE_INVALID"),
        ("tampered-length", replace(base, length=LENGTH + 1), "news.example", NOW,
         "InvalidPayment", "SIGNATURE_INVALID"),
        ("forged-certificate", commitment(certificate(signer=MALLORY_PRIVATE)), "news.example",
         NOW, "InvalidPayment", "SIGNATURE_INVALID"),
        ("wrong-vendor", base, "other.example", NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("expired-commitment", base, "news.example", base.expires_at,
         "PaymentExpired", "CARD_EXPIRED"),
        ("expired-certificate", commitment(short), "news.example", short.expires_at,
         "PaymentExpired", "CERTIFICATE_EXPIRED"),
        ("over-credit-limit", signed(replace(base, length=10_001)), "news.example", NOW,
         "InsufficientFunds", "INSUFFICIENT_FUNDS"),
        ("currency-mismatch", signed(replace(base, denomination=usd)), "news.example", NOW,
         "InvalidPayment", "PAYMENT_INVALID"),
        ("outlives-certificate", signed(replace(base, expires_at=later)), "news.example", NOW,
         "InvalidPayment", "PAYMENT_INVALID"),
        ("zero-length", signed(replace(base, length=0)), "news.example", NOW,
         "MalformedMessage", "BAD_FIELD"),
    ]  # fmt: skip
    return [
        _refused(_commitment_case(name, c, now=now, vendor_id=vendor), error, code)
        for name, c, vendor, now, error, code in cases
    ]


def _invalid_payments() -> list[Json]:
    base = commitment()
    other = commitment(vendor_id="other.example")
    junk = DeterministicRandom("farthing/vectors/payword/junk")(32)
    good = bytes.fromhex(payment(base, 4))
    cases: list[tuple[str, int, str, int, int, str, str]] = [
        ("replay", 3, payment(base, 3), 1, NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("stale-index", 5, payment(base, 3), 1, NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("wrong-value", 3, payment(base, 4, w(5)), 1, NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("forged-value", 3, payment(base, 4, junk), 1, NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("other-commitment", 3, payment(other, 4), 1, NOW, "InvalidPayment", "PAYMENT_INVALID"),
        ("overspend-past-n", LENGTH, payment(base, LENGTH + 1, junk), 1, NOW,
         "InsufficientFunds", "INSUFFICIENT_FUNDS"),
        ("underpay", 3, payment(base, 4), 2, NOW, "InsufficientFunds", "AMOUNT_MISMATCH"),
        ("expired-commitment", 3, payment(base, 4), 1, base.expires_at,
         "PaymentExpired", "CARD_EXPIRED"),
        ("truncated", 3, good[:-1].hex(), 1, NOW, "MalformedMessage", "TRUNCATED"),
        ("trailing-byte", 3, (good + b"\x00").hex(), 1, NOW, "MalformedMessage", "OVERSIZED"),
        ("wrong-domain", 3, good.replace(b"payword", b"paywerd").hex(), 1, NOW,
         "MalformedMessage", "WRONG_DOMAIN"),
        ("short-value-field", 3, (good[:-34] + b"\x00\x1f" + good[-31:]).hex(), 1, NOW,
         "MalformedMessage", "BAD_FIELD"),
    ]  # fmt: skip
    return [
        _refused(
            {
                "name": name,
                "kind": "payment",
                "state_before": state(base, spent),
                "payment": data,
                "units": units,
                "now": now,
            },
            error,
            code,
        )
        for name, spent, data, units, now, error, code in cases
    ]


def _invalid_redemptions() -> list[Json]:
    base = commitment()
    junk = DeterministicRandom("farthing/vectors/payword/junk")(32)
    too_late = base.expires_at + 30 * DAY
    forged = signed(base, MALLORY_PRIVATE)
    cases: list[tuple[str, int | None, str, str, int, str, str]] = [
        ("wrong-vendor", None, redemption(base, 5), "other.example", NOW,
         "AccessDenied", "ACCESS_DENIED"),
        ("bogus-value", None, redemption(base, 5, junk), "news.example", NOW,
         "InvalidPayment", "DEPOSIT_INVALID"),
        ("index-past-length", None, redemption(base, LENGTH + 1, junk), "news.example", NOW,
         "InvalidPayment", "DEPOSIT_INVALID"),
        ("wrong-lower-value", 12, redemption(base, 7, w(8)), "news.example", NOW,
         "InvalidPayment", "DEPOSIT_INVALID"),
        ("too-late", None, redemption(base, 5), "news.example", too_late,
         "PaymentExpired", "CARD_EXPIRED"),
        ("forged-commitment", None, redemption(forged, 5), "news.example", NOW,
         "InvalidPayment", "SIGNATURE_INVALID"),
    ]  # fmt: skip
    return [
        _refused(
            {
                "name": name,
                "kind": "redemption",
                "broker_public": BROKER_PUBLIC.hex(),
                "vendor_id": vendor,
                "state_before": None if before is None else _redeemed(base, before),
                "redemption": data,
                "now": now,
            },
            error,
            code,
        )
        for name, before, data, vendor, now, error, code in cases
    ]


# --- files -------------------------------------------------------------------------------


def build() -> dict[str, dict[str, object]]:
    return {
        "generate": {
            "description": "PayWord: inputs and the exact certificates, commitments, chain "
            "values and encodings they produce (Ed25519 keys from DeterministicRandom).",
            "vectors": generate_vectors(),
        },
        "verify": {
            "description": "PayWord: commitments the vendor accepts, payments it accepts "
            "(state before and after) and redemptions the broker credits.",
            "vectors": verify_vectors(),
        },
        "invalid": {
            "description": "PayWord: certificates, commitments, payments and redemptions "
            "that must be refused, with the error class and ErrorCode name.",
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
