"""Issuing SZM prepaid cards in batches, exporting their codes, card status and revenue.

Cards are anonymous: nothing about a buyer is asked for, passed in or stored (the store has
no such column). Card ids and secrets are both derived from the protocol's master key::

    card_id = HMAC-SHA256(master, canonical("farthing/issuer/szm-card-id", batch_id, i))[:16]
    short   = shortcode.short_secret(master, card_id)      (what is printed: 24 symbols)
    secret  = szm_chain.card_secret(master, card_id)  /  szm_prbg.card_secret(master, card_id)
              (= HKDF of the short secret)

The store keeps each card's lookup id (a one-way function of its short code), so that a
wallet given only the typed code finds the card's terms (:meth:`SzmService.lookup`).

so an operator can re-export the codes of any batch from its id alone, and the database
holds no secret (a chain card stores its anchor w_0, a generator card nothing at all).

Accounting. Issuing a batch *is* selling it: the batch goes to a retailer or a till for
cash, so issuing posts the batch's face value ``count * units * unit_micros`` from cash to
the prepaid float in the same transaction that inserts the cards (cash received, and a
liability to whoever presents the cards). Spending a card posts nothing (the vendor's hot
path is one conditional UPDATE); :meth:`SzmService.recognise_revenue` periodically moves
the spent value from the prepaid float to revenue. ``check_ledger`` verifies
``-prepaid float == unspent face value + spent value not yet recognised``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from farthing.core import shortcode
from farthing.core.cardcode import CardCode, Generator, to_compact, to_text
from farthing.core.clock import Clock, RandomSource
from farthing.core.encoding import Writer, b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage, NotFound, UnsupportedMethod
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey, bbs_steps_per_block
from farthing.core.primitives import hmac_sha256
from farthing.core.schemes import szm_chain, szm_issued, szm_prbg, szm_status
from farthing.issuer.books import SystemAccounts
from farthing.store import CardStatus, Store, SzmBatchRow, SzmCardRow, SzmProtocol, Tx

__all__ = [
    "BatchSpec",
    "CardStatusView",
    "CardValue",
    "ExportPage",
    "ExportedCard",
    "LookupAnswer",
    "SzmService",
    "derive_card_id",
]

_CARD_ID_DOMAIN: Final = "farthing/issuer/szm-card-id"
_CARD_ID_LEN: Final = 16
_MAX_BATCH_MICROS: Final = 10**15  # a billion EUR: far above any sale, far below 2**63
_MAX_UNITS: Final = {SzmProtocol.CHAIN: szm_chain.MAX_LENGTH, SzmProtocol.PRBG: 1 << 30}
_GENERATORS: Final = {
    SzmProtocol.CHAIN: frozenset({None}),
    SzmProtocol.PRBG: frozenset({Generator.HMAC_CTR, Generator.BBS}),
}

Progress = Callable[[int], None]
"""Called with the number of cards made so far."""


def derive_card_id(master_key: bytes, batch_id: bytes, index: int) -> bytes:
    message = Writer(_CARD_ID_DOMAIN).bytes(batch_id).u64(index).finish()
    return hmac_sha256(master_key, message)[:_CARD_ID_LEN]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSpec:
    """What to issue. ``generator`` is for ``szm:prbg`` only (None means hmac-ctr)."""

    protocol: SzmProtocol
    count: int
    units: int
    denomination: Denomination
    expires_at: int
    generator: Generator | None = None

    @property
    def value_micros(self) -> int:
        return self.count * self.units * self.denomination.unit_micros


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedCard:
    card_id: bytes
    code: CardCode
    short: shortcode.ShortSecret

    @property
    def short_code(self) -> str:
        """What is printed on the card and typed: ``XXXX-XXXX-XXXX-XXXX-XXXX-XXXX``."""
        return shortcode.format_code(self.short)

    @property
    def text(self) -> str:
        return to_text(self.code)

    @property
    def compact(self) -> str:
        return to_compact(self.code)


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupAnswer:
    """The terms of the card a short code names (no secret), with the tag that binds them to
    the code (:func:`farthing.core.shortcode.answer_tag`), and what is left on it."""

    code: CardCode
    tag: bytes
    spent: int
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportPage:
    batch: SzmBatchRow
    offset: int
    cards: tuple[ExportedCard, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CardStatusView:
    """What the card's holder learns about it from the issuer."""

    card_id: bytes
    units: int
    spent: int
    expires_at: int
    status: str  # active | blocked | expired | exhausted


