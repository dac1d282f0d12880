import re

import pytest

from farthing.core import errors
from farthing.core.errors import CLASS_OF_CODE, ErrorCode, FarthingError, LocalProtocolError
from farthing.http.problems import (
    PROBLEM_BASE,
    Problem,
    error_for,
    payment_problem_for,
    problem_for,
)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (errors.MalformedMessage("m"), 400, "malformed-credential"),
        (errors.UnsupportedMethod("m"), 400, "method-unsupported"),
        (errors.InvalidPayment("m"), 401, "verification-failed"),
        (errors.PaymentExpired("m"), 402, "payment-expired"),
        (errors.InsufficientFunds("m"), 402, "payment-insufficient"),
        (errors.AccessDenied("m"), 403, "access-denied"),
    ],
)
def test_draft_problem_types(error: errors.FarthingError, status: int, kind: str) -> None:
    problem = problem_for(error)
    assert (problem.status, problem.type) == (status, PROBLEM_BASE + kind)
    assert problem.to_json()["farthingCode"] == int(error.code)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (
            errors.MalformedMessage("m", code=ErrorCode.MALFORMED_CREDENTIAL),
            402,
            "malformed-credential",
        ),
        (errors.MalformedMessage("m", code=ErrorCode.OVERSIZED), 402, "malformed-credential"),
        (errors.MalformedMessage("m", code=ErrorCode.INVALID_PAYLOAD), 402, "invalid-payload"),
        (errors.MalformedMessage("m", code=ErrorCode.TRUNCATED), 402, "invalid-payload"),
        (errors.MalformedMessage("m", code=ErrorCode.BAD_FIELD), 400, "bad-request"),
        (errors.InvalidPayment("m", code=ErrorCode.CHALLENGE_INVALID), 402, "invalid-challenge"),
        (errors.PaymentExpired("m", code=ErrorCode.CHALLENGE_EXPIRED), 402, "payment-expired"),
        (errors.PaymentExpired("m", code=ErrorCode.CARD_EXPIRED), 402, "payment-expired"),
        (errors.InvalidPayment("m"), 402, "verification-failed"),
        (errors.Conflict("m", code=ErrorCode.DUPLICATE_SPEND), 402, "verification-failed"),
        (errors.UnsupportedMethod("m"), 402, "verification-failed"),
        (errors.InsufficientFunds("m"), 402, "payment-insufficient"),
        (errors.AccessDenied("m"), 403, "access-denied"),
    ],
)
def test_every_refused_payment_is_a_402_but_policy(
    error: errors.FarthingError, status: int, kind: str
) -> None:
    """draft-httpauth-payment-02, "Status Codes": 402 for every payment failure, 403 only
    when a valid payment is refused by policy, never 401."""
    problem = payment_problem_for(error)
    assert (problem.status, problem.type) == (status, PROBLEM_BASE + kind)
    assert problem.code == int(error.code)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_a_payment_problem_is_never_401_and_round_trips(code: ErrorCode) -> None:
    error = error_of(code)
    problem = payment_problem_for(error)
    assert problem.status != 401 or code is ErrorCode.UNAUTHENTICATED
    wire = Problem.from_json(problem.status, problem.to_json(), None)
    assert wire is not None
    back = error_for(wire)
    if isinstance(error, LocalProtocolError):
        assert back is None
        return
    assert back is not None
    assert (type(back), back.code, back.message) == (type(error), error.code, error.message)


def test_local_misuse_is_internal_and_silent() -> None:
    problem = problem_for(errors.LocalProtocolError("secret detail 0xdeadbeef"))
    assert problem.status == 500
    assert "deadbeef" not in str(problem.to_json())


