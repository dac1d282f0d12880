"""The paywall: a plain ASGI middleware that speaks the HTTP "Payment" scheme (402).

Every HTTP request first gets its one canonical path (:mod:`farthing.http.paths`), or a
404; the price, ``offers``, the seal binding and the HLL offer all use that string. Then,
for each request whose path has a price (and, when the app names what it offers through
``offers``, that it does offer; otherwise the app answers, 404 or 405, for free):

1. No ``Authorization: Payment`` header, or a HEAD request (never charged, whatever it
   carries): answer 402 with one challenge per enabled method, ``Cache-Control: no-store``
   and a problem+json body (none for HEAD).
2. Otherwise parse the credential strictly, check the stateless challenge id (an HMAC over
   nonce, expiry, realm, method, route scope and price; no database), and hand the payload to
   the method adapter, which verifies it with the pure core and records it durably with one
   conditional update. Any :class:`FarthingError` becomes the draft's problem type (401
   verification failures carry fresh challenges); anything else is a 500 with a correlation
   id that is logged, never echoed.
   The same request sent again (byte-identical credential, same path and HTTP method,
   GET or HEAD) while its challenge is valid is a retry after a lost answer: the method
   recognises its payment as the one it accepted last and it is served again, nothing
   taken (:mod:`farthing.core.retry`). An identical copy that arrives while the first is
   still being settled or delivered is refused (402, ``PAYMENT_IN_PROGRESS``): one delivery.
3. Call the wrapped app and add ``Payment-Receipt``. For SZM methods the body is sealed
   (AES-256-GCM) under the key the payment distributed, bound to method, card, index,
   path, status and original content type, so an unpaid or wrongly paid request never sees
   plaintext and nobody on the way can relabel what was sold. A paid request's scope offers
   no response extensions (``pathsend``, ...), and any message but a start and its body
   fails closed.

It is a plain ASGI layer, not a Starlette ``BaseHTTPMiddleware``, to keep the paid hot path
to header parsing, one MAC, the scheme's check and one database write.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farthing.core.clock import Clock, RandomSource
from farthing.core.errors import (
    Conflict,
    ErrorCode,
    FarthingError,
    InvalidPayment,
    MalformedMessage,
    NotFound,
)
from farthing.core.primitives import constant_time_eq
from farthing.core.retry import request_tag
from farthing.core.sealing import seal, seal_binding
from farthing.http.methods import METHOD_OF
from farthing.http.methods.common import SealedBody
from farthing.http.paths import canonical_path
from farthing.http.payment_auth import (
    CHALLENGE_NONCE_LEN,
    OWS,
    PAYMENT_AUTHORIZATION,
    Challenge,
    ChallengeBinder,
    ChallengeEcho,
    JsonObject,
    content_digest,
    encode_jcs_b64,
    encode_json_b64,
    format_challenge,
    format_rfc3339,
    order_by_preference,
    parse_credential,
)
from farthing.http.problems import (
    CONTENT_TYPE,
    INTERNAL_PAYMENT_ERROR,
    PAYMENT_REQUIRED,
    PROBLEM_BASE,
    Problem,
    payment_problem_for,
    problem_for,
)
from farthing.observe.context import correlation_id, current_note
from farthing.paywall.browser import accepts_html, is_wallet_path, payment_page
from farthing.paywall.idempotency import (
    MAX_KEY_LEN,
    IdempotencyKeys,
    Recorder,
    key_digest,
    replay,
    request_digest,
)
from farthing.paywall.methods.base import PaymentContext, PaymentMethod, Settlement
from farthing.paywall.metrics import PaywallMetrics
from farthing.paywall.pricing import PricedRoute, PriceTable
from farthing.store import IdempotencyRow

__all__ = [
    "NOT_OFFERED_SCOPE_KEY",
    "PAYMENT_SCOPE_KEY",
    "SEALED_CONTENT_TYPE",
    "Offers",
    "Paywall",
    "QuickContent",
]

log = logging.getLogger("farthing.paywall")

PAYMENT_SCOPE_KEY: Final = "farthing.payment"
# Set on a priced request the app does not offer, so a route's ``payment`` dependency
# answers 404 instead of finding no payment.
NOT_OFFERED_SCOPE_KEY: Final = "farthing.not_offered"
SEALED_CONTENT_TYPE: Final = "application/vnd.farthing.sealed"
_NO_STORE: Final = (b"cache-control", b"no-store")
# The 402 page runs only the wallet's own scripts and style, from this origin.
_PAGE_POLICY: Final = (
    b"default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_PRIVATE: Final = (b"cache-control", b"private")  # the draft, on every response with a receipt

Offers = Callable[[str, str], bool]
"""``offers(method, path)``: does the wrapped app answer this request with a good?"""

QuickContent = Callable[[Scope, str, Send], Awaitable[int | None]]
"""``quick(scope, path, send)``: the wrapped app's own answer to a paid plain GET of
canonical ``path``, sent through ``send`` exactly as the app would send it (the same
messages), when it has one at hand (a good kept in memory); its status, or None when it
sent nothing and the request must go through the app. It skips only the layers between
the paywall and the good (routing, exception middleware), so it is given only where they
would pass the request straight to that good (:func:`farthing.paywall.app.build_vendor`)."""


class Paywall:
    """ASGI middleware: ``app = Paywall(app, realm=..., prices=..., methods=[...], ...)``.

    ``offers``, if given, is asked before any payment is requested or taken: a priced path
    the app has nothing at (a missing file, a wrong HTTP method) goes to the app unpaid, so
    a reader following a broken link gets the app's 404 and pays nothing.

    ``quick`` (:data:`QuickContent`), if given, answers a paid plain GET of a good the app
    keeps in memory without the layers in between; anything else goes through ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        realm: str,
        prices: PriceTable,
        methods: Sequence[PaymentMethod],
        challenge_secret: bytes,
        clock: Clock,
        rng: RandomSource,
        challenge_ttl: int = 300,
        metrics: PaywallMetrics | None = None,
        offers: Offers | None = None,
        idempotency: IdempotencyKeys | None = None,
        quick: QuickContent | None = None,
    ) -> None:
        if not methods:
            raise ValueError("a paywall needs at least one payment method")
        self.app = app
        self.realm = realm
        self.prices = prices
        # Keyed by the method id on the wire (``szmchain``); an adapter's ``name`` is its
        # scheme (``szm:chain``), which the seal binds.
        self.methods = {METHOD_OF[method.name]: method for method in methods}
        self._binder = ChallengeBinder(challenge_secret)
        self._clock = clock
        self._rng = rng
        self._ttl = challenge_ttl
        self.metrics = metrics
        self._offers = offers
        self._idempotency = idempotency
        self.quick = quick
        self._requests: dict[tuple[str, str], tuple[JsonObject, str]] = {}
        # The request tags of the paid requests this process is settling or delivering: an
        # identical copy that arrives meanwhile is refused, not served twice (-02
        # "Concurrent Request Handling"); once it is out, the same request is a retry.
        self._in_flight: set[bytes] = set()
        # ... and those it delivered, most recent last: their resend here is a lost answer's.
        self._delivered: OrderedDict[bytes, None] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every request, priced or not: an unpriced variant of a path could name a priced file.
        try:
            path = canonical_path(scope["path"], scope.get("raw_path"), priced=self.prices.match)
        except NotFound as error:
            await _send_not_found(send, problem_for(error), head=scope["method"] == "HEAD")
            return
        # The wallet's own folder is never priced, whatever the price table says.
        route = None if is_wallet_path(path) else self.prices.match(path)
        if route is None:
            await self.app(scope, receive, send)
            return
        note = current_note()
        if note is not None:
            note.route = route.scope  # the access log's label: the price table's route
        if self._offers is not None and not self._offers(scope["method"], path):
            scope[NOT_OFFERED_SCOPE_KEY] = True
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        digest = None
        if scope["method"] not in _BODILESS:
            # A paid request with a body is bound to it: the challenge's ``digest``.
            body = await _read_body(receive)
            if body is None:
                too_large = MalformedMessage("body too large", code=ErrorCode.PAYLOAD_TOO_LARGE)
                await _send_problem_body(
                    send, 413, json.dumps(problem_for(too_large).to_json()).encode()
                )
                return
            digest, receive = content_digest(body), _replay(body, receive)
        found = _credential_field(scope)
        if isinstance(found, Problem):
            await self._send_problem(send, found, route, head=head)
            return
        authorization, field = found
        if authorization is None or head:
            # HEAD is never charged: it would pay for a body that is not sent. A request that
            # keeps ``Authorization`` for another scheme is asked to pay in
            # ``Payment-Authorization`` (the challenge's ``header``).
            page = path if accepts_html(_header(scope, b"accept")) else None
            await self._send_problem(
                send,
                PAYMENT_REQUIRED,
                route,
                head=head,
                header=field,
                digest=digest,
                accept=_header(scope, b"accept-payment"),
                page_for=page,
            )
            return
        if digest is not None and self._idempotency is not None:
            key = _header(scope, b"idempotency-key")
            if key is not None:
                await self._idempotent(
                    scope, receive, send, key, authorization, field, digest, route, path
                )
                return
        tag = request_tag(http_method=scope["method"], path=path, authorization=authorization)
        if tag is not None and tag in self._in_flight:
            await self._send_problem(
                send,
                _IN_PROGRESS,
                route,
                header=field,
                digest=digest,
                accept=_header(scope, b"accept-payment"),
            )
            return
        if tag is not None:
            self._in_flight.add(tag)
        settlement = None
        try:
            settlement = await self._settle_or_answer(
                authorization,
                field,
                digest,
                route,
                path,
                send,
                tag,
                accept=_header(scope, b"accept-payment"),
            )
            if settlement is not None:
                await self._deliver(scope, receive, send, settlement, route, path, field, digest)
        finally:
            if tag is not None:
                self._in_flight.discard(tag)
                if settlement is not None:
                    self._remember_delivered(tag)

    def _remember_delivered(self, tag: bytes) -> None:
        self._delivered[tag] = None
        self._delivered.move_to_end(tag)
        if len(self._delivered) > _DELIVERED_KEPT:
            self._delivered.popitem(last=False)

    async def _idempotent(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: str,
        authorization: str,
        field: str | None,
        digest: str,
        route: PricedRoute,
        path: str,
    ) -> None:
        """A paid request with a body and an ``Idempotency-Key`` (paywall/idempotency.py):
        the key is claimed before the payment is looked at; its kept answer is sent again
        for the same request; another request under it is refused."""
        keys = self._idempotency
        assert keys is not None
        if len(key) > MAX_KEY_LEN:
            bad = MalformedMessage("Idempotency-Key too long", code=ErrorCode.BAD_FIELD)
            await self._send_problem(send, problem_for(bad), route)
            return
        key_id = key_digest(scope["method"], path, key)
        request = request_digest(authorization, digest)
        held = await keys.claim(key_id, request, self._clock.now())
        if held is not None:
            await self._answer_held(send, held, request, route)
            return
        settlement = await self._settle_or_answer(
            authorization,
            field,
            digest,
            route,
            path,
            send,
            None,
            accept=_header(scope, b"accept-payment"),
        )
        if settlement is None:
            await keys.drop(key_id)  # refused: nothing ran under the key
            return
        recorder = Recorder(send)
        try:
            await self._deliver(scope, receive, recorder, settlement, route, path, field, digest)
        finally:
            if recorder.keepable:
                await keys.finish(key_id, recorder)
            else:
                await keys.drop(key_id)

    async def _answer_held(
        self, send: Send, held: IdempotencyRow, request: bytes, route: PricedRoute
    ) -> None:
        if not constant_time_eq(held.request_digest, request):
            error = Conflict(
                "Idempotency-Key used for another request", code=ErrorCode.IDEMPOTENCY_KEY_REUSED
            )
            await self._send_problem(send, problem_for(error), route)
        elif held.status is None:
            error = Conflict(
                "the request of this Idempotency-Key is running",
                code=ErrorCode.IDEMPOTENCY_IN_PROGRESS,
            )
            await self._send_problem(send, problem_for(error), route)
        else:
            status, headers, body = replay(held)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _deliver(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        settlement: Settlement,
        route: PricedRoute,
        path: str,
        field: str | None,
        digest: str | None,
    ) -> None:
        scope[PAYMENT_SCOPE_KEY] = settlement
        scope["extensions"] = _plain_responses_only(scope.get("extensions"))
        nonce = self._rng(12) if settlement.sealing is not None else b""
        # A challenge id pays once: the next payment up front needs a fresh one. Not
        # for a request with a body (the next body's digest is not known yet).
        fresh = None if digest is not None else self._fresh(route, settlement, field)
        paid = _PaidSender(send, settlement, path, self._clock.now(), nonce, fresh)
        # A good the app keeps in memory, without the layers between it and the paywall.
        quick = self.quick
        if quick is not None and _plain_get(scope) and await quick(scope, path, paid) is not None:
            return
        await self.app(scope, receive, paid)

    def _fresh(self, route: PricedRoute, settlement: Settlement, field: str | None) -> bytes:
        """A new challenge of the method just paid, for the paid answer's header."""
        method = METHOD_OF[settlement.method]
        return self._binder.challenge_header(
            realm=self.realm,
            method=method,
            request_b64=self._request(route, method)[1],
            expires=self._clock.now() + self._ttl,
            nonce=self._rng(CHALLENGE_NONCE_LEN),
            header=field,
        ).encode()

    # -- settling --------------------------------------------------------------------------

    async def _settle_or_answer(
        self,
        authorization: str,
        field: str | None,
        digest: str | None,
        route: PricedRoute,
        path: str,
        send: Send,
        request: bytes | None,
        *,
        accept: str | None = None,
    ) -> Settlement | None:
        """Settle the credential, or answer the refusal: a 402 whose fresh challenges
        follow the request's ``Accept-Payment`` (``accept``), as the first 402's do."""
        method_name = "unknown"
        started = time.perf_counter()
        try:
            _check_resource(path)
            credential = parse_credential(authorization)
            method_name, method = self._method_for(credential.challenge)
            now = self._clock.now()
            challenge = self._binder.verify(
                credential.challenge,
                now=now,
                realm=self.realm,
                request_b64=self._request(route, method_name)[1],
                header=field,
                digest=digest,
            )
            context = PaymentContext(
                payload=credential.payload,
                route=route,
                resource=path,
                challenge=challenge,
                now=now,
                request=request,
                delivered_here=request is not None and request in self._delivered,
            )
            settlement = await method.settle(context)
        except FarthingError as error:
            self._count(method_name, error.code.name.lower(), started, route)
            await self._send_problem(
                send,
                payment_problem_for(error),
                route,
                method=method_name,
                header=field,
                digest=digest,
                accept=accept,
            )
            return None
        except Exception:
            correlation = correlation_id()
            log.exception("payment settlement failed (correlation id %s)", correlation)
            self._count(method_name, "internal", started, route)
            await self._send_problem(send, INTERNAL_PAYMENT_ERROR, route, correlation=correlation)
            return None
        self._count(method_name, "retried" if settlement.retried else "accepted", started, route)
        return settlement

    def _method_for(self, echo: ChallengeEcho) -> tuple[str, PaymentMethod]:
        """The method the echoed challenge names; one we never offer, we never issued."""
        method = self.methods.get(echo.method)
        if method is None:
            raise InvalidPayment("unknown challenge", code=ErrorCode.CHALLENGE_INVALID)
        return echo.method, method

    def _count(self, method: str, outcome: str, started: float, route: PricedRoute) -> None:
        note = current_note()
        if note is not None:
            note.payment = method
        if self.metrics is not None:
            self.metrics.observe(method, outcome, time.perf_counter() - started, route.price)

    # -- answers ---------------------------------------------------------------------------

    def _request(self, route: PricedRoute, method: str) -> tuple[JsonObject, str]:
        """The challenge ``request`` of ``method`` for ``route`` and its JCS base64url
        text: the same for every challenge, so it is made once."""
        key = (route.scope, method)
        cached = self._requests.get(key)
        if cached is None:
            request = self.methods[method].request(route)
            cached = self._requests[key] = (request, encode_jcs_b64(request))
        return cached

    def challenges(
        self, route: PricedRoute, *, header: str | None = None, digest: str | None = None
    ) -> list[Challenge]:
        """Fresh challenges for ``route``, one per enabled method; ``header`` selects
        ``Payment-Authorization`` for the credential, ``digest`` binds a request body."""
        expires = self._clock.now() + self._ttl
        out = []
        for name in self.methods:
            request, request_b64 = self._request(route, name)
            out.append(
                self._binder.issue(
                    realm=self.realm,
                    method=name,
                    request=request,
                    request_b64=request_b64,
                    expires=expires,
                    nonce=self._rng(CHALLENGE_NONCE_LEN),
                    header=header,
                    digest=digest,
                )
            )
        return out

    async def _send_problem(
        self,
        send: Send,
        problem: Problem,
        route: PricedRoute,
        *,
        method: str | None = None,
        correlation: str | None = None,
        head: bool = False,
        page_for: str | None = None,
        header: str | None = None,
        digest: str | None = None,
        accept: str | None = None,
    ) -> None:
        """``page_for``: the path of a browser's navigation, answered with the HTML page."""
        headers = [(b"content-type", CONTENT_TYPE.encode()), _NO_STORE]
        extra: dict[str, object] = {}
        challenges: list[Challenge] = []
        if problem.status == 402:
            fresh = self.challenges(route, header=header, digest=digest)
            challenges = order_by_preference(fresh, accept)
            headers += [(b"www-authenticate", format_challenge(c).encode()) for c in challenges]
        if challenges:
            extra["challengeId"] = challenges[0].id
        if page_for is not None and challenges:
            page = payment_page(route, page_for, challenges)
            headers[0] = (b"content-type", b"text/html; charset=utf-8")
            headers += [(b"content-security-policy", _PAGE_POLICY), (b"vary", b"accept")]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({"type": "http.response.start", "status": 402, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else page})
            return
        if problem.retry_after is not None:
            headers.append((b"retry-after", str(problem.retry_after).encode()))
        if method is not None and method in self.methods:
            extra["method"] = method
        if correlation is not None:
            extra["correlationId"] = correlation
        body = json.dumps(problem.to_json(**extra)).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


