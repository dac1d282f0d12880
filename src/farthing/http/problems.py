"""RFC 9457 problem details for every farthing error, with the Payment draft's types.

The one place where the error tree meets HTTP, both ways::

    problem_for(error)          -> Problem  status, type and title by class (then by code)
    payment_problem_for(error)  -> Problem  the same for a payment the paywall refused: the
                                            draft's status table (402 for every payment
                                            failure, 403 for policy, never 401)
    error_for(problem)          -> error    the class of its code (CLASS_OF_CODE), or None

A :class:`FarthingError` maps to a fixed status, problem ``type`` and ``title`` by its class
and code; the ``detail`` is the error's own fixed message, which never carries secrets, and
an :class:`ExternalFailure`'s cause never leaves this process. Our own misuse
(:class:`LocalProtocolError`) and anything that is not a FarthingError is an internal fault:
a bare 500 with a correlation id and nothing else (on the payment path the draft's
``internal-payment-error``, elsewhere ``about:blank``). ``error_for(problem_for(e))`` gives
back the class, code and message of every error that may cross (tests/http/test_problems.py).

One body shape for the paywall and the issuer: RFC 9457's ``type``, ``title``, ``status``,
``detail``; draft-payment-errors-00's string ``code`` and ``reason`` (and ``retry_after``
whenever a ``Retry-After`` header goes with it); farthing's integer ``ErrorCode`` as
``farthingCode``, which is what peers parse back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import (
    CLASS_OF_CODE,
    AccessDenied,
    Conflict,
    ErrorCode,
    ExternalFailure,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    NotFound,
    PaymentExpired,
    RateLimited,
    StalePayment,
    Unavailable,
    UnsupportedMethod,
)

__all__ = [
    "FARTHING_CODE",
    "INTERNAL_PAYMENT_ERROR",
    "LAST_VALUE",
    "PAYMENT_REQUIRED",
    "POSITION",
    "PROBLEM_BASE",
    "Problem",
    "crosses",
    "draft_code",
    "draft_reason",
    "error_for",
    "internal_problem",
    "payment_problem_for",
    "problem_for",
]

PROBLEM_BASE: Final = "https://paymentauth.org/problems/"
FARTHING_BASE: Final = "https://farthing.dev/problems/"
CONTENT_TYPE: Final = "application/problem+json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """``code`` is farthing's stable integer :class:`ErrorCode`; on the wire it is the
    ``farthingCode`` member, beside draft-payment-errors-00's string ``code`` and
    ``reason`` (:func:`draft_code`, :func:`draft_reason`)."""

    status: int
    type: str
    title: str
    detail: str
    code: int
    retry_after: int | None = None
    position: int | None = None
    """PAYMENT_STALE's: where the card (PayWord commitment) is, its ``spent``."""
    last_value: bytes | None = None
    """PAYMENT_STALE's for PayWord: the vendor's last payword (``lastValue``, base64url)."""

    @classmethod
    def from_json(cls, status: int, body: object, retry_after: str | None) -> Problem | None:
        """The problem a peer answered with, or None if the body names no farthing code.
        The wait is the ``Retry-After`` header's, else the body's ``retry_after``."""
        if not isinstance(body, dict):
            return None
        code = body.get(FARTHING_CODE)
        if not isinstance(code, int) or isinstance(code, bool):
            return None
        detail, type_, title = body.get("detail"), body.get("type"), body.get("title")
        return cls(
            status=status,
            type=type_ if isinstance(type_, str) else "about:blank",
            title=title if isinstance(title, str) else "",
            detail=detail if isinstance(detail, str) and len(detail) <= _MAX_DETAIL else "",
            code=code,
            retry_after=_wait(retry_after, body.get("retry_after")),
            position=_position(body.get(POSITION)),
            last_value=_last_value(body.get(LAST_VALUE)),
        )

    def to_json(self, **extra: object) -> dict[str, object]:
        body: dict[str, object] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "code": draft_code(self.type, self.code),
            "reason": draft_reason(self.code),
            "detail": self.detail,
            FARTHING_CODE: self.code,
        }
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        if self.position is not None:
            body[POSITION] = self.position
        if self.last_value is not None:
            body[LAST_VALUE] = b64url_encode(self.last_value)
        body.update(extra)
        return body


FARTHING_CODE: Final = "farthingCode"
"""The body member of farthing's integer ErrorCode (an RFC 9457 extension member)."""
POSITION: Final = "position"
"""PAYMENT_STALE's member: the card's (PayWord commitment's) position at the vendor."""
LAST_VALUE: Final = "lastValue"
"""PAYMENT_STALE's member for PayWord: the vendor's last payword, base64url."""
_VALUE_LEN: Final = 32
_VALUE_TEXT_LEN: Final = 43  # base64url of 32 bytes


def _position(member: object) -> int | None:
    if isinstance(member, int) and not isinstance(member, bool) and 0 <= member < 1 << 63:
        return member
    return None