def test_rate_limit_carries_retry_after() -> None:
    problem = problem_for(errors.RateLimited("slow", retry_after=7))
    assert problem.status == 429
    assert problem.to_json()["retry_after"] == 7


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.PaymentExpired("m", code=ErrorCode.CHALLENGE_EXPIRED), "expired_challenge",
         "ttl-exceeded"),
        (errors.PaymentExpired("m", code=ErrorCode.CARD_EXPIRED), "payment_expired",
         "x-card-expired"),
        (errors.InsufficientFunds("m"), "insufficient_balance", "below-minimum"),
        (errors.InvalidPayment("m", code=ErrorCode.CHALLENGE_INVALID), "invalid_challenge",
         "x-challenge-invalid"),
        (errors.InvalidPayment("m", code=ErrorCode.PAYMENT_IN_PROGRESS), "invalid_challenge",
         "x-payment-in-progress"),
        (errors.InvalidPayment("m"), "verification_failed", "x-payment-invalid"),
        (errors.Unavailable("m", retry_after=3, code=ErrorCode.ISSUER_UNAVAILABLE),
         "network_error", "x-issuer-unavailable"),
        (errors.LocalProtocolError("m"), "internal_payment_error", "x-internal"),
    ],
)  # fmt: skip
def test_payment_problems_carry_errors00_code_and_reason(
    error: errors.FarthingError, code: str, reason: str
) -> None:
    """draft-payment-errors-00 "Fields": ``code`` a string (its own where it has one for
    this meaning), ``reason`` lowercase hyphenated (``x-`` for ours); our integer stays as
    ``farthingCode``, and ``retry_after`` goes with every Retry-After."""
    body = payment_problem_for(error).to_json()
    assert (body["code"], body["reason"]) == (code, reason)
    internal = isinstance(error, LocalProtocolError)
    assert body["farthingCode"] == (ErrorCode.INTERNAL if internal else int(error.code))
    retry = isinstance(error, errors.Unavailable) or error.code is ErrorCode.PAYMENT_IN_PROGRESS
    assert ("retry_after" in body) is retry


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_every_reason_is_lowercase_hyphenated(code: ErrorCode) -> None:
    for problem in (payment_problem_for(error_of(code)), problem_for(error_of(code))):
        body = problem.to_json()
        assert re.fullmatch(r"[a-z][a-z0-9-]*", str(body["reason"])), body
        assert re.fullmatch(r"[a-z][a-z0-9_]*", str(body["code"])), body


def test_the_old_integer_code_alone_is_no_farthing_problem() -> None:
    """A body with only an integer ``code`` (the shape before errors-00) names nothing:
    the client treats it as the peer's outage rather than guess."""
    assert Problem.from_json(404, {"code": 4002, "detail": "x"}, None) is None


def test_code_overrides() -> None:
    problem = problem_for(errors.AccessDenied("who", code=ErrorCode.UNAUTHENTICATED))
    assert problem.status == 401


def error_of(code: ErrorCode) -> FarthingError:
    """An error of the one class ``code`` is raised as (CLASS_OF_CODE), with a fixed message."""
    cls = CLASS_OF_CODE[code]
    if cls is errors.RateLimited:
        return errors.RateLimited("slow down", retry_after=7, code=code)
    if cls is errors.Unavailable:
        return errors.Unavailable("out for now", retry_after=9, code=code)
    if cls is errors.WrongPin:
        return errors.WrongPin("the card PIN is wrong", tries_left=1)
    return cls(f"fixed message of {code.name}", code=code)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_every_code_round_trips_through_its_problem(code: ErrorCode) -> None:
    """problem_for and error_for read the same table: what may cross comes back as the same
    class, code, message and Retry-After, also through JSON; our own misuse never crosses."""
    error = error_of(code)
    problem = problem_for(error)
    wire = Problem.from_json(
        problem.status,
        problem.to_json(),
        str(problem.retry_after) if problem.retry_after is not None else None,
    )
    assert wire is not None
    back = error_for(wire)
    if isinstance(error, LocalProtocolError):
        assert (problem.status, problem.code, problem.detail) == (500, 9000, "internal error")
        assert back is None
        return
    assert back is not None
    assert (type(back), back.code, back.message) == (type(error), error.code, error.message)
    assert getattr(back, "retry_after", None) == getattr(error, "retry_after", None)


def test_an_outage_is_a_503_and_keeps_its_cause_at_home() -> None:
    cause = OSError("connect to 10.0.0.7:5432 refused")
    error = errors.Unavailable("out for now", retry_after=9)
    error.__cause__ = cause
    problem = problem_for(error)
    assert (problem.status, problem.retry_after) == (503, 9)
    assert "10.0.0.7" not in str(problem.to_json())
    device = problem_for(errors.DeviceFailure("the card device failed"))
    assert device.status == 503
