"""PayWord: a broker-certified user pays vendors by revealing hash-chain values.

Theory of operation
===================

PayWord is the credit-based, multi-vendor micropayment scheme of R. L. Rivest and
A. Shamir, "PayWord and MicroMint: two simple micropayment schemes", Security Protocols
1996, LNCS 1189 (1997) 69-87. Its aim is to replace public-key operations by hashing
wherever possible; their 1996 workstation figures were 2 RSA signatures/s, 200 RSA
verifications/s and 20,000 hashes/s. Three parties take part:

1. The broker B gives the user U a signed certificate C_U (B, U, U's public key, a
   credit limit, an expiry). B extends *credit*: it bills U later for what vendors redeem.
2. For each vendor V, U picks a secret seed w_N, computes the chain
   w_i = h(w_{i+1}) down to w_0 and signs a commitment M = Sig_U(V, C_U, w_0, N, ...).
   V checks both signatures once (two verifications per commitment, never per payment).
3. Payment i is (i, w_i). V keeps the last value it saw, w_s, and accepts w_i for i > s
   iff h^(i-s)(w_i) = w_s: one hash per unit, no signature. Paying k units at once is a
   skip ahead by k positions.
4. Later V sends M and its last payment (l, w_l) to B, which checks C_U, M and
   h^l(w_l) = w_0, pays V for l units and bills U.

What is the paper's and what is ours. The project does not hold the paper's full text;
the roles, the chain, the commitment to w_0 per vendor, payments (w_i, i), the
redemption of the last payword and the figures above are the published scheme as the
paper's introduction and the authors' slides describe it. The rest is our reconstruction
and our choices: Ed25519 instead of RSA; every signed or sent message is a canonical,
domain-separated encoding (:mod:`farthing.core.encoding`); certificates and commitments
carry an absolute ``expires_at`` (the paper: certificates for a month, commitments per
vendor per day); a commitment names its denomination and a random nonce; the hash chain
uses SHA-256 with the tag ``farthing/payword\\x00`` (:mod:`farthing.core.hashchain`); the
commitment id is SHA-256 of the *signed body* (so it cannot change with the signature
bytes); the broker checks a redemption from the last value it already redeemed (not from
w_0) and credits only the units above it, so redemption is incremental and idempotent.

States. At the vendor a commitment is COMMITTED (spent = 0), then SPENDING, then
EXHAUSTED (spent = N) or EXPIRED; at the broker it is UNREDEEMED, then REDEEMED up to some
index that only grows. Every verifier is a pure function: state value in, new state value
and a receipt out; adapters persist with a conditional update on the old ``spent``.

Credit across vendors (ours): the paper's limit bounds each commitment; the broker here
also admits each commitment before a vendor accepts paywords under it
(:func:`admit_commitment`) only while the user's open commitments stay within the limit,
and pays only admitted ones (:func:`require_admitted`). Known weaknesses (inherent to
PayWord, kept on purpose as the baseline): the vendor learns the user's identity
from C_U and the broker learns who bought how much from whom: there is no privacy. There
is no revocation before the certificate expires. A vendor that loses its last payword
loses that money. A user whose wallet state rolls back (a restored backup) pays a payword
the vendor passed already: the vendor tells such a stale payword from a forged one
(:func:`stale_position`, ours) and the wallet moves on to where the vendor is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple, final

from farthing.core.clock import RandomSource
from farthing.core.encoding import Reader, Writer
from farthing.core.errors import (
    AccessDenied,
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    PaymentExpired,
    UnsupportedMethod,
)
from farthing.core.hashchain import chain_anchor, chain_walk
from farthing.core.money import Denomination, decoded_denomination
from farthing.core.primitives import (
    constant_time_eq,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    sha256,
)
from farthing.core.schemes._advance import (
    Acceptance,
    IndexPaymentCodec,
    Parsed,
    accept,
    chain_advance,
    chain_stale,
    retried_units,
)

__all__ = [
    "CERTIFICATE_BODY_DOMAIN",
    "CERTIFICATE_DOMAIN",
    "CHAIN_TAG",
    "COMMITMENT_BODY_DOMAIN",
    "COMMITMENT_DOMAIN",
    "DEFAULT_MAX_UNITS",
    "DEFAULT_REDEEM_WINDOW",
    "MAX_LENGTH",
    "PAYMENT_DOMAIN",
    "REDEMPTION_DOMAIN",
    "VALUE_LEN",
    "BrokerCredit",
    "Certificate",
    "Commitment",
    "CommitmentState",
    "OpenCommitment",
    "Parsed",
    "Payment",
    "PaywordAccepted",
    "Redemption",
    "RedemptionState",
    "accept_commitment",
    "admit_commitment",
    "advance",
    "broker_redeem",
    "certificate_body",
    "commit",
    "commitment_body",
    "commitment_id",
    "decode_certificate",
    "decode_commitment",
    "decode_payment",
    "decode_redemption",
    "encode_certificate",
    "encode_commitment",
    "encode_payment",
    "encode_redemption",
    "issue_certificate",
    "judge_claim",
    "parse_payment",
    "require_admitted",
    "stale_position",
    "verify_certificate",
    "verify_payment",
    "verify_payment_bytes",
    "verify_retry",
]

CHAIN_TAG: Final = b"farthing/payword\x00"
CERTIFICATE_DOMAIN: Final = "farthing/payword/certificate"
CERTIFICATE_BODY_DOMAIN: Final = "farthing/payword/certificate-body"
COMMITMENT_DOMAIN: Final = "farthing/payword/commitment"
COMMITMENT_BODY_DOMAIN: Final = "farthing/payword/commitment-body"
PAYMENT_DOMAIN: Final = "farthing/payword/payment"
REDEMPTION_DOMAIN: Final = "farthing/payword/redemption"

MAX_LENGTH: Final = 1 << 20  # bounds the broker's and the wallet's hashing per commitment
DEFAULT_MAX_UNITS: Final = 10_000
DEFAULT_REDEEM_WINDOW: Final = 30 * 86_400  # vendors redeem after a commitment expires

_KEY_LEN: Final = 32
_SIG_LEN: Final = 64
VALUE_LEN: Final = 32
_ID_LEN: Final = 32
_NONCE_LEN: Final = 16
_MAX_NAME: Final = 255
_MAX_CERTIFICATE: Final = 1024
_MAX_COMMITMENT: Final = 2048

# Fast path for the vendor's hot path: a payment has one fixed layout, unpacked in one call.
_CODEC: Final = IndexPaymentCodec(PAYMENT_DOMAIN, key_len=_ID_LEN)

_RECEIPT: Final = object()  # only this module's verifiers hold it


# --- certificates ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """C_U: the broker vouches for the user's key up to ``credit_limit`` units."""

    broker_id: str
    user_id: str
    user_public_key: bytes
    credit_limit: int
    denomination: Denomination
    expires_at: int
    signature: bytes


