"""HLL routes: personalisation (operator), online verification and deposits (merchant)."""

from __future__ import annotations

from typing import Final, TypeVar

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, MalformedMessage
from farthing.core.schemes import hll
from farthing.http.problems import problem_for
from farthing.issuer.auth import Operator
from farthing.issuer.hll_service import CheckedPurchase, DepositOutcome, OnlineSpend
from farthing.issuer.routes_common import field_bytes, operator_dependency
from farthing.issuer.schemas import (
    DepositOut,
    DepositPair,
    HllCardCreated,
    HllCardOut,
    HllDepositLookup,
    HllDepositRequest,
    HllVerifyBatchOut,
    HllVerifyBatchRequest,
    HllVerifyOut,
    HllVerifyRefused,
    HllVerifyRequest,
    NewHllCard,
)
from farthing.issuer.service import IssuerServices
from farthing.store.writer import StoreWriter

__all__ = [
    "DEPOSITS_PATH",
    "MAX_VERIFY_BATCH",
    "VERIFY_BATCH_PATH",
    "VERIFY_PATH",
    "build_hll_router",
    "deposit_out",
    "fast_verify_routes",
]

M = TypeVar("M", bound=BaseModel)

DEPOSITS_PATH = "/v1/hll/deposits"
VERIFY_PATH = "/v1/hll/verify"
VERIFY_BATCH_PATH = "/v1/hll/verify-batch"
MAX_VERIFY_BATCH: Final = 128
"""The most purchases one ``POST /v1/hll/verify-batch`` may carry (more: 400
``BATCH_TOO_LARGE``); the body limit (``max_body_bytes``) bounds its size as well."""


def _pairs(pairs: tuple[tuple[bytes, int], ...]) -> list[DepositPair]:
    return [DepositPair(card_id=b64url_encode(card), counter=counter) for card, counter in pairs]


def deposit_out(outcome: DepositOutcome) -> DepositOut:
    report = outcome.report
    return DepositOut(
        batch_id=b64url_encode(report.batch_id),
        report=b64url_encode(hll.encode_report(report)),
        accepted=[
            DepositPair(card_id=b64url_encode(card), counter=counter, units=units)
            for card, counter, units in report.accepted
        ],
        duplicates=_pairs(report.duplicates),
        invalid=_pairs(report.invalid),
        credited_units=report.credited,
        credited_micros=outcome.credited_micros,
        replayed=outcome.replayed,
    )


def build_hll_router(services: IssuerServices, writer: StoreWriter) -> APIRouter:
    """The HLL routes. Online verifications settle through ``writer``, so those that
    arrive together share one durable commit (see :mod:`farthing.store.writer`)."""
    router = APIRouter(prefix="/v1/hll", tags=["hll"])
    require_operator = operator_dependency(services.operators)
    service = services.hll
    default_unit = services.config.hll_unit_micros

    @router.post("/cards", status_code=201)
    def personalise(body: NewHllCard, op: Operator = Depends(require_operator)) -> HllCardCreated:
        """A new card for a customer, loaded from the customer's account. K_C leaves the
        bank only wrapped for the customer's token (``token_public_key``), with the card
        certificate deferred-mode merchants check."""
        token_key = field_bytes(body.token_public_key, "token_public_key", max_len=1536)
        card = service.personalise(
            op.actor,
            body.customer_id,
            units=body.units,
            unit_micros=body.unit_micros or default_unit,
            token_public_key=token_key,
        )
        assert card.wrapped_card_key is not None
        return HllCardCreated(
            card_id=b64url_encode(card.card_id),
            wrapped_card_key=b64url_encode(card.wrapped_card_key),
            certificate=b64url_encode(card.certificate),
            certificate_expires_at=card.certificate_expires_at,
            bank_key=b64url_encode(service.bank_key),
            units=card.units,
            currency=card.denomination.currency,
            unit_micros=card.denomination.unit_micros,
        )

    @router.get("/cards/{card_id}")
    def card(card_id: str, op: Operator = Depends(require_operator)) -> HllCardOut:
        row = service.card(field_bytes(card_id, "card id", max_len=64))
        return HllCardOut(
            card_id=card_id,
            currency=row.currency,
            unit_micros=row.unit_micros,
            loaded_units=row.loaded_units,
            spent_units=row.spent_units,
            status=row.status.value,
        )

    @router.post("/verify")
    async def verify(body: HllVerifyRequest) -> HllVerifyOut:
        """Online verification for a merchant (authenticated by ``tag`` under K_M):
        verifies the card's MAC, records (card, counter) once and credits the merchant. The
        same purchase sent again is answered ``repeated`` and charged nothing."""
        return await verify_online(services, writer, body)

    @router.post("/verify-batch")
    async def verify_batch(body: HllVerifyBatchRequest) -> HllVerifyBatchOut:
        """Online verification of several purchases in one call (a vendor's bank client
        gathers those that arrive together): the merchant's ``tag`` covers the whole batch;
        each purchase is checked and settled as ``POST /v1/hll/verify`` does it, the valid
        ones in one commit, and answered in order: settled (``repeated`` for one settled
        before, or twice in the batch), or ``problem``, the answer ``/v1/hll/verify`` gives
        it alone. One refused purchase does not fail the others."""
        return await verify_online_batch(services, writer, body)

    @router.post("/deposits")
    def deposit(body: HllDepositRequest) -> DepositOut:
        """A merchant's deferred-mode batch, tagged under K_M; idempotent by batch id."""
        outcome = service.deposit(field_bytes(body.batch, "batch"), field_bytes(body.tag, "tag"))
        return deposit_out(outcome)

    @router.post("/deposits/lookup")
    def deposit_lookup(body: HllDepositLookup) -> DepositOut:
        """What the bank did with one of the merchant's batches (tagged under K_M): the
        stored report, or 404 if the bank never settled it (nothing of it was credited)."""
        outcome = service.deposit_report(
            body.merchant_id,
            field_bytes(body.batch_id, "batch id", max_len=32),
            field_bytes(body.tag, "tag"),
        )
        return deposit_out(outcome)

    return router


