"""farthing's methods as pympp client methods, paying from a farthing wallet.

::

    methods = WalletMethods(wallet)
    async with httpx.AsyncClient(transport=methods.transport()) as client:
        response = await client.get("https://news.example/articles/a.txt")

pympp's :class:`mpp.client.PaymentTransport` does the HTTP: it reads the 402's challenges,
picks one of the installed methods, asks the method for a credential and sends the request
again. A method's ``create_credential`` is given only the challenge, but a farthing wallet
needs the URL too (a card pays only its own sites, and an SZM seal binds the path), and it
must learn how the payment ended (record it, open a sealed body, give units back after a
refusal). pympp reports both as events, so :meth:`WalletMethods.transport` installs
handlers for them:

- ``challenge.received`` (before the credential is made): the request's URL, and the 402's
  challenges as farthing's parser reads them; a payment made for this URL and not yet
  answered was refused by that 402 (the wallet gives its units back);
- ``payment.response`` (a 2xx to the paid request): the wallet settles the payment, and an
  SZM body is opened in place (the caller reads the plaintext, as with
  :class:`farthing.wallet.auth.PaymentAuth`);
- ``payment.failed`` with a credential (no answer, or a 5xx): the payment is lost or
  refused as the wallet decides (a lost one is resent for the next request to that URL).

A paid request that ends in any other status (a 404 of a route without ``offers``, say) is
returned to the caller by pympp without an event; :meth:`WalletMethods.finish` reports it.
Until it is reported, its card pays nothing else: a card pays one request at a time
(:mod:`farthing.wallet.turns`), and a request whose card is busy waits for its turn, up to
``turn_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from mpp import Challenge as MppChallenge
from mpp.client.transport import PaymentTransport
from mpp.runtime import ClientMethod, CredentialParams

from farthing.core.errors import CardInFlight, LocalProtocolError
from farthing.http.payment_auth import Challenge, Receipt, parse_challenges
from farthing.mpp.common import METHOD_IDS, method_definition
from farthing.wallet.auth import (
    DEFAULT_TURN_TIMEOUT,
    Payer,
    PreparedPayment,
    TurnWait,
    receipt_of,
    report_refusal,
)

__all__ = ["WalletMethods"]


@dataclass(slots=True)
class _Asked:
    """A 402 being answered: the URL asked for, and the challenges farthing read in it."""

    url: str
    challenges: list[Challenge]


class WalletMethods:
    """farthing's payment methods as pympp :class:`ClientMethod` s, paying from ``payer``
    (a :class:`farthing.wallet.Wallet`)."""

    def __init__(
        self,
        payer: Payer,
        methods: Iterable[str] = METHOD_IDS,
        *,
        turn_timeout: float = DEFAULT_TURN_TIMEOUT,
    ) -> None:
        self._payer = payer
        self._turn_timeout = turn_timeout
        self._asked: dict[str, _Asked] = {}  # challenge id -> the 402 it came in
        self._paid: dict[str, PreparedPayment] = {}  # challenge id -> its payment
        self.methods = tuple(
            ClientMethod(method=method_definition(name), create_credential=self._credential)
            for name in methods
        )

    def transport(
        self, inner: httpx.AsyncBaseTransport | None = None, **options: Any
    ) -> PaymentTransport:
        """pympp's own httpx transport with these methods and their event handlers."""
        transport = PaymentTransport(methods=self.methods, inner=inner, **options)
        transport.on_challenge_received(self._challenge_received)
        transport.on_payment_response(self._payment_response)
        transport.on_payment_failed(self._payment_failed)
        return transport

    async def finish(self, response: httpx.Response) -> None:
        """Report a paid request's final answer that pympp returned without an event (any
        status but 2xx and 5xx); a 2xx or 5xx was reported already."""
        for challenge_id, payment in list(self._paid.items()):
            if payment.url == str(response.request.url):
                del self._paid[challenge_id]
                await self._report_refusal(payment, response)

    # -- pympp's events and its create_credential hook ----------------------------------------

    async def _challenge_received(self, payload: dict[str, Any]) -> None:
        request: httpx.Request = payload["request"]
        response: httpx.Response = payload["response"]
        url = str(request.url)
        await self._refuse_unanswered(url, response)
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        chosen: MppChallenge = payload["challenge"]
        self._asked[chosen.id] = _Asked(url=url, challenges=challenges)

    async def _credential(self, params: CredentialParams) -> str:
        asked = self._asked.pop(params.challenge.id, None)
        if asked is None:
            raise LocalProtocolError("a challenge that did not come in a 402 to this client")
        challenge = [c for c in asked.challenges if c.id == params.challenge.id]
        payment = await self._pay_in_turn(asked.url, challenge)
        self._paid[params.challenge.id] = payment
        return payment.authorization

    async def _pay_in_turn(self, url: str, challenge: list[Challenge]) -> PreparedPayment:
        """Pay, sleeping while the card's last payment is unanswered (a card pays one
        request at a time: farthing.wallet.turns)."""
        wait = TurnWait(self._turn_timeout)
        while True:
            try:
                return await anyio.to_thread.run_sync(self._payer.pay, url, challenge)
            except CardInFlight as busy:
                for pause in wait.pauses(busy):
                    await anyio.sleep(pause)

    async def _payment_response(self, payload: dict[str, Any]) -> None:
        payment = self._paid.pop(payload["credential"].challenge.id, None)
        if payment is None:
            return
        response: httpx.Response = payload["response"]
        body = await response.aread()
        receipt = receipt_of(response)
        plaintext = self._payer.settle(payment, receipt, body, status=response.status_code)
        if plaintext is not body:
            _replace_body(response, plaintext, receipt)

    async def _payment_failed(self, payload: dict[str, Any]) -> None:
        credential = payload.get("credential")
        payment = None if credential is None else self._paid.pop(credential.challenge.id, None)
        if payment is None:
            return
        response: httpx.Response | None = payload.get("response")
        if response is None or not response.is_server_error:
            self._payer.lost(payment)
        else:
            await self._report_refusal(payment, response)

    async def _report_refusal(self, payment: PreparedPayment, response: httpx.Response) -> None:
        """The payer learns of a refusal with its problem if the body can be read. pympp
        closes the 402 of a paid try unread before its next try: then with the receipt
        only (a PAYMENT_STALE's position does not reach the wallet that way)."""
        try:
            await response.aread()
        except httpx.StreamError:
            self._payer.refused(payment, response.status_code, receipt=receipt_of(response))
            return
        report_refusal(self._payer, payment, response)

    async def _refuse_unanswered(self, url: str, response: httpx.Response) -> None:
        """A 402 to a request that carried a payment: that payment was not taken."""
        for challenge_id, payment in list(self._paid.items()):
            if payment.url == url:
                del self._paid[challenge_id]
                await self._report_refusal(payment, response)


def _replace_body(response: httpx.Response, plaintext: bytes, receipt: Receipt | None) -> None:
    """The opened body in place of the sealed one, with its original content type."""
    sealed = receipt.extra.get("sealed") if receipt is not None else None
    content_type = sealed.get("contentType") if isinstance(sealed, dict) else None
    response._content = plaintext
    response.headers["content-length"] = str(len(plaintext))
    if isinstance(content_type, str) and content_type:
        response.headers["content-type"] = content_type
