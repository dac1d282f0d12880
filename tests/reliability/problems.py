"""What every error answer of the issuer and the vendor must look like (RFC 9457)."""

from __future__ import annotations

import json

import httpx

from farthing.core.errors import ErrorCode

CODES = {int(code) for code in ErrorCode}
_BY_CODE = {
    ErrorCode.UNAUTHENTICATED: {401},
    ErrorCode.PAYLOAD_TOO_LARGE: {413},
    ErrorCode.RATE_LIMITED: {429},
    ErrorCode.SERVER_BUSY: {503},
    ErrorCode.NOT_FOUND: {404},
    ErrorCode.CONFLICT: {409},
    ErrorCode.DUPLICATE_SPEND: {409},
    ErrorCode.ACCESS_DENIED: {403},
    ErrorCode.UNSUPPORTED_METHOD: {400},
}
_BY_THOUSAND = {1: {400, 405}, 2: {401}, 3: {402}}
# The paywall answers every refused payment 402 (draft-httpauth-payment-02, "Status Codes"):
# a malformed credential or payload, a bad challenge, a payment that does not verify or was
# used (DUPLICATE_SPEND), an unknown card.
_PAYMENT: frozenset[int] = frozenset(
    {
        *(int(c) for c in ErrorCode if int(c) // 1000 in (1, 2, 3)),
        ErrorCode.DUPLICATE_SPEND,
        ErrorCode.NOT_FOUND,
        ErrorCode.UNSUPPORTED_METHOD,
    }
)


def expected_statuses(code: int) -> set[int]:
    """The HTTP statuses a problem with this farthing code may carry (docs/http.md)."""
    payment = {402} if code in _PAYMENT and code != ErrorCode.BAD_FIELD else set()
    if code in _BY_CODE:
        return _BY_CODE[ErrorCode(code)] | payment
    return _BY_THOUSAND.get(code // 1000, set()) | payment


def assert_problem(response: httpx.Response, *, families: set[int] | None = None) -> int:
    """An error answer that is a well-formed problem, never a 500; returns its code."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    assert status >= 400, status
    if families is not None:
        assert status in families, f"{status}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body = json.loads(response.content)
    assert isinstance(body, dict)
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    code = body["farthingCode"]
    assert code in CODES, body
    assert status in expected_statuses(code), body
    return int(code)
