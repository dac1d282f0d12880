"""``szm:chain`` and ``szm:prbg`` for the offline adapter: the vendor is the card issuer.

The vendor holds the issuer's master key, so it verifies every payment against its own
card state and derives the key that payment distributed, to seal the response with.
"""

from __future__ import annotations

from farthing.core.encoding import b64url_encode
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.payment_auth import JsonObject
from farthing.vendor.methods.base import Sealing
from farthing.vendor.methods.offline import Verified
from farthing.vendor.pricing import PricedRoute

__all__ = ["ChainScheme", "PrbgScheme", "szm_request"]


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
        self, state: szm_chain.ChainCardState, payment: bytes, *, units: int, now: int
    ) -> Verified[szm_chain.ChainCardState]:
        decoded = szm_chain.decode_payment(payment)
        new_state, accepted = szm_chain.verify_payment(state, decoded, units=units, now=now)
        key = szm_chain.issuer_payment_key(
            self._master_key, state, accepted.index, mode=self._key_mode
        )
        card = b64url_encode(accepted.card_id)
        return Verified(
            new_state=new_state,
            key=accepted.card_id,
            index=accepted.index,
            units=accepted.units,
            reference=f"{card}:{accepted.index}",
            receipt={"card": card, "index": accepted.index},
            sealing=Sealing(key=key, card_id=accepted.card_id, index=accepted.index),
        )


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
        self, state: szm_prbg.PrbgCardState, payment: bytes, *, units: int, now: int
    ) -> Verified[szm_prbg.PrbgCardState]:
        decoded = szm_prbg.decode_payment(payment)
        new_state, accepted = szm_prbg.verify_payment(
            state,
            decoded,
            master_key=self._master_key,
            units=units,
            now=now,
            bbs_key=self._bbs_key,
        )
        key = szm_prbg.issuer_payment_key(
            self._master_key, state, accepted.index, bbs_key=self._bbs_key
        )
        card = b64url_encode(accepted.card_id)
        return Verified(
            new_state=new_state,
            key=accepted.card_id,
            index=accepted.index,
            units=accepted.units,
            reference=f"{card}:{accepted.index}",
            receipt={"card": card, "index": accepted.index},
            sealing=Sealing(key=key, card_id=accepted.card_id, index=accepted.index),
        )
