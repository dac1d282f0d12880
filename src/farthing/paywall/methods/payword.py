"""``payword`` for the offline adapter: paywords checked against stored commitments.

The first payment under a commitment carries the signed commitment (with the broker's
certificate inside); the vendor checks both signatures once, stores the commitment with
insert-if-absent, and from then on each payment costs hashes and one conditional update.
The vendor later redeems the last payword of each commitment with the broker (deposits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.money import Denomination
from farthing.core.schemes import payword
from farthing.http.payment_auth import JsonObject
from farthing.paywall.methods.base import payload_bytes
from farthing.paywall.methods.offline import Verified
from farthing.paywall.pricing import PricedRoute

__all__ = ["HeldCommitment", "PaywordScheme"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldCommitment:
    """The vendor's record: the core state plus the signed commitment, kept for redemption."""

    commitment_id: bytes
    state: payword.CommitmentState
    encoded: bytes = field(repr=False)


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
        return {
            "amount": str(route.price.micros),
            "currency": route.price.currency,
            "resource": route.scope,
            "vendor": self._vendor_id,
            "broker": self._broker_id,
            "units": -(-route.price.micros // self._unit_micros),
            "unitMicros": self._unit_micros,
        }

    def key_of(self, payment: bytes) -> bytes:
        return payword.decode_payment(payment).commitment_id

    def denomination(self, held: HeldCommitment) -> Denomination:
        return held.state.denomination

    def introduce(self, payload: JsonObject, *, now: int) -> HeldCommitment | None:
        if "commitment" not in payload:
            return None
        raw = payload_bytes(payload, "commitment", max_len=4096)
        try:
            commitment = payword.decode_commitment(raw)
        except MalformedMessage:
            raise MalformedMessage(
                "commitment does not decode", code=ErrorCode.MALFORMED_CREDENTIAL
            ) from None
        state = payword.accept_commitment(
            self._broker_public, commitment, vendor_id=self._vendor_id, now=now
        )
        return HeldCommitment(commitment_id=state.commitment_id, state=state, encoded=raw)

    def verify(
        self,
        held: HeldCommitment,
        payment: bytes,
        *,
        units: int,
        now: int,
        request: bytes | None,
    ) -> Verified[HeldCommitment]:
        decoded = payword.decode_payment(payment)
        new_state, accepted = payword.verify_payment(
            held.state, decoded, units=units, now=now, request=request
        )
        return _verified(
            HeldCommitment(commitment_id=held.commitment_id, state=new_state, encoded=held.encoded),
            accepted,
        )

    def retry(
        self, held: HeldCommitment, payment: bytes, *, request: bytes | None
    ) -> Verified[HeldCommitment]:
        decoded = payword.decode_payment(payment)
        return _verified(held, payword.verify_retry(held.state, decoded, request=request))


def _verified(
    new_state: HeldCommitment, accepted: payword.PaywordAccepted
) -> Verified[HeldCommitment]:
    commitment = b64url_encode(accepted.commitment_id)
    return Verified(
        new_state=new_state,
        key=accepted.commitment_id,
        index=accepted.index,
        units=accepted.units,
        reference=f"{commitment}:{accepted.index}",
        receipt={"commitment": commitment, "index": accepted.index},
    )