class _PaidSender:
    """Wraps ``send`` for a paid request: adds the receipt and, for SZM, seals the body."""

    __slots__ = (
        "_body", "_closed", "_fresh", "_nonce", "_now", "_path", "_send", "_settlement", "_start",
        "_started",
    )  # fmt: skip

    def __init__(
        self,
        send: Send,
        settlement: Settlement,
        path: str,
        now: int,
        nonce: bytes,
        fresh: bytes | None = None,
    ) -> None:
        self._send = send
        self._fresh = fresh
        self._settlement = settlement
        self._path = path
        self._now = now
        self._nonce = nonce
        self._start: Message | None = None  # held back until the body is sealed
        self._started = False
        self._closed = False
        self._body: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self._closed:
            return  # failed closed, or the sealed answer is out: nothing more leaves
        if kind == "http.response.start" and not self._started:
            self._started = True
            if self._settlement.sealing is None:
                await self._send(self._with_receipt(message, None))
            else:
                self._start = message
            return
        if kind != "http.response.body" or not self._started:
            await self._fail_closed(kind)
            return
        if self._start is None:
            await self._send(message)
            return
        self._body.append(message.get("body", b""))
        if not message.get("more_body", False):
            self._closed = True
            await self._send_sealed(b"".join(self._body))

    async def _fail_closed(self, kind: str) -> None:
        """A message that would pass the seal and the receipt (``http.response.pathsend``,
        ``zerocopysend``, trailers, a second start, a body before the start): nothing of
        the body leaves. Sealed answers are still held back, so that is a 500; an unsealed
        one has started, so the connection is broken off instead."""
        self._closed = True
        correlation = correlation_id()
        log.error("paid response sent %r (correlation id %s)", kind, correlation)
        if self._start is None and self._started:
            raise RuntimeError(f"a paid response sent {kind!r} after its start")
        await _send_internal_error(self._send, correlation)

    def _receipt(self, content_type: str | None) -> str:
        """The ``Payment-Receipt`` value: ``Receipt(...).to_header()``, the same text,
        without building the receipt object and copying its members again."""
        s = self._settlement
        members = s.receipt.to_json()
        if s.sealing is not None:
            members["sealed"] = SealedBody(content_type=content_type or "").to_json()
        members.update(
            status=_SUCCESS,
            method=METHOD_OF[s.method],
            timestamp=format_rfc3339(self._now),
            reference=s.reference,
        )
        return encode_json_b64(members)

    def _receipt_headers(self, content_type: str | None) -> list[tuple[bytes, bytes]]:
        """What every paid answer adds at the end of its headers: the receipt, ``private``
        and the next challenge (if any)."""
        added = [(b"payment-receipt", self._receipt(content_type).encode()), _PRIVATE]
        if self._fresh is not None:
            added.append((b"www-authenticate", self._fresh))
        return added

    def _with_receipt(self, start: Message, content_type: str | None) -> Message:
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"cache-control"]
        return {**start, "headers": headers + self._receipt_headers(content_type)}

    async def _send_sealed(self, plaintext: bytes) -> None:
        sealing = self._settlement.sealing
        start = self._start
        assert start is not None
        assert sealing is not None
        # One pass over the app's headers: its content type (the last one, as a dict of
        # them would keep) and the headers the sealed answer keeps, in their order.
        content_type = ""
        kept = []
        for name, value in start.get("headers", []):
            if name == b"content-type":
                content_type = value.decode("latin-1")
            if name.lower() not in _REPLACED_WHEN_SEALED:
                kept.append((name, value))
        status = int(start["status"])
        # The status and the original content type are sealed too: nobody on the way can
        # turn a 404 page into a 200 or relabel text/plain as text/html (docs/http.md).
        sealed = seal(
            sealing.key,
            plaintext,
            nonce=self._nonce,
            method=self._settlement.method,
            card_id=sealing.card_id,
            index=sealing.index,
            resource=self._path,
            status=status,
            content_type=content_type,
        )
        kept += [
            (b"content-type", _SEALED_CONTENT_TYPE),
            (b"content-length", str(len(sealed)).encode()),
        ]
        kept += self._receipt_headers(content_type or None)
        await self._send({**start, "headers": kept})
        await self._send({"type": "http.response.body", "body": sealed})