def certificate_body(cert: Certificate) -> bytes:
    """The bytes the broker signs: every field but the signature."""
    return _certificate_fields(Writer(CERTIFICATE_BODY_DOMAIN), cert).finish()


def encode_certificate(cert: Certificate) -> bytes:
    return _certificate_fields(Writer(CERTIFICATE_DOMAIN), cert).bytes(cert.signature).finish()


def _certificate_fields(writer: Writer, cert: Certificate) -> Writer:
    return (
        writer.text(cert.broker_id)
        .text(cert.user_id)
        .bytes(cert.user_public_key)
        .u64(cert.credit_limit)
        .text(cert.denomination.currency)
        .u64(cert.denomination.unit_micros)
        .u64(cert.expires_at)
    )


def decode_certificate(data: bytes) -> Certificate:
    reader = Reader(data, CERTIFICATE_DOMAIN, max_size=_MAX_CERTIFICATE)
    cert = Certificate(
        broker_id=_read_name(reader),
        user_id=_read_name(reader),
        user_public_key=reader.bytes(exact=_KEY_LEN),
        credit_limit=reader.u64(),
        denomination=_read_denomination(reader),
        expires_at=reader.u64(),
        signature=reader.bytes(exact=_SIG_LEN),
    )
    reader.finish()
    return cert


