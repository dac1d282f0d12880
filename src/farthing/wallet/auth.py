"""``PaymentAuth``: pay HTTP 402 challenges automatically, for httpx sync and async clients.

The flow is a generator with no I/O of its own (httpx drives it), so it is tested by
stepping it by hand::

    request = yield request                       # 1. try, paying up front if we hold a
                                                  #    still-valid challenge for this route
    if response is 402: pay one offered challenge within policy, retry once
    if response is 200: open the sealed body with the payment's key, record the purchase

The payer may name the methods it can pay (:meth:`Payer.accept_payment`): the flow sends them
as ``Accept-Payment`` (draft-httpauth-payment-02), so the vendor offers only those, most
wanted first. A credential goes in the field its challenge selects: ``Authorization``, or
``Payment-Authorization`` when the challenge has ``header`` (the vendor asks for that when the
request keeps ``Authorization`` for another scheme, which is then left as it was).

A card pays one request at a time: while its last payment is unanswered, the payer raises
:class:`~farthing.core.errors.CardInFlight` and the flow waits its turn (:class:`TurnWait`: in
the wallet's line for that card, or a growing pause if another process holds it; up to
``turn_timeout`` seconds) and asks again, so a card's payments reach a vendor in the order
they were made, even when a program sends many requests at once.

It never pays twice for one request on its own initiative: after a paid attempt is refused
(401 with a fresh challenge, or 402), it returns that response unless the payer's policy
allows one retry. The one exception is a refused *up-front* payment (made from a remembered
challenge, or the resend of a lost one, before the vendor asked): the fresh 402 is then
paid once, as if the up-front attempt had not been made. A paid request that ends in any
other status is reported to the payer as refused, with its receipt (if any) and problem
code: without a receipt the vendor did not take the payment and the payer gives the units
back. A paid request whose answer never comes (a reset, a timeout) is reported as lost:
the payer resends the same credential for the next request to that URL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio
import httpx

from farthing.core.errors import CardInFlight, ErrorCode, FarthingError
from farthing.http.payment_auth import Challenge, Receipt, parse_challenges
from farthing.http.problems import Problem

AUTHORIZATION = "Authorization"
ACCEPT_PAYMENT = "Accept-Payment"
DEFAULT_TURN_TIMEOUT: Final = 60.0
"""Seconds a request waits for its card's last payment to be answered, then CardInFlight."""
_FIRST_PAUSE: Final = 0.001
_LONGEST_PAUSE: Final = 0.02

