"""The bank of HLL: personalising cards, online verification and deposits, over the store.

This is :class:`farthing.testing.hll.HllBank` (the in-memory reference) made durable;
both judge by the same core rules, and a differential test compares their reports.
The pure core checks every MAC; the database decides duplicate spending:

- ``tx.hll_record_spend`` inserts (card, counter) under a PRIMARY KEY and charges the card
  with a conditional UPDATE that cannot pass its loaded value;
- in the same transaction the ledger moves the value from the card float to the merchant.

So a spend is counted exactly once or not at all, also across worker processes and
crashes. A deposit is one transaction: its spends, its ledger credit and the stored report
(keyed by merchant and batch id, with the batch digest) commit together, which makes a
re-sent deposit return the first report and credit nothing new.

Checks, in the reference's order (the MAC before the duplicate check, so that a caller
without the card key cannot learn which counters were used):
online: merchant tag -> offer is the caller's -> MAC and expiry -> the card may pay
(:func:`~farthing.core.schemes.hll.card_may_pay`: known, active, same denomination, the
merchant's currency) -> (card, counter) new -> card covers it (the store, in
:func:`~farthing.core.schemes.hll.judge_spend`'s order);
deposit: merchant tag -> the batch's cards read and locked once -> each item by
:func:`~farthing.core.schemes.hll.judge_deposit_item`, then
:func:`~farthing.core.schemes.hll.judge_spend` against the spends read once for the batch
-> the accepted spends recorded and charged in a few batch statements (the primary key and
the cards' CHECK still refuse a spend counted twice: the whole batch then rolls back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from farthing.core.clock import Clock, RandomSource
from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import (
    AccessDenied,
    Conflict,
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    MalformedMessage,
    NotFound,
    RemoteProtocolError,
)
from farthing.core.money import Denomination
from farthing.core.primitives import sha256
from farthing.core.schemes import hll
from farthing.http.issuer_wire import deposit_lookup_tag, verify_batch_tag, verify_request_tag
from farthing.issuer.accounts_service import find_customer
from farthing.issuer.auth import Merchant, MerchantDirectory
from farthing.issuer.books import SystemAccounts
from farthing.store import CardStatus, HllCardRow, HotTx, Store, Tx

__all__ = [
    "CERTIFICATE_TTL",
    "CheckedPurchase",
    "DepositOutcome",
    "HllService",
    "OnlineSpend",
    "PersonalisedCard",
    "batch_key",
    "wrap_card_key",
]

_BATCH_KEY_DOMAIN = "farthing/issuer/hll-batch-key"


CERTIFICATE_TTL = 90 * 86_400
"""How long a card certificate lets merchants serve the card deferred (then: online only)."""
_MIN_TOKEN_KEY_BITS = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonalisedCard:
    """A new card. ``card_key`` (K_C) stays in the bank's process: what leaves the bank is
    ``wrapped_card_key``, K_C encrypted for the customer's token, and the certificate."""

    card_id: bytes
    card_key: bytes = field(repr=False)
    units: int
    denomination: Denomination
    certificate: bytes
    certificate_expires_at: int
    wrapped_card_key: bytes | None = None


