"""``szm:chain`` and ``szm:prbg`` for the offline adapter: the vendor is the card issuer.

The vendor holds the issuer's master key, so it verifies every payment against its own
card state and derives the key that payment distributed, to seal the response with.
"""

from __future__ import annotations

from typing import TypeVar

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.payment_auth import JsonObject
from farthing.paywall.methods.base import Sealing
from farthing.paywall.methods.offline import Verified
from farthing.paywall.pricing import PricedRoute

__all__ = ["ChainScheme", "PrbgScheme", "szm_request"]

S = TypeVar("S")


def szm_request(route: PricedRoute) -> JsonObject:
    return {
        "amount": str(route.price.micros),
        "currency": route.price.currency,
        "resource": route.scope,
        "sealed": True,
    }


class ChainScheme:
    """SZM protocol 1 (hash chain)."""

    name = "szm:chain"

    def __init__(
        self, master_key: bytes, *, key_mode: szm_chain.KeyMode = szm_chain.KeyMode.DERIVED
    ) -> None:
        self._master_key = master_key
        self._key_mode = key_mode

    def request(self, route: PricedRoute) -> JsonObject:
        return szm_request(route)

    def key_of(self, payment: bytes) -> bytes:
        return szm_chain.decode_payment(payment).card_id

    def denomination(self, state: szm_chain.ChainCardState) -> Denomination:
        return state.denomination

    def introduce(self, payload: JsonObject, *, now: int) -> None:
        return None

    def verify(
        self,
        state: szm_chain.ChainCardState,
        payment: bytes,
        *,
        units: int,
        now: int,
        request: bytes | None,
    ) -> Verified[szm_chain.ChainCardState]:
        decoded = szm_chain.decode_payment(payment)
        new_state, accepted = szm_chain.verify_payment(
            state, decoded, units=units, now=now, request=request
        )
        return self._verified(state, new_state, accepted)

    def retry(
        self, state: szm_chain.ChainCardState, payment: bytes, *, request: bytes | None
    ) -> Verified[szm_chain.ChainCardState]:
        decoded = szm_chain.decode_payment(payment)
        accepted = szm_chain.verify_retry(state, decoded, request=request)
        return self._verified(state, state, accepted)

    def _verified(
        self,
        state: szm_chain.ChainCardState,
        new_state: szm_chain.ChainCardState,
        accepted: szm_chain.ChainAccepted,
    ) -> Verified[szm_chain.ChainCardState]:
        key = szm_chain.issuer_payment_key(
            self._master_key, state, accepted.index, mode=self._key_mode
        )
        return _szm_verified(new_state, accepted.card_id, accepted.index, accepted.units, key)


class PrbgScheme:
    """SZM protocol 2 (token/key blocks of a CSPRBG: HMAC-CTR or Blum-Blum-Shub)."""

    name = "szm:prbg"

    def __init__(self, master_key: bytes, *, bbs_key: BbsKey | None = None) -> None:
        self._master_key = master_key
        self._bbs_key = bbs_key

    def request(self, route: PricedRoute) -> JsonObject:
        return szm_request(route)

    def key_of(self, payment: bytes) -> bytes:
        return szm_prbg.decode_payment(payment).card_id

    def denomination(self, state: szm_prbg.PrbgCardState) -> Denomination:
        return state.denomination

    def introduce(self, payload: JsonObject, *, now: int) -> None:
        return None

    def verify(
        self,
        state: szm_prbg.PrbgCardState,
        payment: bytes,
        *,
        units: int,
        now: int,
        request: bytes | None,
    ) -> Verified[szm_prbg.PrbgCardState]:
        decoded = szm_prbg.decode_payment(payment)
        new_state, accepted = szm_prbg.verify_payment(
            state,
            decoded,
            master_key=self._master_key,
            units=units,
            now=now,
            bbs_key=self._bbs_key,
            request=request,
        )
        return self._verified(state, new_state, accepted)

    def retry(
        self, state: szm_prbg.PrbgCardState, payment: bytes, *, request: bytes | None
    ) -> Verified[szm_prbg.PrbgCardState]:
        decoded = szm_prbg.decode_payment(payment)
        accepted = szm_prbg.verify_retry(
            state, decoded, master_key=self._master_key, request=request, bbs_key=self._bbs_key
        )
        return self._verified(state, state, accepted)

    def _verified(
        self,
        state: szm_prbg.PrbgCardState,
        new_state: szm_prbg.PrbgCardState,
        accepted: szm_prbg.PrbgAccepted,
    ) -> Verified[szm_prbg.PrbgCardState]:
        key = szm_prbg.issuer_payment_key(
            self._master_key, state, accepted.index, bbs_key=self._bbs_key
        )
        return _szm_verified(new_state, accepted.card_id, accepted.index, accepted.units, key)


def _szm_verified(new_state: S, card_id: bytes, index: int, units: int, key: bytes) -> Verified[S]:
    """The adapter's record of an accepted (or retried) SZM payment, with its seal key."""
    card = b64url_encode(card_id)
    return Verified(
        new_state=new_state,
        key=card_id,
        index=index,
        units=units,
        reference=f"{card}:{index}",
        receipt={"card": card, "index": index},
        sealing=Sealing(key=key, card_id=card_id, index=index),
    )
