"""PayWord's parties in memory: the user (:class:`PaywordWallet`, one
:class:`PaywordSpender` per vendor), a vendor and the broker, each driven by the core's
pure rules (:mod:`farthing.core.schemes.payword`). They are the reference the wallet, the
paywall's books and the issuer's PayWord service follow, and the differential test runs
the same claims through both."""

from __future__ import annotations

from dataclasses import dataclass, replace

from farthing.core.clock import RandomSource
from farthing.core.errors import (
    AccessDenied,
    CardExhausted,
    ErrorCode,
    InvalidPayment,
    LocalProtocolError,
)
from farthing.core.hashchain import ChainWalker
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq, ed25519_public_key, sha256
from farthing.core.schemes.payword import (
    CHAIN_TAG,
    DEFAULT_MAX_UNITS,
    DEFAULT_REDEEM_WINDOW,
    VALUE_LEN,
    BrokerCredit,
    Certificate,
    Commitment,
    CommitmentState,
    OpenCommitment,
    Payment,
    PaywordAccepted,
    Redemption,
    RedemptionState,
    accept_commitment,
    admit_commitment,
    broker_redeem,
    commit,
    commitment_id,
    decode_commitment,
    decode_redemption,
    encode_certificate,
    issue_certificate,
    judge_claim,
    verify_payment_bytes,
)

__all__ = [
    "PaywordBroker",
    "PaywordSpender",
    "PaywordVendor",
    "PaywordWallet",
    "Reservation",
    "SpenderState",
]