__all__ = [
    "ACCEPT_PAYMENT",
    "AUTHORIZATION",
    "Payer",
    "PaymentAuth",
    "PreparedPayment",
    "TurnWait",
    "receipt_of",
    "report_refusal",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedPayment:
    """A payment made for one request, not yet known to be accepted."""

    authorization: str = field(repr=False)
    method: str
    price_micros: int
    currency: str
    url: str
    card_label: str
    sealing_key: bytes | None = field(default=None, repr=False)
    card_id: bytes | None = None
    index: int | None = None
    header: str = AUTHORIZATION
    """The field the credential goes in: what its challenge selected."""


class Payer(Protocol):
    """What PaymentAuth needs from a wallet."""

    def remember(self, url: str, challenges: list[Challenge]) -> None:
        """Keep challenges for paying later requests to the same route up front."""
        ...

    def accept_payment(self, url: str) -> str | None:
        """The ``Accept-Payment`` value for ``url`` (the methods the payer can pay there, most
        wanted first), or None to send none."""
        ...

    def pay_up_front(self, url: str, *, keep_authorization: bool = False) -> PreparedPayment | None:
        """A lost payment for ``url`` to resend as it was, or a payment from a remembered,
        still-valid challenge that covers ``url``, or None. ``keep_authorization``: the
        request's ``Authorization`` is not ours, so only a payment sent in
        ``Payment-Authorization`` will do."""
        ...

    def pay(self, url: str, challenges: list[Challenge]) -> PreparedPayment:
        """Pick one challenge and pay it within policy; raises PolicyRefused, CardExhausted,
        and CardInFlight while the chosen card's last payment is unanswered (try again)."""
        ...

    def settle(
        self, payment: PreparedPayment, receipt: Receipt | None, body: bytes, *, status: int
    ) -> bytes:
        """A 2xx answer: record the purchase; return the plaintext body (opened if sealed)."""
        ...

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
        """A non-2xx answer to a payment (``code``: the problem's farthing code, if any).
        PAYMENT_STALE also passes the problem's ``position`` (and ``last_value``, PayWord's
        ``lastValue``), only then (a payer written before them still works for every
        other answer): the payer moves its card there; the flow pays the fresh 402 once
        more."""
        ...

    def lost(self, payment: PreparedPayment) -> None:
        """No answer came for a payment that was sent (reset, timeout)."""
        ...

    def retry_after_refusal(self) -> bool:
        """Policy: may a request be paid a second time after its payment was refused?"""
        ...


@dataclass(frozen=True, slots=True)
class Pause:
    """Not a request: :meth:`PaymentAuth.payment_flow` asks its driver to sleep this long
    (the card's last payment is unanswered), then to send it None."""

    seconds: float


class PaymentAuth(httpx.Auth):
    """``httpx.Client(auth=PaymentAuth(wallet))``: answers 402s by paying.

    ``turn_timeout``: how long a request waits while its card's last payment is unanswered
    before CardInFlight reaches the caller.
    """

    requires_response_body = True

    def __init__(self, payer: Payer, *, turn_timeout: float = DEFAULT_TURN_TIMEOUT) -> None:
        self._payer = payer
        self._turn_timeout = turn_timeout

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        # httpx's own loop, but closing the flow when the exchange breaks off (a reset, a
        # timeout, a body that cannot be read), so a payment in flight is marked lost.
        flow = self.auth_flow(request)
        try:
            request = next(flow)
            while True:
                response = yield request
                response.read()
                try:
                    request = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.payment_flow(request)
        try:
            step = next(flow)
            while True:
                while isinstance(step, Pause):  # the loop goes on serving the other requests
                    await anyio.sleep(step.seconds)
                    step = flow.send(None)
                response = yield step
                await response.aread()
                try:
                    step = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """:meth:`payment_flow` for a thread: a pause sleeps the thread."""
        flow = self.payment_flow(request)
        try:
            step = next(flow)
            while True:
                while isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                response = yield step
                try:
                    step = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    def payment_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request | Pause, httpx.Response | None, None]:
        """The flow without I/O: yields the requests to send, and a :class:`Pause` where
        it must wait for its card's turn; the driver sends back each request's response,
        and None after a pause."""
        url = str(request.url)
        accept = self._payer.accept_payment(url)
        if accept is not None and ACCEPT_PAYMENT not in request.headers:
            request.headers[ACCEPT_PAYMENT] = accept
        # The request may carry an Authorization of its own (a Bearer token for the app);
        # a Payment credential there (a redirect's copy of ours) is not kept.
        keep = not request.headers.get(AUTHORIZATION, "Payment ").startswith("Payment ")
        payment = self._payer.pay_up_front(url, keep_authorization=keep)
        up_front = payment is not None
        if payment is not None:
            _attach(request, payment, None)
        response = yield from self._send(request, payment)
        stale_retry = policy_retry = True
        while response.status_code in (401, 402):
            challenges = parse_challenges(response.headers.get_list("www-authenticate"))
            stale = payment is not None and report_refusal(self._payer, payment, response)
            if not challenges:
                return
            self._payer.remember(url, challenges)
            if payment is None and response.status_code != 402:
                return
            if payment is not None:
                # An up-front payment (or the resend of a lost one) is not the reader's
                # decision to pay again: when it is refused (say its challenge went stale),
                # pay the fresh 402 once. Nor is a payment refused as stale (a copy of the
                # card paid since; the payer moved the card to where the vendor says): pay
                # once more from there. Anything else only if the policy allows one retry.
                if up_front:
                    up_front = False
                elif stale and stale_retry:
                    stale_retry = False
                elif policy_retry and self._payer.retry_after_refusal():
                    policy_retry = False
                else:
                    return
            before = payment
            payment = yield from self._pay_in_turn(url, challenges)
            _attach(request, payment, before)
            response = yield from self._send(request, payment)
        if payment is None:
            return
        if response.is_success:
            _open(response, payment, self._payer)
            # A paid answer carries a fresh challenge for the next payment up front (a
            # challenge id pays once).
            fresh = _challenges(response)
            if fresh:
                self._payer.remember(url, fresh)
        elif response.status_code not in (401, 402):
            report_refusal(self._payer, payment, response)

    def _pay_in_turn(
        self, url: str, challenges: list[Challenge]
    ) -> Generator[Pause, object, PreparedPayment]:
        """Pay, pausing while the chosen card's last payment is unanswered."""
        wait = TurnWait(self._turn_timeout)
        while True:
            try:
                return self._payer.pay(url, challenges)
            except CardInFlight as busy:
                for pause in wait.pauses(busy):
                    yield Pause(pause)

    def _send(
        self, request: httpx.Request, payment: PreparedPayment | None
    ) -> Generator[httpx.Request, httpx.Response | None, httpx.Response]:
        """Send ``request``; if the exchange breaks off after a payment left, it is lost."""
        try:
            response = yield request
        except GeneratorExit:
            if payment is not None:
                self._payer.lost(payment)
            raise
        assert response is not None  # a driver sends None only after a Pause
        return response