def issue_certificate(
    broker_private: bytes,
    *,
    broker_id: str,
    user_id: str,
    user_public_key: bytes,
    credit_limit: int,
    denomination: Denomination,
    expires_at: int,
) -> Certificate:
    """The broker's signature on the user's key and credit limit (in ``denomination`` units)."""
    _check_name(broker_id)
    _check_name(user_id)
    if len(user_public_key) != _KEY_LEN or credit_limit < 1:
        raise ValueError("a certificate needs a 32-byte key and a positive credit limit")
    unsigned = Certificate(
        broker_id=broker_id,
        user_id=user_id,
        user_public_key=user_public_key,
        credit_limit=credit_limit,
        denomination=denomination,
        expires_at=expires_at,
        signature=b"",
    )
    signature = ed25519_sign(broker_private, certificate_body(unsigned))
    return replace(unsigned, signature=signature)


def verify_certificate(broker_public: bytes, cert: Certificate, now: int) -> None:
    """None, or InvalidPayment(SIGNATURE_INVALID) / PaymentExpired(CERTIFICATE_EXPIRED)."""
    ed25519_verify(broker_public, cert.signature, certificate_body(cert))
    if now >= cert.expires_at:
        raise PaymentExpired("certificate expired", code=ErrorCode.CERTIFICATE_EXPIRED)


# --- commitments -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Commitment:
    """M: the user's signature on the chain anchor w_0 for one vendor."""

    vendor_id: str
    certificate: Certificate
    anchor: bytes
    length: int
    denomination: Denomination
    expires_at: int
    nonce: bytes
    signature: bytes


def commitment_body(commitment: Commitment) -> bytes:
    """The bytes the user signs; the commitment id is their SHA-256."""
    return _commitment_fields(Writer(COMMITMENT_BODY_DOMAIN), commitment).finish()


def commitment_id(commitment: Commitment) -> bytes:
    return sha256(commitment_body(commitment))


def encode_commitment(commitment: Commitment) -> bytes:
    writer = _commitment_fields(Writer(COMMITMENT_DOMAIN), commitment)
    return writer.bytes(commitment.signature).finish()


def _commitment_fields(writer: Writer, commitment: Commitment) -> Writer:
    return (
        writer.text(commitment.vendor_id)
        .bytes(encode_certificate(commitment.certificate))
        .bytes(commitment.anchor)
        .u64(commitment.length)
        .text(commitment.denomination.currency)
        .u64(commitment.denomination.unit_micros)
        .u64(commitment.expires_at)
        .bytes(commitment.nonce)
    )


def decode_commitment(data: bytes) -> Commitment:
    reader = Reader(data, COMMITMENT_DOMAIN, max_size=_MAX_COMMITMENT)
    commitment = Commitment(
        vendor_id=_read_name(reader),
        certificate=decode_certificate(reader.bytes(max_len=_MAX_CERTIFICATE)),
        anchor=reader.bytes(exact=VALUE_LEN),
        length=_read_length(reader),
        denomination=_read_denomination(reader),
        expires_at=reader.u64(),
        nonce=reader.bytes(exact=_NONCE_LEN),
        signature=reader.bytes(exact=_SIG_LEN),
    )
    reader.finish()
    return commitment


def commit(
    user_private: bytes,
    cert: Certificate,
    *,
    vendor_id: str,
    seed: bytes,
    length: int,
    now: int,
    ttl: int,
    rng: RandomSource,
    denomination: Denomination | None = None,
) -> Commitment:
    """Sign a commitment to the chain below ``seed`` (w_N) for ``vendor_id``.

    Costs ``length`` hashes and one signature. The commitment expires ``ttl`` seconds from
    ``now`` but never after the certificate; its units default to the certificate's.
    """
    _check_name(vendor_id)
    if len(seed) != VALUE_LEN or not 1 <= length <= MAX_LENGTH or ttl < 1:
        raise ValueError("a commitment needs a 32-byte seed, a valid length and a positive ttl")
    if not constant_time_eq(ed25519_public_key(user_private), cert.user_public_key):
        raise ValueError("the private key does not match the certificate")
    if now >= cert.expires_at:
        raise PaymentExpired("certificate expired", code=ErrorCode.CERTIFICATE_EXPIRED)
    unsigned = Commitment(
        vendor_id=vendor_id,
        certificate=cert,
        anchor=chain_anchor(CHAIN_TAG, seed, length),
        length=length,
        denomination=cert.denomination if denomination is None else denomination,
        expires_at=min(now + ttl, cert.expires_at),
        nonce=rng(_NONCE_LEN),
        signature=b"",
    )
    _check_terms(unsigned)
    return replace(unsigned, signature=ed25519_sign(user_private, commitment_body(unsigned)))


