"""Small shared pieces for the repositories: the unit-of-work context and SQL helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    CursorResult,
    Table,
    cast,
    exc,
    func,
    insert,
    select,
    update,
)

from farthing.core.clock import Clock
from farthing.core.errors import LocalProtocolError
from farthing.core.primitives import sha256
from farthing.store._errors import is_unique_violation
from farthing.store._hot import HotStatements

__all__ = [
    "Area",
    "Ctx",
    "build",
    "dump_json",
    "inserted_id",
    "load_json",
    "require_forward",
    "require_positive",
    "set_card_status",
    "total",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every repository function works with: the open transaction, clock, statements."""

    conn: Connection
    clock: Clock
    hot: HotStatements


class Area:
    """One area's operations (a module's repository), bound to one transaction's context:
    ``tx.hll.add_card(...)``. Each operation is written once, as a method of its area."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx


_LOCK_DOMAIN = b"farthing/store/lock\x00"


def lock_key(ctx: Ctx, name: bytes) -> None:
    """Hold the lock ``name`` until this transaction ends; wait for it if another holds it.

    For a read-then-write unit over one key (a card's deferred risk): run at READ
    COMMITTED, take the key's lock first, and the read that follows sees every earlier
    holder's committed writes. Unlike SERIALIZABLE it never aborts units on *other* keys
    (PostgreSQL's predicate locks are per page, so under load unrelated cards conflicted
    and ran out of retries). PostgreSQL: a transaction-level advisory lock on 64 bits of
    SHA-256(name). SQLite: nothing to do, a write transaction already holds the one lock.
    """
    lock_keys(ctx, [name])


def lock_keys(ctx: Ctx, names: Iterable[bytes]) -> None:
    """:func:`lock_key` for several names, taken in one order for every transaction (by
    the lock's number, so two names that share one still come in the same place): two
    transactions that need overlapping sets then never each hold a lock the other waits
    for."""
    if ctx.conn.dialect.name != "postgresql":
        return
    for number in sorted({_lock_number(name) for name in names}):
        ctx.conn.execute(select(func.pg_advisory_xact_lock(number)))


def _lock_number(name: bytes) -> int:
    return int.from_bytes(sha256(_LOCK_DOMAIN + name)[:8], signed=True)


def total(expr: ColumnElement[int]) -> ColumnElement[int]:
    """SUM(expr) as a BIGINT, 0 over no rows (PostgreSQL's SUM(bigint) is NUMERIC)."""
    return cast(func.coalesce(func.sum(expr), 0), BigInteger)


def require_positive(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LocalProtocolError(f"{what} must be a positive integer")


def require_forward(old_spent: int, new_spent: int) -> None:
    """A spent counter only moves forward: 0 <= old < new."""
    if not 0 <= old_spent < new_spent:
        raise LocalProtocolError("spent only moves forward")


def dump_json(value: Mapping[str, object]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_json(text: str) -> dict[str, object]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("stored JSON is not an object")
    return value


def build(row_type: Callable[..., T], mapping: Mapping[Any, Any], **converted: Any) -> T:
    """A row dataclass from a result mapping whose keys are its field names.

    ``converted`` overrides columns that need a Python type (an enum, parsed JSON).
    """
    return row_type(**{**mapping, **converted})


def inserted_id(result: CursorResult[Any]) -> int:
    """The surrogate key of the row a single-row INSERT created."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the INSERT created no row")
    return int(key[0])


def insert_if_absent(ctx: Ctx, table: Table, values: Mapping[str, object]) -> bool:
    """Insert one row and return True; or return False, changing nothing, if a row with
    its unique key is there already (a savepoint keeps the rest of the transaction)."""
    savepoint = ctx.conn.begin_nested()
    try:
        ctx.conn.execute(insert(table).values(values))
    except exc.IntegrityError as error:
        savepoint.rollback()
        if is_unique_violation(error):
            return False
        raise
    savepoint.commit()
    return True


def set_card_status(ctx: Ctx, cards: Table, card_id: bytes, status: str) -> bool:
    """Set a card's status (HLL or SZM card table); False if there is no such card."""
    stmt = update(cards).where(cards.c.card_id == card_id).values(status=status)
    return ctx.conn.execute(stmt).rowcount == 1
