import pytest

from farthing.core import errors
from farthing.core.errors import ErrorCode
from farthing.http.problems import PROBLEM_BASE, problem_for


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
    assert problem.to_json()["code"] == int(error.code)


def test_local_misuse_is_internal_and_silent() -> None:
    problem = problem_for(errors.LocalProtocolError("secret detail 0xdeadbeef"))
    assert problem.status == 500
    assert "deadbeef" not in str(problem.to_json())


def test_rate_limit_carries_retry_after() -> None:
    problem = problem_for(errors.RateLimited("slow", retry_after=7))
    assert problem.status == 429
    assert problem.to_json()["retryAfter"] == 7


def test_code_overrides() -> None:
    problem = problem_for(errors.AccessDenied("who", code=ErrorCode.UNAUTHENTICATED))
    assert problem.status == 401
