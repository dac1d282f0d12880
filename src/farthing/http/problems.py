"""RFC 9457 problem details for every farthing error, with the Payment draft's types.

The one place where the error tree meets HTTP. A :class:`FarthingError` maps to a fixed
status, problem ``type`` and ``title`` by its class and code; the ``detail`` is the error's
own fixed message, which never carries secrets. Anything that is not a FarthingError is an
internal fault: a bare 500 with a correlation id and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from farthing.core.errors import (
    AccessDenied,
    Conflict,
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    NotFound,
    PaymentExpired,
    PolicyRefused,
    RateLimited,
    Unavailable,
    UnsupportedMethod,
)

__all__ = ["PROBLEM_BASE", "Problem", "internal_problem", "problem_for"]

PROBLEM_BASE: Final = "https://paymentauth.org/problems/"
FARTHING_BASE: Final = "https://farthing.dev/problems/"
CONTENT_TYPE: Final = "application/problem+json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    status: int
    type: str
    title: str
    detail: str
    code: int
    retry_after: int | None = None

    def to_json(self, **extra: object) -> dict[str, object]:
        body: dict[str, object] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.retry_after is not None:
            body["retryAfter"] = self.retry_after
        body.update(extra)
        return body


# (class, status, type URI, title), first match wins; order from specific to general.
_TABLE: Final[tuple[tuple[type[FarthingError], int, str, str], ...]] = (
    (UnsupportedMethod, 400, PROBLEM_BASE + "method-unsupported", "Payment method unsupported"),
    (MalformedMessage, 400, PROBLEM_BASE + "malformed-credential", "Malformed credential"),
    (InvalidPayment, 401, PROBLEM_BASE + "verification-failed", "Payment verification failed"),
    (PaymentExpired, 402, PROBLEM_BASE + "payment-expired", "Payment expired"),
    (InsufficientFunds, 402, PROBLEM_BASE + "payment-insufficient", "Payment insufficient"),
    (AccessDenied, 403, PROBLEM_BASE + "access-denied", "Access denied"),
    (NotFound, 404, FARTHING_BASE + "not-found", "Not found"),
    (Conflict, 409, FARTHING_BASE + "conflict", "Conflict"),
    (RateLimited, 429, FARTHING_BASE + "rate-limited", "Too many requests"),
    (PolicyRefused, 402, FARTHING_BASE + "policy-refused", "Refused by spending policy"),
    (Unavailable, 503, FARTHING_BASE + "unavailable", "Service unavailable"),
)

_CODE_OVERRIDES: Final = {
    ErrorCode.UNAUTHENTICATED: (401, FARTHING_BASE + "unauthenticated", "Not authenticated"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, FARTHING_BASE + "payload-too-large", "Payload too large"),
    ErrorCode.SERVER_BUSY: (503, FARTHING_BASE + "server-busy", "Server busy"),
    # The issuer (bank, broker) could not be reached: try again later, nothing was taken.
    ErrorCode.ISSUER_UNAVAILABLE: (503, FARTHING_BASE + "issuer-unavailable", "Issuer unavailable"),
}
_RETRY_AFTER: Final = {ErrorCode.ISSUER_UNAVAILABLE: 5}


def problem_for(error: FarthingError) -> Problem:
    """The problem for a domain error. Local misuse that reaches the edge is a 500."""
    retry_after = error.retry_after if isinstance(error, RateLimited | Unavailable) else None
    override = _CODE_OVERRIDES.get(error.code)
    if override is not None:
        status, type_, title = override
        return Problem(
            status=status,
            type=type_,
            title=title,
            detail=error.message,
            code=int(error.code),
            retry_after=retry_after if retry_after is not None else _RETRY_AFTER.get(error.code),
        )
    for cls, status, type_, title in _TABLE:
        if isinstance(error, cls):
            return Problem(
                status=status,
                type=type_,
                title=title,
                detail=error.message,
                code=int(error.code),
                retry_after=retry_after,
            )
    if isinstance(error, LocalProtocolError):
        return internal_problem()
    return Problem(
        status=400,
        type=FARTHING_BASE + "bad-request",
        title="Bad request",
        detail=error.message,
        code=int(error.code),
    )


def internal_problem() -> Problem:
    return Problem(
        status=500,
        type="about:blank",
        title="Internal Server Error",
        detail="internal error",
        code=int(ErrorCode.INTERNAL),
    )


PAYMENT_REQUIRED: Final = Problem(
    status=402,
    type=PROBLEM_BASE + "payment-required",
    title="Payment required",
    detail="this resource requires payment",
    code=int(ErrorCode.PAYMENT_REQUIRED),
)
