"""Methods the vendor verifies itself: ``szm:chain``, ``szm:prbg`` and ``payword``.

Hot path per payment: decode the payment, check it against the card's (or commitment's)
state with the pure core (hashes only), then one conditional update in the store
(``UPDATE ... WHERE id = ? AND spent = ?``) that is durable before the response leaves.
States are cached per process; a stale cache is harmless because the conditional update is
the arbiter: when verification or the update fails against a cached state, the stored state
is read and the payment judged once more against it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from farthing.core.errors import FarthingError, InvalidPayment
from farthing.core.money import Denomination
from farthing.http.payment_auth import JsonObject
from farthing.paywall.methods.base import PaymentContext, Sealing, Settlement, payload_bytes
from farthing.paywall.pricing import PricedRoute

__all__ = ["CardBook", "CardCache", "OfflineMethod", "OfflineScheme", "Verified"]

S = TypeVar("S")


class CardBook(Protocol[S]):
    """The store's view of one method's states."""

    async def load(self, key: bytes) -> S | None: ...

    async def advance(self, old: S, new: S) -> bool:
        """Persist ``new`` iff the stored state still equals ``old`` (conditional update),
        durably, before returning True."""
        ...

    async def insert(self, state: S) -> bool:
        """Store a new state unless one with its key exists (never overwrite)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified(Generic[S]):
    new_state: S
    key: bytes
    index: int
    units: int
    reference: str
    receipt: JsonObject = field(default_factory=dict, hash=False)
    sealing: Sealing | None = None


class OfflineScheme(Protocol[S]):
    """The pure-core side of one method, as this adapter needs it."""

    @property
    def name(self) -> str: ...

    def request(self, route: PricedRoute) -> JsonObject: ...

    def key_of(self, payment: bytes) -> bytes: ...

    def denomination(self, state: S) -> Denomination: ...

    def verify(
        self, state: S, payment: bytes, *, units: int, now: int, request: bytes | None
    ) -> Verified[S]: ...

    def retry(self, state: S, payment: bytes, *, request: bytes | None) -> Verified[S]:
        """The state's last accepted payment sent again by the same request (the core's
        decision), with ``new_state`` unchanged; else InvalidPayment."""
        ...

    def introduce(self, payload: JsonObject, *, now: int) -> S | None:
        """A new state carried by the payload itself (PayWord's commitment), or None."""
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


class OfflineMethod(Generic[S]):
    """The vendor adapter of one offline-verified method."""

    def __init__(
        self, scheme: OfflineScheme[S], book: CardBook[S], *, cache: CardCache[S] | None = None
    ) -> None:
        self._scheme = scheme
        self._book = book
        self._cache: CardCache[S] = cache if cache is not None else CardCache()

    @property
    def name(self) -> str:
        return self._scheme.name

    def request(self, route: PricedRoute) -> JsonObject:
        return self._scheme.request(route)

    async def settle(self, context: PaymentContext) -> Settlement:
        raw = payload_bytes(context.payload, "payment", max_len=512)
        key = self._scheme.key_of(raw)
        cached = self._cache.get(key)
        if cached is not None:
            try:
                return await self._settle_against(key, cached, raw, context)
            except FarthingError:
                self._cache.drop(key)  # maybe stale: judge again against the stored state
        stored = await self._stored(key, context)
        return await self._settle_against(key, stored, raw, context)

    async def _stored(self, key: bytes, context: PaymentContext) -> S:
        stored = await self._book.load(key)
        if stored is None:
            introduced = self._scheme.introduce(context.payload, now=context.now)
            if introduced is not None:
                await self._book.insert(introduced)
                stored = await self._book.load(key)
        if stored is None:
            raise InvalidPayment()
        return stored

    async def _settle_against(
        self, key: bytes, state: S, raw: bytes, context: PaymentContext
    ) -> Settlement:
        units = self._units(state, context)
        try:
            verified = self._scheme.verify(
                state, raw, units=units, now=context.now, request=context.request
            )
        except InvalidPayment as refused:
            return self._retried(state, raw, context, refused)
        if not await self._book.advance(state, verified.new_state):
            # Lost the race: to another payment, or to this very request sent twice at
            # once. The stored state tells which; only the refusal path reads it.
            stored = await self._book.load(key)
            if stored is None:
                raise InvalidPayment()
            self._cache.put(key, stored)
            return self._retried(stored, raw, context, InvalidPayment())
        self._cache.put(key, verified.new_state)
        return self._settlement(verified, retried=False)

    def _retried(
        self, state: S, raw: bytes, context: PaymentContext, refused: InvalidPayment
    ) -> Settlement:
        """The same request sent again (its answer was lost): served, nothing taken."""
        try:
            verified = self._scheme.retry(state, raw, request=context.request)
        except InvalidPayment:
            raise refused from None
        return self._settlement(verified, retried=True)

    def _settlement(self, verified: Verified[S], *, retried: bool) -> Settlement:
        return Settlement(
            method=self.name,
            reference=verified.reference,
            units=verified.units,
            receipt=verified.receipt,
            sealing=verified.sealing,
            retried=retried,
        )

    def _units(self, state: S, context: PaymentContext) -> int:
        denomination = self._scheme.denomination(state)
        if denomination.currency != context.route.price.currency:
            raise InvalidPayment()
        return denomination.units_for(context.route.price.micros)
