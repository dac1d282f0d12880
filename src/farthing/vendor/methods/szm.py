"""``szm:chain`` and ``szm:prbg``: the vendor is the card issuer, so it verifies offline.

Hot path per payment: decode the payment, check it against the card's state with the pure
core (hashes only), then one conditional update in the shared store
(``UPDATE ... WHERE card_id = ? AND spent = ?``). Card states are cached per process; a
stale cache is harmless because the conditional update is the arbiter: when it loses, the
state is reloaded and the payment checked once more against the fresh state.

The payment also distributes the key that seals the response (see core/sealing.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio.to_thread

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, InvalidPayment
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import JsonObject
from farthing.vendor.methods.base import PaymentContext, Sealing, Settlement, payload_bytes
from farthing.vendor.pricing import PricedRoute

__all__ = ["CardBook", "CardCache", "ChainScheme", "SzmMethod", "SzmScheme", "Verified"]

S = TypeVar("S")


class CardBook(Protocol[S]):
    """The store's view of one SZM protocol's card states (blocking calls)."""

    def load(self, card_id: bytes) -> S | None: ...

    def advance(self, old: S, new: S) -> bool:
        """Persist ``new`` iff the stored state still equals ``old`` (conditional update)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified(Generic[S]):
    new_state: S
    card_id: bytes
    index: int
    units: int


class SzmScheme(Protocol[S]):
    """The pure-core functions one SZM protocol provides to this adapter."""

    name: str

    def card_id_of(self, payment: bytes) -> bytes: ...

    def verify(self, state: S, payment: bytes, *, units: int, now: int) -> Verified[S]: ...

    def key(self, state: S, index: int) -> bytes: ...

    def denomination(self, state: S) -> Denomination: ...


def _invalid() -> InvalidPayment:
    return InvalidPayment("payment did not verify", code=ErrorCode.PAYMENT_INVALID)


class CardCache(Generic[S]):
    """A bounded per-process LRU of card states; only a hint, never the arbiter."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._items: OrderedDict[bytes, S] = OrderedDict()
        self._capacity = capacity

    def get(self, card_id: bytes) -> S | None:
        state = self._items.get(card_id)
        if state is not None:
            self._items.move_to_end(card_id)
        return state

    def put(self, card_id: bytes, state: S) -> None:
        self._items[card_id] = state
        self._items.move_to_end(card_id)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, card_id: bytes) -> None:
        self._items.pop(card_id, None)


class SzmMethod(Generic[S]):
    """The vendor adapter of one SZM protocol."""

    def __init__(
        self, scheme: SzmScheme[S], book: CardBook[S], *, cache: CardCache[S] | None = None
    ) -> None:
        self._scheme = scheme
        self._book = book
        self._cache: CardCache[S] = cache if cache is not None else CardCache()

    @property
    def name(self) -> str:
        return self._scheme.name

    def request(self, route: PricedRoute) -> JsonObject:
        return {
            "amount": str(route.price.micros),
            "currency": route.price.currency,
            "resource": route.scope,
            "sealed": True,
        }

    async def settle(self, context: PaymentContext) -> Settlement:
        raw = payload_bytes(context.payload, "payment", max_len=512)
        card_id = self._scheme.card_id_of(raw)
        cached = self._cache.get(card_id)
        if cached is not None:
            try:
                return await self._settle_against(cached, raw, context)
            except FarthingError:
                pass  # the cached state may be stale: decide against the stored one
            self._cache.drop(card_id)
        stored = await anyio.to_thread.run_sync(self._book.load, card_id)
        if stored is None:
            raise _invalid()
        return await self._settle_against(stored, raw, context)

    async def _settle_against(self, state: S, raw: bytes, context: PaymentContext) -> Settlement:
        units = self._units(state, context)
        verified = self._scheme.verify(state, raw, units=units, now=context.now)
        if not await anyio.to_thread.run_sync(self._book.advance, state, verified.new_state):
            raise _invalid()  # lost the race to another request for the same unit
        self._cache.put(verified.card_id, verified.new_state)
        return self._settlement(verified)

    def _units(self, state: S, context: PaymentContext) -> int:
        denomination = self._scheme.denomination(state)
        if denomination.currency != context.route.price.currency:
            raise _invalid()
        return denomination.units_for(context.route.price.micros)

    def _settlement(self, verified: Verified[S]) -> Settlement:
        key = self._scheme.key(verified.new_state, verified.index)
        card = b64url_encode(verified.card_id)
        return Settlement(
            method=self.name,
            reference=f"{card}:{verified.index}",
            units=verified.units,
            receipt={"card": card, "index": verified.index},
            sealing=Sealing(key=key, card_id=verified.card_id, index=verified.index),
        )


class ChainScheme:
    """SZM protocol 1 (hash chain) for :class:`SzmMethod`."""

    name = "szm:chain"

    def __init__(
        self, master_key: bytes, *, key_mode: szm_chain.KeyMode = szm_chain.KeyMode.DERIVED
    ) -> None:
        self._master_key = master_key
        self._key_mode = key_mode

    def card_id_of(self, payment: bytes) -> bytes:
        return szm_chain.decode_payment(payment).card_id

    def verify(
        self, state: szm_chain.ChainCardState, payment: bytes, *, units: int, now: int
    ) -> Verified[szm_chain.ChainCardState]:
        decoded = szm_chain.decode_payment(payment)
        new_state, accepted = szm_chain.verify_payment(state, decoded, units=units, now=now)
        return Verified(
            new_state=new_state,
            card_id=accepted.card_id,
            index=accepted.index,
            units=accepted.units,
        )

    def key(self, state: szm_chain.ChainCardState, index: int) -> bytes:
        return szm_chain.issuer_payment_key(self._master_key, state, index, mode=self._key_mode)

    def denomination(self, state: szm_chain.ChainCardState) -> Denomination:
        return state.denomination
