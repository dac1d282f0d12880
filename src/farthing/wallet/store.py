"""The wallet file: one SQLite database, safe for several processes, secrets sealed.

Tables (SQLAlchemy Core; the file carries its format version in ``meta``):

``meta``         key/value: format version, the passphrase KDF (Argon2id) parameters, the
                 passphrase check value, the saved spending policy.
``cards``        one row per card: public terms in the clear (method, realm, denomination,
                 totals, expiry), the position ``spent`` (SZM index, HLL counter) and units
                 left ``balance`` in the clear, the card's secret and any secret mutable state
                 (a BBS generator position) sealed (:mod:`farthing.wallet.secretbox`).
                 ``UNIQUE (method, card_key)``: a card added twice would pay the same index
                 twice, so the database refuses it.
``commitments``  PayWord: one row per commitment made to a vendor, its seed sealed.
``history``      every payment that left the wallet and how it ended.
``pending``      payments sent and not settled yet: where the card was before (to give the
                 position back when the vendor did not take it), and the credential, sealed
                 (to resend it as it was when the answer was lost). Added by this version;
                 an older file gets it (and ``refusals``) when it is opened.
``refusals``     (card, realm) pairs a vendor refused as invalid: not offered there again.

Concurrency and crash safety. WAL journal (readers never block the writer),
``synchronous=FULL`` (a commit is on disk when it returns), a 10 s busy timeout, and every
write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken before the card
state is read, so two processes paying with one card queue up and never read the same
index. The wallet advances a card inside :meth:`WalletStore.writing` and sends the payment
only after that transaction committed (write-ahead): a crash can lose the in-flight unit,
never reuse one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, RowMapping
from sqlalchemy.engine.interfaces import DBAPIConnection, ExceptionContext
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from farthing.core.clock import RandomSource
from farthing.core.errors import Conflict, ErrorCode, LocalProtocolError, ResourceBusy
from farthing.wallet.secretbox import KdfParams, SecretBox, record_id

__all__ = [
    "FORMAT_VERSION",
    "CardRow",
    "CommitmentRow",
    "HistoryEntry",
    "NewCard",
    "Outcome",
    "PendingPayment",
    "Released",
    "WalletStore",
    "WriteTx",
]

FORMAT_VERSION: Final = 1
_BUSY_TIMEOUT_S: Final = 10
_READONLY: Final = "farthing_wallet_readonly"
_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}",
)

# SQLite's primary result codes for "another process holds the file" and "the file cannot be
# written": outside failures (ResourceBusy), unlike "no such table" (a foreign file).
_OUTSIDE_FAILURES: Final = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR,
     sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN}
)  # fmt: skip
_BUSY_MESSAGE: Final = "the wallet file is busy or unwritable"

_metadata = MetaData()

_meta = Table(
    "meta",
    _metadata,
    Column("key", String, primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

_cards = Table(
    "cards",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("label", String, nullable=False, unique=True),
    Column("method", String, nullable=False),
    Column("card_key", LargeBinary, nullable=False),
    Column("realm", String, nullable=True),
    Column("currency", String, nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("params", Text, nullable=False),
    Column("secret", LargeBinary, nullable=False),
    Column("state", LargeBinary, nullable=True),
    Column("added_at", BigInteger, nullable=False),
    UniqueConstraint("method", "card_key"),
)

_commitments = Table(
    "commitments",
    _metadata,
    Column("id", LargeBinary, primary_key=True),
    Column("card", Integer, ForeignKey("cards.id"), nullable=False),
    Column("vendor_id", String, nullable=False),
    Column("encoded", LargeBinary, nullable=False),
    Column("seed", LargeBinary, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("unit_micros", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("acknowledged", Integer, nullable=False),
    Column("retired", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_commitments_card_vendor", "card", "vendor_id"),
)

_history = Table(
    "history",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("url", Text, nullable=False),
    Column("host", String, nullable=False),
    Column("method", String, nullable=False),
    Column("card_label", String, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("price_micros", BigInteger, nullable=False),
    Column("charged_micros", BigInteger, nullable=False),
    Column("currency", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("status", Integer, nullable=True),
    Index("ix_history_currency_at", "currency", "at"),
)


# A payment that left the wallet and whose answer is not settled yet. ``state`` is ``sent``
# (in flight) or ``lost`` (the answer never came, or came with a receipt but no good): a lost
# payment is resent as it is, byte for byte, for the next request to its URL until
# ``expires_at`` (its challenge's expiry), and its card pays nothing new meanwhile. The
# ``from_*``/``to_*`` columns let a payment the vendor did not take be released: the card
# (or PayWord commitment) goes back to where it was, so the next payment reuses the position.
_pending = Table(
    "pending",
    _metadata,
    Column("history_id", Integer, ForeignKey("history.id"), primary_key=True),
    Column("card", Integer, ForeignKey("cards.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("realm", String, nullable=False),
    Column("state", String, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("from_spent", BigInteger, nullable=False),
    Column("from_balance", BigInteger, nullable=False),
    Column("from_state", LargeBinary, nullable=True),
    Column("to_spent", BigInteger, nullable=False),
    Column("commitment", LargeBinary, nullable=True),
    Column("commitment_from", BigInteger, nullable=True),
    Column("commitment_to", BigInteger, nullable=True),
    Column("payment", LargeBinary, nullable=True),
    Index("ix_pending_url", "url"),
)

# A card a vendor refused as invalid (unknown, blocked, exhausted, expired) is not offered
# to that realm again.
_refusals = Table(
    "refusals",
    _metadata,
    Column("card", Integer, ForeignKey("cards.id"), primary_key=True),
    Column("realm", String, primary_key=True),
    Column("code", Integer, nullable=True),
    Column("at", BigInteger, nullable=False),
)


class Outcome:
    """How a payment ended (the ``history.outcome`` vocabulary)."""

    PENDING: Final = "pending"
    PAID: Final = "paid"
    REFUSED: Final = "refused"
    SEAL_BROKEN: Final = "seal-broken"
    FAILED: Final = "failed"
    # The vendor answered without a receipt: it did not take the payment, and the card's
    # position was given back (``refused`` when it could not be: a later payment was made).
    RELEASED: Final = "released"
    # Lost and not resolved within its challenge's lifetime: the units may be spent.
    LOST: Final = "lost"
    # Not a payment of this wallet: units a copy of the card (another wallet, the wallet
    # before a backup was restored) paid, skipped when the vendor said where the card is
    # (PAYMENT_STALE); ``position`` is that place, ``units`` how many were skipped.
    SPENT_ELSEWHERE: Final = "spent-elsewhere"


# Outcomes whose money is not counted against the spending policy. Units spent elsewhere
# are counted: only the vendor says so, and the policy bounds what a vendor can take.
_NOT_SPENT: Final = (Outcome.RELEASED,)


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingPayment:
    """What the wallet must remember about a payment in flight (see ``_pending``)."""

    history_id: int
    card: int
    url: str
    realm: str
    expires_at: int
    from_spent: int
    from_balance: int
    from_state: bytes | None
    to_spent: int
    commitment: bytes | None = None
    commitment_from: int | None = None
    commitment_to: int | None = None
    state: str = "sent"
    payment: bytes | None = None


# --- row values ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewCard:
    """A card to insert; ``secret``/``state`` are already sealed for ``(method, card_key)``."""

    label: str
    method: str
    card_key: bytes
    realm: str | None
    currency: str
    unit_micros: int
    total: int
    spent: int
    balance: int
    expires_at: int
    params: Mapping[str, object]
    secret: bytes
    state: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CardRow:
    """One stored card. ``params`` is public JSON; ``secret``/``state`` are sealed bytes."""

    id: int
    label: str
    method: str
    card_key: bytes
    realm: str | None
    currency: str
    unit_micros: int
    total: int
    spent: int
    balance: int
    expires_at: int
    params: Mapping[str, object]
    secret: bytes
    state: bytes | None
    added_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentRow:
    id: bytes
    card: int
    vendor_id: str
    encoded: bytes
    seed: bytes
    length: int
    spent: int
    unit_micros: int
    expires_at: int
    acknowledged: bool
    retired: bool
    created_at: int

    @property
    def remaining(self) -> int:
        return self.length - self.spent


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    at: int
    url: str
    host: str
    method: str
    card_label: str
    units: int
    position: int
    price_micros: int
    charged_micros: int
    currency: str
    outcome: str = Outcome.PENDING
    status: int | None = None
    id: int = 0


def _card_row(row: RowMapping) -> CardRow:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    return CardRow(**values)


def _commitment_row(row: RowMapping) -> CommitmentRow:
    values = dict(row)
    values["acknowledged"] = bool(values["acknowledged"])
    values["retired"] = bool(values["retired"])
    return CommitmentRow(**values)


# --- engine set-up -------------------------------------------------------------------------


def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control away from pysqlite; the "begin" listener emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _on_begin(connection: Connection) -> None:
    readonly = connection.get_execution_options().get(_READONLY, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _engine(path: Path) -> Engine:
    engine = create_engine(
        URL.create("sqlite+pysqlite", database=str(path)),
        connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False},
    )
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    event.listen(engine, "handle_error", _on_error)
    return engine


def _on_error(context: ExceptionContext) -> None:
    """Any statement (BEGIN IMMEDIATE included) that fails because another process holds
    the wallet, or the file cannot be written, raises ResourceBusy, SQLite's error its cause."""
    code = getattr(context.original_exception, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _OUTSIDE_FAILURES:  # extended codes too
        raise ResourceBusy(_BUSY_MESSAGE) from context.sqlalchemy_exception


def _create_private_file(path: Path) -> None:
    """The wallet file, readable by its owner only; refuses to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"a wallet already exists at {path}") from None
    os.close(fd)


# --- the store -----------------------------------------------------------------------------


class WalletStore:
    """The wallet file. Create with :meth:`create`, open with :meth:`open`, then :meth:`close`."""

    __slots__ = ("_box", "_engine", "_read", "path")

    def __init__(self, path: Path, engine: Engine, box: SecretBox) -> None:
        """Private: use :meth:`create` or :meth:`open`."""
        self.path = path
        self._engine = engine
        self._read = engine.execution_options(**{_READONLY: True})
        self._box = box

    @classmethod
    def create(cls, path: Path, passphrase: str, *, rng: RandomSource) -> WalletStore:
        """A new, empty wallet file. Raises Conflict if the file exists."""
        params = KdfParams.fresh(rng)
        box = SecretBox.derive(passphrase, params, rng)
        _create_private_file(path)
        engine = _engine(path)
        try:
            with engine.begin() as conn:
                _metadata.create_all(conn)
                conn.execute(
                    insert(_meta),
                    [
                        {"key": "format", "value": str(FORMAT_VERSION).encode()},
                        {"key": "kdf", "value": json.dumps(params.to_json()).encode()},
                        {"key": "check", "value": box.check_value()},
                    ],
                )
        except BaseException:
            engine.dispose()
            raise
        return cls(path, engine, box)

    @classmethod
    def open(cls, path: Path, passphrase: str, *, rng: RandomSource) -> WalletStore:
        """Open an existing wallet. Raises LocalProtocolError: NOT_FOUND (no file),
        WRONG_PASSPHRASE, UNKNOWN_VERSION (a newer format), KDF_TOO_WEAK
        (its passphrase protection is under today's minimum: :meth:`upgrade` it)."""
        engine = _open_engine(path)
        try:
            meta = _read_meta(engine, path)
            _check_format(meta, path)
            with engine.begin() as conn:
                _metadata.create_all(conn)  # tables newer than the file (pending, refusals)
            params = _kdf_params(meta)
            params.require_strong()  # before the passphrase is even tried
            box = SecretBox.derive(passphrase, params, rng)
            box.verify_check(meta["check"])
        except BaseException:
            engine.dispose()
            raise
        return cls(path, engine, box)

    @classmethod
    def upgrade(cls, path: Path, passphrase: str, *, rng: RandomSource) -> bool:
        """Re-seal every secret of the wallet at ``path`` under fresh Argon2id parameters at
        today's cost, if its own are weaker; False if there was nothing to do.

        One write transaction: the old key opens each sealed value (record ids do not
        depend on the key), the new one seals it again, and the new parameters and check
        value replace the old. A crash leaves the old wallet whole."""
        engine = _open_engine(path)
        try:
            meta = _read_meta(engine, path)
            _check_format(meta, path)
            old_params = _kdf_params(meta)
            try:
                old_params.require_strong()
                return False
            except LocalProtocolError:
                pass
            old = SecretBox.derive(passphrase, old_params, rng)
            old.verify_check(meta["check"])
            _rekey(engine, old, passphrase, rng)
            return True
        finally:
            engine.dispose()

    @classmethod
    def change_passphrase(cls, path: Path, old: str, new: str, *, rng: RandomSource) -> None:
        """Seal every secret of the wallet at ``path`` again under ``new`` (fresh Argon2id
        parameters), in one write transaction: a crash leaves the old wallet whole.
        WRONG_PASSPHRASE if ``old`` does not open it."""
        engine = _open_engine(path)
        try:
            meta = _read_meta(engine, path)
            _check_format(meta, path)
            params = _kdf_params(meta)
            params.require_strong()
            box = SecretBox.derive(old, params, rng)
            box.verify_check(meta["check"])
            _rekey(engine, box, new, rng)
        finally:
            engine.dispose()

    def close(self) -> None:
        self._engine.dispose()

    @property
    def box(self) -> SecretBox:
        return self._box

    # -- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        with self._read.begin() as conn:
            value: bytes | None = conn.scalar(select(_meta.c.value).where(_meta.c.key == key))
        return value

    def set_meta(self, key: str, value: bytes) -> None:
        with self._engine.begin() as conn:
            done = conn.execute(update(_meta).where(_meta.c.key == key).values(value=value))
            if done.rowcount == 0:
                conn.execute(insert(_meta).values(key=key, value=value))

    # -- cards -----------------------------------------------------------------------------

    def insert_card(self, card: NewCard, *, now: int) -> CardRow:
        """Store a new card; Conflict if this card (or its label) is already in the wallet."""
        values = {**_new_card_values(card), "added_at": now}
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(_cards).values(**values))
                return WriteTx(conn).card_by_label(card.label)
        except IntegrityError:
            raise Conflict(
                "this card, or a card with this label, is already in the wallet"
            ) from None

    def update_params(
        self, label: str, change: Callable[[CardRow], Mapping[str, object]]
    ) -> CardRow:
        """Replace the public ``params`` of the card ``label`` with ``change(card)``, read
        and written in one transaction; NOT_FOUND if there is no such card."""
        with self._engine.begin() as conn:
            card = WriteTx(conn).card_by_label(label)
            params = json.dumps(dict(change(card)), sort_keys=True)
            conn.execute(update(_cards).where(_cards.c.id == card.id).values(params=params))
            return WriteTx(conn).card(card.id)

    def remove_card(self, label: str) -> CardRow:
        """Delete the card ``label`` with its commitments and refusals (history keeps its
        label). NOT_FOUND if there is none; Conflict while a payment of it is in flight."""
        with self._engine.begin() as conn:
            card = WriteTx(conn).card_by_label(label)
            if conn.scalar(select(func.count()).where(_pending.c.card == card.id)):
                raise Conflict(
                    f"{label} has a payment whose answer is not known yet; fetch that URL "
                    "again first (see `farthing wallet history`)"
                )
            conn.execute(delete(_refusals).where(_refusals.c.card == card.id))
            conn.execute(delete(_commitments).where(_commitments.c.card == card.id))
            conn.execute(delete(_cards).where(_cards.c.id == card.id))
            return card

    def rename_card(self, label: str, new_label: str) -> CardRow:
        """Give the card ``label`` another label; Conflict if ``new_label`` is taken."""
        try:
            with self._engine.begin() as conn:
                card = WriteTx(conn).card_by_label(label)
                conn.execute(update(_cards).where(_cards.c.id == card.id).values(label=new_label))
                return WriteTx(conn).card(card.id)
        except IntegrityError:
            raise Conflict(f"a card labelled {new_label!r} is already in the wallet") from None

    def cards(self) -> list[CardRow]:
        with self._read.begin() as conn:
            rows = conn.execute(select(_cards).order_by(_cards.c.id)).mappings().all()
        return [_card_row(row) for row in rows]

    def commitments(self, card: int) -> list[CommitmentRow]:
        query = select(_commitments).where(_commitments.c.card == card)
        with self._read.begin() as conn:
            rows = conn.execute(query.order_by(_commitments.c.created_at)).mappings().all()
        return [_commitment_row(row) for row in rows]

    # -- history ---------------------------------------------------------------------------

    def history(self, *, limit: int = 50) -> list[HistoryEntry]:
        query = select(_history).order_by(_history.c.id.desc()).limit(limit)
        with self._read.begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [HistoryEntry(**dict(row)) for row in rows]

    def finish(self, history_id: int, outcome: str, *, status: int | None = None) -> None:
        statement = (
            update(_history)
            .where(_history.c.id == history_id)
            .values(outcome=outcome, status=status)
        )
        with self._engine.begin() as conn:
            conn.execute(statement)

    def usage(self, *, host: str, since: int) -> dict[str, tuple[int, int]]:
        """Micros charged per currency after ``since``: (all hosts, this host)."""
        with self._read.begin() as conn:
            return _usage(conn, host=host, since=since)

    def acknowledge(self, commitment_id: bytes) -> None:
        """The vendor accepted a payment under this commitment: stop resending it."""
        statement = (
            update(_commitments).where(_commitments.c.id == commitment_id).values(acknowledged=1)
        )
        with self._engine.begin() as conn:
            conn.execute(statement)

    def retire(self, commitment_id: bytes) -> None:
        """Never pay under this commitment again (the vendor refused a payment under it)."""
        statement = update(_commitments).where(_commitments.c.id == commitment_id).values(retired=1)
        with self._engine.begin() as conn:
            conn.execute(statement)

    # -- payments in flight ------------------------------------------------------------------

    def keep_payment(self, history_id: int, sealed: bytes) -> None:
        """Store the sealed credential of a payment about to leave (to resend it if lost)."""
        statement = (
            update(_pending).where(_pending.c.history_id == history_id).values(payment=sealed)
        )
        with self._engine.begin() as conn:
            conn.execute(statement)

    def mark(self, history_id: int, state: str) -> None:
        """``sent`` (in flight again) or ``lost`` (its answer never came)."""
        statement = update(_pending).where(_pending.c.history_id == history_id).values(state=state)
        with self._engine.begin() as conn:
            conn.execute(statement)

    def resolve(self, history_id: int, outcome: str, *, status: int | None = None) -> None:
        """The payment's answer is known: record it and forget the payment."""
        with self._engine.begin() as conn:
            _finish(conn, history_id, outcome, status)
            conn.execute(delete(_pending).where(_pending.c.history_id == history_id))

    def release(self, history_id: int, *, status: int, refused_code: int | None, now: int) -> bool:
        """The vendor did not take this payment: give its position back to the card.

        Only when nothing was paid from the card (or commitment) since; then the next
        payment reuses the position, which is safe because the payment never counted.
        ``refused_code`` (not None) also marks the card refused at the payment's realm.
        Returns whether the position was given back.
        """
        with self._engine.begin() as conn:
            row = _release(conn, history_id, status=status, refused_code=refused_code, now=now)
        return row is not None and row.released

    def lost_for(self, url: str, *, now: int) -> list[PendingPayment]:
        """Lost payments for ``url`` that may still be resent, oldest first."""
        p = _pending.c
        query = (
            select(_pending)
            .where(p.url == url, p.state == "lost", p.expires_at > now, p.payment.is_not(None))
            .order_by(p.history_id)
        )
        with self._read.begin() as conn:
            return [PendingPayment(**dict(row)) for row in conn.execute(query).mappings()]

    def expire_lost(self, *, now: int) -> None:
        """Lost payments whose challenge expired cannot be resent: record them as lost."""
        p = _pending.c
        gone = (p.state == "lost") & ((p.expires_at <= now) | p.payment.is_(None))
        with self._read.begin() as conn:  # the usual case: nothing to do, no write lock
            if conn.scalar(select(p.history_id).where(gone).limit(1)) is None:
                return
        with self._engine.begin() as conn:
            ids = list(conn.scalars(select(p.history_id).where(gone)))
            for history_id in ids:
                _finish(conn, history_id, Outcome.LOST, None)
            if ids:
                conn.execute(delete(_pending).where(p.history_id.in_(ids)))

    def blocked_cards(self) -> set[int]:
        """Cards with a lost payment not resolved yet: they pay nothing new meanwhile."""
        query = select(_pending.c.card).where(_pending.c.state == "lost").distinct()
        with self._read.begin() as conn:
            return set(conn.scalars(query))

    def refusals(self) -> set[tuple[int, str]]:
        """(card, realm) pairs a vendor refused as invalid."""
        with self._read.begin() as conn:
            rows = conn.execute(select(_refusals.c.card, _refusals.c.realm)).all()
        return {(int(card), str(realm)) for card, realm in rows}

    # -- the write-ahead transaction ---------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[WriteTx]:
        """One ``BEGIN IMMEDIATE`` transaction: read state, advance it, commit; or roll back."""
        try:
            with self._engine.begin() as conn:
                yield WriteTx(conn)
        except OperationalError as exc:
            raise ResourceBusy(_BUSY_MESSAGE) from exc


class WriteTx:
    """The statements that may run inside :meth:`WalletStore.writing`."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def card(self, card_id: int) -> CardRow:
        return self._one_card(select(_cards).where(_cards.c.id == card_id))

    def card_by_label(self, label: str) -> CardRow:
        return self._one_card(select(_cards).where(_cards.c.label == label))

    def _one_card(self, query: Select[tuple[object, ...]]) -> CardRow:
        row = self._conn.execute(query).mappings().first()
        if row is None:
            raise LocalProtocolError("no such card in the wallet", code=ErrorCode.NOT_FOUND)
        return _card_row(row)

    def advance_card(
        self, card: CardRow, *, spent: int, balance: int, state: bytes | None
    ) -> CardRow:
        """Write the card's new position; the caller read ``card`` in this transaction."""
        self._conn.execute(
            update(_cards)
            .where(_cards.c.id == card.id)
            .values(spent=spent, balance=balance, state=state)
        )
        return replace(card, spent=spent, balance=balance, state=state)

    def usage(self, *, host: str, since: int) -> dict[str, tuple[int, int]]:
        return _usage(self._conn, host=host, since=since)

    def add_history(self, entry: HistoryEntry) -> int:
        values = {
            name: getattr(entry, name) for name in HistoryEntry.__dataclass_fields__ if name != "id"
        }
        key = self._conn.execute(insert(_history).values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def open_commitments(self, card: int, vendor_id: str, unit_micros: int) -> list[CommitmentRow]:
        """Commitments to ``vendor_id`` that may still pay, newest first."""
        c = _commitments.c
        query = (
            select(_commitments)
            .where(c.card == card, c.vendor_id == vendor_id, c.unit_micros == unit_micros)
            .where(c.retired == 0, c.spent < c.length)
            .order_by(c.created_at.desc(), c.spent.desc())
        )
        return [_commitment_row(row) for row in self._conn.execute(query).mappings()]

    def add_pending(self, pending: PendingPayment) -> None:
        values = {name: getattr(pending, name) for name in PendingPayment.__dataclass_fields__}
        self._conn.execute(insert(_pending).values(**values))

    def insert_commitment(self, row: CommitmentRow) -> None:
        values = {name: getattr(row, name) for name in CommitmentRow.__dataclass_fields__}
        values["acknowledged"] = int(row.acknowledged)
        values["retired"] = int(row.retired)
        self._conn.execute(insert(_commitments).values(**values))

    def release(
        self, history_id: int, *, status: int, refused_code: int | None, now: int
    ) -> Released | None:
        """:meth:`WalletStore.release` inside this transaction; None if no such payment."""
        return _release(self._conn, history_id, status=status, refused_code=refused_code, now=now)

    def refuse(self, card: int, realm: str, *, code: int, now: int) -> None:
        """Do not offer ``card`` at ``realm`` again."""
        _refuse(self._conn, card, realm, code, now)

    def retire(self, commitment_id: bytes) -> None:
        self._conn.execute(
            update(_commitments).where(_commitments.c.id == commitment_id).values(retired=1)
        )

    def commitment(self, commitment_id: bytes) -> CommitmentRow | None:
        query = select(_commitments).where(_commitments.c.id == commitment_id)
        row = self._conn.execute(query).mappings().first()
        return None if row is None else _commitment_row(row)

    def advance_commitment(self, row: CommitmentRow, spent: int) -> None:
        self._conn.execute(
            update(_commitments).where(_commitments.c.id == row.id).values(spent=spent)
        )


# --- helpers -------------------------------------------------------------------------------


def _new_card_values(card: NewCard) -> dict[str, object]:
    values = {name: getattr(card, name) for name in NewCard.__dataclass_fields__}
    values["params"] = json.dumps(dict(card.params), sort_keys=True)
    return values


def _finish(conn: Connection, history_id: int, outcome: str, status: int | None) -> None:
    conn.execute(
        update(_history).where(_history.c.id == history_id).values(outcome=outcome, status=status)
    )


def _pending_row(conn: Connection, history_id: int) -> PendingPayment | None:
    query = select(_pending).where(_pending.c.history_id == history_id)
    row = conn.execute(query).mappings().first()
    return None if row is None else PendingPayment(**dict(row))


@dataclass(frozen=True, slots=True)
class Released:
    """A payment the vendor did not take, settled: its pending row, and whether its
    position went back to the card (commitment)."""

    pending: PendingPayment
    released: bool


def _release(
    conn: Connection, history_id: int, *, status: int, refused_code: int | None, now: int
) -> Released | None:
    row = _pending_row(conn, history_id)
    if row is None:
        return None
    released = _give_back(conn, row)
    if refused_code is not None:
        _refuse(conn, row.card, row.realm, refused_code, now)
    outcome = Outcome.RELEASED if released else Outcome.REFUSED
    _finish(conn, history_id, outcome, status)
    conn.execute(delete(_pending).where(_pending.c.history_id == history_id))
    return Released(row, released)


def _refuse(conn: Connection, card: int, realm: str, code: int, now: int) -> None:
    conn.execute(delete(_refusals).where(_refusals.c.card == card, _refusals.c.realm == realm))
    conn.execute(insert(_refusals).values(card=card, realm=realm, code=code, at=now))


def _give_back(conn: Connection, row: PendingPayment) -> bool:
    """Put the card (and commitment) back where ``row`` found it, if nothing moved since."""
    c = _cards.c
    card_back = conn.execute(
        update(_cards)
        .where(c.id == row.card, c.spent == row.to_spent)
        .values(spent=row.from_spent, balance=row.from_balance, state=row.from_state)
    ).rowcount
    if row.commitment is None:
        return bool(card_back)
    m = _commitments.c
    commitment_back = conn.execute(
        update(_commitments)
        .where(m.id == row.commitment, m.spent == row.commitment_to)
        .values(spent=row.commitment_from)
    ).rowcount
    return bool(commitment_back)


def _usage(conn: Connection, *, host: str, since: int) -> dict[str, tuple[int, int]]:
    h = _history.c
    on_host = func.sum(h.charged_micros).filter(h.host == host)
    query = (
        select(h.currency, func.sum(h.charged_micros), on_host)
        .where(h.at > since, h.outcome.not_in(_NOT_SPENT))
        .group_by(h.currency)
    )
    return {
        currency: (int(total or 0), int(here or 0)) for currency, total, here in conn.execute(query)
    }


def _open_engine(path: Path) -> Engine:
    if not path.is_file():
        raise LocalProtocolError(f"no wallet at {path}", code=ErrorCode.NOT_FOUND)
    return _engine(path)


def _kdf_params(meta: dict[str, bytes]) -> KdfParams:
    try:
        document = json.loads(meta["kdf"])
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise LocalProtocolError("the wallet's KDF record is damaged", code=ErrorCode.BAD_FIELD)
    return KdfParams.from_json(document)


def _rekey(engine: Engine, old: SecretBox, passphrase: str, rng: RandomSource) -> None:
    """Every secret sealed again under a key from ``passphrase`` and fresh KDF parameters."""
    params = KdfParams.fresh(rng)
    new = SecretBox.derive(passphrase, params, rng)
    with engine.begin() as conn:
        _reseal_all(conn, old, new)
        for key, value in (
            ("kdf", json.dumps(params.to_json()).encode()),
            ("check", new.check_value()),
        ):
            conn.execute(update(_meta).where(_meta.c.key == key), {"value": value})


def _reseal_all(conn: Connection, old: SecretBox, new: SecretBox) -> None:
    """Every sealed value, opened with ``old`` and sealed again with ``new`` under the same
    record id (the ids :func:`farthing.wallet.cards.secret_record` and the commitment
    seeds use)."""

    def again(record: bytes, sealed: bytes | None) -> bytes | None:
        return None if sealed is None else new.seal(record, old.open(record, sealed))

    for card in conn.execute(select(_cards)).mappings().all():
        table, key = "cards/" + card["method"], card["card_key"]
        values = {
            "secret": again(record_id(table, key, "secret"), card["secret"]),
            "state": again(record_id(table, key, "state"), card["state"]),
        }
        conn.execute(update(_cards).where(_cards.c.id == card["id"]), values)
    for row in conn.execute(select(_commitments.c.id, _commitments.c.seed)).all():
        seed = again(record_id("commitments", row.id, "seed"), row.seed)
        conn.execute(update(_commitments).where(_commitments.c.id == row.id), {"seed": seed})


def _read_meta(engine: Engine, path: Path) -> dict[str, bytes]:
    try:
        with engine.execution_options(**{_READONLY: True}).begin() as conn:
            return {key: value for key, value in conn.execute(select(_meta.c.key, _meta.c.value))}
    except DatabaseError as exc:  # no such table, or not SQLite at all
        raise LocalProtocolError(
            f"{path} is not a farthing wallet", code=ErrorCode.UNKNOWN_VERSION
        ) from exc


def _check_format(meta: dict[str, bytes], path: Path) -> None:
    version = meta.get("format")
    if version is None or "kdf" not in meta or "check" not in meta:
        raise LocalProtocolError(f"{path} is not a farthing wallet", code=ErrorCode.UNKNOWN_VERSION)
    if version != str(FORMAT_VERSION).encode():
        raise LocalProtocolError(
            f"{path} has wallet format {version.decode(errors='replace')}; "
            f"this farthing reads format {FORMAT_VERSION}",
            code=ErrorCode.UNKNOWN_VERSION,
        )
