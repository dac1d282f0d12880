"""farthing's vendor methods as pympp server methods: pympp speaks HTTP, farthing settles.

::

    methods = VendorMethods([OfflineMethod(SzmScheme.chain(master), book), ...], clock=clock)
    server = mpp.server.Mpp(methods.server_methods, realm="news", secret_key=secret)
    charge = methods.charge(server, PricedRoute(scope="/articles/*", price=price))

    async def article(request):                   # a Starlette endpoint
        result = await charge(await to_request(request), resource=request.url.path)
        if isinstance(result, PaymentRequired):
            return to_framework_response(result.challenge)
        return to_framework_response(result.with_receipt(Response(body=...)))

pympp makes and checks the challenges (its HMAC binding, the echo, the expiry) and writes
the 402s and receipts. Each farthing method is a :class:`mpp.server.method.ServerMethod`
whose ``verify`` is the method adapter's own ``settle``
(:class:`farthing.paywall.methods.base.PaymentMethod`): the pure core verifies and the
store's conditional update records the payment, so a credential sent twice, or two sent
at once, settle once whatever pympp does. A refusal becomes pympp's problem of the same
meaning (402 with a fresh challenge).

pympp's ``verify`` is given the credential, the route input and the challenge, not the
request's path, which an SZM seal and an HLL offer bind: :meth:`VendorMethods.charge`
passes the path and the priced route to ``verify`` in a context variable, set around the
call of pympp's handler in the same task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from mpp import Receipt
from mpp.errors import (
    InvalidPayloadError,
    PaymentError,
    PaymentExpiredError,
    PaymentInsufficientError,
    PaymentMethodUnsupportedError,
    VerificationFailedError,
)
from mpp.server.http import PaymentResult, Request
from mpp.server.method import ServerMethod, VerifyContext
from mpp.server.mpp import Mpp

from farthing.core.clock import Clock
from farthing.core.encoding import b64url_decode
from farthing.core.errors import (
    FarthingError,
    InsufficientFunds,
    MalformedMessage,
    PaymentExpired,
    UnsupportedMethod,
)
from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import ChallengeId
from farthing.mpp.common import AnyObject, method_definition
from farthing.paywall.methods.base import PaymentContext, PaymentMethod, Settlement
from farthing.paywall.pricing import PricedRoute

__all__ = ["Charge", "VendorMethods"]


@dataclass(frozen=True, slots=True)
class _Paying:
    route: PricedRoute
    resource: str


_PAYING: ContextVar[_Paying | None] = ContextVar("farthing_mpp_paying", default=None)

Charge = Callable[..., Awaitable[PaymentResult]]


class VendorMethods:
    """farthing's method adapters (``OfflineMethod``, ``HllMethod``, ...) as pympp
    :class:`ServerMethod` s."""

    def __init__(self, methods: Sequence[PaymentMethod], *, clock: Clock) -> None:
        # The adapters are named by scheme (card kind); pympp knows the wire's method ids.
        self._methods = {METHOD_OF[method.name]: method for method in methods}
        self._clock = clock
        self.server_methods = tuple(
            self._server_method(name, method) for name, method in self._methods.items()
        )
        self.settlements: dict[str, Settlement] = {}  # receipt reference -> settlement

    def charge(self, server: Mpp, route: PricedRoute) -> Charge:
        """pympp's handler offering every method for ``route``; call it with the pympp
        request and ``resource=`` the request's canonical path."""
        handlers = [
            (server[f"{name}/charge"], method.request(route))
            for name, method in self._methods.items()
        ]
        composed = server.compose(*handlers) if len(handlers) > 1 else None

        async def handle(request: Request, *, resource: str) -> PaymentResult:
            with _paying(route, resource):
                if composed is not None:
                    return await composed(request)
                handler, options = handlers[0]
                return await handler(**options)(request)  # type: ignore[no-any-return]

        return handle

    def _server_method(self, name: str, method: PaymentMethod) -> ServerMethod:
        async def verify(context: VerifyContext) -> Receipt:
            paying = _PAYING.get()
            if paying is None:
                raise VerificationFailedError("no priced route for this payment")
            payload = context.credential.payload
            members = payload.members() if isinstance(payload, AnyObject) else dict(payload)
            settle = PaymentContext(
                payload=members,
                route=paying.route,
                resource=paying.resource,
                challenge=_challenge_id(context),
                now=self._clock.now(),
            )
            try:
                settlement = await method.settle(settle)
            except FarthingError as error:
                raise _payment_error(error) from None
            self.settlements[settlement.reference] = settlement
            return Receipt(
                status="success",
                timestamp=datetime.fromtimestamp(self._clock.now(), UTC),
                reference=settlement.reference,
                method=name,
                extra=dict(settlement.receipt.to_json()),
            )

        return ServerMethod(method=method_definition(name), verify=verify)


@contextlib.contextmanager
def _paying(route: PricedRoute, resource: str) -> Iterator[None]:
    token = _PAYING.set(_Paying(route, resource))
    try:
        yield
    finally:
        _PAYING.reset(token)


def _challenge_id(context: VerifyContext) -> ChallengeId:
    """pympp's challenge as the adapters see one (only HLL's offer reads it: T and expiry)."""
    raw = b64url_decode(context.challenge.id, max_len=128)
    expires = context.challenge.expires or ""
    when = datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
    return ChallengeId(raw=raw, expires=int(when.timestamp()) if when else 0)


def _payment_error(error: FarthingError) -> PaymentError:
    """farthing's refusal as pympp's problem of the same meaning; pympp adds the fresh
    challenge and answers 402. The message is farthing's fixed one (never a secret)."""
    if isinstance(error, MalformedMessage):
        return InvalidPayloadError(error.message)
    if isinstance(error, UnsupportedMethod):
        return PaymentMethodUnsupportedError(error.message)
    if isinstance(error, PaymentExpired):
        return PaymentExpiredError()
    if isinstance(error, InsufficientFunds):
        return PaymentInsufficientError(error.message)
    return VerificationFailedError(error.message)