def _last_value(member: object) -> bytes | None:
    if not isinstance(member, str):
        return None
    try:
        value = b64url_decode(member, max_len=_VALUE_TEXT_LEN)
    except FarthingError:
        return None
    return value if len(value) == _VALUE_LEN else None


# draft-payment-errors-00's codes and reasons, where one means what our error means. Every
# other problem's ``code`` is its type's name with ``_`` for ``-`` (the core draft's types,
# which errors-00 calls a subset of its codes), and its ``reason`` is ``x-`` and our code's
# name (errors-00: "additional reason values prefixed with x-").
_ERRORS00: Final = {
    ErrorCode.CHALLENGE_EXPIRED: ("expired_challenge", "ttl-exceeded"),
    ErrorCode.INSUFFICIENT_FUNDS: ("insufficient_balance", "below-minimum"),
    ErrorCode.SIGNATURE_INVALID: ("invalid_signature", "verification-failed"),
    ErrorCode.AMOUNT_MISMATCH: ("amount_mismatch", "wrong-amount"),
    ErrorCode.UNSUPPORTED_METHOD: ("unsupported_method", "method-not-accepted"),
    ErrorCode.RATE_LIMITED: ("rate_limited", "too-many-attempts"),
    ErrorCode.ISSUER_UNAVAILABLE: ("network_error", "x-issuer-unavailable"),
    ErrorCode.STORE_UNAVAILABLE: ("network_error", "x-store-unavailable"),
}


def draft_code(type_: str, code: int) -> str:
    """errors-00's ``code`` of a problem: its own where it has one, else the type's name."""
    known = _errors00(code)
    if known is not None:
        return known[0]
    name = type_.rsplit("/", 1)[-1] if type_ != "about:blank" else "internal-error"
    return name.replace("-", "_")


def draft_reason(code: int) -> str:
    """errors-00's ``reason``: stable, lowercase, hyphenated, from a fixed vocabulary."""
    known = _errors00(code)
    if known is not None:
        return known[1]
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = "unknown"
    return "x-" + name.lower().replace("_", "-")


def _errors00(code: int) -> tuple[str, str] | None:
    try:
        return _ERRORS00.get(ErrorCode(code))
    except ValueError:
        return None


def _wait(header: str | None, member: object) -> int | None:
    if header and header.isdigit():
        return int(header)
    if isinstance(member, int) and not isinstance(member, bool) and member >= 0:
        return member
    return None


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
    (ExternalFailure, 503, FARTHING_BASE + "unavailable", "Service unavailable"),
)

_CODE_OVERRIDES: Final = {
    ErrorCode.UNAUTHENTICATED: (401, FARTHING_BASE + "unauthenticated", "Not authenticated"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, FARTHING_BASE + "payload-too-large", "Payload too large"),
    ErrorCode.SERVER_BUSY: (503, FARTHING_BASE + "server-busy", "Server busy"),
    # The issuer (bank, broker) could not be reached: try again later, nothing was taken.
    ErrorCode.ISSUER_UNAVAILABLE: (503, FARTHING_BASE + "issuer-unavailable", "Issuer unavailable"),
    # A paid POST's Idempotency-Key (draft-ietf-httpapi-idempotency-key-header's statuses).
    ErrorCode.IDEMPOTENCY_KEY_REUSED: (
        422,
        FARTHING_BASE + "idempotency-key-reused",
        "Idempotency-Key reused",
    ),
    ErrorCode.IDEMPOTENCY_IN_PROGRESS: (
        409,
        FARTHING_BASE + "idempotency-in-progress",
        "Request in progress",
    ),
}
_IN_PROGRESS_WAIT: Final = 1  # seconds: the copy being delivered is usually out by then
_DEFAULT_RETRY_AFTER: Final = 1  # a peer's 429 or 503 without a usable Retry-After
_MAX_DETAIL: Final = 200  # longer details from a peer are dropped, not echoed


def crosses(error: FarthingError) -> bool:
    """Whether an error may be told to a remote party: a peer's mistake or an outage may;
    our own misuse is a bug, answered as a bare 500 and logged."""
    return not isinstance(error, LocalProtocolError)


def problem_for(error: FarthingError) -> Problem:
    """The problem for a domain error. Local misuse that reaches the edge is a 500."""
    if not crosses(error):
        return internal_problem()
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
            retry_after=retry_after,
        )
    position, last_value = _stale_members(error)
    for cls, status, type_, title in _TABLE:
        if isinstance(error, cls):
            return Problem(
                status=status,
                type=type_,
                title=title,
                detail=error.message,
                code=int(error.code),
                retry_after=retry_after,
                position=position,
                last_value=last_value,
            )
    return Problem(
        status=400,
        type=FARTHING_BASE + "bad-request",
        title="Bad request",
        detail=error.message,
        code=int(error.code),
    )


