"""Operators (bearer tokens, stored only as SHA-256), the audit log, and merchants.

An operator token is looked up by its hash through the unique index. The lookup is not
constant time, but the token itself never reaches the database and a timing difference
reveals at most a prefix of SHA-256(token), which does not help to find a token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import final

from sqlalchemy import insert, select, update

from farthing.core.errors import ErrorCode
from farthing.store._errors import unique_violation_as
from farthing.store._rows import AuditRow, MerchantRow, OperatorRow
from farthing.store._schema import audit_log, merchants, operator_tokens
from farthing.store._sql import Area, build, dump_json, inserted_id, load_json

__all__ = [
    "AdminArea",
]


@final
class AdminArea(Area):
    """Operators, the audit log and merchants, in one transaction."""

    __slots__ = ()

    def add_operator_token(self, name: str, token_hash: bytes) -> int:
        if len(token_hash) != 32:
            raise ValueError("token_hash is a SHA-256 digest (32 bytes)")
        values = {"name": name, "token_hash": token_hash, "created_at": self._ctx.clock.now()}
        with unique_violation_as(ErrorCode.CONFLICT, "this operator token exists"):
            result = self._ctx.conn.execute(insert(operator_tokens).values(values))
        return inserted_id(result)

    def operator_by_token_hash(self, token_hash: bytes) -> OperatorRow | None:
        stmt = select(operator_tokens).where(operator_tokens.c.token_hash == token_hash)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(OperatorRow, row)

    def operators(self) -> list[OperatorRow]:
        """Every operator token ever made (revoked ones too), oldest first."""
        stmt = select(operator_tokens).order_by(operator_tokens.c.id)
        return [build(OperatorRow, row) for row in self._ctx.conn.execute(stmt).mappings()]

    def revoke_operator_token(self, operator_id: int) -> bool:
        stmt = (
            update(operator_tokens)
            .where(operator_tokens.c.id == operator_id, operator_tokens.c.revoked_at.is_(None))
            .values(revoked_at=self._ctx.clock.now())
        )
        return self._ctx.conn.execute(stmt).rowcount == 1

    def audit(self, actor: str, action: str, detail: Mapping[str, object]) -> int:
        values = {
            "at": self._ctx.clock.now(),
            "actor": actor,
            "action": action,
            "detail": dump_json(detail),
        }
        return inserted_id(self._ctx.conn.execute(insert(audit_log).values(values)))

    def audit_many(self, actor: str, action: str, details: Sequence[Mapping[str, object]]) -> None:
        """:meth:`audit` for several entries of one actor and action, in one statement."""
        if not details:
            return
        at = self._ctx.clock.now()
        rows = [
            {"at": at, "actor": actor, "action": action, "detail": dump_json(detail)}
            for detail in details
        ]
        self._ctx.conn.execute(insert(audit_log), rows)

    def audit_entries(self, limit: int) -> list[AuditRow]:
        """The newest ``limit`` entries, newest first."""
        stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        return [
            build(AuditRow, row, detail=load_json(row["detail"]))
            for row in self._ctx.conn.execute(stmt).mappings()
        ]

    def add_merchant(self, merchant_id: str, account_id: int, key_sealed: bytes) -> None:
        values = {
            "merchant_id": merchant_id,
            "account_id": account_id,
            "key_sealed": key_sealed,
            "created_at": self._ctx.clock.now(),
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this merchant exists"):
            self._ctx.conn.execute(insert(merchants).values(values))

    def merchant(self, merchant_id: str) -> MerchantRow | None:
        stmt = select(merchants).where(merchants.c.merchant_id == merchant_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(MerchantRow, row)

    def merchants(self) -> list[MerchantRow]:
        stmt = select(merchants).order_by(merchants.c.merchant_id)
        return [build(MerchantRow, row) for row in self._ctx.conn.execute(stmt).mappings()]
