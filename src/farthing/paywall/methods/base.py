"""The contract between the paywall middleware and a payment method adapter.

The middleware owns HTTP: it matches the price, issues and checks challenge ids, parses the
credential and writes the response. A method adapter owns one scheme: it describes the
price in its challenge ``request`` and turns a credential payload into a :class:`Settlement`
by calling the pure scheme core and the store (one conditional update, durable before the
response leaves). It raises only :class:`~farthing.core.errors.FarthingError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.http.payment_auth import ChallengeId, JsonObject
from farthing.paywall.pricing import PricedRoute

__all__ = ["PaymentContext", "PaymentMethod", "Sealing", "Settlement", "payload_bytes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentContext:
    """``request``: the tag of this paid request (:func:`farthing.core.retry.request_tag`),
    recorded with the payment so that the same request sent again gets the good again;
    None when it may not be retried."""

    payload: JsonObject = field(hash=False)
    route: PricedRoute
    resource: str
    challenge: ChallengeId
    now: int
    request: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sealing:
    """How to seal the body: the key the payment distributed and what it binds."""

    key: bytes = field(repr=False)
    card_id: bytes
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    method: str
    reference: str
    units: int
    receipt: JsonObject = field(default_factory=dict, hash=False)
    sealing: Sealing | None = None
    retried: bool = False  # a payment accepted before, served again (no new charge)


class PaymentMethod(Protocol):
    """A payment method: ``szm:chain``, ``szm:prbg``, ``hll:mac`` or ``payword``."""

    @property
    def name(self) -> str: ...

    def request(self, route: PricedRoute) -> JsonObject:
        """The method-specific ``request`` JSON of a challenge for this route."""
        ...

    async def settle(self, context: PaymentContext) -> Settlement:
        """Verify and durably record the payment in ``context.payload``, or raise."""
        ...


def payload_bytes(payload: JsonObject, member: str, *, max_len: int = 4096) -> bytes:
    """A required base64url member of a credential payload, decoded."""
    value = payload.get(member)
    if not isinstance(value, str):
        raise MalformedMessage(f"payload lacks {member}", code=ErrorCode.MALFORMED_CREDENTIAL)
    try:
        return b64url_decode(value, max_len=max_len)
    except MalformedMessage:
        raise MalformedMessage(
            f"payload {member} is not base64url", code=ErrorCode.MALFORMED_CREDENTIAL
        ) from None