def _authenticate(broker_public: bytes, commitment: Commitment) -> None:
    """Both signatures (broker on C_U, user on M), then the terms C_U allows."""
    cert = commitment.certificate
    ed25519_verify(broker_public, cert.signature, certificate_body(cert))
    ed25519_verify(cert.user_public_key, commitment.signature, commitment_body(commitment))
    _check_terms(commitment)


def _check_terms(commitment: Commitment) -> None:
    """Same currency as the certificate, not outliving it, N units within the credit limit."""
    cert = commitment.certificate
    if commitment.denomination.currency != cert.denomination.currency:
        raise InvalidPayment()
    if commitment.expires_at > cert.expires_at:
        raise InvalidPayment()
    value = commitment.length * commitment.denomination.unit_micros
    if value > cert.credit_limit * cert.denomination.unit_micros:
        raise InsufficientFunds("commitment exceeds the credit limit")


# --- the vendor: accepting a commitment, then paywords -----------------------------------


class CommitmentState(NamedTuple):
    """What the vendor keeps per commitment; ``last_value`` is w_spent.

    ``last_request`` and ``last_units``: the tag of the request that carried the payment
    that moved ``spent`` last and the units it took (see :func:`verify_retry`).

    An immutable value, built once per verified payword: a NamedTuple, not a frozen
    dataclass, because the dataclass's constructor alone cost three times the payword's
    hash (bench/core.py). Build it with keywords; change it with ``_replace`` (it is not a
    dataclass, so ``dataclasses.replace`` does not apply).
    """

    commitment_id: bytes
    last_value: bytes
    spent: int
    length: int
    denomination: Denomination
    expires_at: int
    last_request: bytes | None = None
    last_units: int = 0