_SUCCESS: Final = "success"  # a receipt's status: only successful paid answers carry one
_SEALED_CONTENT_TYPE: Final = SEALED_CONTENT_TYPE.encode()
# Headers of the app's answer that a sealed answer drops: its own content type and length
# replace the first ones, and the receipt's ``private`` replaces any cache-control.
_REPLACED_WHEN_SEALED: Final = frozenset(
    (b"content-length", b"content-type", b"etag", b"content-encoding", b"cache-control")
)


def _check_resource(path: str) -> None:
    """Seals (and HLL offers) bind the path as canonical text; refuse one that is not
    (NFD, control characters) before any money moves, not when sealing after it did."""
    if path.isascii() and path.isprintable():
        return  # printable ASCII is canonical text: the usual path costs two C calls
    try:
        seal_binding(method="", card_id=b"", index=0, resource=path, status=200, content_type="")
    except ValueError:
        raise MalformedMessage("the path is not canonical text", code=ErrorCode.BAD_FIELD) from None


def _plain_responses_only(extensions: dict[str, object] | None) -> dict[str, object]:
    """The scope's extensions without the response ones (``pathsend``, ``zerocopysend``,
    trailers, early hints, ...): a paid answer is a start and its body, which is sealed."""
    return {k: v for k, v in (extensions or {}).items() if not k.startswith("http.response.")}


