"""Methods the vendor verifies itself: ``szm:chain``, ``szm:prbg`` and ``payword``.

Hot path per payment: decode the payload once (JSON members, base64url, the canonical
payment message) into the scheme's payment value, check it against the card's (or
commitment's) state with the pure core (hashes only), then one conditional update in the
store (``UPDATE ... WHERE id = ? AND spent = ?``) that is durable before the response
leaves. The scheme turns the core's acceptance straight into the :class:`Settlement`.
States are cached per process; a stale cache is harmless because the conditional update is
the arbiter: when verification or the update fails against a cached state, the stored state
is read and the payment judged once more against it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Generic, Protocol, TypeVar

from farthing.core.errors import (
    ErrorCode,
    FarthingError,
    InvalidPayment,
    StalePayment,
    Unavailable,
)
from farthing.core.money import Denomination
from farthing.http.payment_auth import ChallengeId, JsonObject
from farthing.paywall.methods.base import PaymentContext, Settlement
from farthing.paywall.pricing import PricedRoute

__all__ = [
    "Advance",
    "CardBook",
    "CardCache",
    "Lost",
    "OfflineMethod",
    "OfflineScheme",
    "Staleness",
    "challenge_used",
]

S = TypeVar("S")  # the stored state of a card (commitment)
P = TypeVar("P")  # a decoded payment


class Advance(StrEnum):
    """How a payment's write ended."""

    WON = "won"  # the state moved and the challenge id is taken, durably
    LOST = "lost"  # the stored state was not ``old`` any more: nothing written
    USED = "used"  # the challenge id was taken before: nothing written


@dataclass(frozen=True, slots=True)
class Lost(Generic[S]):
    """:attr:`Advance.LOST`, with the state the write found stored (it had moved): the
    payment is judged again against it without reading it."""

    stored: S


class CardBook(Protocol[S]):
    """The store's view of one method's states."""

    async def load(self, key: bytes) -> S | None: ...

    async def advance(self, old: S, new: S, challenge: ChallengeId, now: int) -> Advance | Lost[S]:
        """In one durable write: take the challenge id (single use, every worker) and
        persist ``new`` iff the stored state still equals ``old`` (conditional update);
        either both or neither. A write that lost because the stored state had moved
        may say where to (:class:`Lost`); :attr:`Advance.LOST` leaves it to a read."""
        ...

    async def challenge_used(self, challenge: ChallengeId) -> bool:
        """Was a payment accepted under this challenge id (the refusal path only)?"""
        ...

    async def challenge_used_at(self, challenge: ChallengeId) -> int | None:
        """When the payment under this challenge id was accepted (0: not known), None if
        none was (the retry path only)."""
        ...

    async def introduce(self, state: S) -> S:
        """A new state carried by a payment (PayWord's commitment), to judge the payment
        against; the payment's :meth:`advance` stores it unless one with its key exists
        (never overwrite), in the same durable write. Raises InvalidPayment if such states
        are never introduced by a payment (SZM cards)."""
        ...

    async def durable(self) -> None:
        """Return once every write this process made so far is durable (an answer resting
        on a read of the store waits for it: a read may see a write still being synced)."""
        ...


class OfflineScheme(Protocol[S, P]):
    """The pure-core side of one method, as this adapter needs it."""

    @property
    def name(self) -> str: ...

    def request(self, route: PricedRoute) -> JsonObject: ...

    def decode(self, payload: JsonObject) -> P:
        """The credential payload, decoded once (MalformedMessage if it does not)."""
        ...

    def key_of(self, payment: P) -> bytes: ...

    def denomination(self, state: S) -> Denomination: ...

    def verify(
        self, state: S, payment: P, *, units: int, now: int, request: bytes | None
    ) -> tuple[S, Settlement]:
        """The state after the payment (persist it conditionally) and its settlement."""
        ...

    def retry(self, state: S, payment: P, *, request: bytes | None) -> Settlement:
        """The state's last accepted payment sent again by the same request (the core's
        decision), settled again as ``retried``; else InvalidPayment."""
        ...

    def stale(self, state: S, payment: P) -> StalePayment | None:
        """The refusal that tells where the card is, if ``payment`` is one the card made
        already, up to its position (the core's decision, value checked); else None."""
        ...

    def introduce(self, payment: P, *, now: int) -> S | None:
        """A new state carried by the payment itself (PayWord's commitment), or None."""
        ...

    def introduces(self, payment: P) -> bool:
        """Does the payment carry a new state (checked by :meth:`introduce`)?"""
        ...


