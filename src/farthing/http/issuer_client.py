"""``IssuerClient``: how a vendor (merchant) talks to the issuer over HTTP.

It implements the vendor's :class:`~farthing.paywall.methods.hll.HllBankClient`
(``verify_online``), deposits HLL batches, redeems PayWord claims and reads SZM card status::

    async with IssuerClient("https://bank.example", merchant_id="m-1", merchant_key=k_m) as bank:
        await bank.verify_online(offer_bytes, payment_bytes)      # None, or raises
        report = await bank.deposit_hll(batch, tag)                # hll.DepositReport
        report = await bank.hll_deposit_report(batch_id)           # the stored one, or None
        units = await bank.redeem_payword(redemption)              # units newly credited

Errors are always farthing's own, never a bare Exception:

- a problem+json answer is raised again as the error class of its ``code`` (the issuer's
  ``Conflict(DUPLICATE_SPEND)`` arrives here as ``Conflict(DUPLICATE_SPEND)``), with the
  issuer's fixed message;
- no connection, a timeout, a 5xx answer or a body that is not what the API promises is
  ``Unavailable(ISSUER_UNAVAILABLE)`` (an :class:`~farthing.core.errors.ExternalFailure`),
  with the httpx error as ``__cause__``. The
  outcome of such a call is unknown; every call here is safe to repeat (the issuer settles
  each (card, counter), batch and redemption index once).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, TypeVar

import aiohttp
import httpx

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import (
    ErrorCode,
    ExternalFailure,
    FarthingError,
    LocalProtocolError,
    MalformedMessage,
    NotFound,
    Unavailable,
)
from farthing.core.schemes import hll, payword, szm_status
from farthing.http.issuer_wire import (
    CardLookup,
    admit_batch_tag,
    admit_request_tag,
    deposit_lookup_tag,
    parse_card_lookup,
    redeem_request_tag,
    verify_batch_tag,
    verify_request_tag,
)
from farthing.http.problems import Problem, crosses, error_for, problem_for

__all__ = ["CardLookup", "CardStatus", "IssuerClient", "error_from_problem"]

_TIMEOUT: Final = 10.0
_MAX_REPORT_B64: Final = 1 << 20
_RETRY_AFTER: Final = 5  # what the paywall tells its own client when the issuer is out
VERIFY_BATCH_PATH: Final = "/v1/hll/verify-batch"
ADMIT_PATH: Final = "/v1/payword/commitments"
ADMIT_BATCH_PATH: Final = "/v1/payword/commitments/batch"
# The issuer takes up to 128 verifications (routes_hll.MAX_VERIFY_BATCH) or 64 admissions
# (routes_payword.MAX_ADMIT_BATCH) a batch, and 64 KiB of body.
MAX_BATCH_ITEMS: Final = 64
MAX_BATCH_BYTES: Final = 24 * 1024  # raw items; ~34 KiB of JSON < 64 KiB
_MAX_CALLS: Final = 2  # calls of one route out at once; more items wait for the next

T = TypeVar("T")  # an item of a batch call
R = TypeVar("R")  # its outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class CardStatus:
    """The public status of an SZM card."""

    card_id: bytes
    units: int
    spent: int
    expires_at: int
    status: str


def _unavailable(message: str = "the issuer is unavailable") -> Unavailable:
    return Unavailable(message, retry_after=_RETRY_AFTER, code=ErrorCode.ISSUER_UNAVAILABLE)


def error_from_problem(status: int, body: object, retry_after: str | None) -> FarthingError:
    """The farthing error a problem+json answer stands for (:func:`error_for`, the edge's
    own table), or Unavailable(ISSUER_UNAVAILABLE): a 5xx, a body that is no problem, an
    unknown or internal code, or the issuer's own outage are all "the issuer is out" here."""
    problem = Problem.from_json(status, body, retry_after) if status < 500 else None
    if problem is None:
        return _unavailable()
    error = error_for(problem)
    if error is None or isinstance(error, ExternalFailure):
        return _unavailable("the issuer answered with an unknown or internal error")
    return error


