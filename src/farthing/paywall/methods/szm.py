"""``szm:chain`` and ``szm:prbg`` for the offline adapter: the vendor is the card issuer.

The vendor holds the issuer's master key, so it verifies every payment against its own
card state and derives the key that payment distributed, to seal the response with. The
two protocols differ only in their pure functions (how a payment verifies, how its key is
derived), so one class serves both: :meth:`SzmScheme.chain` and :meth:`SzmScheme.prbg`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar

from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.methods.szm import SzmPayload, SzmReceipt, SzmRequest
from farthing.http.payment_auth import JsonObject
from farthing.paywall.methods.base import Sealing, Settlement
from farthing.paywall.pricing import PricedRoute

__all__ = ["CARD_SECRETS_KEPT", "SzmScheme"]

CARD_SECRETS_KEPT: Final = 100_000  # as many as the offline adapter's card cache
"""Card secrets a vendor process keeps (32 bytes each): deriving one (an HMAC, the short
code, an HKDF) cost several times a payment's verification, twice per paid request."""


def _kept_secrets(
    derive: Callable[[bytes, bytes], bytes], master_key: bytes
) -> Callable[[bytes], bytes]:
    """card id -> the card's secret S, derived once per card (least recently used dropped)."""

    @functools.lru_cache(maxsize=CARD_SECRETS_KEPT)
    def secret(card_id: bytes) -> bytes:
        return derive(master_key, card_id)

    return secret


class _State(Protocol):
    @property
    def denomination(self) -> Denomination: ...


class _Payment(Protocol):
    @property
    def card_id(self) -> bytes: ...


class _Accepted(Protocol):
    @property
    def card_id(self) -> bytes: ...

    @property
    def index(self) -> int: ...

    @property
    def units(self) -> int: ...


C = TypeVar("C", bound=_State)
P = TypeVar("P", bound=_Payment)
C_in = TypeVar("C_in", bound=_State, contravariant=True)
P_in = TypeVar("P_in", bound=_Payment, contravariant=True)


class _Verify(Protocol[C, P_in]):
    def __call__(
        self, state: C, payment: P_in, *, units: int, now: int, request: bytes | None
    ) -> tuple[C, _Accepted]: ...


class _Retry(Protocol[C_in, P_in]):
    def __call__(self, state: C_in, payment: P_in, *, request: bytes | None) -> _Accepted: ...


class SzmScheme(Generic[C, P]):
    """One SZM protocol's pure functions, as the offline adapter calls them."""

    __slots__ = ("_decode", "_key", "_retry", "_verify", "name")

    def __init__(
        self,
        name: str,
        *,
        decode: Callable[[bytes], P],
        verify: _Verify[C, P],
        retry: _Retry[C, P],
        key: Callable[[C, int], bytes],
    ) -> None:
        self.name = name
        self._decode = decode
        self._verify = verify
        self._retry = retry
        self._key = key

    @staticmethod
    def chain(
        master_key: bytes, *, key_mode: szm_chain.KeyMode = szm_chain.KeyMode.DERIVED
    ) -> SzmScheme[szm_chain.ChainCardState, szm_chain.Payment]:
        """SZM protocol 1 (hash chain)."""

        secrets = _kept_secrets(szm_chain.card_secret, master_key)

        def key(state: szm_chain.ChainCardState, index: int) -> bytes:
            # issuer_payment_key, with the card's secret kept.
            return szm_chain.payment_key(
                secrets(state.card_id), card_id=state.card_id, index=index,
                length=state.length, mode=key_mode,
            )  # fmt: skip

        return SzmScheme(
            szm_chain.METHOD,
            decode=szm_chain.decode_payment,
            verify=szm_chain.verify_payment,
            retry=szm_chain.verify_retry,
            key=key,
        )

    @staticmethod
    def prbg(
        master_key: bytes, *, bbs_key: BbsKey | None = None
    ) -> SzmScheme[szm_prbg.PrbgCardState, szm_prbg.Payment]:
        """SZM protocol 2 (token/key blocks of a CSPRBG: HMAC-CTR or Blum-Blum-Shub)."""
        secrets = _kept_secrets(szm_prbg.card_secret, master_key)

        def verify(
            state: szm_prbg.PrbgCardState,
            payment: szm_prbg.Payment,
            *,
            units: int,
            now: int,
            request: bytes | None,
        ) -> tuple[szm_prbg.PrbgCardState, szm_prbg.PrbgAccepted]:
            return szm_prbg.verify_payment(
                state, payment, master_key=master_key, units=units, now=now,
                bbs_key=bbs_key, request=request, secret=secrets(payment.card_id),
            )  # fmt: skip

        def retry(
            state: szm_prbg.PrbgCardState, payment: szm_prbg.Payment, *, request: bytes | None
        ) -> szm_prbg.PrbgAccepted:
            return szm_prbg.verify_retry(
                state, payment, master_key=master_key, request=request, bbs_key=bbs_key,
                secret=secrets(payment.card_id),
            )  # fmt: skip

        def key(state: szm_prbg.PrbgCardState, index: int) -> bytes:
            return szm_prbg.issuer_payment_key(
                master_key, state, index, bbs_key=bbs_key, secret=secrets(state.card_id)
            )

        return SzmScheme(
            szm_prbg.METHOD, decode=szm_prbg.decode_payment, verify=verify, retry=retry, key=key
        )

    def request(self, route: PricedRoute) -> JsonObject:
        price = route.price
        return SzmRequest(
            amount=price.micros, currency=price.currency, resource=route.scope
        ).to_json()

    def decode(self, payload: JsonObject) -> P:
        return self._decode(SzmPayload.from_json(payload).payment)

    def key_of(self, payment: P) -> bytes:
        return payment.card_id

    def denomination(self, state: C) -> Denomination:
        return state.denomination

    def introduce(self, payment: P, *, now: int) -> None:
        return None

    def introduces(self, payment: P) -> bool:
        return False  # cards are issued by the issuer, never introduced by a payment

    def verify(
        self, state: C, payment: P, *, units: int, now: int, request: bytes | None
    ) -> tuple[C, Settlement]:
        new_state, accepted = self._verify(state, payment, units=units, now=now, request=request)
        return new_state, self._settled(state, accepted, retried=False)

    def retry(self, state: C, payment: P, *, request: bytes | None) -> Settlement:
        return self._settled(state, self._retry(state, payment, request=request), retried=True)

    def _settled(self, state: C, accepted: _Accepted, *, retried: bool) -> Settlement:
        """The settlement of an accepted (or retried) payment, sealed under its key."""
        card_id, index = accepted.card_id, accepted.index
        return Settlement(
            method=self.name,
            receipt=SzmReceipt(units=accepted.units, card=card_id, index=index),
            sealing=Sealing(key=self._key(state, index), card_id=card_id, index=index),
            retried=retried,
        )
