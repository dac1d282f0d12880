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

from farthing.core.errors import InvalidPayment, StalePayment
from farthing.core.money import Denomination
from farthing.core.prbg import BbsKey
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.core.schemes._advance import Parsed
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
    def card_id(self) -> bytes: ...

    @property
    def spent(self) -> int: ...

    @property
    def denomination(self) -> Denomination: ...


class _Accepted(Protocol):
    @property
    def card_id(self) -> bytes: ...

    @property
    def index(self) -> int: ...

    @property
    def units(self) -> int: ...


C = TypeVar("C", bound=_State)

Advance = Callable[[C, Parsed, int, int, bytes | None], C]
"""(state, payment, units, now, request) -> the state after the payment: the core's
``advance`` (the payment paid ``new.spent - state.spent`` units, up to ``new.spent``)."""
Retry = Callable[[C, Parsed, bytes | None], _Accepted]
"""(state, payment, request) -> the receipt of the state's last payment sent again."""
Stale = Callable[[C, Parsed], int]
"""(state, payment) -> the card's position if the payment is one it made already, behind
it (value checked); else InvalidPayment."""


class SzmScheme(Generic[C]):
    """One SZM protocol's pure functions, as the offline adapter calls them. A payment
    stays the ``(card_id, index, value)`` tuple its parser returns: on the paid path no
    payment value and no receipt is built (each cost about half the payment's hash)."""

    __slots__ = ("_advance", "_decode", "_key", "_retry", "_stale", "name")

    def __init__(
        self,
        name: str,
        *,
        decode: Callable[[bytes], Parsed],
        advance: Advance[C],
        retry: Retry[C],
        stale: Stale[C],
        key: Callable[[C, int], bytes],
    ) -> None:
        self.name = name
        self._decode = decode
        self._advance = advance
        self._retry = retry
        self._stale = stale
        self._key = key

    @staticmethod
    def chain(
        master_key: bytes, *, key_mode: szm_chain.KeyMode = szm_chain.KeyMode.DERIVED
    ) -> SzmScheme[szm_chain.ChainCardState]:
        """SZM protocol 1 (hash chain)."""

        secrets = _kept_secrets(szm_chain.card_secret, master_key)

        def retry(
            state: szm_chain.ChainCardState, payment: Parsed, request: bytes | None
        ) -> szm_chain.ChainAccepted:
            card_id, index, value = payment
            sent = szm_chain.Payment(card_id=card_id, index=index, value=value)
            return szm_chain.verify_retry(state, sent, request=request)

        def key(state: szm_chain.ChainCardState, index: int) -> bytes:
            # issuer_payment_key, with the card's secret kept.
            return szm_chain.payment_key(
                secrets(state.card_id), card_id=state.card_id, index=index,
                length=state.length, mode=key_mode,
            )  # fmt: skip

        def stale(state: szm_chain.ChainCardState, payment: Parsed) -> int:
            return szm_chain.stale_position(state, payment)

        return SzmScheme(
            szm_chain.METHOD,
            decode=szm_chain.parse_payment,
            advance=szm_chain.advance,
            retry=retry,
            stale=stale,
            key=key,
        )

    @staticmethod
    def prbg(
        master_key: bytes, *, bbs_key: BbsKey | None = None
    ) -> SzmScheme[szm_prbg.PrbgCardState]:
        """SZM protocol 2 (token/key blocks of a CSPRBG: HMAC-CTR or Blum-Blum-Shub)."""
        secrets = _kept_secrets(szm_prbg.card_secret, master_key)

        def advance(
            state: szm_prbg.PrbgCardState,
            payment: Parsed,
            units: int,
            now: int,
            request: bytes | None,
        ) -> szm_prbg.PrbgCardState:
            new_state, _ = szm_prbg.verify_payment(
                state, _prbg_payment(payment), master_key=master_key, units=units, now=now,
                bbs_key=bbs_key, request=request, secret=secrets(payment[0]),
            )  # fmt: skip
            return new_state

        def retry(
            state: szm_prbg.PrbgCardState, payment: Parsed, request: bytes | None
        ) -> szm_prbg.PrbgAccepted:
            return szm_prbg.verify_retry(
                state, _prbg_payment(payment), master_key=master_key, request=request,
                bbs_key=bbs_key, secret=secrets(payment[0]),
            )  # fmt: skip

        def key(state: szm_prbg.PrbgCardState, index: int) -> bytes:
            return szm_prbg.issuer_payment_key(
                master_key, state, index, bbs_key=bbs_key, secret=secrets(state.card_id)
            )

        def stale(state: szm_prbg.PrbgCardState, payment: Parsed) -> int:
            return szm_prbg.stale_position(
                state, _prbg_payment(payment), master_key=master_key, bbs_key=bbs_key,
                secret=secrets(payment[0]),
            )  # fmt: skip

        return SzmScheme(
            szm_prbg.METHOD,
            decode=szm_prbg.parse_payment,
            advance=advance,
            retry=retry,
            stale=stale,
            key=key,
        )

    def request(self, route: PricedRoute) -> JsonObject:
        price = route.price
        return SzmRequest(
            amount=price.micros, currency=price.currency, resource=route.scope
        ).to_json()

    def decode(self, payload: JsonObject) -> Parsed:
        return self._decode(SzmPayload.from_json(payload).payment)

    def key_of(self, payment: Parsed) -> bytes:
        return payment[0]

    def denomination(self, state: C) -> Denomination:
        return state.denomination

    def introduce(self, payment: Parsed, *, now: int) -> None:
        return None

    def introduces(self, payment: Parsed) -> bool:
        return False  # cards are issued by the issuer, never introduced by a payment

    def verify(
        self, state: C, payment: Parsed, *, units: int, now: int, request: bytes | None
    ) -> tuple[C, Settlement]:
        new_state = self._advance(state, payment, units, now, request)
        index = new_state.spent
        return new_state, self._settled(
            state, new_state.card_id, index, index - state.spent, retried=False
        )

    def retry(self, state: C, payment: Parsed, *, request: bytes | None) -> Settlement:
        accepted = self._retry(state, payment, request)
        return self._settled(state, accepted.card_id, accepted.index, accepted.units, retried=True)

    def stale(self, state: C, payment: Parsed) -> StalePayment | None:
        """PAYMENT_STALE with the card's position, if the payment is one the card made
        already behind it (the vendor is the card's issuer: the wallet takes its word)."""
        try:
            return StalePayment(position=self._stale(state, payment))
        except InvalidPayment:
            return None

    def _settled(
        self, state: C, card_id: bytes, index: int, units: int, *, retried: bool
    ) -> Settlement:
        """The settlement of an accepted (or retried) payment, sealed under its key."""
        return Settlement(
            method=self.name,
            receipt=SzmReceipt(units=units, card=card_id, index=index),
            sealing=Sealing(key=self._key(state, index), card_id=card_id, index=index),
            retried=retried,
        )


def _prbg_payment(payment: Parsed) -> szm_prbg.Payment:
    card_id, index, token = payment
    return szm_prbg.Payment(card_id=card_id, index=index, token=token)