async def verify_online(
    services: IssuerServices, writer: StoreWriter, body: HllVerifyRequest
) -> HllVerifyOut:
    """``POST /v1/hll/verify``: the checks (pure, but for a merchant's first lookup), then
    the settlement, group-committed with the others that arrive together."""
    service = services.hll
    checked = service.check_online(
        body.merchant_id,
        field_bytes(body.offer, "offer"),
        field_bytes(body.payment, "payment"),
        field_bytes(body.tag, "tag"),
    )
    spend = await writer.run_hot_in_order(lambda hot: service.settle_online(hot, checked))
    return _verify_out(spend)


async def verify_online_batch(
    services: IssuerServices, writer: StoreWriter, body: HllVerifyBatchRequest
) -> HllVerifyBatchOut:
    """``POST /v1/hll/verify-batch``: the batch's tag once, each purchase's checks, then
    the valid ones settled in one job of the group commit."""
    if len(body.items) > MAX_VERIFY_BATCH:
        raise MalformedMessage(
            f"at most {MAX_VERIFY_BATCH} purchases per batch", code=ErrorCode.BATCH_TOO_LARGE
        )
    service = services.hll
    items = [
        (field_bytes(item.offer, "offer"), field_bytes(item.payment, "payment"))
        for item in body.items
    ]
    merchant = service.authenticate_batch(body.merchant_id, items, field_bytes(body.tag, "tag"))
    outcomes: list[OnlineSpend | CheckedPurchase | FarthingError] = []
    for offer, payment in items:
        try:
            outcomes.append(service.check_purchase(merchant, offer, payment))
        except FarthingError as error:
            outcomes.append(error)
    checked = [c for c in outcomes if isinstance(c, CheckedPurchase)]
    if checked:
        settle = await writer.run_hot_in_order(
            lambda hot: service.settle_online_batch(hot, checked)
        )
        settled = iter(settle)
        outcomes = [next(settled) if isinstance(c, CheckedPurchase) else c for c in outcomes]
    return HllVerifyBatchOut(results=[_item_out(outcome) for outcome in outcomes])


def _verify_out(spend: OnlineSpend) -> HllVerifyOut:
    return HllVerifyOut(
        card_id=b64url_encode(spend.card_id),
        counter=spend.counter,
        units=spend.units,
        credited_micros=spend.credited_micros,
        repeated=spend.repeated,
    )


def _item_out(
    outcome: OnlineSpend | CheckedPurchase | FarthingError,
) -> HllVerifyOut | HllVerifyRefused:
    if isinstance(outcome, OnlineSpend):
        return _verify_out(outcome)
    assert isinstance(outcome, FarthingError)  # every checked purchase was settled
    return HllVerifyRefused(problem=problem_for(outcome).to_json())


def fast_verify_routes(services: IssuerServices, writer: StoreWriter) -> list[Route]:
    """``POST /v1/hll/verify`` and ``/v1/hll/verify-batch`` as plain Starlette routes,
    placed before every other route: the same handlers, the same request models and the
    same 400 for a body that does not validate, without FastAPI's routing and dependency
    machinery (bench.bank: that cost the bank more CPU per verification than verifying
    and settling). The FastAPI routes of :func:`build_hll_router` stay, for the OpenAPI
    document."""

    async def verify(request: Request) -> Response:
        body = _validated(HllVerifyRequest, await request.body())
        answer = await verify_online(services, writer, body)
        return Response(answer.model_dump_json(), media_type="application/json")

    async def verify_batch(request: Request) -> Response:
        body = _validated(HllVerifyBatchRequest, await request.body())
        answer = await verify_online_batch(services, writer, body)
        return Response(answer.model_dump_json(), media_type="application/json")

    return [
        _NamedRoute(VERIFY_PATH, verify, methods=["POST"], include_in_schema=False),
        _NamedRoute(VERIFY_BATCH_PATH, verify_batch, methods=["POST"], include_in_schema=False),
    ]


def _validated(model: type[M], raw: bytes) -> M:
    """The body as ``model``, or FastAPI's own 400 for one that does not validate."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


class _NamedRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do (the
    access log and the metrics label a request by ``scope["route"]``)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child
