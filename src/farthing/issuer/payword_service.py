"""The PayWord broker: registering users (with a certificate) and redeeming vendors' claims.

A user is a customer account plus an Ed25519 public key and a credit limit; the broker
signs a certificate (:func:`farthing.core.schemes.payword.issue_certificate`) and keeps it.

A redemption carries the vendor's signed commitment and its last payword. The pure core
(:func:`~farthing.core.schemes.payword.broker_redeem`) checks both signatures, that the
commitment was made to the authenticated vendor, the window, and that the payword lies on
the committed chain. The store keeps per commitment only the highest redeemed index (not
its chain value), so the core checks the payword from w_0 (``state=None``, at most
``MAX_LENGTH`` hashes), and the store's compare-and-set ``payword_redeem`` decides how many
units are new: it only ever raises the index, so a repeated or lower claim credits 0. In
the same transaction the ledger debits the user's account (PayWord is credit: the user
owes the broker) and credits the vendor.

Credit across vendors. The certificate's credit limit binds *all* of a user's commitments
together, not only each one: before a vendor accepts paywords under a new commitment, it
has the broker admit it (:meth:`PaywordService.admit`), and the pure core
(:func:`~farthing.core.schemes.payword.admit_commitment`) admits it only while the units
vendors may still claim under the user's admitted commitments, plus this one's, stay
within the limit. A redemption is paid only for an admitted commitment
(:func:`~farthing.core.schemes.payword.require_admitted`), so at no time can vendors claim
more than the limit from one user; redeemed units become the user's debt in the ledger
and stop counting. Admissions of one user take that user's lock in the store, so two
vendors admitting at once cannot both squeeze under the limit. A batch of admissions
(:meth:`PaywordService.admit_batch`) is one transaction: its users' locks taken in the
store's one order, their open commitments read once, each commitment judged after the ones
before it in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from farthing.core.clock import Clock
from farthing.core.encoding import b64url_encode
from farthing.core.errors import Conflict, ErrorCode, FarthingError, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq, sha256
from farthing.core.schemes import payword
from farthing.http.issuer_wire import admit_batch_tag, admit_request_tag, redeem_request_tag
from farthing.issuer.accounts_service import find_customer
from farthing.issuer.auth import Merchant, MerchantDirectory
from farthing.store import PaywordCertificateRow, PaywordUserRow, Store, Tx

__all__ = ["Admitted", "PaywordService", "Redeemed", "RegisteredUser"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredUser:
    user_id: str
    certificate: payword.Certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    commitment_id: bytes
    outstanding_micros: int
    credit_limit_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeemed:
    commitment_id: bytes
    index: int
    credited_units: int
    credited_micros: int


class PaywordService:
    def __init__(
        self,
        store: Store,
        merchants: MerchantDirectory,
        *,
        broker_id: str,
        broker_key: bytes,
        broker_public: bytes,
        certificate_ttl: int,
        clock: Clock,
    ) -> None:
        self._store = store
        self._merchants = merchants
        self._broker_id = broker_id
        self._broker_key = broker_key
        self._broker_public = broker_public
        self._ttl = certificate_ttl
        self._clock = clock

    @property
    def broker_id(self) -> str:
        return self._broker_id

    @property
    def broker_public(self) -> bytes:
        return self._broker_public

    def register_user(
        self,
        actor: str,
        *,
        user_id: str,
        customer_id: str,
        public_key: bytes,
        credit_limit: int,
        unit_micros: int,
    ) -> RegisteredUser:
        """Register a user on a customer account and sign its certificate."""
        now = self._clock.now()

        def unit(tx: Tx) -> payword.Certificate:
            customer = find_customer(tx, customer_id)
            if tx.payword.user(user_id) is not None:
                raise Conflict("this user exists")
            denomination = Denomination(currency=customer.currency, unit_micros=unit_micros)
            cert = payword.issue_certificate(
                self._broker_key,
                broker_id=self._broker_id,
                user_id=user_id,
                user_public_key=public_key,
                credit_limit=credit_limit,
                denomination=denomination,
                expires_at=now + self._ttl,
            )
            tx.payword.add_user(
                user_id=user_id,
                account_id=customer.id,
                public_key=public_key,
                credit_limit_units=credit_limit,
                currency=customer.currency,
                unit_micros=unit_micros,
            )
            encoded = payword.encode_certificate(cert)
            tx.payword.add_certificate(
                cert_id=sha256(encoded), user_id=user_id, cert=encoded, expires_at=cert.expires_at
            )
            detail = {"user": user_id, "customer": customer_id, "credit_limit": credit_limit}
            tx.admin.audit(actor, "payword.user.register", detail)
            return cert

        return RegisteredUser(user_id=user_id, certificate=self._store.run_in_transaction(unit))

    def admit(self, merchant_id: str, commitment_bytes: bytes, tag: bytes) -> Admitted:
        """A vendor presents a new commitment: admit it if the user's open commitments and
        this one stay within the credit limit (InsufficientFunds(CREDIT_LIMIT) otherwise).
        Admitting one again answers as the first time."""
        merchant = self._merchants.authenticate(
            merchant_id, tag, lambda key: admit_request_tag(key, merchant_id, commitment_bytes)
        )
        commitment = payword.decode_commitment(commitment_bytes)
        now = self._clock.now()

        def unit(tx: Tx) -> Admitted:
            (outcome,) = self._admit_all(tx, merchant, [commitment], now)
            if isinstance(outcome, FarthingError):
                raise outcome
            return outcome

        return self._store.run_in_transaction(unit)

    def admit_batch(
        self, merchant_id: str, commitments: Sequence[bytes], tag: bytes
    ) -> list[Admitted | FarthingError]:
        """:meth:`admit` for several commitments in one transaction, the merchant
        authenticated once by its tag over all of them
        (:func:`~farthing.http.issuer_wire.admit_batch_tag`; 401 for the whole batch).
        Each outcome, in order, is what :meth:`admit` answers or raises for that
        commitment alone, judged after the ones before it in the batch: two commitments of
        one user that together pass its limit are not both admitted."""
        merchant = self._merchants.authenticate(
            merchant_id, tag, lambda key: admit_batch_tag(key, merchant_id, commitments)
        )
        decoded = [_decoded(raw) for raw in commitments]
        now = self._clock.now()
        return self._store.run_in_transaction(
            lambda tx: self._admit_all(tx, merchant, decoded, now)
        )

    def _admit_all(
        self,
        tx: Tx,
        merchant: Merchant,
        commitments: Sequence[payword.Commitment | FarthingError],
        now: int,
    ) -> list[Admitted | FarthingError]:
        """Judge each commitment, in order, against its user's open commitments, those
        admitted just before it included; record the admitted ones together (a few
        statements per batch, not per commitment: bench.e2e's bank spent ~1.7 ms of CPU
        per admission, most of it in per-row statements)."""
        valid = [c for c in commitments if isinstance(c, payword.Commitment)]
        users = {c.certificate.user_id for c in valid}
        # One admission per user at a time: the sum over the user's open commitments is
        # read, then written to. A lock at READ COMMITTED, not SERIALIZABLE, whose
        # aborts ran out of retries under load (make bench, PostgreSQL: 724 refused);
        # a batch takes its users' locks in the store's one order (no deadlock). Under
        # them (and SQLite's one write lock) the ids read here are all there are.
        tx.lock_keys(_ADMIT_LOCK + user.encode() for user in users)
        judge = _Judge(
            broker_public=self._broker_public,
            vendor_id=merchant.merchant_id,
            now=now,
            users=tx.payword.users_of(users),
            certificates=tx.payword.certificates_of({_cert_id(c.certificate) for c in valid}),
            known=tx.payword.open_commitments_of(
                users, expired_before=now - payword.DEFAULT_REDEEM_WINDOW
            ),
        )
        outcomes = [c if isinstance(c, FarthingError) else judge.admit(c) for c in commitments]
        tx.payword.admit_many(judge.new)
        details = [
            {"commitment": b64url_encode(c.commitment_id), "vendor": merchant.merchant_id}
            for c in judge.new
        ]
        tx.admin.audit_many(f"merchant:{merchant.merchant_id}", "payword.commitment.admit", details)
        return outcomes

    def _known_user(self, tx: Tx, cert: payword.Certificate) -> PaywordUserRow:
        """The user of a certificate this broker issued, with that key; InvalidPayment else."""
        user = tx.payword.user(cert.user_id)
        stored = tx.payword.certificate(_cert_id(cert))
        return _require_known(user, stored, cert)

    def redeem(self, merchant_id: str, redemption_bytes: bytes, tag: bytes) -> Redeemed:
        """Pay a vendor's claim: the signatures and the chain are checked before the
        transaction (:func:`~farthing.core.schemes.payword.broker_redeem`, from w_0), what
        it earns inside it (:func:`~farthing.core.schemes.payword.judge_claim`)."""
        merchant = self._merchants.authenticate(
            merchant_id, tag, lambda key: redeem_request_tag(key, merchant_id, redemption_bytes)
        )
        redemption = payword.decode_redemption(redemption_bytes)
        now = self._clock.now()
        verified = payword.broker_redeem(
            self._broker_public, None, redemption, vendor_id=merchant.merchant_id, now=now
        )
        return self._store.run_in_transaction(
            lambda tx: self._credit(tx, merchant, redemption, verified, now)
        )

    def _credit(
        self,
        tx: Tx,
        merchant: Merchant,
        redemption: payword.Redemption,
        verified: payword.BrokerCredit,
        now: int,
    ) -> Redeemed:
        user = self._known_user(tx, redemption.commitment.certificate)
        cid = verified.state.commitment_id
        credit = payword.judge_claim(
            verified,
            admitted=tx.payword.admitted(cid),
            vendor_currency=merchant.currency,
            user_currency=user.currency,
        )
        if not credit.credited_units:  # repeated, lower, or the anchor itself
            return Redeemed(
                commitment_id=cid, index=redemption.index, credited_units=0, credited_micros=0
            )
        # The store's compare-and-set has the last word when claims race.
        units = tx.payword.redeem(cid, merchant.merchant_id, user.user_id, redemption.index, now)
        micros = units * credit.denomination.unit_micros
        if units:
            reference = f"payword:{b64url_encode(cid)}:{redemption.index}"
            tx.ledger.post(
                "payword_redeem",
                reference,
                [(user.account_id, micros), (merchant.account_id, -micros)],
            )
            detail = {"commitment": b64url_encode(cid), "index": redemption.index, "units": units}
            tx.admin.audit(f"merchant:{merchant.merchant_id}", "payword.redeem", detail)
        return Redeemed(
            commitment_id=cid, index=redemption.index, credited_units=units, credited_micros=micros
        )


_ADMIT_LOCK = b"payword-admit:"


def _cert_id(cert: payword.Certificate) -> bytes:
    return sha256(payword.encode_certificate(cert))


@dataclass(slots=True, kw_only=True)
class _Judge:
    """A batch's admissions inside its transaction: what the store holds for its users
    (read once), and the commitments admitted so far, which count for the next ones."""

    broker_public: bytes
    vendor_id: str
    now: int
    users: dict[str, PaywordUserRow]
    certificates: dict[bytes, PaywordCertificateRow]
    known: dict[str, list[payword.OpenCommitment]]
    new: list[payword.OpenCommitment] = field(default_factory=list)

    def admit(self, commitment: payword.Commitment) -> Admitted | FarthingError:
        """The core's decision on one commitment against its user's open ones, or the
        error that refuses it; an admitted new one joins them (and :attr:`new`)."""
        cert = commitment.certificate
        mine = self.known[cert.user_id]
        try:
            user = self.users.get(cert.user_id)
            _require_known(user, self.certificates.get(_cert_id(cert)), cert)
            admitted = payword.admit_commitment(
                self.broker_public,
                commitment,
                vendor_id=self.vendor_id,
                open_commitments=mine,
                now=self.now,
            )
        except FarthingError as refused:
            return refused
        others = [c for c in mine if c.commitment_id != admitted.commitment_id]
        if len(others) == len(mine):  # not admitted before
            mine.append(admitted)
            self.new.append(admitted)
        outstanding = sum(c.outstanding_micros(now=self.now) for c in [*others, admitted])
        return Admitted(
            commitment_id=admitted.commitment_id,
            outstanding_micros=outstanding,
            credit_limit_micros=cert.credit_limit * cert.denomination.unit_micros,
        )


def _decoded(raw: bytes) -> payword.Commitment | FarthingError:
    try:
        return payword.decode_commitment(raw)
    except FarthingError as error:
        return error


def _require_known(
    user: PaywordUserRow | None, stored: PaywordCertificateRow | None, cert: payword.Certificate
) -> PaywordUserRow:
    """The user, if ``cert`` is a certificate this broker issued to it, with its key:
    InvalidPayment(DEPOSIT_INVALID) for any other (one vague answer)."""
    if user is None or stored is None or stored.user_id != user.user_id:
        # a certificate this broker never issued (or for someone else)
        raise InvalidPayment("redemption did not verify", code=ErrorCode.DEPOSIT_INVALID)
    if not constant_time_eq(user.public_key, cert.user_public_key):
        raise InvalidPayment("redemption did not verify", code=ErrorCode.DEPOSIT_INVALID)
    return user
