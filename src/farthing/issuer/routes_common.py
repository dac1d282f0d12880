"""What every router shares: the operator dependency and strict base64url fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeAlias

from fastapi import Header

from farthing.core.encoding import b64url_decode
from farthing.core.errors import ErrorCode, MalformedMessage
from farthing.issuer.auth import Operator, OperatorAuth

__all__ = ["OperatorDep", "field_bytes", "operator_dependency"]

OperatorDep: TypeAlias = Callable[..., Operator]


def operator_dependency(auth: OperatorAuth) -> OperatorDep:
    """A FastAPI dependency: the operator behind ``Authorization: Bearer``, or 401."""

    def require_operator(
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Operator:
        return auth.authenticate(authorization)

    return require_operator


def field_bytes(value: str, what: str, *, max_len: int = 1 << 22) -> bytes:
    """A base64url request field, decoded strictly; MalformedMessage names the field only."""
    try:
        return b64url_decode(value, max_len=max_len)
    except MalformedMessage:
        raise MalformedMessage(f"{what} is not base64url", code=ErrorCode.NON_CANONICAL) from None
