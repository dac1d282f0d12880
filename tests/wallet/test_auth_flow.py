"""PaymentAuth stepped by hand, as httpx's own auth tests do, with a fake payer."""

from __future__ import annotations

import httpx
import pytest

from farthing.core.errors import PolicyRefused
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge, Receipt, format_challenge
from farthing.wallet.auth import PaymentAuth, PreparedPayment

NOW = 1_800_000_000
URL = "https://vendor.test/articles/a"


def challenge(cid: str = "c1", method: str = "szmchain") -> Challenge:
    return Challenge(
        id=cid,
        realm="news",
        method=method,
        intent="charge",
        request=SzmRequest(amount=1000, currency="EUR", resource="/a/*").to_json(),
        expires=NOW + 60,
    )


def response(
    status: int,
    *,
    challenges: list[Challenge] = (),
    receipt: Receipt | None = None,
    body: bytes = b"",
) -> httpx.Response:
    headers = [("www-authenticate", format_challenge(c)) for c in challenges]
    if receipt is not None:
        headers.append(("payment-receipt", receipt.to_header()))
    return httpx.Response(status, headers=headers, content=body)


class FakePayer:
    def __init__(
        self, *, up_front: bool = False, retry: bool = False, refuse_policy: bool = False
    ) -> None:
        self.up_front = up_front
        self.retry = retry
        self.refuse_policy = refuse_policy
        self.paid: list[str] = []
        self.refusals: list[int] = []
        self.settled: list[bytes] = []
        self.remembered: list[Challenge] = []
        self.refusal_details: list[tuple[bool, int | None]] = []
        self.lost_payments: list[str] = []

    def _payment(self, cid: str) -> PreparedPayment:
        self.paid.append(cid)
        return PreparedPayment(
            authorization=f"Payment {cid}-{len(self.paid)}",
            method="szm:chain",
            price_micros=1000,
            currency="EUR",
            url=URL,
            card_label="card",
        )

    def remember(self, url: str, challenges: list[Challenge]) -> None:
        self.remembered.extend(challenges)

    def accept_payment(self, url: str) -> str | None:
        return None

    def pay_up_front(self, url: str, *, keep_authorization: bool = False) -> PreparedPayment | None:
        return self._payment("cached") if self.up_front else None

    def pay(self, url: str, challenges: list[Challenge]) -> PreparedPayment:
        if self.refuse_policy:
            raise PolicyRefused("price above policy")
        return self._payment(challenges[0].id)

    def settle(
        self, payment: PreparedPayment, receipt: Receipt | None, body: bytes, *, status: int
    ) -> bytes:
        self.settled.append(body)
        return b"opened:" + body

    def refused(
        self,
        payment: PreparedPayment,
        status: int,
        *,
        receipt: Receipt | None = None,
        code: int | None = None,
    ) -> None:
        self.refusals.append(status)
        self.refusal_details.append((receipt is not None, code))

    def lost(self, payment: PreparedPayment) -> None:
        self.lost_payments.append(payment.authorization)

    def retry_after_refusal(self) -> bool:
        return self.retry


RECEIPT = Receipt(
    method="szm:chain",
    timestamp=NOW,
    reference="r",
    extra={"sealed": {"alg": "aes-256-gcm", "contentType": "text/plain"}},
)


def test_402_then_pay_then_open() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    first = next(flow)
    assert "authorization" not in first.headers
    retry = flow.send(response(402, challenges=[challenge()]))
    assert retry.headers["authorization"] == "Payment c1-1"
    final = response(200, receipt=RECEIPT, body=b"sealed")
    with pytest.raises(StopIteration):
        flow.send(final)
    assert final.content == b"opened:sealed"
    assert final.headers["content-type"] == "text/plain"
    assert payer.paid == ["c1"]
    assert payer.remembered == [challenge()]


def test_free_response_pays_nothing() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    with pytest.raises(StopIteration):
        flow.send(response(200, body=b"free"))
    assert payer.paid == []
    assert payer.settled == []


def test_up_front_payment_skips_the_402() -> None:
    payer = FakePayer(up_front=True)
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    first = next(flow)
    assert first.headers["authorization"] == "Payment cached-1"
    with pytest.raises(StopIteration):
        flow.send(response(200, receipt=RECEIPT, body=b"x"))
    assert payer.paid == ["cached"]


def test_refused_payment_is_not_paid_twice_without_policy() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    with pytest.raises(StopIteration):
        flow.send(response(401, challenges=[challenge("c2")]))
    assert payer.paid == ["c1"]
    assert payer.refusals == [401]