# --- the user's side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpenderState:
    """What the wallet persists (write-ahead) per commitment besides the seed: ``spent``."""

    commitment_id: bytes
    spent: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A payment and the wallet state to persist *before* the payment is sent."""

    payment: Payment
    state: SpenderState


class PaywordSpender:
    """Produces the paywords of one commitment in order (w_1, w_2, ... from the seed w_N).

    Persist ``seed`` and the commitment once, then each reservation's ``state`` before
    sending its payment; rebuild with ``spent`` after a restart. Not thread-safe.
    """

    __slots__ = ("_commitment", "_commitment_id", "_seed", "_spent", "_walker")

    def __init__(self, commitment: Commitment, seed: bytes, *, spent: int = 0) -> None:
        if not 0 <= spent <= commitment.length:
            raise ValueError("spent out of range")
        self._walker = ChainWalker(CHAIN_TAG, seed, commitment.length)
        if not constant_time_eq(self._walker.value(0), commitment.anchor):
            raise ValueError("seed does not match the commitment")
        self._commitment = commitment
        self._commitment_id = commitment_id(commitment)
        self._seed = seed
        self._spent = spent

    @property
    def commitment(self) -> Commitment:
        return self._commitment

    @property
    def commitment_id(self) -> bytes:
        return self._commitment_id

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def spent(self) -> int:
        return self._spent

    @property
    def remaining(self) -> int:
        return self._commitment.length - self._spent

    def reserve(self, units: int, *, now: int) -> Reservation:
        """The next payment of ``units`` units; the index advances at once, never reused."""
        if units < 1:
            raise ValueError("units must be positive")
        if now >= self._commitment.expires_at:
            raise CardExhausted("commitment expired", code=ErrorCode.CARD_EXPIRED)
        if units > self.remaining:
            raise CardExhausted("commitment has too few units left")
        index = self._spent + units
        payment = Payment(
            commitment_id=self._commitment_id, index=index, value=self._walker.value(index)
        )
        self._spent = index
        return Reservation(
            payment=payment, state=SpenderState(commitment_id=self._commitment_id, spent=index)
        )


class PaywordWallet:
    """The user: one certificate, one commitment (spender) per vendor."""

    __slots__ = ("_certificate", "_private_key", "_spenders")

    def __init__(self, *, private_key: bytes, certificate: Certificate) -> None:
        self._private_key = private_key
        self._certificate = certificate
        self._spenders: dict[str, PaywordSpender] = {}

    @property
    def certificate(self) -> Certificate:
        return self._certificate

    def open(
        self,
        vendor_id: str,
        *,
        length: int,
        now: int,
        ttl: int,
        rng: RandomSource,
        denomination: Denomination | None = None,
    ) -> PaywordSpender:
        """Make a fresh chain and commitment for ``vendor_id`` (replacing any earlier one)."""
        seed = rng(VALUE_LEN)
        commitment = commit(
            self._private_key,
            self._certificate,
            vendor_id=vendor_id,
            seed=seed,
            length=length,
            now=now,
            ttl=ttl,
            rng=rng,
            denomination=denomination,
        )
        spender = PaywordSpender(commitment, seed)
        self._spenders[vendor_id] = spender
        return spender

    def spender(self, vendor_id: str) -> PaywordSpender | None:
        return self._spenders.get(vendor_id)

    def reserve(self, vendor_id: str, units: int, *, now: int) -> Reservation:
        spender = self._spenders.get(vendor_id)
        if spender is None:
            raise CardExhausted("no commitment for this vendor")
        return spender.reserve(units, now=now)


# --- in-memory reference parties ---------------------------------------------------------


class PaywordVendor:
    """Reference vendor: verifies commitments once and paywords per request, in memory."""

    __slots__ = ("_broker_public", "_commitments", "_max_units", "_states", "_vendor_id")

    def __init__(
        self, *, vendor_id: str, broker_public: bytes, max_units: int = DEFAULT_MAX_UNITS
    ) -> None:
        self._vendor_id = vendor_id
        self._broker_public = broker_public
        self._max_units = max_units
        self._states: dict[bytes, CommitmentState] = {}
        self._commitments: dict[bytes, Commitment] = {}

    @property
    def vendor_id(self) -> str:
        return self._vendor_id

    def accept_commitment(self, data: bytes, *, now: int) -> CommitmentState:
        """Verify and store a new commitment; a known one keeps its state (no reset)."""
        commitment = decode_commitment(data)
        cid = commitment_id(commitment)
        known = self._states.get(cid)
        if known is not None:
            return known
        state = accept_commitment(
            self._broker_public, commitment, vendor_id=self._vendor_id, now=now
        )
        self._states[cid] = state
        self._commitments[cid] = commitment
        return state

    def receive(self, data: bytes, *, units: int, now: int) -> PaywordAccepted:
        state, receipt = verify_payment_bytes(
            self._states.get, data, units=units, now=now, max_units=self._max_units
        )
        self._states[state.commitment_id] = state
        return receipt

    def state(self, cid: bytes) -> CommitmentState | None:
        return self._states.get(cid)

    def redemption(self, cid: bytes) -> Redemption:
        state = self._states.get(cid)
        if state is None:
            raise LocalProtocolError("unknown commitment")
        return Redemption(
            commitment=self._commitments[cid], index=state.spent, value=state.last_value
        )

    def redemptions(self) -> list[Redemption]:
        """One claim per commitment that has taken any payment."""
        return [self.redemption(cid) for cid, state in self._states.items() if state.spent]


class PaywordBroker:
    """Reference broker: issues certificates, admits commitments within the user's credit,
    redeems claims, keeps accounts in micros; by the core's rules
    (:func:`~farthing.core.schemes.payword.admit_commitment`,
    :func:`~farthing.core.schemes.payword.broker_redeem`,
    :func:`~farthing.core.schemes.payword.judge_claim`), as the issuer's PayWord service.

    Each vendor is paid in one currency (:meth:`register_vendor`); a user's currency is
    that of the certificate issued to it.
    """

    __slots__ = (
        "_accounts",
        "_admitted",
        "_broker_id",
        "_issued",
        "_private_key",
        "_public_key",
        "_redeem_window",
        "_redeemed",
        "_vendors",
    )

    def __init__(
        self,
        *,
        broker_id: str,
        private_key: bytes,
        redeem_window: int = DEFAULT_REDEEM_WINDOW,
    ) -> None:
        self._broker_id = broker_id
        self._private_key = private_key
        self._public_key = ed25519_public_key(private_key)
        self._redeem_window = redeem_window
        self._redeemed: dict[bytes, RedemptionState] = {}
        self._admitted: dict[bytes, OpenCommitment] = {}
        self._issued: dict[bytes, str] = {}  # certificate digest -> the user's currency
        self._vendors: dict[str, str] = {}  # vendor id -> currency
        # (role, party id, currency) -> micros credited to a vendor / billed to a user
        self._accounts: dict[tuple[str, str, str], int] = {}

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def register_vendor(self, vendor_id: str, currency: str) -> None:
        self._vendors[vendor_id] = currency

    def issue(
        self,
        *,
        user_id: str,
        user_public_key: bytes,
        credit_limit: int,
        denomination: Denomination,
        now: int,
        ttl: int,
    ) -> Certificate:
        cert = issue_certificate(
            self._private_key,
            broker_id=self._broker_id,
            user_id=user_id,
            user_public_key=user_public_key,
            credit_limit=credit_limit,
            denomination=denomination,
            expires_at=now + ttl,
        )
        self._issued[_digest(cert)] = denomination.currency
        return cert

    def admit(self, data: bytes, *, vendor_id: str, now: int) -> OpenCommitment:
        """Admit a commitment the authenticated ``vendor_id`` presents, within the user's
        credit limit over all its admitted commitments; the same one again is unchanged."""
        self._vendor_currency(vendor_id)
        commitment = decode_commitment(data)
        self._user_currency(commitment.certificate)
        cid = commitment_id(commitment)
        user_id = commitment.certificate.user_id
        mine = [c for c in self._admitted.values() if c.user_id == user_id]
        admitted = admit_commitment(
            self.public_key,
            commitment,
            vendor_id=vendor_id,
            open_commitments=mine,
            now=now,
            redeem_window=self._redeem_window,
        )
        return self._admitted.setdefault(cid, admitted)

    def redeem(self, data: bytes, *, vendor_id: str, now: int) -> BrokerCredit:
        """Redeem encoded claim bytes for the authenticated ``vendor_id``."""
        vendor_currency = self._vendor_currency(vendor_id)
        redemption = decode_redemption(data)
        verified = broker_redeem(
            self.public_key,
            None,
            redemption,
            vendor_id=vendor_id,
            now=now,
            redeem_window=self._redeem_window,
        )
        cid = verified.state.commitment_id
        credit = judge_claim(
            verified,
            admitted=self._admitted.get(cid),
            vendor_currency=vendor_currency,
            user_currency=self._user_currency(redemption.commitment.certificate),
        )
        if credit.credited_units:
            self._redeemed[cid] = credit.state
            admitted = self._admitted[cid]
            self._admitted[cid] = replace(admitted, redeemed=credit.state.redeemed_index)
        currency = credit.denomination.currency
        self._add(("vendor", credit.vendor_id, currency), credit.credited_micros)
        self._add(("user", credit.user_id, currency), credit.credited_micros)
        return credit

    def redeemed(self, cid: bytes) -> RedemptionState | None:
        return self._redeemed.get(cid)

    def vendor_credit(self, vendor_id: str, currency: str) -> int:
        """Micros of ``currency`` owed to the vendor."""
        return self._accounts.get(("vendor", vendor_id, currency), 0)

    def user_debit(self, user_id: str, currency: str) -> int:
        """Micros of ``currency`` to bill the user."""
        return self._accounts.get(("user", user_id, currency), 0)

    def _vendor_currency(self, vendor_id: str) -> str:
        currency = self._vendors.get(vendor_id)
        if currency is None:  # the issuer cannot authenticate a vendor it does not know
            raise AccessDenied("unknown vendor")
        return currency

    def _user_currency(self, cert: Certificate) -> str:
        """The currency of a user this broker certified; InvalidPayment for a certificate it
        never issued (as the issuer answers)."""
        currency = self._issued.get(_digest(cert))
        if currency is None:
            raise InvalidPayment("redemption did not verify", code=ErrorCode.DEPOSIT_INVALID)
        return currency

    def _add(self, key: tuple[str, str, str], micros: int) -> None:
        self._accounts[key] = self._accounts.get(key, 0) + micros


def _digest(cert: Certificate) -> bytes:
    return sha256(encode_certificate(cert))