class CardCache(Generic[S]):
    """A bounded per-process LRU of states; only a hint, never the arbiter."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._items: OrderedDict[bytes, S] = OrderedDict()
        self._capacity = capacity

    def get(self, key: bytes) -> S | None:
        state = self._items.get(key)
        if state is not None:
            self._items.move_to_end(key)
        return state

    def put(self, key: bytes, state: S) -> None:
        self._items[key] = state
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, key: bytes) -> None:
        self._items.pop(key, None)


class Staleness:
    """How often this worker's cached states turned out stale, lately; whether to try them.

    One worker alone sees its cache current nearly always. With several, a card's next
    payment reaches any of them, so about half the payments (two workers) meet a stale
    state; trying it costs a verification and, when it verifies anyway, a write that
    loses, before the payment is judged again against the stored state (which the losing
    write returns, :class:`Lost`). When the cached states were stale more often than
    ``threshold`` lately (an exponential average over the last ~``1 / weight`` cache hits),
    reading the stored state first is cheaper where a read is (SQLite: a read on the loop);
    the state read then still tells whether the cached one was current, so the average
    keeps up. ``threshold`` 1 always tries the cache (PostgreSQL, :func:`always_try`).
    """

    __slots__ = ("_rate", "_threshold", "_weight")

    def __init__(self, *, threshold: float = 0.2, weight: float = 1 / 32) -> None:
        self._rate = 0.0
        self._threshold = threshold
        self._weight = weight

    def trusted(self) -> bool:
        return self._rate <= self._threshold

    def saw(self, *, stale: bool) -> None:
        self._rate += self._weight * ((1.0 if stale else 0.0) - self._rate)

    @classmethod
    def always_try(cls) -> Staleness:
        """Try the cached state however often it was stale: where a store read costs more
        than the losing write (PostgreSQL: a read is a hop to a thread and a round trip;
        a losing write is one more statement in a batch that commits anyway, and it
        returns the stored state). ``bench.stale --clients 16`` on PostgreSQL, two apps,
        every payment meeting a stale cache: 719 / 753 us of CPU per request reading first,
        585 / 552 us trying the cache (docs/storage.md)."""
        return cls(threshold=1.0)


class OfflineMethod(Generic[S, P]):
    """The vendor adapter of one offline-verified method."""

    def __init__(
        self,
        scheme: OfflineScheme[S, P],
        book: CardBook[S],
        *,
        cache: CardCache[S] | None = None,
        staleness: Staleness | None = None,
    ) -> None:
        """``staleness``: when to read the stored state before trying the cached one
        (default :class:`Staleness`; one per method, it keeps state)."""
        self._scheme = scheme
        self._book = book
        self._cache: CardCache[S] = cache if cache is not None else CardCache()
        self._staleness = staleness if staleness is not None else Staleness()

    @property
    def name(self) -> str:
        return self._scheme.name

    def request(self, route: PricedRoute) -> JsonObject:
        return self._scheme.request(route)

    async def settle(self, context: PaymentContext) -> Settlement:
        payment = self._scheme.decode(context.payload)
        key = self._scheme.key_of(payment)
        cached = self._cache.get(key)
        if cached is not None and self._staleness.trusted():
            try:
                outcome = await self._settle_cached(key, cached, payment, context)
            except Unavailable:
                raise  # the write's outcome is not known durable: never judged as stale
            except FarthingError:
                outcome = None
            self._staleness.saw(stale=not isinstance(outcome, Settlement))
            if isinstance(outcome, Settlement):
                return outcome
            self._cache.drop(key)  # maybe stale: judge again against the stored state
            if outcome is not None:
                return await self._settle_against(key, outcome, payment, context)
        stored = await self._stored(key, payment, context)
        if cached is not None:  # not tried: learn whether it would have been current
            self._staleness.saw(stale=cached != stored)
        if stored is None:
            return await self._settle_introduced(key, payment, context)
        return await self._settle_against(key, stored, payment, context)

    async def _settle_introduced(
        self, key: bytes, payment: P, context: PaymentContext
    ) -> Settlement:
        """A state the payment brings itself (PayWord's commitment, unknown here): its
        write stores it and moves it in one hot batch. If a concurrent payment stored it
        first (the write lost), the payment is judged again against the stored state, as
        a stale cached one is."""
        introduced = self._scheme.introduce(payment, now=context.now)
        if introduced is None:
            raise InvalidPayment()
        state = await self._book.introduce(introduced)
        try:
            outcome = await self._settle_cached(key, state, payment, context)
        except Unavailable:
            raise
        except FarthingError:
            outcome = None
        if isinstance(outcome, Settlement):
            return outcome
        # Refused, or the write lost: judge it against the stored state, or (none stored)
        # against the introduced one, which says why it was refused.
        return await self._settle_against(key, outcome or state, payment, context)

    async def _settle_cached(
        self, key: bytes, cached: S, payment: P, context: PaymentContext
    ) -> Settlement | S | None:
        """Judge against the cached state: the settlement if the payment won; else the
        stored state if the write found the cache stale, or None (judge it again against
        a fresh read).

        With several workers a card's payments reach any of them, so a worker's cached state
        is often behind. A payment that fails against it, or whose write finds the card moved,
        is simply judged again against the stored state: asking first whether it was a retry
        or a used challenge id (as :meth:`_settle_against` does for a refusal) would cost
        store reads that the stored state answers anyway (bench/stale.py).
        """
        units = self._units(cached, context)
        try:
            new_state, settlement = self._scheme.verify(
                cached, payment, units=units, now=context.now, request=context.request
            )
        except InvalidPayment:
            return None
        outcome = await self._book.advance(cached, new_state, context.challenge, context.now)
        if outcome == Advance.WON:
            self._cache.put(key, new_state)
            return settlement
        if isinstance(outcome, Lost):
            return outcome.stored  # the card moved: the write says where to
        if outcome == Advance.LOST:
            return await self._book.load(key)  # the card moved: here is where it is now
        return None

    async def _stored(self, key: bytes, payment: P, context: PaymentContext) -> S | None:
        """The stored state; None if there is none but the payment carries one."""
        stored = await self._book.load(key)
        if stored is None and not self._scheme.introduces(payment):
            raise InvalidPayment()
        return stored

    async def _settle_against(
        self, key: bytes, state: S, payment: P, context: PaymentContext
    ) -> Settlement:
        units = self._units(state, context)
        try:
            new_state, settlement = self._scheme.verify(
                state, payment, units=units, now=context.now, request=context.request
            )
        except InvalidPayment as refused:
            return await self._retried(state, payment, context, refused)
        outcome = await self._book.advance(state, new_state, context.challenge, context.now)
        if outcome != Advance.WON:
            # Lost the race: to another payment, or to this very request sent twice at
            # once; or the challenge id was used. The stored state tells which; only the
            # refusal path reads it (unless the write returned it).
            stored = outcome.stored if isinstance(outcome, Lost) else await self._book.load(key)
            if stored is None:  # a state this payment introduced, not stored: say why
                return await self._retried(state, payment, context, InvalidPayment())
            self._cache.put(key, stored)
            return await self._retried(stored, payment, context, InvalidPayment())
        self._cache.put(key, new_state)
        return settlement

    async def _retried(
        self, state: S, payment: P, context: PaymentContext, refused: InvalidPayment
    ) -> Settlement:
        """The same request sent again (its answer was lost): served, nothing taken.
        Anything else under a challenge id already used is the draft's
        ``invalid-challenge``; a payment the card made already, up to its position (a copy
        of the card paid since), PAYMENT_STALE with that position; else ``refused``."""
        try:
            settlement = self._scheme.retry(state, payment, request=context.request)
        except InvalidPayment:
            if await self._book.challenge_used(context.challenge):
                raise challenge_used() from None
            raise self._scheme.stale(state, payment) or refused from None
        if not context.delivered_here:
            await self._not_in_flight_elsewhere(context)
        await self._book.durable()  # the state read may hold a write not yet synced
        return settlement

    async def _not_in_flight_elsewhere(self, context: PaymentContext) -> None:
        """A retry this process did not deliver first: accepted by another worker (or
        process), whose delivery may still be running. Within DELIVERY_LEASE seconds of the
        acceptance it is taken to be (-02 "Concurrent Request Handling": one delivery)."""
        used_at = await self._book.challenge_used_at(context.challenge)
        if used_at is not None and context.now - used_at < DELIVERY_LEASE:
            raise payment_in_progress()

    def _units(self, state: S, context: PaymentContext) -> int:
        denomination = self._scheme.denomination(state)
        if denomination.currency != context.route.price.currency:
            raise InvalidPayment()
        return denomination.units_for(context.route.price.micros)


DELIVERY_LEASE: Final = 2
"""Seconds after a payment's acceptance during which a copy of its request that reaches
another process is refused as in progress rather than served again (docs/http.md)."""


def payment_in_progress() -> InvalidPayment:
    return InvalidPayment(
        "this payment is being delivered; send it again", code=ErrorCode.PAYMENT_IN_PROGRESS
    )


def challenge_used() -> InvalidPayment:
    """A payment under a challenge id a payment was accepted under before (the draft's
    MUST: each id is single use)."""
    return InvalidPayment("challenge already used", code=ErrorCode.CHALLENGE_INVALID)
