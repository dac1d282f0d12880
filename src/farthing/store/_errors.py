"""Translate SQLAlchemy and driver exceptions into farthing's error tree, at the store edge.

::

    sqlalchemy.exc.IntegrityError, unique or primary key     -> Conflict(CONFLICT)
        (a replay guard raises Conflict(DUPLICATE_SPEND) itself, see unique_violation_as)
    sqlalchemy.exc.DBAPIError, lock / busy / serialization  -> Conflict(CONFLICT), retryable
    no free pooled connection (the pool's wait ran out), or
    the server refusing more clients ("too many clients")   -> Unavailable(STORE_UNAVAILABLE)
    anything else                                           -> re-raised unchanged

Unavailable is answered 503 with Retry-After at the HTTP edge: the request did nothing and
may be sent again, unlike a 500.

A retryable conflict means "the store was busy or the transaction lost a race; run the
whole unit of work again": :func:`is_retryable` tells it apart from a final conflict (a
repeated reference) by looking at the driver error kept in ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy import exc as sa_exc

from farthing.core.errors import Conflict, ErrorCode, Unavailable

__all__ = [
    "RETRY_AFTER_S",
    "busy_conflict",
    "is_busy",
    "is_out_of_connections",
    "is_retryable",
    "is_unique_violation",
    "map_db_errors",
    "unique_violation_as",
]

# PostgreSQL SQLSTATEs and SQLite extended error names, as the drivers report them.
_UNIQUE_CODES: Final = frozenset(
    {"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
)
_RETRYABLE_CODES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "SQLITE_BUSY",
        "SQLITE_BUSY_SNAPSHOT",
        "SQLITE_BUSY_RECOVERY",
        "SQLITE_BUSY_TIMEOUT",
        "SQLITE_LOCKED",
        "SQLITE_LOCKED_SHAREDCACHE",
    }
)

# The server has no connection slot left: SQLSTATE too_many_connections, cannot_connect_now.
# psycopg reports a refused connection attempt without a SQLSTATE, so its text is matched too.
_NO_SLOT_CODES: Final = frozenset({"53300", "57P03"})
_NO_SLOT_TEXT: Final = ("too many clients", "remaining connection slots are reserved")
RETRY_AFTER_S: Final = 1
"""What a 503 for a store out of connections asks the client to wait, in seconds."""


def _driver_code(exc: BaseException) -> str | None:
    """psycopg's SQLSTATE or sqlite3's error name, from a driver error or SQLAlchemy's wrapper."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return code if isinstance(code, str) else None


class _TurnTaken(Exception):
    """Another thread of this process holds the SQLite write turn (see Store)."""

    sqlite_errorname = "SQLITE_BUSY"  # busy, as if SQLite had said so: retryable


def busy_conflict() -> Conflict:
    """The retryable Conflict of a write that would have to wait and may not."""
    error = Conflict("the store is busy; try again")
    error.__cause__ = _TurnTaken()
    return error


def is_unique_violation(exc: BaseException) -> bool:
    return _driver_code(exc) in _UNIQUE_CODES


def is_busy(exc: BaseException) -> bool:
    """A driver (or SQLAlchemy) error saying the store was busy or a transaction lost."""
    return _driver_code(exc) in _RETRYABLE_CODES


def is_out_of_connections(exc: BaseException) -> bool:
    """No connection to be had: the pool's wait ran out, or the server refused a client."""
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if _driver_code(exc) in _NO_SLOT_CODES:
        return True
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if type(orig).__name__ != "OperationalError":
        return False
    text = str(orig)
    return any(phrase in text for phrase in _NO_SLOT_TEXT)


def is_retryable(error: BaseException) -> bool:
    """True for a Conflict raised because the store was busy or a serializable unit lost."""
    return isinstance(error, Conflict) and error.__cause__ is not None and is_busy(error.__cause__)


@contextmanager
def map_db_errors() -> Iterator[None]:
    """Re-raise database errors as farthing errors (``raise ... from`` the original).

    Handles SQLAlchemy's wrapped errors and raw driver errors (from the hot path) alike.
    """
    try:
        yield
    except Exception as exc:
        if is_unique_violation(exc):
            raise Conflict("the record already exists") from exc
        if is_busy(exc):
            raise Conflict("the store is busy; try again") from exc
        if is_out_of_connections(exc):
            raise Unavailable(
                "the store has no free connection; try again", retry_after=RETRY_AFTER_S
            ) from exc
        raise


@contextmanager
def unique_violation_as(code: ErrorCode, message: str) -> Iterator[None]:
    """Inside: a unique-key violation becomes ``Conflict(message, code=code)``."""
    try:
        yield
    except Exception as exc:
        if is_unique_violation(exc):
            raise Conflict(message, code=code) from exc
        raise
