"""What the three index-advancing schemes share: szm:chain, szm:prbg and payword.

In each, a verifier holds ``spent`` (units taken so far) and a payment names a new
``index``; the payment pays ``index - spent`` units. :func:`units_paid` makes the checks
every such payment needs, in one order for all three (so a hostile index is refused before
any hashing), and :class:`Acceptance` is the base of their receipts, which only the
scheme's own verifier can create (its constructor wants that module's private token).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar, Final, TypeVar

from farthing.core.encoding import Reader, Writer, header
from farthing.core.errors import (
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    PaymentExpired,
)
from farthing.core.retry import same_request

__all__ = [
    "Acceptance",
    "IndexPaymentCodec",
    "Parsed",
    "accept",
    "retried_units",
    "units_paid",
]

A = TypeVar("A", bound="Acceptance")

_VALUE_LEN: Final = 32
_LEN32: Final = _VALUE_LEN.to_bytes(2, "big")


def units_paid(
    same_key: bool,
    spent: int,
    index: int,
    length: int,
    expires_at: int,
    units: int,
    now: int,
    max_units: int,
    what: str,
    /,
) -> int:
    """``index - spent`` if the payment may be checked cryptographically, else raise.

    ``same_key``: the payment names this card (commitment); ``what`` names it in messages.
    Positional-only: called once per payment, where keyword arguments cost a third of the
    payment's hash (bench/core.py).
    A payment may pay more than ``units`` (the price): the excess is units the wallet lost
    in flight, and refusing it would leave a gap no later payment could cross.
    """
    if not 0 < units <= max_units:
        raise ValueError("price out of range for one payment")
    if not same_key or index <= spent:
        raise InvalidPayment()  # another card, a replay or a stale index
    if now >= expires_at:
        raise PaymentExpired(f"{what} expired")
    if index > length:
        raise InsufficientFunds(f"{what} exhausted")
    paid = index - spent
    if paid < units:
        raise InsufficientFunds("payment pays too little", code=ErrorCode.AMOUNT_MISMATCH)
    if paid > max_units:
        raise InvalidPayment()  # bounds the hashing a hostile index can cause
    return paid


def retried_units(
    *,
    same_key: bool,
    spent: int,
    index: int,
    last_request: bytes | None,
    last_units: int,
    request: bytes | None,
) -> int:
    """The units the last accepted payment took, if this payment is that one sent again
    by the same request (:mod:`farthing.core.retry`), else raise the vague refusal.

    Only the payment that moved ``spent`` last can be sent again; the caller still has to
    check that its value is the one accepted (the scheme's own proof, e.g. the anchor).
    """
    if not same_key or index != spent or not same_request(last_request, request):
        raise InvalidPayment()
    return last_units


class Acceptance:
    """A read-only receipt (key, index, units) that only its scheme's verifier creates.

    Subclasses set ``_TOKEN`` to their module's private object and ``_SCHEME`` to their
    name. A plain slotted class, not a frozen dataclass: the vendor makes one per payment,
    and a frozen dataclass's constructor costs more than the payment's hash.
    """

    __slots__ = ("_index", "_key", "_units")
    _TOKEN: ClassVar[object]
    _SCHEME: ClassVar[str]
    _KEY_NAME: ClassVar[str]

    def __init__(self, key: bytes, index: int, units: int, _token: object = None) -> None:
        if _token is not type(self)._TOKEN:
            raise LocalProtocolError(f"only the {self._SCHEME} verifier issues receipts")
        self._key = key
        self._index = index
        self._units = units

    @property
    def index(self) -> int:
        return self._index

    @property
    def units(self) -> int:
        """How many units the payment paid (more than the price after a lost payment)."""
        return self._units

    def _fields(self) -> tuple[bytes, int, int]:
        return self._key, self._index, self._units

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        key, index, units = self._fields()
        return f"{type(self).__name__}({self._KEY_NAME}={key!r}, index={index!r}, units={units!r})"


_new_receipt = object.__new__


def accept(cls: type[A], token: object, key: bytes, index: int, units: int) -> A:
    """A receipt of ``cls``, made by its verifier (``token`` is its module's private
    object): :class:`Acceptance`'s constructor without the call through ``super()``,
    for the one receipt every accepted payment makes."""
    if token is not cls._TOKEN:
        raise LocalProtocolError(f"only the {cls._SCHEME} verifier issues receipts")
    receipt = _new_receipt(cls)
    receipt._key, receipt._index, receipt._units = key, index, units
    return receipt


Parsed = tuple[bytes, int, bytes]
"""A decoded index payment ``(key, index, value)``: the vendor's hot path keeps it as the
plain tuple the parser returns (a dataclass built per payment cost more than its hash)."""


class IndexPaymentCodec:
    """The wire form shared by the three schemes: ``(key, index, 32-byte value)``.

    ``domain || key || u64 index || value`` in the canonical encoding. :attr:`parse`
    unpacks the one canonical layout with a single struct call (the vendor's hot path);
    anything else goes through the Reader, which raises the precise MalformedMessage.
    """

    __slots__ = ("_domain", "_key_len", "_layout", "_prefix", "parse")

    def __init__(self, domain: str, *, key_len: int) -> None:
        self._domain = domain
        self._key_len = key_len
        self._prefix = header(domain) + key_len.to_bytes(2, "big")
        self._layout = struct.Struct(f">{len(self._prefix)}s{key_len}sQ2s{_VALUE_LEN}s")
        self.parse: Final = self._parser()
        """``(key, index, value)`` of an encoded payment, else MalformedMessage."""

    @property
    def size(self) -> int:
        return self._layout.size

    def encode(self, key: bytes, index: int, value: bytes) -> bytes:
        return Writer(self._domain).bytes(key).u64(index).bytes(value).finish()

    def _parser(self) -> Callable[[bytes], Parsed]:
        # A closure over locals, not a method: once per paid request, where each
        # attribute lookup on ``self`` costs a measurable part of the payment's hash.
        unpack, size, prefix = self._layout.unpack, self._layout.size, self._prefix

        def parse(data: bytes) -> Parsed:
            if type(data) is bytes and len(data) == size:
                head, key, index, value_len, value = unpack(data)
                if head == prefix and value_len == _LEN32:
                    return key, index, value
            return self._read(data)

        return parse

    def _read(self, data: bytes) -> Parsed:
        reader = Reader(data, self._domain, max_size=self._layout.size)
        parsed = reader.bytes(exact=self._key_len), reader.u64(), reader.bytes(exact=_VALUE_LEN)
        reader.finish()
        return parsed