def wrap_card_key(token_public_key: bytes, card_key: bytes) -> bytes:
    """K_C encrypted (RSA-OAEP) under the token's public key (DER SubjectPublicKeyInfo),
    for the token to unwrap inside itself (:func:`farthing.wallet.pkcs11_card.
    install_wrapped_card_key`). OAEP with SHA-1 as hash and MGF1 hash: the only OAEP
    parameters SoftHSM2 2.6 unwraps; OAEP's security does not rest on collision
    resistance. MalformedMessage(BAD_FIELD) for anything but an RSA key of >= 2048 bits."""
    try:
        public = serialization.load_der_public_key(token_public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        public = None
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < _MIN_TOKEN_KEY_BITS:
        raise MalformedMessage(
            "token_public_key must be an RSA key of at least 2048 bits (DER SPKI)",
            code=ErrorCode.BAD_FIELD,
        )
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    return public.encrypt(card_key, oaep)


@dataclass(frozen=True, slots=True, kw_only=True)
class OnlineSpend:
    """``repeated``: this very purchase was settled before (the merchant sent it again after
    losing the answer); nothing was charged or credited this time."""

    card_id: bytes
    counter: int
    units: int
    credited_micros: int
    repeated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedPurchase:
    """An online purchase whose merchant tag and card MAC verified (not yet settled)."""

    offer: hll.Offer
    offer_digest: bytes
    verified: hll.VerifiedPurchase
    merchant: Merchant
    now: int
    card_key: bytes = field(repr=False)
    """K_C, derived once for the MAC (the settlement's view of the card holds it too)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositOutcome:
    report: hll.DepositReport
    credited_micros: int
    replayed: bool


def batch_key(merchant_id: str, batch_id: bytes) -> bytes:
    """The stored key of a deposit batch: batch ids are unique per merchant only."""
    return sha256(Writer(_BATCH_KEY_DOMAIN).text(merchant_id).bytes(batch_id).finish())


def _denomination(card: HllCardRow) -> Denomination:
    return Denomination(currency=card.currency, unit_micros=card.unit_micros)


class HllService:
    """HLL operations. ``on_spend_recorded`` is a test seam: it is called inside the deposit
    transaction after each recorded spend (the crash test kills the process there)."""

    def __init__(
        self,
        store: Store,
        system: SystemAccounts,
        merchants: MerchantDirectory,
        *,
        master_key: bytes,
        clock: Clock,
        rng: RandomSource,
        deposit_window: int,
        on_spend_recorded: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._system = system
        self._merchants = merchants
        self._master = master_key
        self._clock = clock
        self._rng = rng
        self._deposit_window = deposit_window
        self._on_spend_recorded = on_spend_recorded

    def card_key(self, card_id: bytes) -> bytes:
        return hll.derive_card_key(self._master, card_id)

    # --- personalisation ------------------------------------------------------------------

    def personalise(
        self,
        actor: str,
        customer_id: str,
        *,
        units: int,
        unit_micros: int,
        token_public_key: bytes | None = None,
    ) -> PersonalisedCard:
        """A new card for the customer, loaded with ``units`` paid from the customer's
        account in one balanced posting (customer -> card float), with its certificate,
        and K_C wrapped for the token whose public key is given."""
        card_id = hll.new_card_id(self._rng)
        card_key = self.card_key(card_id)
        wrapped = None if token_public_key is None else wrap_card_key(token_public_key, card_key)
        value = units * unit_micros

        def unit(tx: Tx) -> Denomination:
            customer = find_customer(tx, customer_id)
            books = self._system.books(tx, customer.currency)
            if -tx.ledger.balance(customer.id) < value:
                raise InsufficientFunds("the customer's account cannot cover this card")
            tx.hll.add_card(
                card_id=card_id,
                customer_account_id=customer.id,
                currency=customer.currency,
                unit_micros=unit_micros,
                loaded_units=units,
            )
            reference = f"hll-card:{b64url_encode(card_id)}"
            tx.ledger.post(
                "hll_personalise", reference, [(customer.id, value), (books.hll_float, -value)]
            )
            detail = {"customer": customer_id, "card": b64url_encode(card_id), "units": units}
            tx.admin.audit(actor, "hll.card.personalise", detail)
            return Denomination(currency=customer.currency, unit_micros=unit_micros)

        # Serializable: the balance check and the posting must not interleave with another.
        denomination = self._store.run_in_transaction(unit, serializable=True)
        expires_at = self._clock.now() + CERTIFICATE_TTL
        certificate = hll.issue_card_certificate(
            hll.card_certification_key(self._master),
            card_id=card_id,
            denomination=denomination,
            expires_at=expires_at,
        )
        return PersonalisedCard(
            card_id=card_id,
            card_key=card_key,
            units=units,
            denomination=denomination,
            certificate=hll.encode_card_certificate(certificate),
            certificate_expires_at=expires_at,
            wrapped_card_key=wrapped,
        )

    @property
    def bank_key(self) -> bytes:
        """The bank's card-certification public key: names this bank to wallets and
        merchants (they check card certificates with it)."""
        return hll.card_certification_public_key(self._master)

    def card(self, card_id: bytes) -> HllCardRow:
        with self._store.transaction(readonly=True) as tx:
            row = tx.hll.card(card_id)
        if row is None:
            raise NotFound("no such card")
        return row

    # --- online verification --------------------------------------------------------------

    def verify_online(
        self, merchant_id: str, offer_bytes: bytes, payment_bytes: bytes, tag: bytes
    ) -> OnlineSpend:
        """Verify one purchase for an authenticated merchant and settle it at once."""
        checked = self.check_online(merchant_id, offer_bytes, payment_bytes, tag)
        return self._store.run_in_transaction(lambda tx: self.settle_online(tx, checked))

    def check_online(
        self, merchant_id: str, offer_bytes: bytes, payment_bytes: bytes, tag: bytes
    ) -> CheckedPurchase:
        """What an online purchase needs checked before any write: the merchant's tag,
        the messages and the card's MAC (pure, but for a merchant's first lookup)."""
        merchant = self._merchants.authenticate(
            merchant_id,
            tag,
            lambda key: verify_request_tag(key, merchant_id, offer_bytes, payment_bytes),
        )
        return self.check_purchase(merchant, offer_bytes, payment_bytes)

    def authenticate_batch(
        self, merchant_id: str, items: Sequence[tuple[bytes, bytes]], tag: bytes
    ) -> Merchant:
        """The merchant of a batch of online verifications, by its one tag over all of them
        (:func:`~farthing.http.issuer_wire.verify_batch_tag`); 401 as for a single one."""
        return self._merchants.authenticate(
            merchant_id, tag, lambda key: verify_batch_tag(key, merchant_id, items)
        )

    def check_purchase(
        self, merchant: Merchant, offer_bytes: bytes, payment_bytes: bytes
    ) -> CheckedPurchase:
        """:meth:`check_online` for an authenticated merchant: the messages and the card's
        MAC (pure)."""
        offer = hll.decode_offer(offer_bytes)
        purchase = hll.decode_payment(payment_bytes)
        if offer.merchant_id != merchant.merchant_id:
            raise AccessDenied("the offer names another merchant")
        now = self._clock.now()
        card_key = self.card_key(purchase.card_id)
        verified = hll.verify_purchase(card_key, offer, purchase, now)
        return CheckedPurchase(
            offer=offer,
            offer_digest=sha256(offer_bytes),
            verified=verified,
            merchant=merchant,
            now=now,
            card_key=card_key,
        )

    def settle_online(self, tx: Tx | HotTx, checked: CheckedPurchase) -> OnlineSpend:
        """Inside ``tx`` (a transaction, or a hot batch: the same statements): the card
        may pay it, (card, counter) is recorded once, and the value moves from the card
        float to the merchant. Safe to run again.

        The same purchase sent again by its merchant (same offer, so same path and
        challenge, and a MAC that verified; its answer was lost) is answered as settled,
        ``repeated``, charging nothing: the draft's idempotent retry. The offer's expiry,
        checked with the MAC, bounds it. Any other repeat of (card, counter) is a 409.
        """
        verified, merchant = checked.verified, checked.merchant
        spend = OnlineSpend(
            card_id=verified.card_id,
            counter=verified.counter,
            units=verified.amount,
            credited_micros=verified.amount * verified.denomination.unit_micros,
        )
        card = self._bank_card(tx.hll.card(verified.card_id), key=checked.card_key)
        hll.card_may_pay(card, checked.offer, merchant_currency=merchant.currency)
        # The store answers the core's judge_spend atomically: spent before (False; only
        # then is an earlier settlement of the same purchase looked for), else covered
        # (InsufficientFunds if not).
        if not self._settle_online(tx, checked):
            if _settled_before(tx, checked):
                return replace(spend, repeated=True)
            raise Conflict("payment already spent", code=ErrorCode.DUPLICATE_SPEND)
        return spend

    def settle_online_batch(
        self, tx: Tx | HotTx, batch: Sequence[CheckedPurchase]
    ) -> list[OnlineSpend | FarthingError]:
        """:meth:`settle_online` for each purchase of a batch, in order, inside ``tx``: one
        refused purchase (a duplicate, an uncovered spend) is answered with its error and
        leaves no write behind, so the others settle in the same commit. The same purchase
        twice in one batch settles once; the copy is answered ``repeated``."""
        outcomes: list[OnlineSpend | FarthingError] = []
        for checked in batch:
            try:
                outcomes.append(self.settle_online(tx, checked))
            except RemoteProtocolError as error:
                if not _refusal(error):
                    raise
                outcomes.append(error)
        return outcomes

    def _settle_online(self, tx: Tx | HotTx, checked: CheckedPurchase) -> bool:
        """Record (card, counter) once and move its value from the card float to the
        merchant; False, changing nothing, if (card, counter) was recorded before."""
        verified, merchant, now = checked.verified, checked.merchant, checked.now
        books = self._system.prepared(merchant.currency)
        recorded = tx.hll.spend_online(
            verified.card_id,
            verified.counter,
            merchant.merchant_id,
            verified.amount,
            now,
            checked.offer_digest,
        )
        if not recorded:
            return False
        micros = verified.amount * verified.denomination.unit_micros
        reference = f"hll:{b64url_encode(verified.card_id)}:{verified.counter}"
        postings = [(books.hll_float, micros), (merchant.account_id, -micros)]
        tx.ledger.post_in(merchant.currency, "hll_spend", reference, postings, now)
        return True

    # --- deposits -------------------------------------------------------------------------

    def deposit(self, batch_bytes: bytes, tag: bytes) -> DepositOutcome:
        """Settle a deferred-mode batch; idempotent by (merchant, batch id)."""
        batch = hll.decode_batch(batch_bytes)
        merchant = self._merchants.get(batch.merchant_id)
        if merchant is None:
            raise InvalidPayment("deposit did not verify", code=ErrorCode.DEPOSIT_INVALID)
        hll.verify_received_batch_tag(merchant.key, batch_bytes, tag)
        key = batch_key(merchant.merchant_id, batch.batch_id)
        digest = sha256(batch_bytes)
        now = self._clock.now()
        return self._store.run_in_transaction(
            lambda tx: self._deposit_unit(tx, batch, merchant, key, digest, now)
        )

    def deposit_report(self, merchant_id: str, batch_id: bytes, tag: bytes) -> DepositOutcome:
        """What the bank did with a merchant's batch: its stored report, or NotFound if the
        bank never settled it (so nothing of it was credited). A vendor asks this for a
        batch whose answer it lost or could not take as final."""
        merchant = self._merchants.authenticate(
            merchant_id, tag, lambda key: deposit_lookup_tag(key, merchant_id, batch_id)
        )
        key = batch_key(merchant.merchant_id, batch_id)
        with self._store.transaction(readonly=True) as tx:
            earlier = tx.hll.batch(key)
        if earlier is None:
            raise NotFound("no such deposit batch")
        return _stored_outcome(earlier.report)

    def _deposit_unit(
        self,
        tx: Tx,
        batch: hll.DepositBatch,
        merchant: Merchant,
        key: bytes,
        digest: bytes,
        now: int,
    ) -> DepositOutcome:
        # The batch id is claimed before any spend: a concurrent copy of this batch waits
        # here for this transaction and then answers with its report (not a 409).
        if tx.hll.batch(key) is not None or not tx.hll.claim_batch(
            key, merchant.merchant_id, digest, now
        ):
            return _earlier_outcome(tx, key, digest)
        books = self._system.books(tx, merchant.currency)
        report, micros = self._settle_items(tx, batch, merchant, key, now)
        if micros:
            reference = f"hll-deposit:{b64url_encode(key)}"
            tx.ledger.post(
                "hll_deposit",
                reference,
                [(books.hll_float, micros), (merchant.account_id, -micros)],
            )
        stored = {"report": b64url_encode(hll.encode_report(report)), "credited_micros": micros}
        tx.hll.finish_batch(key, stored)
        detail = {
            "batch": b64url_encode(batch.batch_id),
            "accepted": len(report.accepted),
            "duplicates": len(report.duplicates),
            "invalid": len(report.invalid),
            "micros": micros,
        }
        tx.admin.audit(f"merchant:{merchant.merchant_id}", "hll.deposit", detail)
        return DepositOutcome(report=report, credited_micros=micros, replayed=False)

    def _settle_items(
        self, tx: Tx, batch: hll.DepositBatch, merchant: Merchant, key: bytes, now: int
    ) -> tuple[hll.DepositReport, int]:
        """Judge each item by the core's rules, in the batch's order: first from its card
        alone (:func:`~farthing.core.schemes.hll.judge_deposit_item`), then whether it is
        new and covered (:func:`~farthing.core.schemes.hll.judge_spend`), against the cards
        and spends read once for the whole batch with the cards locked; then record the
        accepted ones in a few statements (clearing runs per batch, not per item)."""
        rows = tx.hll.cards_for_update({item.purchase.card_id for item in batch.items})
        cards = {card_id: self._bank_card(row) for card_id, row in rows.items()}
        judged = [
            (
                item,
                hll.judge_deposit_item(
                    cards.get(item.purchase.card_id),
                    item,
                    merchant_id=merchant.merchant_id,
                    merchant_currency=merchant.currency,
                    now=now,
                    deposit_window=self._deposit_window,
                ),
            )
            for item in batch.items
        ]
        verified = [v for _, v in judged if not isinstance(v, hll.DepositRefusal)]
        spent = tx.hll.spent_before({(v.card_id, v.counter) for v in verified})
        remaining = {card_id: card.remaining for card_id, card in cards.items() if card}
        tally = hll.DepositTally()
        micros = 0
        for item, verdict in judged:
            if isinstance(verdict, hll.DepositRefusal):
                tally.refuse(item, verdict)
                continue
            spend = (verdict.card_id, verdict.counter)
            refusal = hll.judge_spend(
                spent_before=spend in spent,
                remaining=remaining[verdict.card_id],
                amount=verdict.amount,
            )
            if refusal is not None:
                tally.refuse(item, refusal)
                continue
            spent.add(spend)
            remaining[verdict.card_id] -= verdict.amount
            tally.accept(verdict)
            micros += verdict.amount * verdict.denomination.unit_micros
        tx.hll.record_spends(tally.accepted, merchant.merchant_id, key, now)
        if self._on_spend_recorded is not None:
            for count in range(1, len(tally.accepted) + 1):
                self._on_spend_recorded(count)
        return tally.report(batch.batch_id), micros

    def _bank_card(
        self, card: HllCardRow | None, *, key: bytes | None = None
    ) -> hll.BankCard | None:
        """The core's view of a stored card (None for an unknown one); ``key``: its K_C,
        if the caller derived it already."""
        if card is None:
            return None
        return hll.BankCard(
            key=self.card_key(card.card_id) if key is None else key,
            denomination=_denomination(card),
            active=card.status is CardStatus.ACTIVE,
            loaded=card.loaded_units,
            spent=card.spent_units,
        )


def _refusal(error: RemoteProtocolError) -> bool:
    """A purchase refused by the bank's rules, which writes nothing (the card may not pay,
    a duplicate spend, a card that cannot cover it); not the store's own conflict (busy, a
    lost race): that one ends the transaction, and with it the whole batch."""
    return not isinstance(error, Conflict) or error.code is ErrorCode.DUPLICATE_SPEND


def _settled_before(tx: Tx | HotTx, checked: CheckedPurchase) -> bool:
    """Was this very purchase settled online before, for this merchant and this offer?"""
    earlier = tx.hll.spend(checked.verified.card_id, checked.verified.counter)
    record = None
    if earlier is not None:
        online_digest = earlier.offer_digest if earlier.batch_id is None else None
        record = hll.SpendRecord(merchant_id=earlier.merchant_id, offer_digest=online_digest)
    return hll.is_online_retry(
        record, merchant_id=checked.merchant.merchant_id, offer_digest=checked.offer_digest
    )


def _earlier_outcome(tx: Tx, key: bytes, digest: bytes) -> DepositOutcome:
    """The stored answer to a batch sent before; Conflict if its id came with other items."""
    earlier = tx.hll.batch(key)
    if earlier is None:  # claimed by a transaction that has not committed: cannot happen
        raise Conflict("the deposit batch is being settled")
    hll.check_resent_batch(earlier.digest, digest)
    return _stored_outcome(earlier.report)


def _stored_outcome(stored: Mapping[str, object]) -> DepositOutcome:
    """The first answer to a batch, as saved with it."""
    report = hll.decode_report(b64url_decode(str(stored["report"]), max_len=1 << 20))
    micros = stored["credited_micros"]
    if not isinstance(micros, int):
        raise TypeError("stored deposit report lacks its credit")
    return DepositOutcome(report=report, credited_micros=micros, replayed=True)
