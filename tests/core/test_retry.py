"""The pure side of idempotent retry: request tags, and each index scheme's verify_retry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from farthing.core.cardcode import Generator
from farthing.core.encoding import Writer
from farthing.core.errors import InvalidPayment
from farthing.core.money import Denomination
from farthing.core.primitives import sha256
from farthing.core.retry import REQUEST_TAG_LEN, request_tag, same_request
from farthing.core.schemes import payword, szm_chain, szm_prbg
from farthing.testing import DeterministicRandom
from tests.core.test_payword import STATE0, pay

EUR = Denomination(currency="EUR", unit_micros=1000)
NOW = 1_800_000_000
MASTER = b"M" * 32
AUTH = "Payment eyJpZCI6Ii4uLiJ9"


def tag(method: str = "GET", path: str = "/articles/a", authorization: str = AUTH) -> bytes:
    made = request_tag(http_method=method, path=path, authorization=authorization)
    assert made is not None
    return made


def test_the_tag_is_the_canonical_digest_of_method_path_and_credential() -> None:
    message = Writer("farthing/http/paid-request").bytes(b"GET").bytes(b"/articles/a")
    expected = sha256(message.bytes(AUTH.encode()).finish())[:REQUEST_TAG_LEN]
    assert tag() == expected
    assert len({tag(), tag("HEAD"), tag(path="/articles/b"), tag(authorization=AUTH + "A")}) == 4


def test_only_safe_methods_may_be_retried() -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "get"):
        assert request_tag(http_method=method, path="/a", authorization=AUTH) is None
    assert request_tag(http_method="GET", path="/a", authorization="x" * 70_000) is None


def test_same_request_needs_two_equal_tags() -> None:
    assert same_request(tag(), tag())
    assert not same_request(tag(), tag(path="/b"))
    assert not same_request(None, tag())
    assert not same_request(tag(), None)
    assert not same_request(None, None)


def chain_case() -> tuple[Any, Any, Callable[..., Any], Callable[..., Any]]:
    state, card = szm_chain.issue_card(
        MASTER, DeterministicRandom("retry"), length=20, denomination=EUR, expires_at=NOW + 99
    )
    _, payment, _ = szm_chain.next_payment(card, 3, now=NOW)
    return state, payment, szm_chain.verify_payment, szm_chain.verify_retry


def prbg_case() -> tuple[Any, Any, Callable[..., Any], Callable[..., Any]]:
    state, card = szm_prbg.issue_card(
        MASTER,
        DeterministicRandom("retry"),
        units=20,
        denomination=EUR,
        expires_at=NOW + 99,
        generator=Generator.HMAC_CTR,
    )
    _, payment, _ = szm_prbg.next_payment(card, 3, now=NOW)

    def verify(*args: Any, **kwargs: Any) -> Any:
        return szm_prbg.verify_payment(*args, master_key=MASTER, **kwargs)

    def retry(*args: Any, **kwargs: Any) -> Any:
        return szm_prbg.verify_retry(*args, master_key=MASTER, **kwargs)

    return state, payment, verify, retry


def payword_case() -> tuple[Any, Any, Callable[..., Any], Callable[..., Any]]:
    return STATE0, pay(STATE0, 3), payword.verify_payment, payword.verify_retry


CASES = {"szm:chain": chain_case, "szm:prbg": prbg_case, "payword": payword_case}


@pytest.mark.parametrize("scheme", CASES)
def test_the_last_payment_from_the_same_request_is_a_retry(scheme: str) -> None:
    state, payment, verify, retry = CASES[scheme]()
    after, accepted = verify(state, payment, units=2, now=NOW, request=tag())
    assert (after.last_request, after.last_units) == (tag(), 3)
    again = retry(after, payment, request=tag())
    assert again == accepted  # the same receipt: same key, index and units (3, over a gap)
    with pytest.raises(InvalidPayment):
        verify(after, payment, units=2, now=NOW, request=tag())  # still no new acceptance


@pytest.mark.parametrize("scheme", CASES)
def test_anything_else_is_not_a_retry(scheme: str) -> None:
    state, payment, verify, retry = CASES[scheme]()
    after, _ = verify(state, payment, units=2, now=NOW, request=tag())
    untagged, _ = verify(state, payment, units=2, now=NOW, request=None)
    value_field = "token" if scheme == "szm:prbg" else "value"
    forged = replace(payment, **{value_field: bytes(32)})
    refusals = [
        (after, payment, tag(path="/articles/b")),  # another path
        (after, payment, tag("HEAD")),  # another HTTP method
        (after, payment, None),  # a request that may not be retried
        (untagged, payment, None),  # a payment recorded without a tag
        (untagged, payment, tag()),
        (after, forged, tag()),  # the right tag, a wrong value
        (state, payment, tag()),  # not accepted yet
    ]
    for stored, sent, request in refusals:
        with pytest.raises(InvalidPayment):
            retry(stored, sent, request=request)