class IssuerClient:
    """A merchant's client of the issuer API.

    ``merchant_id`` and ``merchant_key`` (K_M, from the merchant's registration) sign every
    merchant call; without them only the public calls work (:meth:`card_status`,
    :meth:`broker`) and the others raise LocalProtocolError(MISUSE). ``transport`` (e.g.
    ``httpx.ASGITransport``) replaces the network, for tests; ``client`` lets the caller
    share a connection pool. ``coalesce=False`` sends each online verification and each
    PayWord admission in a call of its own (``POST /v1/hll/verify``,
    ``/v1/payword/commitments``), as before batches (bench.bank compares both).

    Over the network (neither ``transport`` nor ``client`` given) the calls go through
    aiohttp (:class:`_Link`), whose C parser costs a call a fifth of httpx's CPU: the
    vendor's online verifications are the busiest of them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        merchant_id: str | None,
        merchant_key: bytes | None,
        timeout: float = _TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        coalesce: bool = True,
    ) -> None:
        self._merchant_id = merchant_id
        self._key = merchant_key
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport
        )
        self._link = _Link(base_url, timeout) if client is None and transport is None else None
        self._verifier: _Coalescer[tuple[bytes, bytes], bool] | None = None
        self._admitter: _Coalescer[bytes, None] | None = None
        if coalesce:
            self._verifier = _Coalescer(
                lambda item: self._verify_one(*item),
                self._verify_batch,
                size=lambda item: len(item[0]) + len(item[1]),
            )
            self._admitter = _Coalescer(self._admit_one, self._admit_batch, size=len)

    def __repr__(self) -> str:
        return f"IssuerClient(merchant_id={self._merchant_id!r})"

    async def aclose(self) -> None:
        if self._link is not None:
            await self._link.aclose()
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> IssuerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the API --------------------------------------------------------------------------

    async def verify_online(self, offer: bytes, payment: bytes) -> bool:
        """Have the bank verify and settle one HLL purchase, or raise (e.g. InvalidPayment,
        Conflict(DUPLICATE_SPEND), InsufficientFunds, PaymentExpired). True if the bank
        had settled this very purchase before (sent again after a lost answer).

        The purchases asked for in one pass of the event loop, or while the bank calls
        in flight are out, go to the bank together (:class:`_Coalescer`); each caller
        gets its own purchase's answer, as if it had called alone."""
        self._credentials()
        if self._verifier is None:
            return await self._verify_one(offer, payment)
        return await self._verifier.submit((offer, payment))

    async def _verify_one(self, offer: bytes, payment: bytes) -> bool:
        """``POST /v1/hll/verify``: one purchase."""
        merchant_id, key = self._credentials()
        tag = verify_request_tag(key, merchant_id, offer, payment)
        body = {
            "merchant_id": merchant_id,
            "offer": b64url_encode(offer),
            "payment": b64url_encode(payment),
            "tag": b64url_encode(tag),
        }
        answer = await self._call("POST", "/v1/hll/verify", body)
        return answer.get("repeated") is True

    async def _verify_batch(
        self, items: Sequence[tuple[bytes, bytes]]
    ) -> list[bool | FarthingError]:
        """``POST /v1/hll/verify-batch``: each purchase's outcome, in order (True: a
        retry of a purchase settled before; an error: the one ``/v1/hll/verify`` raises
        for it alone). Raises as :meth:`_call` for the batch as a whole."""
        merchant_id, key = self._credentials()
        body = {
            "merchant_id": merchant_id,
            "items": [
                {"offer": b64url_encode(offer), "payment": b64url_encode(payment)}
                for offer, payment in items
            ],
            "tag": b64url_encode(verify_batch_tag(key, merchant_id, items)),
        }
        answer = await self._call("POST", VERIFY_BATCH_PATH, body)
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise _unavailable("the issuer's batch answer does not decode")
        return [_item_outcome(result) for result in results]

    async def deposit_hll(self, batch: hll.DepositBatch | bytes, tag: bytes) -> hll.DepositReport:
        """Deposit a deferred-mode batch (or its encoding); resend freely until it answers."""
        encoded = batch if isinstance(batch, bytes) else hll.encode_batch(batch)
        body = {"batch": b64url_encode(encoded), "tag": b64url_encode(tag)}
        return _report(await self._call("POST", "/v1/hll/deposits", body))

    async def hll_deposit_report(self, batch_id: bytes) -> hll.DepositReport | None:
        """What the bank did with one of this merchant's batches: its report, or None if the
        bank never settled it (nothing of it was credited)."""
        merchant_id, key = self._credentials()
        body = {
            "merchant_id": merchant_id,
            "batch_id": b64url_encode(batch_id),
            "tag": b64url_encode(deposit_lookup_tag(key, merchant_id, batch_id)),
        }
        try:
            return _report(await self._call("POST", "/v1/hll/deposits/lookup", body))
        except NotFound:
            return None

    async def admit_payword(self, commitment: bytes) -> None:
        """Have the broker admit a user's new commitment (its encoding) before accepting
        paywords under it; InsufficientFunds(CREDIT_LIMIT) if the user's open commitments
        would pass its credit limit. Safe to repeat.

        The admissions asked for in one pass of the event loop, or while the broker calls
        in flight are out, go to the broker together (:class:`_Coalescer`); each caller
        gets its own commitment's answer, as if it had called alone."""
        self._credentials()
        if self._admitter is None:
            return await self._admit_one(commitment)
        return await self._admitter.submit(commitment)

    async def _admit_one(self, commitment: bytes) -> None:
        """``POST /v1/payword/commitments``: one commitment."""
        merchant_id, key = self._credentials()
        tag = admit_request_tag(key, merchant_id, commitment)
        body = {
            "merchant_id": merchant_id,
            "commitment": b64url_encode(commitment),
            "tag": b64url_encode(tag),
        }
        await self._call("POST", ADMIT_PATH, body)

    async def _admit_batch(self, commitments: Sequence[bytes]) -> list[FarthingError | None]:
        """``POST /v1/payword/commitments/batch``: each commitment's outcome, in order (None:
        admitted; an error: the one ``/v1/payword/commitments`` raises for it alone).
        Raises as :meth:`_call` for the batch as a whole."""
        merchant_id, key = self._credentials()
        body = {
            "merchant_id": merchant_id,
            "items": [{"commitment": b64url_encode(c)} for c in commitments],
            "tag": b64url_encode(admit_batch_tag(key, merchant_id, commitments)),
        }
        answer = await self._call("POST", ADMIT_BATCH_PATH, body)
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(commitments):
            raise _unavailable("the issuer's batch answer does not decode")
        return [_refusal(result) for result in results]

    async def redeem_payword(self, redemption: payword.Redemption | bytes) -> int:
        """Redeem a PayWord claim; returns the units newly credited (0 for a repeat)."""
        encoded = (
            redemption if isinstance(redemption, bytes) else payword.encode_redemption(redemption)
        )
        merchant_id, key = self._credentials()
        tag = redeem_request_tag(key, merchant_id, encoded)
        body = {
            "merchant_id": merchant_id,
            "redemption": b64url_encode(encoded),
            "tag": b64url_encode(tag),
        }
        answer = await self._call("POST", "/v1/payword/redemptions", body)
        return _int(answer, "credited_units")

    async def card_status(self, request: szm_status.StatusRequest) -> CardStatus:
        """The status of an SZM card, for its holder (``request`` carries the proof of the
        card secret, :func:`farthing.core.schemes.szm_status.status_request`); NotFound for
        an unknown card or a wrong proof alike."""
        body: dict[str, str | int] = {"at": request.at, "proof": b64url_encode(request.proof)}
        path = f"/v1/szm/cards/{b64url_encode(request.card_id)}/status"
        answer = await self._call("POST", path, body)
        status = answer.get("status")
        if not isinstance(status, str):
            raise _unavailable("the issuer's card status does not decode")
        return CardStatus(
            card_id=request.card_id,
            units=_int(answer, "units"),
            spent=_int(answer, "spent"),
            expires_at=_int(answer, "expires_at"),
            status=status,
        )

    async def lookup_card(self, lookup_id: bytes) -> CardLookup:
        """The terms of the SZM card whose short code has ``lookup_id``; NotFound if none."""
        answer = await self._call(
            "POST", "/v1/szm/cards/lookup", {"lookup": b64url_encode(lookup_id)}
        )
        try:
            return parse_card_lookup(answer)
        except MalformedMessage as exc:
            raise _unavailable("the issuer's card lookup does not decode") from exc

    async def broker(self) -> tuple[str, bytes]:
        """The PayWord broker's id and Ed25519 public key."""
        answer = await self._call("GET", "/v1/payword/broker", None)
        try:
            return str(answer["broker_id"]), b64url_decode(str(answer["public_key"]), max_len=64)
        except (KeyError, MalformedMessage) as exc:
            raise _unavailable("the issuer's broker key does not decode") from exc

    # --- transport ------------------------------------------------------------------------

    def _credentials(self) -> tuple[str, bytes]:
        if self._merchant_id is None or self._key is None:
            raise LocalProtocolError("this call needs the merchant id and key")
        return self._merchant_id, self._key

    async def _call(
        self, method: str, path: str, body: Mapping[str, object] | None
    ) -> dict[str, object]:
        if self._link is not None:
            status, document, retry_after = await self._link.request(method, path, body)
        else:
            status, document, retry_after = await self._request(method, path, body)
        if 200 <= status < 300 and isinstance(document, dict):
            return document
        if 200 <= status < 300:
            raise _unavailable("the issuer's answer does not decode")
        raise error_from_problem(status, document, retry_after)

    async def _request(
        self, method: str, path: str, body: Mapping[str, object] | None
    ) -> tuple[int, object, str | None]:
        """One call through httpx: (status, the JSON document or None, Retry-After)."""
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise _unavailable() from exc
        return response.status_code, _json(response), response.headers.get("retry-after")


