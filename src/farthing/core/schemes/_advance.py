"""What the three index-advancing schemes share: szm:chain, szm:prbg and payword.

In each, a verifier holds ``spent`` (units taken so far) and a payment names a new
``index``; the payment pays ``index - spent`` units. :func:`units_paid` makes the checks
every such payment needs, in one order for all three (so a hostile index is refused before
any hashing), and :class:`Acceptance` is the base of their receipts, which only the
scheme's own verifier can create (its constructor wants that module's private token).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import ClassVar, Final, Protocol, TypeVar

from farthing.core.encoding import Reader, Writer, header
from farthing.core.errors import (
    ErrorCode,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    PaymentExpired,
)
from farthing.core.hashchain import chain_walk
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq
from farthing.core.retry import same_request

__all__ = [
    "Acceptance",
    "Advance",
    "IndexPaymentCodec",
    "IndexState",
    "Parsed",
    "accept",
    "chain_advance",
    "chain_stale",
    "passed_index",
    "retried_units",
    "units_paid",
]

A = TypeVar("A", bound="Acceptance")
IndexState = tuple[bytes, bytes, int, int, Denomination, int, bytes | None, int]
"""The layout of a hash-chain scheme's state: (key, last value, spent, length,
denomination, expires_at, last_request, last_units)."""
S = TypeVar("S", bound=IndexState)

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


class Advance(Protocol[S]):
    def __call__(
        self,
        state: S,
        payment: Parsed,
        units: int,
        now: int,
        request: bytes | None,
        max_units: int = ...,
        /,
    ) -> S: ...


def chain_advance(tag: bytes, state_type: type[S], what: str, max_units: int) -> Advance[S]:
    """The verifier of a hash-chain scheme (szm:chain, payword) on its hot path: the state
    after ``payment`` (``(key, index, value)`` as the codec parses it), which paid
    ``new.spent - state.spent`` units; the scheme's ``verify_payment`` adds the receipt.

    h^(index-spent)(value) must equal the state's last value. One fused test passes every
    check of :func:`units_paid` at once for a good payment; anything else goes to
    units_paid itself, for its errors in its order. A closure over locals, positional
    only: once per paid request, each call, keyword argument, attribute lookup and object
    saved here is a measurable part of the payment's hash (bench/core.py).
    """
    sha256 = hashlib.sha256
    new_state = tuple.__new__
    default_max_units = max_units

    def advance(
        state: S,
        payment: Parsed,
        units: int,
        now: int,
        request: bytes | None,
        max_units: int = default_max_units,
        /,
    ) -> S:
        key, index, value = payment
        state_key, last_value, spent, length, denomination, expires_at, _, _ = state
        paid = index - spent
        # Keys compared with ==: they are public (a card id, a commitment's hash), and the
        # caller found the state by this one.
        if not (
            key == state_key
            and 0 < units <= paid <= max_units
            and index <= length
            and now < expires_at
        ):
            paid = units_paid(
                constant_time_eq(key, state_key), spent, index, length, expires_at, units,
                now, max_units, what,
            )  # fmt: skip
        # One unit is the common price: one hash, inline (no call, no loop).
        earlier = sha256(tag + value).digest() if paid == 1 else chain_walk(tag, value, paid)
        if not constant_time_eq(earlier, last_value):
            raise InvalidPayment()
        # The NamedTuple's tuple made directly (its __new__ is one Python call more), in
        # field order: keyword arguments here would cost more than the hash itself.
        return new_state(state_type, (
            state_key, value, index, length, denomination, expires_at,
            request, 0 if request is None else paid,
        ))  # fmt: skip

    return advance


def passed_index(same_key: bool, spent: int, index: int, max_back: int) -> int:
    """How far behind the card's position ``spent`` the payment's ``index`` lies, if it may
    be a payment the card made already (``0 < index <= spent``, at most ``max_back``
    behind); else the vague refusal. The public checks of a stale payment, before any
    hashing: the caller then proves the value is the card's own (a forger must learn
    nothing).

    ``index == spent`` is the card's last payment itself, sent by another copy of the card
    that made the same payment (the same index and value: tokens are deterministic) and not
    the request it was accepted for (that one is a retry, judged before). Whoever holds that
    payment learns only its own index; refusing it vaguely would leave the copy one payment
    behind refused for good (a phone and a laptop that take turns, a backup restored after
    one purchase: docs/wallet.md)."""
    back = spent - index
    if not same_key or index <= 0 or back < 0 or back > max_back:
        raise InvalidPayment()
    return back


def chain_stale(tag: bytes, state: IndexState, payment: Parsed, max_back: int) -> int:
    """The card's (commitment's) position ``spent`` if ``payment`` is one it made already,
    up to that position: its value is w_index, the state's last value w_spent hashed
    ``spent - index`` times (w_i = h(w_{i+1})). Else the vague refusal. A refusal path only
    (the wallet that sent it is behind the card: another copy of the card paid since,
    docs/wallet.md); ``max_back`` bounds the hashing a hostile payment causes, as
    ``max_units`` does on the paid path.

    What it proves: the sender knows a value of the card at or past ``index`` (the older
    values follow from any newer one, w_spent included, which the card's last payment put
    on the wire to the vendor); a forger who knows none learns nothing.
    """
    key, index, value = payment
    state_key, last_value, spent = state[0], state[1], state[2]
    back = passed_index(constant_time_eq(key, state_key), spent, index, max_back)
    if not constant_time_eq(chain_walk(tag, last_value, back), value):
        raise InvalidPayment()
    return spent


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