# A payment the paywall refused (draft-httpauth-payment-02, "Status Codes" and "Error
# Codes"): 402 with fresh challenges for every payment failure. By code first, then class.
_PAYMENT_BY_CODE: Final = {
    ErrorCode.MALFORMED_CREDENTIAL: (402, "malformed-credential", "Malformed credential"),
    ErrorCode.OVERSIZED: (402, "malformed-credential", "Malformed credential"),
    ErrorCode.CHALLENGE_INVALID: (402, "invalid-challenge", "Invalid challenge"),
    # The id's payment is being delivered to another copy of this request right now.
    ErrorCode.PAYMENT_IN_PROGRESS: (402, "invalid-challenge", "Payment in progress"),
    # The card's own payment, up to its position (another copy of the card paid since).
    ErrorCode.PAYMENT_STALE: (402, "verification-failed", "Payment stale"),
    ErrorCode.BAD_FIELD: (400, "bad-request", "Bad request"),
}
_PAYMENT_BY_CLASS: Final[tuple[tuple[type[FarthingError], int, str, str], ...]] = (
    (MalformedMessage, 402, "invalid-payload", "Invalid payload"),
    (PaymentExpired, 402, "payment-expired", "Payment expired"),
    (InsufficientFunds, 402, "payment-insufficient", "Payment insufficient"),
    (AccessDenied, 403, "access-denied", "Access denied"),
    # A used proof (an HLL purchase the bank settled before), a card of another currency,
    # an unknown card: the payment does not verify here.
    (InvalidPayment, 402, "verification-failed", "Payment verification failed"),
    (Conflict, 402, "verification-failed", "Payment verification failed"),
    (UnsupportedMethod, 402, "verification-failed", "Payment verification failed"),
    (NotFound, 402, "verification-failed", "Payment verification failed"),
)


def payment_problem_for(error: FarthingError) -> Problem:
    """The problem for a payment the paywall refused. Every payment failure is a 402 (the
    paywall adds fresh challenges); 403 only for a valid payment that policy refuses;
    outages (503, 429) and our own faults (500) as :func:`problem_for`."""
    if not crosses(error):
        return INTERNAL_PAYMENT_ERROR
    entry = _PAYMENT_BY_CODE.get(error.code)
    if entry is None and error.code not in _CODE_OVERRIDES:
        entry = next((row[1:] for row in _PAYMENT_BY_CLASS if isinstance(error, row[0])), None)
    if entry is None:
        return problem_for(error)
    status, name, title = entry
    position, last_value = _stale_members(error)
    return Problem(
        status=status,
        type=PROBLEM_BASE + name,
        title=title,
        detail=error.message,
        code=int(error.code),
        retry_after=_IN_PROGRESS_WAIT if error.code is ErrorCode.PAYMENT_IN_PROGRESS else None,
        position=position,
        last_value=last_value,
    )


def _stale_members(error: FarthingError) -> tuple[int | None, bytes | None]:
    """A StalePayment's position (and PayWord's last value) for its problem; else none."""
    if not isinstance(error, StalePayment):
        return None, None
    return error.position, error.last_value


def error_for(problem: Problem) -> FarthingError | None:
    """The error a peer's problem stands for: the one class of its code, with the peer's
    fixed message (or the code's name). None for a code we do not know, or one that never
    crosses (a peer's internal fault, or its own misuse): that is the peer's outage."""
    try:
        code = ErrorCode(problem.code)
    except ValueError:
        return None
    cls = CLASS_OF_CODE[code]
    message = problem.detail or code.name.lower()
    retry_after = problem.retry_after or _DEFAULT_RETRY_AFTER
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after, code=code)
    if cls is Unavailable:
        return Unavailable(message, retry_after=retry_after, code=code)
    if issubclass(cls, LocalProtocolError):
        return None
    if cls is StalePayment:
        if problem.position is None:
            return InvalidPayment(message)  # no position: as vague as any refusal
        return StalePayment(
            message, position=problem.position, last_value=problem.last_value, code=code
        )
    return cls(message, code=code)


def internal_problem() -> Problem:
    """A fault of the server itself, outside a payment (the issuer's API)."""
    return Problem(
        status=500,
        type="about:blank",
        title="Internal Server Error",
        detail="internal error",
        code=int(ErrorCode.INTERNAL),
    )


INTERNAL_PAYMENT_ERROR: Final = Problem(
    status=500,
    type=PROBLEM_BASE + "internal-payment-error",
    title="Internal payment error",
    detail="internal error",
    code=int(ErrorCode.INTERNAL),
)
"""A fault of the server while it handled a payment (draft -02 "Error Codes")."""


PAYMENT_REQUIRED: Final = Problem(
    status=402,
    type=PROBLEM_BASE + "payment-required",
    title="Payment required",
    detail="this resource requires payment",
    code=int(ErrorCode.PAYMENT_REQUIRED),
)