class TurnWait:
    """One request's wait for its card's turn, ``timeout`` seconds of sleep in all."""

    def __init__(self, timeout: float) -> None:
        self._left = timeout
        self._backoff = _FIRST_PAUSE

    def pauses(self, busy: CardInFlight) -> Iterator[float]:
        """The sleeps before asking the payer again, after ``busy``: in the payer's line
        until it is this request's go (a look is cheap; asking costs a quote), or, for a
        card held by another process, one pause growing from 1 to 20 ms. Raises ``busy``
        when the time is up."""
        while True:
            if busy.next_look is None:
                pause = self._backoff
                self._backoff = min(2 * pause, _LONGEST_PAUSE)
            else:
                pause = busy.next_look()
                if pause <= 0:
                    return
            if self._left <= 0:
                raise busy
            self._left -= pause
            yield pause
            if busy.next_look is None:
                return


def _attach(
    request: httpx.Request, payment: PreparedPayment, before: PreparedPayment | None
) -> None:
    """Put the credential in the field its challenge selected, taking out the one an
    earlier attempt of this request put in another field (two credentials are refused)."""
    if before is not None and before.header != payment.header:
        del request.headers[before.header]
    request.headers[payment.header] = payment.authorization


def receipt_of(response: httpx.Response) -> Receipt | None:
    """The response's ``Payment-Receipt``, or None if it has none or one that does not parse."""
    header = response.headers.get("payment-receipt")
    if not header:
        return None
    try:
        return Receipt.from_header(header)
    except FarthingError:
        return None  # a receipt that does not parse says nothing was taken


def _problem(response: httpx.Response) -> Problem | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return Problem.from_json(response.status_code, body, response.headers.get("retry-after"))


def _challenges(response: httpx.Response) -> list[Challenge]:
    try:
        return parse_challenges(response.headers.get_list("www-authenticate"))
    except FarthingError:
        return []  # an oversized header: nothing to remember


def report_refusal(payer: Payer, payment: PreparedPayment, response: httpx.Response) -> bool:
    """Tell the payer of a non-2xx answer (read) to ``payment``, with its receipt and
    problem; whether the answer was PAYMENT_STALE with the card's position (the payer was
    given it, to move the card there: the request may be paid once more)."""
    problem = _problem(response)
    receipt = receipt_of(response)
    code = None if problem is None else problem.code
    if code == ErrorCode.PAYMENT_STALE and problem is not None and problem.position is not None:
        payer.refused(
            payment, response.status_code, receipt=receipt, code=code,
            position=problem.position, last_value=problem.last_value,
        )  # fmt: skip
        return True
    payer.refused(payment, response.status_code, receipt=receipt, code=code)
    return False


def _open(response: httpx.Response, payment: PreparedPayment, payer: Payer) -> None:
    receipt = receipt_of(response)
    plaintext = payer.settle(payment, receipt, response.content, status=response.status_code)
    if plaintext is not response.content:
        sealed = receipt.extra.get("sealed") if receipt is not None else None
        content_type = sealed.get("contentType") if isinstance(sealed, dict) else None
        # httpx hands the flow's last response to the caller as is, so the opened body
        # replaces the sealed one in place.
        response._content = plaintext
        response.headers["content-length"] = str(len(plaintext))
        if isinstance(content_type, str) and content_type:
            response.headers["content-type"] = content_type