def accept_commitment(
    broker_public: bytes, commitment: Commitment, *, vendor_id: str, now: int
) -> CommitmentState:
    """Verify a commitment once, when first seen; returns the state with spent = 0.

    The caller must store it only if the id is new (insert-if-absent): re-accepting a known
    commitment must never reset its ``spent``.
    """
    _authenticate(broker_public, commitment)
    if now >= commitment.certificate.expires_at:
        raise PaymentExpired("certificate expired", code=ErrorCode.CERTIFICATE_EXPIRED)
    if commitment.vendor_id != vendor_id:
        raise InvalidPayment()
    if now >= commitment.expires_at:
        raise PaymentExpired("commitment expired")
    return CommitmentState(
        commitment_id=commitment_id(commitment),
        last_value=commitment.anchor,
        spent=0,
        length=commitment.length,
        denomination=commitment.denomination,
        expires_at=commitment.expires_at,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """P = (commitment id, i, w_i): pays i - spent units."""

    commitment_id: bytes
    index: int
    value: bytes


def encode_payment(payment: Payment) -> bytes:
    return _CODEC.encode(payment.commitment_id, payment.index, payment.value)


def decode_payment(data: bytes) -> Payment:
    cid, index, value = parse_payment(data)
    return Payment(commitment_id=cid, index=index, value=value)


parse_payment: Final = _CODEC.parse
"""``(commitment_id, index, value)`` of an encoded payment (MalformedMessage as
:func:`decode_payment`): what :func:`advance` takes, with no Payment built."""


@final
class PaywordAccepted(Acceptance):
    """Receipt for one accepted payment. Only this module's verifier can create it."""

    __slots__ = ()
    _TOKEN = _RECEIPT
    _SCHEME = "PayWord"
    _KEY_NAME = "commitment_id"

    def __init__(self, commitment_id: bytes, index: int, units: int, _token: object = None) -> None:
        super().__init__(commitment_id, index, units, _token)

    @property
    def commitment_id(self) -> bytes:
        return self._key


def verify_payment(
    state: CommitmentState,
    payment: Payment,
    *,
    units: int,
    now: int,
    max_units: int = DEFAULT_MAX_UNITS,
    request: bytes | None = None,
) -> tuple[CommitmentState, PaywordAccepted]:
    """Accept a payment of at least ``units`` units: h^(index-spent)(w_index) must equal
    w_spent. Hashes only. Paying more than the price is accepted and the receipt says how
    much was taken: the excess is units the wallet lost in flight (a crash after its
    write-ahead), which would otherwise leave a gap that no later payment could cross.
    ``request`` is the tag of the request carrying it (kept for :func:`verify_retry`)."""
    return _verify(
        state, payment.commitment_id, payment.index, payment.value, units, now, max_units,
        request,
    )  # fmt: skip


def verify_retry(
    state: CommitmentState, payment: Payment, *, request: bytes | None
) -> PaywordAccepted:
    """The commitment's last accepted payword, sent again by the same request (its answer
    was lost): the receipt it had, and no new state (nothing is taken). Else
    InvalidPayment. Its value must be w_spent, and the tag binds it to path and credential.
    """
    units = retried_units(
        same_key=constant_time_eq(payment.commitment_id, state.commitment_id),
        spent=state.spent, index=payment.index, last_request=state.last_request,
        last_units=state.last_units, request=request,
    )  # fmt: skip
    if not constant_time_eq(payment.value, state.last_value):
        raise InvalidPayment()
    return PaywordAccepted(payment.commitment_id, payment.index, units, _RECEIPT)


def verify_payment_bytes(
    lookup: Callable[[bytes], CommitmentState | None],
    data: bytes,
    *,
    units: int,
    now: int,
    max_units: int = DEFAULT_MAX_UNITS,
) -> tuple[CommitmentState, PaywordAccepted]:
    """Decode and verify in one step; ``lookup`` maps a commitment id to its state."""
    cid, index, value = parse_payment(data)
    state = lookup(cid)
    if state is None:
        raise InvalidPayment()
    return _verify(state, cid, index, value, units, now, max_units, None)


advance: Final = chain_advance(CHAIN_TAG, CommitmentState, "commitment", DEFAULT_MAX_UNITS)
"""``advance(state, payment, units, now, request, max_units=DEFAULT_MAX_UNITS, /)``:
:func:`verify_payment` for the vendor's paid path, with the payment as
:func:`parse_payment` returns it and no receipt: the new state only (the payword paid
``new.spent - state.spent`` units, up to ``new.spent``). Same decisions, same errors."""


def stale_position(
    state: CommitmentState, payment: Parsed, *, max_back: int = DEFAULT_MAX_UNITS
) -> int:
    """The commitment's position (``spent``) if ``payment`` (as :func:`parse_payment`
    returns it) is a payword of this commitment that it reached already, at most
    ``max_back`` behind: the user's wallet rolled back (a restored backup) and is behind.
    w_index must be h^(spent-index)(w_spent). Else InvalidPayment."""
    return chain_stale(CHAIN_TAG, state, payment, max_back)


def _verify(
    state: CommitmentState,
    cid: bytes,
    index: int,
    value: bytes,
    units: int,
    now: int,
    max_units: int,
    request: bytes | None,
) -> tuple[CommitmentState, PaywordAccepted]:
    new_state = advance(state, (cid, index, value), units, now, request, max_units)
    return new_state, accept(PaywordAccepted, _RECEIPT, cid, index, index - state.spent)


# --- redemption with the broker ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Redemption:
    """The vendor's claim: the commitment and its last payword (index, w_index)."""

    commitment: Commitment
    index: int
    value: bytes


def encode_redemption(redemption: Redemption) -> bytes:
    writer = Writer(REDEMPTION_DOMAIN).bytes(encode_commitment(redemption.commitment))
    return writer.u64(redemption.index).bytes(redemption.value).finish()


def decode_redemption(data: bytes) -> Redemption:
    reader = Reader(data, REDEMPTION_DOMAIN, max_size=_MAX_COMMITMENT + 128)
    redemption = Redemption(
        commitment=decode_commitment(reader.bytes(max_len=_MAX_COMMITMENT)),
        index=reader.u64(),
        value=reader.bytes(exact=VALUE_LEN),
    )
    reader.finish()
    return redemption


@dataclass(frozen=True, slots=True, kw_only=True)
class RedemptionState:
    """What the broker keeps per commitment: the highest index paid out and its w."""

    commitment_id: bytes
    redeemed_index: int
    redeemed_value: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerCredit:
    """Receipt for one redemption: credit ``vendor_id``, bill ``user_id``. Broker-made only."""

    state: RedemptionState
    credited_units: int
    vendor_id: str
    user_id: str
    denomination: Denomination
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _RECEIPT:
            raise LocalProtocolError("only the PayWord broker issues credits")

    @property
    def credited_micros(self) -> int:
        return self.denomination.micros(self.credited_units)


def broker_redeem(
    broker_public: bytes,
    state: RedemptionState | None,
    redemption: Redemption,
    *,
    vendor_id: str,
    now: int,
    redeem_window: int = DEFAULT_REDEEM_WINDOW,
) -> BrokerCredit:
    """Credit the units above what was already redeemed for this commitment.

    ``state`` is None for a commitment never redeemed (then the chain is checked from w_0).
    The check runs from the last redeemed value, so a repeated or lower index credits 0 and
    leaves the state as it was; ``vendor_id`` is the authenticated redeemer, who must be
    the commitment's vendor (AccessDenied otherwise). Redemptions are taken until
    ``redeem_window`` seconds after the commitment expires.
    """
    commitment = redemption.commitment
    _authenticate(broker_public, commitment)
    if commitment.vendor_id != vendor_id:
        raise AccessDenied("commitment was made to another vendor")
    if now >= commitment.expires_at + redeem_window:
        raise PaymentExpired("commitment expired")
    base = _redemption_base(state, commitment)
    if redemption.index > commitment.length or not _links(base, redemption):
        raise InvalidPayment("redemption did not verify", code=ErrorCode.DEPOSIT_INVALID)
    credited = max(0, redemption.index - base.redeemed_index)
    new_state = base
    if credited:
        new_state = RedemptionState(
            commitment_id=base.commitment_id,
            redeemed_index=redemption.index,
            redeemed_value=redemption.value,
        )
    return BrokerCredit(
        state=new_state,
        credited_units=credited,
        vendor_id=vendor_id,
        user_id=commitment.certificate.user_id,
        denomination=commitment.denomination,
        _token=_RECEIPT,
    )


def _redemption_base(state: RedemptionState | None, commitment: Commitment) -> RedemptionState:
    cid = commitment_id(commitment)
    if state is None:
        return RedemptionState(
            commitment_id=cid, redeemed_index=0, redeemed_value=commitment.anchor
        )
    if not constant_time_eq(state.commitment_id, cid):
        raise LocalProtocolError("redemption state belongs to another commitment")
    return state


def _links(base: RedemptionState, redemption: Redemption) -> bool:
    """Whether w_index and the redeemed value lie on one chain (either may be further on)."""
    steps = redemption.index - base.redeemed_index
    if steps >= 0:
        return constant_time_eq(chain_walk(CHAIN_TAG, redemption.value, steps), base.redeemed_value)
    return constant_time_eq(chain_walk(CHAIN_TAG, base.redeemed_value, -steps), redemption.value)


# --- the broker: admitting commitments within the user's credit ------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenCommitment:
    """What the broker keeps of a commitment it admitted: enough to bound what it may owe.

    ``redeemed`` is the index redeemed so far (0 if none)."""

    commitment_id: bytes
    user_id: str
    vendor_id: str
    length: int
    unit_micros: int
    expires_at: int
    redeemed: int = 0

    def outstanding_micros(self, *, now: int, redeem_window: int = DEFAULT_REDEEM_WINDOW) -> int:
        """What a vendor may still redeem under it: the units not yet redeemed, while
        redemptions are taken; nothing once the window has closed."""
        if now >= self.expires_at + redeem_window:
            return 0
        return max(0, self.length - self.redeemed) * self.unit_micros


def admit_commitment(
    broker_public: bytes,
    commitment: Commitment,
    *,
    vendor_id: str,
    open_commitments: Iterable[OpenCommitment],
    now: int,
    redeem_window: int = DEFAULT_REDEEM_WINDOW,
) -> OpenCommitment:
    """The broker's decision on a commitment a vendor presents before it accepts paywords.

    The commitment must verify as :func:`accept_commitment` checks it (both signatures,
    terms, vendor, not expired), and the user's outstanding commitments (``open_commitments``:
    the user's others, as the broker keeps them) plus this one must stay within the
    certificate's credit limit. So the broker never owes vendors more than the limit for
    one user, however many vendors the user commits to. InsufficientFunds(CREDIT_LIMIT)
    otherwise. Admitting a commitment already admitted returns it unchanged.
    """
    accept_commitment(broker_public, commitment, vendor_id=vendor_id, now=now)
    cid = commitment_id(commitment)
    others = [c for c in open_commitments if c.commitment_id != cid]
    admitted = OpenCommitment(
        commitment_id=cid,
        user_id=commitment.certificate.user_id,
        vendor_id=vendor_id,
        length=commitment.length,
        unit_micros=commitment.denomination.unit_micros,
        expires_at=commitment.expires_at,
    )
    cert = commitment.certificate
    limit = cert.credit_limit * cert.denomination.unit_micros
    outstanding = sum(c.outstanding_micros(now=now, redeem_window=redeem_window) for c in others)
    if outstanding + admitted.outstanding_micros(now=now, redeem_window=redeem_window) > limit:
        raise InsufficientFunds(
            "the user's open commitments would exceed its credit limit",
            code=ErrorCode.CREDIT_LIMIT,
        )
    return admitted


def require_admitted(admitted: OpenCommitment | None, redemption: Redemption) -> None:
    """The broker pays only for commitments it admitted (:func:`admit_commitment`), so the
    credit limit bounds what it owes: InvalidPayment(DEPOSIT_INVALID) otherwise."""
    _require_admitted(admitted, commitment_id(redemption.commitment))


def _require_admitted(admitted: OpenCommitment | None, cid: bytes) -> OpenCommitment:
    if admitted is None or not constant_time_eq(admitted.commitment_id, cid):
        raise InvalidPayment(
            "the broker never admitted this commitment", code=ErrorCode.DEPOSIT_INVALID
        )
    return admitted


def judge_claim(
    credit: BrokerCredit,
    *,
    admitted: OpenCommitment | None,
    vendor_currency: str,
    user_currency: str,
) -> BrokerCredit:
    """The broker's judgement of a redemption that verified (``credit``, from
    :func:`broker_redeem` checked from w_0): what it pays, given what the broker keeps.

    Only a commitment it admitted (``admitted``, with the index redeemed so far) is paid
    (:func:`require_admitted`); the vendor, the user and the commitment must share one
    currency (UnsupportedMethod); the credit is the units above the index redeemed so far
    (0 for a repeated or lower claim, or the anchor itself).
    """
    admitted = _require_admitted(admitted, credit.state.commitment_id)
    if not credit.denomination.currency == user_currency == vendor_currency:
        raise UnsupportedMethod("this vendor is paid in another currency")
    units = max(0, credit.state.redeemed_index - admitted.redeemed)
    return replace(credit, credited_units=units)


# --- field helpers -----------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not 0 < len(name.encode("utf-8")) <= _MAX_NAME:
        raise ValueError("identifiers are 1..255 bytes of UTF-8")


def _read_name(reader: Reader) -> str:
    name = reader.text(max_len=_MAX_NAME)
    if not name:
        raise MalformedMessage("empty identifier", code=ErrorCode.BAD_FIELD)
    return name


def _read_length(reader: Reader) -> int:
    length = reader.u64()
    if not 1 <= length <= MAX_LENGTH:
        raise MalformedMessage("chain length out of range", code=ErrorCode.BAD_FIELD)
    return length


def _read_denomination(reader: Reader) -> Denomination:
    currency = reader.text(max_len=3)
    return decoded_denomination(currency, reader.u64())
