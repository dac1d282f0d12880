"""SZM routes: issuing and exporting batches (operator), card status (the card's holder)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from farthing.core.cardcode import Generator
from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.core.money import Denomination
from farthing.core.schemes import szm_status
from farthing.http.issuer_wire import card_lookup_json
from farthing.issuer.auth import Operator
from farthing.issuer.config import IssuerConfig
from farthing.issuer.qr import qr_png
from farthing.issuer.routes_common import field_bytes, operator_dependency
from farthing.issuer.schemas import (
    CardCodeOut,
    CardLookupOut,
    CardLookupRequest,
    CardStatusOut,
    CardStatusRequest,
    NewSzmBatch,
    RevenueOut,
    SzmBatchOut,
    SzmExportOut,
    SzmRevenueRequest,
)
from farthing.issuer.service import IssuerServices
from farthing.issuer.szm_service import BatchSpec, ExportedCard
from farthing.store import SzmBatchRow, SzmProtocol

__all__ = ["batch_out", "build_szm_router"]

_ID_B64_MAX = 64


def batch_out(batch: SzmBatchRow) -> SzmBatchOut:
    return SzmBatchOut(
        batch_id=b64url_encode(batch.batch_id),
        protocol=batch.protocol.value,
        count=batch.count,
        units=batch.units,
        currency=batch.currency,
        unit_micros=batch.unit_micros,
        expires_at=batch.expires_at,
        value_micros=batch.count * batch.units * batch.unit_micros,
    )


def _code_out(card: ExportedCard) -> CardCodeOut:
    return CardCodeOut(
        card_id=b64url_encode(card.card_id),
        short=card.short_code,
        code=card.text,
        compact=card.compact,
    )


def _spec(body: NewSzmBatch, config: IssuerConfig) -> BatchSpec:
    if body.count > config.max_batch_cards:
        raise MalformedMessage("too many cards for one request", code=ErrorCode.OVERSIZED)
    chain_units = body.count * body.units if body.protocol == SzmProtocol.CHAIN.value else 0
    if chain_units > config.max_batch_chain_units:
        raise MalformedMessage(
            f"a hash-chain batch may hold at most {config.max_batch_chain_units} units in all"
            " (count x units) per request; issue it in smaller batches",
            code=ErrorCode.OVERSIZED,
        )
    return BatchSpec(
        protocol=SzmProtocol(body.protocol),
        count=body.count,
        units=body.units,
        denomination=Denomination(currency=body.currency, unit_micros=body.unit_micros),
        expires_at=body.expires_at,
        generator=None if body.generator is None else Generator(body.generator),
    )


def build_szm_router(services: IssuerServices) -> APIRouter:
    router = APIRouter(prefix="/v1/szm", tags=["szm"])
    require_operator = operator_dependency(services.operators)
    service = services.szm
    config = services.config

    @router.post("/batches", status_code=201)
    def issue(body: NewSzmBatch, op: Operator = Depends(require_operator)) -> SzmBatchOut:
        """Issue (= sell) a batch of anonymous prepaid cards: cash -> prepaid float."""
        return batch_out(service.issue_batch(op.actor, _spec(body, config)))

    @router.get("/batches/{batch_id}")
    def batch(batch_id: str, op: Operator = Depends(require_operator)) -> SzmBatchOut:
        return batch_out(service.batch(field_bytes(batch_id, "batch id", max_len=_ID_B64_MAX)))

    @router.get("/batches/{batch_id}/codes")
    def export(
        batch_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1),
        op: Operator = Depends(require_operator),
    ) -> SzmExportOut:
        """The printable codes (with the card secrets) of a page of the batch; audited."""
        page = service.export(
            op.actor,
            field_bytes(batch_id, "batch id", max_len=_ID_B64_MAX),
            offset=offset,
            limit=min(limit, config.max_export_page),
        )
        return SzmExportOut(
            batch_id=batch_id,
            offset=page.offset,
            count=page.batch.count,
            cards=[_code_out(card) for card in page.cards],
        )

    @router.get("/cards/{card_id}/code")
    def card_code(card_id: str, op: Operator = Depends(require_operator)) -> CardCodeOut:
        card = service.export_card(op.actor, field_bytes(card_id, "card id", max_len=_ID_B64_MAX))
        return _code_out(card)

    @router.get(
        "/cards/{card_id}/qr.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def card_qr(card_id: str, op: Operator = Depends(require_operator)) -> Response:
        """The card's compact code as a QR code (PNG); audited."""
        card = service.export_card(op.actor, field_bytes(card_id, "card id", max_len=_ID_B64_MAX))
        return Response(qr_png(card.compact), media_type="image/png")

    @router.post("/cards/{card_id}/status")
    def card_status(card_id: str, body: CardStatusRequest) -> CardStatusOut:
        """The card's holder only: units, spent, expiry and status, given a fresh proof of
        the card secret. A card id alone (it is in every payment) tells nothing."""
        request = szm_status.StatusRequest(
            card_id=field_bytes(card_id, "card id", max_len=_ID_B64_MAX),
            at=body.at,
            proof=field_bytes(body.proof, "proof", max_len=64),
        )
        view = service.status(request)
        return CardStatusOut(
            card_id=card_id,
            units=view.units,
            spent=view.spent,
            expires_at=view.expires_at,
            status=view.status,
        )

    @router.post("/cards/lookup")
    def card_lookup(body: CardLookupRequest) -> CardLookupOut:
        """The card a typed short code names, for whoever holds the code: its terms, a tag
        that binds them to the code, and what is left. 404 for any other lookup id."""
        answer = service.lookup(field_bytes(body.lookup, "lookup id", max_len=32))
        document = card_lookup_json(
            answer.code, tag=answer.tag, spent=answer.spent, status=answer.status
        )
        return CardLookupOut.model_validate(document)

    @router.post("/revenue")
    def revenue(body: SzmRevenueRequest, op: Operator = Depends(require_operator)) -> RevenueOut:
        """Recognise the spent SZM value as revenue (prepaid float -> revenue)."""
        micros = service.recognise_revenue(op.actor, body.currency)
        return RevenueOut(currency=body.currency, recognised_micros=micros)

    return router
