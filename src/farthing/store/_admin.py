"""Operators (bearer tokens, stored only as SHA-256), the audit log, and merchants.

An operator token is looked up by its hash through the unique index. The lookup is not
constant time, but the token itself never reaches the database and a timing difference
reveals at most a prefix of SHA-256(token), which does not help to find a token.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import insert, select, update

from farthing.core.errors import ErrorCode
from farthing.store._errors import unique_violation_as
from farthing.store._rows import AuditRow, MerchantRow, OperatorRow
from farthing.store._schema import audit_log, merchants, operator_tokens
from farthing.store._sql import Ctx, build, dump_json, inserted_id, load_json

__all__ = [
    "add_merchant",
    "add_operator_token",
    "audit",
    "audit_entries",
    "merchant",
    "merchants_list",
    "operator_by_token_hash",
    "operators_list",
    "revoke_operator_token",
]


def add_operator_token(ctx: Ctx, name: str, token_hash: bytes) -> int:
    if len(token_hash) != 32:
        raise ValueError("token_hash is a SHA-256 digest (32 bytes)")
    values = {"name": name, "token_hash": token_hash, "created_at": ctx.clock.now()}
    with unique_violation_as(ErrorCode.CONFLICT, "this operator token exists"):
        result = ctx.conn.execute(insert(operator_tokens).values(values))
    return inserted_id(result)


def operator_by_token_hash(ctx: Ctx, token_hash: bytes) -> OperatorRow | None:
    stmt = select(operator_tokens).where(operator_tokens.c.token_hash == token_hash)
    row = ctx.conn.execute(stmt).mappings().one_or_none()
    return None if row is None else build(OperatorRow, row)


def revoke_operator_token(ctx: Ctx, operator_id: int) -> bool:
    stmt = (
        update(operator_tokens)
        .where(operator_tokens.c.id == operator_id, operator_tokens.c.revoked_at.is_(None))
        .values(revoked_at=ctx.clock.now())
    )
    return ctx.conn.execute(stmt).rowcount == 1


def audit(ctx: Ctx, actor: str, action: str, detail: Mapping[str, object]) -> int:
    values = {"at": ctx.clock.now(), "actor": actor, "action": action, "detail": dump_json(detail)}
    return inserted_id(ctx.conn.execute(insert(audit_log).values(values)))


def audit_entries(ctx: Ctx, limit: int) -> list[AuditRow]:
    """The newest ``limit`` entries, newest first."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    return [
        build(AuditRow, row, detail=load_json(row["detail"]))
        for row in ctx.conn.execute(stmt).mappings()
    ]


def add_merchant(ctx: Ctx, merchant_id: str, account_id: int, key_sealed: bytes) -> None:
    values = {
        "merchant_id": merchant_id,
        "account_id": account_id,
        "key_sealed": key_sealed,
        "created_at": ctx.clock.now(),
    }
    with unique_violation_as(ErrorCode.CONFLICT, "this merchant exists"):
        ctx.conn.execute(insert(merchants).values(values))


def merchant(ctx: Ctx, merchant_id: str) -> MerchantRow | None:
    stmt = select(merchants).where(merchants.c.merchant_id == merchant_id)
    row = ctx.conn.execute(stmt).mappings().one_or_none()
    return None if row is None else build(MerchantRow, row)


def merchants_list(ctx: Ctx) -> list[MerchantRow]:
    stmt = select(merchants).order_by(merchants.c.merchant_id)
    return [build(MerchantRow, row) for row in ctx.conn.execute(stmt).mappings()]


def operators_list(ctx: Ctx) -> list[OperatorRow]:
    """Every operator token ever made (revoked ones too), oldest first."""
    stmt = select(operator_tokens).order_by(operator_tokens.c.id)
    return [build(OperatorRow, row) for row in ctx.conn.execute(stmt).mappings()]
