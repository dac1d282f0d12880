"""PayWord broker routes: the broker's key (public), users (operator), admitting commitments
(one, or a batch) and redemptions (vendor)."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Depends

from farthing.core.encoding import b64url_encode
from farthing.core.errors import ErrorCode, FarthingError, MalformedMessage
from farthing.core.schemes import payword
from farthing.http.problems import problem_for
from farthing.issuer.auth import Operator
from farthing.issuer.payword_service import Admitted
from farthing.issuer.routes_common import field_bytes, operator_dependency
from farthing.issuer.schemas import (
    AdmittedOut,
    BrokerOut,
    NewPaywordUser,
    PaywordAdmitBatchOut,
    PaywordAdmitBatchRequest,
    PaywordAdmitRefused,
    PaywordAdmitRequest,
    PaywordRedeemRequest,
    PaywordUserOut,
    RedeemOut,
)
from farthing.issuer.service import IssuerServices

__all__ = ["MAX_ADMIT_BATCH", "build_payword_router"]

_PUBLIC_KEY_LEN = 32
MAX_ADMIT_BATCH: Final = 64
"""The most commitments one ``POST /v1/payword/commitments/batch`` may carry (more: 400
``BATCH_TOO_LARGE``); the body limit (``max_body_bytes``, 64 KiB: about 120 commitments of
~400 bytes) bounds its size as well. The vendor's client sends at most 64 at once."""


def build_payword_router(services: IssuerServices) -> APIRouter:
    router = APIRouter(prefix="/v1/payword", tags=["payword"])
    require_operator = operator_dependency(services.operators)
    service = services.payword

    @router.get("/broker")
    def broker() -> BrokerOut:
        """Public: the broker id and Ed25519 public key that vendors check certificates with."""
        return BrokerOut(
            broker_id=service.broker_id, public_key=b64url_encode(service.broker_public)
        )

    @router.post("/users", status_code=201)
    def register(body: NewPaywordUser, op: Operator = Depends(require_operator)) -> PaywordUserOut:
        """Register a user on a customer account and return its broker certificate."""
        public_key = field_bytes(body.public_key, "public key")
        if len(public_key) != _PUBLIC_KEY_LEN:
            raise MalformedMessage("public key must be 32 bytes", code=ErrorCode.BAD_FIELD)
        user = service.register_user(
            op.actor,
            user_id=body.user_id,
            customer_id=body.customer_id,
            public_key=public_key,
            credit_limit=body.credit_limit_units,
            unit_micros=body.unit_micros,
        )
        return PaywordUserOut(
            user_id=user.user_id,
            certificate=b64url_encode(payword.encode_certificate(user.certificate)),
            expires_at=user.certificate.expires_at,
            broker_id=service.broker_id,
            broker_public_key=b64url_encode(service.broker_public),
        )

    @router.post("/commitments")
    def admit(body: PaywordAdmitRequest) -> AdmittedOut:
        """A vendor presents a user's new commitment, tagged under its key K_M, before it
        accepts paywords under it: admitted only while the user's open commitments and this
        one stay within the credit limit (402, code CREDIT_LIMIT, otherwise)."""
        result = service.admit(
            body.merchant_id,
            field_bytes(body.commitment, "commitment"),
            field_bytes(body.tag, "tag"),
        )
        return _admitted_out(result)

    @router.post("/commitments/batch")
    def admit_batch(body: PaywordAdmitBatchRequest) -> PaywordAdmitBatchOut:
        """Several new commitments in one call (a vendor's broker client gathers those that
        arrive together), admitted in one transaction: the merchant's ``tag`` covers the
        whole batch; each commitment is judged as ``POST /v1/payword/commitments`` judges
        it, after the ones before it in the batch, and answered in order: admitted (with
        its figures), or ``problem``, the answer ``/v1/payword/commitments`` gives it
        alone. One refused commitment does not fail the others."""
        if len(body.items) > MAX_ADMIT_BATCH:
            raise MalformedMessage(
                f"at most {MAX_ADMIT_BATCH} commitments per batch",
                code=ErrorCode.BATCH_TOO_LARGE,
            )
        outcomes = service.admit_batch(
            body.merchant_id,
            [field_bytes(item.commitment, "commitment") for item in body.items],
            field_bytes(body.tag, "tag"),
        )
        return PaywordAdmitBatchOut(results=[_admit_item_out(o) for o in outcomes])

    @router.post("/redemptions")
    def redeem(body: PaywordRedeemRequest) -> RedeemOut:
        """A vendor's claim (commitment + last payword), tagged under its key K_M.
        Credits only the units above what was redeemed before (a repeat credits 0)."""
        result = service.redeem(
            body.merchant_id,
            field_bytes(body.redemption, "redemption"),
            field_bytes(body.tag, "tag"),
        )
        return RedeemOut(
            commitment_id=b64url_encode(result.commitment_id),
            index=result.index,
            credited_units=result.credited_units,
            credited_micros=result.credited_micros,
        )

    return router


def _admitted_out(result: Admitted) -> AdmittedOut:
    return AdmittedOut(
        commitment_id=b64url_encode(result.commitment_id),
        outstanding_micros=result.outstanding_micros,
        credit_limit_micros=result.credit_limit_micros,
    )


def _admit_item_out(outcome: Admitted | FarthingError) -> AdmittedOut | PaywordAdmitRefused:
    if isinstance(outcome, FarthingError):
        return PaywordAdmitRefused(problem=problem_for(outcome).to_json())
    return _admitted_out(outcome)
