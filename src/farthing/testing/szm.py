"""In-memory SZM issuers (hash chain and PRG): a dict of card states driven by the core's
pure verifiers, the reference the storage-backed issuer and the vendor's card books follow
(they do the same with a conditional update on ``spent``). ``settle`` is what the paywall
does with one paid request: verify, or else recognise the card's last payment sent again by
the same request (the core's ``verify_retry``: served again, nothing taken), or else a
payment the card made already, from another copy of it (the core's ``stale_position``:
StalePayment with the card's position)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from farthing.core.errors import Conflict, InvalidPayment, StalePayment
from farthing.core.prbg import BbsKey
from farthing.core.schemes import szm_chain, szm_prbg

__all__ = ["ChainVerifier", "PrbgVerifier"]


class ChainVerifier:
    """In-memory reference issuer of hash-chain cards."""

    __slots__ = ("_max_units", "_states")

    def __init__(self, *, max_units: int = szm_chain.DEFAULT_MAX_UNITS) -> None:
        self._states: dict[bytes, szm_chain.ChainCardState] = {}
        self._max_units = max_units

    def add(self, state: szm_chain.ChainCardState) -> None:
        if state.card_id in self._states:
            raise Conflict("card already registered")
        self._states[state.card_id] = state

    def state(self, card_id: bytes) -> szm_chain.ChainCardState | None:
        return self._states.get(card_id)

    def verify(
        self, payment: szm_chain.Payment, *, units: int, now: int
    ) -> szm_chain.ChainAccepted:
        return self.verify_bytes(szm_chain.encode_payment(payment), units=units, now=now)

    def verify_bytes(self, data: bytes, *, units: int, now: int) -> szm_chain.ChainAccepted:
        new_state, receipt = szm_chain.verify_payment_bytes(
            self._states.get, data, units=units, now=now, max_units=self._max_units
        )
        self._states[new_state.card_id] = new_state
        return receipt

    def settle(
        self, payment: szm_chain.Payment, *, units: int, now: int, request: bytes | None
    ) -> tuple[szm_chain.ChainAccepted, bool]:
        """The receipt, and whether it is a retry (the same request's last payment again)."""
        state = self._known(payment.card_id)
        try:
            new_state, receipt = szm_chain.verify_payment(
                state, payment, units=units, now=now, max_units=self._max_units, request=request
            )
        except InvalidPayment as refused:
            parsed = (payment.card_id, payment.index, payment.value)
            return _retried(
                lambda: szm_chain.verify_retry(state, payment, request=request),
                lambda: szm_chain.stale_position(state, parsed, max_back=self._max_units),
                refused,
            )
        self._states[new_state.card_id] = new_state
        return receipt, False

    def _known(self, card_id: bytes) -> szm_chain.ChainCardState:
        state = self._states.get(card_id)
        if state is None:
            raise InvalidPayment()
        return state


class PrbgVerifier:
    """In-memory reference issuer of PRG cards."""

    __slots__ = ("_bbs_key", "_master_key", "_max_units", "_states")

    def __init__(
        self,
        master_key: bytes,
        *,
        bbs_key: BbsKey | None = None,
        max_units: int = szm_prbg.DEFAULT_MAX_UNITS,
    ) -> None:
        self._master_key = master_key
        self._bbs_key = bbs_key
        self._max_units = max_units
        self._states: dict[bytes, szm_prbg.PrbgCardState] = {}

    def add(self, state: szm_prbg.PrbgCardState) -> None:
        if state.card_id in self._states:
            raise Conflict("card already registered")
        self._states[state.card_id] = state

    def state(self, card_id: bytes) -> szm_prbg.PrbgCardState | None:
        return self._states.get(card_id)

    def verify(self, payment: szm_prbg.Payment, *, units: int, now: int) -> szm_prbg.PrbgAccepted:
        return self.verify_bytes(szm_prbg.encode_payment(payment), units=units, now=now)

    def verify_bytes(self, data: bytes, *, units: int, now: int) -> szm_prbg.PrbgAccepted:
        new_state, receipt = szm_prbg.verify_payment_bytes(
            self._states.get,
            data,
            master_key=self._master_key,
            units=units,
            now=now,
            bbs_key=self._bbs_key,
            max_units=self._max_units,
        )
        self._states[new_state.card_id] = new_state
        return receipt

    def settle(
        self, payment: szm_prbg.Payment, *, units: int, now: int, request: bytes | None
    ) -> tuple[szm_prbg.PrbgAccepted, bool]:
        """As :meth:`ChainVerifier.settle`."""
        state = self._states.get(payment.card_id)
        if state is None:
            raise InvalidPayment()
        key, bbs = self._master_key, self._bbs_key
        try:
            new_state, receipt = szm_prbg.verify_payment(
                state, payment, master_key=key, units=units, now=now, bbs_key=bbs,
                max_units=self._max_units, request=request,
            )  # fmt: skip
        except InvalidPayment as refused:
            return _retried(
                lambda: szm_prbg.verify_retry(
                    state, payment, master_key=key, request=request, bbs_key=bbs
                ),
                lambda: szm_prbg.stale_position(
                    state, payment, master_key=key, bbs_key=bbs, max_back=self._max_units
                ),
                refused,
            )
        self._states[new_state.card_id] = new_state
        return receipt, False

    def payment_key(self, card_id: bytes, index: int) -> bytes:
        state = self._states.get(card_id)
        if state is None:
            raise InvalidPayment()
        return szm_prbg.issuer_payment_key(self._master_key, state, index, bbs_key=self._bbs_key)


A = TypeVar("A")


def _retried(
    retry: Callable[[], A], stale: Callable[[], int], refused: InvalidPayment
) -> tuple[A, bool]:
    """The retry's receipt; else StalePayment if the payment is one the card made already;
    else the payment's own refusal."""
    try:
        return retry(), True
    except InvalidPayment:
        pass
    try:
        position = stale()
    except InvalidPayment:
        raise refused from None
    raise StalePayment(position=position) from None
