"""Valid encodings of every message farthing decodes, and Hypothesis strategies that break them.

The fuzz tests start from these (so that mutations reach deep into each decoder, past the
domain header) as well as from random bytes and text. Everything is deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from farthing.core.cardcode import (
    CardCode,
    Generator,
    Protocol,
    decode_card,
    encode_card,
    to_compact,
    to_text,
)
from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import (
    ChallengeBinder,
    Credential,
    Receipt,
    encode_jcs_b64,
    format_challenge,
    format_credential,
)
from farthing.testing import DeterministicRandom

EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
_rng = DeterministicRandom("reliability samples")
BROKER_KEY = _rng(32)
USER_KEY = _rng(32)


def _offer(n: int) -> hll.Offer:
    return hll.Offer(
        merchant_id=f"shop-{n}",
        good=f"/articles/{n}",
        amount=2 + n,
        denomination=EUR,
        challenge=_rng(40),
        expires_at=NOW + 300,
    )


def _purchase(n: int) -> hll.Purchase:
    return hll.Purchase(card_id=_rng(16), counter=n + 1, sigma=_rng(32))


def _certificate() -> payword.Certificate:
    return payword.issue_certificate(
        BROKER_KEY,
        broker_id="broker",
        user_id="alice",
        user_public_key=ed25519_public_key(USER_KEY),
        credit_limit=1000,
        denomination=EUR,
        expires_at=NOW + 86_400,
    )


def _commitment() -> payword.Commitment:
    return payword.commit(
        USER_KEY,
        _certificate(),
        vendor_id="shop",
        seed=_rng(32),
        length=20,
        now=NOW,
        ttl=3600,
        rng=_rng,
    )


def _card(protocol: Protocol, generator: Generator, modulus: bytes = b"") -> CardCode:
    return CardCode(
        protocol=protocol,
        card_id=_rng(16),
        secret=_rng(32),
        units=100,
        currency="EUR",
        unit_micros=1000,
        expires_at=NOW + 86_400,
        generator=generator,
        realm="news.example",
        modulus=modulus,
    )


COMMITMENT = _commitment()
CARDS = [
    _card(Protocol.CHAIN, Generator.SHA256_CHAIN),
    _card(Protocol.PRBG, Generator.HMAC_CTR),
    _card(Protocol.PRBG, Generator.BBS, b"\xc5" + _rng(255)),
]
BATCH = hll.DepositBatch(
    batch_id=_rng(16),
    merchant_id="shop-0",
    items=tuple(hll.DepositItem(offer=_offer(0), purchase=_purchase(n)) for n in range(3)),
)
REPORT = hll.DepositReport(
    batch_id=_rng(16),
    accepted=((_rng(16), 1, 2), (_rng(16), 2, 3)),
    duplicates=((_rng(16), 3),),
    invalid=((_rng(16), 4),),
    credited=5,
)


@dataclass(frozen=True)
class Codec:
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    samples: tuple[bytes, ...]


def _pair(decode: Callable[[bytes], Any], encode: Callable[[Any], bytes], *values: Any) -> Codec:
    return Codec(decode, encode, tuple(encode(value) for value in values))


CODECS: dict[str, Codec] = {
    "hll.offer": _pair(hll.decode_offer, hll.encode_offer, _offer(1), _offer(2)),
    "hll.payment": _pair(hll.decode_payment, hll.encode_payment, _purchase(1)),
    "hll.batch": _pair(hll.decode_batch, hll.encode_batch, BATCH),
    "hll.report": _pair(hll.decode_report, hll.encode_report, REPORT),
    "payword.certificate": _pair(
        payword.decode_certificate, payword.encode_certificate, _certificate()
    ),
    "payword.commitment": _pair(payword.decode_commitment, payword.encode_commitment, COMMITMENT),
    "payword.payment": _pair(
        payword.decode_payment,
        payword.encode_payment,
        payword.Payment(commitment_id=_rng(32), index=3, value=_rng(32)),
    ),
    "payword.redemption": _pair(
        payword.decode_redemption,
        payword.encode_redemption,
        payword.Redemption(commitment=COMMITMENT, index=4, value=_rng(32)),
    ),
    "szm_chain.payment": _pair(
        szm_chain.decode_payment,
        szm_chain.encode_payment,
        szm_chain.Payment(card_id=_rng(16), index=2, value=_rng(32)),
    ),
    "szm_prbg.payment": _pair(
        szm_prbg.decode_payment,
        szm_prbg.encode_payment,
        szm_prbg.Payment(card_id=_rng(16), index=2, token=_rng(32)),
    ),
    "cardcode.card": _pair(decode_card, encode_card, *CARDS),
}


CARD_TEXTS = tuple(to_text(card) for card in CARDS)
CARD_COMPACTS = tuple(to_compact(card) for card in CARDS)

SIGNER = ChallengeBinder(b"s" * 32)
REQUEST = SzmRequest(amount=2000, currency="EUR", resource="/articles/*").to_json()
REQUEST_B64 = encode_jcs_b64(REQUEST)
CHALLENGE = SIGNER.issue(
    realm="news", method="szmchain", request=REQUEST, request_b64=REQUEST_B64,
    expires=NOW + 300, nonce=b"n" * 16,
)  # fmt: skip
CHALLENGE_ID = CHALLENGE.id
CHALLENGE_HEADERS = (
    format_challenge(dataclasses.replace(CHALLENGE, description='a "quoted" \\ description')),
    'Basic realm="x", Payment id="abc", realm="r", method="payword", intent="charge", '
    'request="e30", expires="2027-01-15T08:00:00Z"',
)
CREDENTIALS = (
    format_credential(
        Credential.answering(
            CHALLENGE,
            {"payment": b64url_encode(CODECS["szm_chain.payment"].samples[0])},
        )
    ),
    format_credential(Credential.answering(CHALLENGE, {}, source="did:x")),
)
RECEIPTS = (
    Receipt(
        method="szmchain",
        timestamp=NOW,
        reference="card:2",
        extra={"units": 2, "card": "AAAA", "index": 2},
    ).to_header(),
)


# --- strategies ---------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, samples: tuple[bytes, ...]) -> bytes:
    """A valid sample with one to three random edits (bit flips, cuts, insertions, splices);
    never the sample itself."""
    original = draw(st.sampled_from(samples))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "append", "splice"]))
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=40))
        else:
            other = draw(st.sampled_from(samples))
            data[position:] = other[draw(st.integers(0, len(other))) :]
    if data == original:  # some edits change nothing (a cut at the end): make one that does
        data = bytearray(original[1:])
    return bytes(data)


NASTY_CHARS = st.sampled_from(
    ["=", " ", ",", '"', "\\", "\x00", "\t", "\n", "é", "\u202e", "\ufeff", "\U0001f4b6", "\ud800"]
)


@st.composite
def mutated_text(draw: st.DrawFn, samples: tuple[str, ...], *, header: bool = False) -> str:
    """A valid header or code with one to three textual edits; never the sample itself,
    nor, for a ``header``, a spelling the server rightly reads as it (RFC 9110: the
    scheme name is case-insensitive, whitespace around and after it optional)."""
    original = draw(st.sampled_from(samples))
    text = original
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["cut", "insert", "delete", "case", "repeat", "nasty"]))
        if kind == "cut":
            text = text[:position]
        elif kind == "insert":
            text = text[:position] + draw(st.text(min_size=1, max_size=4)) + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 6)) :]
        elif kind == "case":
            text = text[:position] + text[position:].swapcase()
        elif kind == "repeat":
            text = text[:position] + text[max(0, position - 30) :]
        else:
            text = text[:position] + draw(NASTY_CHARS) + text[position:]
    same = _spelling(text) == _spelling(original) if header else text == original
    return original[1:] if same else text


def _spelling(text: str) -> tuple[str, str]:
    scheme, _, rest = text.strip(" \t").partition(" ")
    return scheme.lower(), rest.lstrip(" ")


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)

RAW_JSON = st.sampled_from(
    [
        '{"id": "x", "id": "y", "payload": {}}',  # a duplicate member
        '{"id": "x", "payload": {"payment": 1e400}}',  # not finite
        '{"id": "x", "payload": {"n": -1e999}}',
        '{"id": "x", "payload": {"n": NaN}}',
        '{"id": "x", "payload": {"n": Infinity}}',
        '{"id": "\\ud800", "payload": {}}',  # a lone surrogate, escaped
        '{"id": "x", "payload": {"n": ' + "9" * 5000 + "}}",  # past int digit limits
        "[" * 5000 + "]" * 5000,  # deep nesting
        '{"id": "x", "payload": ' + '{"a":' * 3000 + "1" + "}" * 3001,
        '"just a string"',
        "[]",
        "",
        "\ufeff{}",
    ]
)
