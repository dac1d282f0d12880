"""``payword`` for the offline adapter: paywords checked against stored commitments.

The first payment under a commitment carries the signed commitment (with the broker's
certificate inside); the vendor checks both signatures once, stores the commitment with
insert-if-absent, and from then on each payment costs hashes and one conditional update.
The vendor later redeems the last payword of each commitment with the broker (deposits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from farthing.core.errors import ErrorCode, InvalidPayment, MalformedMessage, StalePayment
from farthing.core.money import Denomination
from farthing.core.schemes import payword
from farthing.http.methods.payword import PaywordPayload, PaywordReceipt, PaywordRequest
from farthing.http.payment_auth import JsonObject
from farthing.paywall.methods.base import Settlement, route_price
from farthing.paywall.pricing import PricedRoute

__all__ = ["HeldCommitment", "PaywordPaid", "PaywordScheme"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldCommitment:
    """The vendor's record: the core state plus the signed commitment, kept for redemption."""

    commitment_id: bytes
    state: payword.CommitmentState
    encoded: bytes = field(repr=False)
    stored: bool = field(default=True, compare=False)
    """False for a commitment its payment just introduced: that payment's write stores it."""


class PaywordPaid(NamedTuple):
    """A decoded payload: the payment as ``(commitment_id, index, value)`` (the tuple the
    core's parser returns: no Payment is built on the paid path), and the signed
    commitment if it came along."""

    payment: payword.Parsed
    commitment: bytes | None


class PaywordScheme:
    """PayWord (Rivest-Shamir 1996) with the vendor's id and the broker's public key."""

    name = "payword"

    def __init__(
        self, *, vendor_id: str, broker_id: str, broker_public: bytes, unit_micros: int
    ) -> None:
        self._vendor_id = vendor_id
        self._broker_id = broker_id
        self._broker_public = broker_public
        self._unit_micros = unit_micros

    def request(self, route: PricedRoute) -> JsonObject:
        price = route_price(route, self._unit_micros)
        return PaywordRequest(**price, vendor=self._vendor_id, broker=self._broker_id).to_json()

    def decode(self, payload: JsonObject) -> PaywordPaid:
        sent = PaywordPayload.from_json(payload)
        return PaywordPaid(payword.parse_payment(sent.payment), sent.commitment)

    def key_of(self, paid: PaywordPaid) -> bytes:
        return paid.payment[0]

    def denomination(self, held: HeldCommitment) -> Denomination:
        return held.state.denomination

    def introduces(self, paid: PaywordPaid) -> bool:
        return paid.commitment is not None

    def introduce(self, paid: PaywordPaid, *, now: int) -> HeldCommitment | None:
        raw = paid.commitment
        if raw is None:
            return None
        try:
            commitment = payword.decode_commitment(raw)
        except MalformedMessage:
            raise MalformedMessage(
                "commitment does not decode", code=ErrorCode.INVALID_PAYLOAD
            ) from None
        state = payword.accept_commitment(
            self._broker_public, commitment, vendor_id=self._vendor_id, now=now
        )
        return HeldCommitment(commitment_id=state.commitment_id, state=state, encoded=raw)

    def verify(
        self,
        held: HeldCommitment,
        paid: PaywordPaid,
        *,
        units: int,
        now: int,
        request: bytes | None,
    ) -> tuple[HeldCommitment, Settlement]:
        state = held.state
        new_state = payword.advance(state, paid.payment, units, now, request)
        new_held = HeldCommitment(
            commitment_id=held.commitment_id, state=new_state, encoded=held.encoded
        )
        index = new_state.spent
        return new_held, _settled(held.commitment_id, index, index - state.spent, retried=False)

    def retry(
        self, held: HeldCommitment, paid: PaywordPaid, *, request: bytes | None
    ) -> Settlement:
        cid, index, value = paid.payment
        sent = payword.Payment(commitment_id=cid, index=index, value=value)
        accepted = payword.verify_retry(held.state, sent, request=request)
        return _settled(accepted.commitment_id, accepted.index, accepted.units, retried=True)

    def stale(self, held: HeldCommitment, paid: PaywordPaid) -> StalePayment | None:
        """PAYMENT_STALE with the commitment's position and its last payword, if the payment
        is a payword of the commitment behind it (the user's wallet rolled back). The vendor
        is not the user's issuer: the wallet checks the last payword against its chain."""
        try:
            position = payword.stale_position(held.state, paid.payment)
        except InvalidPayment:
            return None
        return StalePayment(position=position, last_value=held.state.last_value)


def _settled(commitment_id: bytes, index: int, units: int, *, retried: bool) -> Settlement:
    receipt = PaywordReceipt(units=units, commitment=commitment_id, index=index)
    return Settlement(method="payword", receipt=receipt, retried=retried)