class SzmService:
    def __init__(
        self,
        store: Store,
        system: SystemAccounts,
        *,
        chain_master: bytes,
        prbg_master: bytes,
        bbs: BbsKey,
        realm: str,
        clock: Clock,
        rng: RandomSource,
    ) -> None:
        self._store = store
        self._system = system
        self._masters = {SzmProtocol.CHAIN: chain_master, SzmProtocol.PRBG: prbg_master}
        self._bbs = bbs
        self._realm = realm
        self._clock = clock
        self._rng = rng

    # --- operating ------------------------------------------------------------------------

    def block_card(self, actor: str, card_id: bytes) -> bool:
        """Block a card: every later payment with it is refused (the vendor's
        compare-and-set needs ``active``). False if it was not active (already blocked,
        or unknown: then NotFound). Audited as ``szm.card.block``."""

        def unit(tx: Tx) -> bool:
            card = tx.szm.card(card_id)
            if card is None:
                raise NotFound("no such card")
            if CardStatus(card.status) is not CardStatus.ACTIVE:
                return False
            tx.szm.set_status(card_id, CardStatus.BLOCKED)
            tx.admin.audit(actor, "szm.card.block", {"card": b64url_encode(card_id)})
            return True

        return self._store.run_in_transaction(unit)

    # --- issuing --------------------------------------------------------------------------

    def issue_batch(
        self, actor: str, spec: BatchSpec, *, progress: Progress | None = None
    ) -> SzmBatchRow:
        """Make the cards (outside any transaction: hashing is slow), then insert batch,
        cards, the sale posting and the audit entry in one transaction."""
        self._check_spec(spec)
        now = self._clock.now()
        batch = SzmBatchRow(
            batch_id=self._rng(16),
            protocol=spec.protocol,
            count=spec.count,
            units=spec.units,
            currency=spec.denomination.currency,
            unit_micros=spec.denomination.unit_micros,
            expires_at=spec.expires_at,
            created_at=now,
        )
        rows = self._card_rows(batch, spec, now, progress)

        def unit(tx: Tx) -> None:
            books = self._system.books(tx, batch.currency)
            tx.szm.insert_batch(batch)
            tx.szm.insert_cards(rows)
            tx.szm.insert_lookups(self._lookups(spec.protocol, rows))
            value = spec.value_micros
            reference = f"szm-batch:{b64url_encode(batch.batch_id)}"
            tx.ledger.post("szm_sale", reference, [(books.cash, value), (books.szm_float, -value)])
            detail = {
                "batch": b64url_encode(batch.batch_id),
                "protocol": spec.protocol.value,
                "count": spec.count,
                "units": spec.units,
                "micros": value,
            }
            tx.admin.audit(actor, "szm.batch.issue", detail)

        self._store.run_in_transaction(unit)
        return batch

    def _lookups(self, protocol: SzmProtocol, rows: list[SzmCardRow]) -> list[tuple[bytes, bytes]]:
        master = self._masters[protocol]
        return [
            (shortcode.lookup_id(shortcode.short_secret(master, row.card_id)), row.card_id)
            for row in rows
        ]

    def _check_spec(self, spec: BatchSpec) -> None:
        self._system.require_currency(spec.denomination.currency)
        generator = _generator(spec)
        if generator not in _GENERATORS[spec.protocol]:
            raise UnsupportedMethod("no such generator for this protocol")
        if generator is Generator.BBS:
            bbs_steps_per_block(self._bbs.public, szm_prbg.BBS_BITS_PER_STEP)
        if not 1 <= spec.units <= _MAX_UNITS[spec.protocol]:
            raise MalformedMessage("units out of range for this protocol", code=ErrorCode.BAD_FIELD)
        if spec.count < 1:
            raise MalformedMessage("count must be positive", code=ErrorCode.BAD_FIELD)
        if spec.value_micros > _MAX_BATCH_MICROS:
            raise MalformedMessage("the batch is worth too much", code=ErrorCode.OVERSIZED)
        if not self._clock.now() < spec.expires_at < 2**63:
            raise MalformedMessage("expiry must lie in the future", code=ErrorCode.BAD_FIELD)

    def _card_rows(
        self, batch: SzmBatchRow, spec: BatchSpec, now: int, progress: Progress | None
    ) -> list[SzmCardRow]:
        master = self._masters[spec.protocol]
        generator = _generator(spec)
        rows = []
        for index in range(spec.count):
            card_id = derive_card_id(master, batch.batch_id, index)
            anchor = None
            if spec.protocol is SzmProtocol.CHAIN:
                anchor = szm_chain.initial_state(
                    master,
                    card_id,
                    length=spec.units,
                    denomination=spec.denomination,
                    expires_at=spec.expires_at,
                ).anchor
            rows.append(
                SzmCardRow(
                    card_id=card_id,
                    batch_id=batch.batch_id,
                    protocol=spec.protocol,
                    generator=None if generator is None else generator.value,
                    currency=batch.currency,
                    unit_micros=batch.unit_micros,
                    units=spec.units,
                    spent=0,
                    anchor=anchor,
                    expires_at=spec.expires_at,
                    status=CardStatus.ACTIVE,
                    issued_at=now,
                )
            )
            if progress is not None:
                progress(index + 1)
        return rows

    # --- exporting ------------------------------------------------------------------------

    def batch(self, batch_id: bytes) -> SzmBatchRow:
        with self._store.transaction(readonly=True) as tx:
            row = tx.szm.batch(batch_id)
        if row is None:
            raise NotFound("no such batch")
        return row

    def batches(self) -> list[SzmBatchRow]:
        """Every batch sold, newest first."""
        with self._store.transaction(readonly=True) as tx:
            return tx.szm.batches()

    def value_summary(self, currency: str) -> CardValue:
        """What happened to the face value of the cards sold in ``currency`` (now)."""
        with self._store.transaction(readonly=True) as tx:
            spent, valid, expired = tx.szm.value_summary(currency, self._clock.now())
        return CardValue(currency=currency, spent=spent, outstanding=valid, expired=expired)

    def export(self, actor: str, batch_id: bytes, *, offset: int, limit: int) -> ExportPage:
        """The codes of cards ``offset .. offset + limit - 1`` of a batch (audited: they
        carry the card secrets)."""

        def unit(tx: Tx) -> ExportPage:
            batch = tx.szm.batch(batch_id)
            if batch is None:
                raise NotFound("no such batch")
            master = self._masters[batch.protocol]
            stop = min(batch.count, offset + limit)
            cards = []
            for index in range(offset, stop):
                row = tx.szm.card(derive_card_id(master, batch_id, index))
                if row is None:
                    raise NotFound("a card of this batch is missing")
                cards.append(self._exported(row))
            detail = {"batch": b64url_encode(batch_id), "offset": offset, "count": len(cards)}
            tx.admin.audit(actor, "szm.batch.export", detail)
            return ExportPage(batch=batch, offset=offset, cards=tuple(cards))

        return self._store.run_in_transaction(unit)

    def export_card(self, actor: str, card_id: bytes) -> ExportedCard:
        def unit(tx: Tx) -> ExportedCard:
            row = tx.szm.card(card_id)
            if row is None:
                raise NotFound("no such card")
            tx.admin.audit(actor, "szm.card.export", {"card": b64url_encode(card_id)})
            return self._exported(row)

        return self._store.run_in_transaction(unit)

    def _exported(self, row: SzmCardRow) -> ExportedCard:
        master = self._masters[row.protocol]
        code = szm_issued.card_code(
            row, master=master, realm=self._realm, bbs_modulus=self._bbs.public.n_bytes
        )
        short = shortcode.short_secret(self._masters[row.protocol], row.card_id)
        return ExportedCard(card_id=row.card_id, code=code, short=short)

    # --- the holder's lookup ------------------------------------------------------------------

    def lookup(self, lookup_id: bytes) -> LookupAnswer:
        """The card a typed short code names, for whoever holds the code: NotFound for any
        other lookup id (the id is a one-way function of the code, so only the holder has
        it). Not audited: it reveals nothing the code does not give already."""
        with self._store.transaction(readonly=True) as tx:
            row = tx.szm.card_by_lookup(lookup_id) if len(lookup_id) == 16 else None
        if row is None:
            raise NotFound("no card has this code")
        card = self._exported(row)
        return LookupAnswer(
            code=card.code,
            tag=shortcode.answer_tag(card.short, card.code),
            spent=row.spent,
            status=szm_issued.card_status(row, now=self._clock.now()),
        )

    # --- status and revenue ---------------------------------------------------------------

    def status(self, request: szm_status.StatusRequest) -> CardStatusView:
        """The card's status, for its holder only: the request must carry a fresh proof of
        the card secret (:mod:`farthing.core.schemes.szm_status`). NotFound alike for an
        unknown card and a wrong proof; AccessDenied for a stale time."""
        now = self._clock.now()
        szm_status.check_time(request, now=now)
        row = self._store.szm_card(request.card_id) if len(request.card_id) == 16 else None
        secret = None if row is None else self._card_secret(row.protocol, row.card_id)
        szm_status.verify_status_request(request, secret, now=now)
        assert row is not None  # verify_status_request refuses a missing card
        return CardStatusView(
            card_id=row.card_id,
            units=row.units,
            spent=row.spent,
            expires_at=row.expires_at,
            status=szm_issued.card_status(row, now=now),
        )

    def _card_secret(self, protocol: SzmProtocol, card_id: bytes) -> bytes:
        master = self._masters[protocol]
        if protocol is SzmProtocol.CHAIN:
            return szm_chain.card_secret(master, card_id)
        return szm_prbg.card_secret(master, card_id)

    def recognise_revenue(self, actor: str, currency: str) -> int:
        """Move the spent, not yet recognised SZM value to revenue; return it in micros."""
        reference = f"szm-revenue:{currency}:{self._clock.now()}:{self._rng(8).hex()}"

        def unit(tx: Tx) -> int:
            books = self._system.books(tx, currency)
            micros = tx.szm.recognize_revenue(books.szm_revenue, books.szm_float, reference)
            tx.admin.audit(actor, "szm.revenue", {"currency": currency, "micros": micros})
            return micros

        return self._store.run_in_transaction(unit)


@dataclass(frozen=True, slots=True, kw_only=True)
class CardValue:
    """Face value of sold SZM cards in micros: ``spent`` (units paid to vendors: earned,
    recognised as revenue by :meth:`SzmService.recognise_revenue`), ``outstanding``
    (unspent, on cards still valid: owed to card holders) and ``expired`` (unspent on
    expired cards: breakage; reported, left in the prepaid float until the operator decides)."""

    currency: str
    spent: int
    outstanding: int
    expired: int


def _generator(spec: BatchSpec) -> Generator | None:
    if spec.protocol is SzmProtocol.PRBG and spec.generator is None:
        return Generator.HMAC_CTR
    return spec.generator