def _report(answer: dict[str, object]) -> hll.DepositReport:
    try:
        return hll.decode_report(b64url_decode(str(answer["report"]), max_len=_MAX_REPORT_B64))
    except (KeyError, MalformedMessage) as exc:
        raise _unavailable("the issuer's deposit report does not decode") from exc


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class _Link:
    """:meth:`IssuerClient._request` through aiohttp: one keep-alive pool per event loop
    (a session belongs to the loop it was made on), made on first use, closed by
    :meth:`aclose`. Any failure to get an answer (no connection, a timeout, the
    connection closed before the answer) is Unavailable(ISSUER_UNAVAILABLE), as with
    httpx."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")  # paths are appended, as httpx's base_url does
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._loop = loop
        return self._session

    async def request(
        self, method: str, path: str, body: Mapping[str, object] | None
    ) -> tuple[int, object, str | None]:
        """(status, the JSON document or None, Retry-After) of one call."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = _JSON_HEADERS if data is not None else None
        try:
            async with self._session_here().request(
                method, self._base + path, data=data, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.read()
                retry_after = response.headers.get("retry-after")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable() from exc
        return status, _loads(raw), retry_after

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()


_JSON_HEADERS: Final = {"content-type": "application/json"}


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _int(document: dict[str, object], name: str) -> int:
    value = document.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _unavailable("the issuer's answer does not decode")
    return value


def _item_outcome(result: object) -> bool | FarthingError:
    """One item of a verify batch's answer: repeated or not, or the error its problem
    stands for."""
    refused = _refusal(result)
    if refused is not None:
        return refused
    assert isinstance(result, dict)  # _refusal checked it
    return result.get("repeated") is True


def _refusal(result: object) -> FarthingError | None:
    """The error one item of a batch answer stands for, or None if it succeeded."""
    if not isinstance(result, dict):
        raise _unavailable("the issuer's batch answer does not decode")
    problem = result.get("problem")
    if problem is None:
        return None
    status = problem.get("status") if isinstance(problem, dict) else None
    if not isinstance(status, int) or isinstance(status, bool):
        raise _unavailable("the issuer's batch answer does not decode")
    return error_from_problem(status, problem, None)


def _again(error: FarthingError) -> FarthingError:
    """The same error as a new exception, for one more of the callers a failed batch call
    answers (an exception object is raised in one task only)."""
    again = error_for(problem_for(error)) if crosses(error) else None
    if again is None:
        return error
    again.__cause__ = error.__cause__
    return again


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class _Coalescer(Generic[T, R]):
    """Calls to the issuer sent together: the items (HLL purchases to verify, PayWord
    commitments to admit) asked for in one pass of the event loop go in one call, and
    while ``max_calls`` calls are out, new ones wait and go in the next.

    A call of one item goes to ``one`` (the single route, as without coalescing), of more
    to ``many`` (the batch route), at most :data:`MAX_BATCH_ITEMS` items and about
    :data:`MAX_BATCH_BYTES` of them (``size``; the issuer's body limit). Each caller gets
    its own outcome; if the call itself fails (a transport error, the issuer's 5xx, a
    refusal of the whole batch), every caller in it gets that error, as a single call
    would have raised it: its outcome is unknown, and the item sent again is answered as
    a retry. A caller cancelled before its call is sent is left out of it.
    """

    def __init__(
        self,
        one: Callable[[T], Awaitable[R]],
        many: Callable[[Sequence[T]], Awaitable[list[R | FarthingError]]],
        *,
        size: Callable[[T], int],
        max_calls: int = _MAX_CALLS,
    ) -> None:
        self._one = one
        self._many = many
        self._size = size
        self._max_calls = max_calls
        self._waiting: deque[_Waiting[T, R]] = deque()
        self._calls = 0
        self._scheduled = False

    async def submit(self, item: T) -> R:
        """The outcome of ``item``, sent with the others asked for now."""
        loop = asyncio.get_running_loop()
        waiting: _Waiting[T, R] = _Waiting(item, loop.create_future())
        self._waiting.append(waiting)
        self._schedule(loop)
        return await waiting.future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next call after this pass of the loop, so that it takes every
        item asked for in the pass."""
        if not self._scheduled and self._calls < self._max_calls:
            self._scheduled = True
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._calls < self._max_calls:
            batch = self._next_batch()
            if not batch:
                return
            self._calls += 1
            loop.create_task(self._send(batch))

    def _next_batch(self) -> list[_Waiting[T, R]]:
        batch: list[_Waiting[T, R]] = []
        size = 0
        while self._waiting and len(batch) < MAX_BATCH_ITEMS:
            first = self._waiting[0]
            if first.future.done():  # its caller was cancelled: not sent
                self._waiting.popleft()
                continue
            size += self._size(first.item)
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(self._waiting.popleft())
        return batch

    async def _send(self, batch: list[_Waiting[T, R]]) -> None:
        outcomes: list[R | FarthingError]
        try:
            if len(batch) == 1:
                outcomes = [await self._one(batch[0].item)]
            else:
                outcomes = await self._many([w.item for w in batch])
        except FarthingError as error:
            outcomes = [error, *(_again(error) for _ in batch[1:])]
        except BaseException as error:  # cancelled, or a bug: no caller is left waiting
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(_unavailable())
            raise error
        finally:
            self._calls -= 1
            if self._waiting:
                self._schedule(asyncio.get_running_loop())
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if waiting.future.done():
                continue
            if isinstance(outcome, FarthingError):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)