def test_policy_may_allow_one_more_payment_after_refusal() -> None:
    payer = FakePayer(retry=True)
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    again = flow.send(response(401, challenges=[challenge("c2")]))
    assert again.headers["authorization"] == "Payment c2-2"
    with pytest.raises(StopIteration):
        flow.send(response(401, challenges=[challenge("c3")]))
    assert payer.paid == ["c1", "c2"]


def test_401_without_a_prior_payment_is_not_paid() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    with pytest.raises(StopIteration):
        flow.send(response(401, challenges=[challenge()]))
    assert payer.paid == []


def test_402_without_payment_challenges_is_returned() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(402, headers={"www-authenticate": 'Basic realm="x"'}))
    assert payer.paid == []


def test_policy_refusal_propagates_before_spending() -> None:
    payer = FakePayer(refuse_policy=True)
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    with pytest.raises(PolicyRefused):
        flow.send(response(402, challenges=[challenge()]))
    assert payer.paid == []


def test_refused_up_front_payment_pays_the_fresh_402_once() -> None:
    payer = FakePayer(up_front=True)
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    again = flow.send(response(402, challenges=[challenge("fresh")]))
    assert again.headers["authorization"] == "Payment fresh-2"
    with pytest.raises(StopIteration):
        flow.send(response(401, challenges=[challenge("c3")]))
    assert payer.paid == ["cached", "fresh"]
    assert payer.refusals == [402, 401]


def test_paid_request_ending_in_a_server_error_is_reported() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    with pytest.raises(StopIteration):
        flow.send(response(500))
    assert payer.refusals == [500]
    assert payer.settled == []


def test_refusal_passes_the_receipt_and_the_problem_code() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    problem = httpx.Response(
        404,
        headers={"content-type": "application/problem+json"},
        content=b'{"status": 404, "farthingCode": 4002}',
    )
    with pytest.raises(StopIteration):
        flow.send(problem)
    assert payer.refusals == [404]
    assert payer.refusal_details == [(False, 4002)]


def test_an_exchange_broken_off_after_paying_reports_the_payment_lost() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    flow.close()  # what httpx does when the transport raises (a reset, a timeout)
    assert payer.lost_payments == ["Payment c1-1"]
    assert payer.refusals == []


def test_an_exchange_broken_off_before_paying_loses_nothing() -> None:
    payer = FakePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.close()
    assert payer.lost_payments == []


class StalePayer(FakePayer):
    """A payer that takes PAYMENT_STALE's position (the wallet moves its card there)."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: list[tuple[int | None, bytes | None]] = []

    def refused(
        self,
        payment: PreparedPayment,
        status: int,
        *,
        receipt: Receipt | None = None,
        code: int | None = None,
        position: int | None = None,
        last_value: bytes | None = None,
    ) -> None:
        super().refused(payment, status, receipt=receipt, code=code)
        self.positions.append((position, last_value))


def stale(cid: str, position: int | None = 6) -> httpx.Response:
    members = "" if position is None else f', "position": {position}'
    return httpx.Response(
        402,
        headers={
            "content-type": "application/problem+json",
            "www-authenticate": format_challenge(challenge(cid)),
        },
        content=b'{"status": 402, "farthingCode": 2090' + members.encode() + b"}",
    )


def test_a_stale_refusal_is_paid_once_more_from_the_position_it_names() -> None:
    """Before: a refused payment was not paid again (without the policy's retry), and the
    position was not passed; the wallet then gave the card up at that vendor."""
    payer = StalePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    again = flow.send(stale("c2"))
    assert again.headers["authorization"] == "Payment c2-2"
    with pytest.raises(StopIteration):
        flow.send(stale("c3"))  # stale once more: not paid a third time
    assert payer.paid == ["c1", "c2"]
    assert payer.positions == [(6, None), (6, None)]
    assert payer.refusal_details == [(False, 2090), (False, 2090)]


def test_a_stale_code_without_a_position_is_an_ordinary_refusal() -> None:
    payer = StalePayer()
    flow = PaymentAuth(payer).auth_flow(httpx.Request("GET", URL))
    next(flow)
    flow.send(response(402, challenges=[challenge()]))
    with pytest.raises(StopIteration):
        flow.send(stale("c2", position=None))
    assert payer.paid == ["c1"]
    assert payer.positions == [(None, None)]