async def _send_not_found(send: Send, problem: Problem, *, head: bool) -> None:
    body = json.dumps(problem.to_json()).encode()
    await _send_problem_body(send, problem.status, body, head=head)


async def _send_internal_error(send: Send, correlation: str) -> None:
    body = json.dumps(INTERNAL_PAYMENT_ERROR.to_json(correlationId=correlation)).encode()
    await _send_problem_body(send, 500, body)


async def _send_problem_body(send: Send, status: int, body: bytes, *, head: bool = False) -> None:
    headers = [
        (b"content-type", CONTENT_TYPE.encode()),
        _NO_STORE,
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


# Request headers that may make an app answer otherwise than with the whole good (a part,
# 304, 412): a request carrying any of them is never answered by ``quick``.
_NOT_PLAIN: Final = frozenset(
    (b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
     b"if-unmodified-since")
)  # fmt: skip


def _plain_get(scope: Scope) -> bool:
    """A GET whose answer is the whole good, whatever the app's caching or ranges."""
    if scope["method"] != "GET":
        return False
    return not any(name in _NOT_PLAIN for name, _ in scope["headers"])


_BODILESS: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
MAX_PAID_BODY: Final = 1 << 20  # a paid request's body is read whole, to bind its digest


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (None if over MAX_PAID_BODY)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: what came is all there is
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PAID_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body read already, then whatever comes next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


_DELIVERED_KEPT: Final = 4096  # per process; a lost answer is resent within seconds
_IN_PROGRESS: Final = payment_problem_for(
    InvalidPayment(
        "this payment is being delivered; send it again", code=ErrorCode.PAYMENT_IN_PROGRESS
    )
)

_MULTIPLE_CREDENTIALS: Final = Problem(
    status=400,
    type=PROBLEM_BASE + "bad-request",
    title="Bad request",
    detail="more than one Payment credential",
    code=int(ErrorCode.BAD_FIELD),
)


def _credential_field(scope: Scope) -> tuple[str | None, str | None] | Problem:
    """The Payment credential and the field it came in (None: ``Authorization``).

    ``(None, "Payment-Authorization")`` when ``Authorization`` carries another scheme and
    no credential came: the challenges then select ``Payment-Authorization``. Two Payment
    credentials in one request are refused (the draft: 400).
    """
    authorization = _header(scope, b"authorization")
    separate = _header(scope, b"payment-authorization")
    in_authorization = authorization is not None and _is_payment(authorization)
    if in_authorization and separate is not None:
        return _MULTIPLE_CREDENTIALS
    if in_authorization:
        return authorization, None
    if separate is not None:
        return separate, PAYMENT_AUTHORIZATION
    return None, (PAYMENT_AUTHORIZATION if authorization is not None else None)


def _is_payment(value: str) -> bool:
    return value.lstrip(OWS)[:8].lower() == "payment " or value.strip(OWS).lower() == "payment"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
